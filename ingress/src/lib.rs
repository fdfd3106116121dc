//! HTTP ingress (being built): so far the pure Ingress v1 request router ([`route`]) over the
//! snapshot's [`capstan_table::IngressTable`].
//!
//! Will own: the hyper HTTP/1.1 + HTTP/2 server, TLS termination with an SNI resolver reading the
//! snapshot, and redirects.
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes; only `table` and `proxy`
//! (balance, forward).

mod routing;

pub use routing::{Routed, match_path, route};
