//! HTTP ingress (not built yet).
//!
//! Will own: the hyper HTTP/1.1 + HTTP/2 server, TLS termination with an SNI resolver reading the
//! snapshot, Ingress v1 host/path routing and redirects.
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes; only `table` and `proxy`
//! (balance, forward).
