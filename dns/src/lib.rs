//! Cluster DNS: the Kubernetes DNS-Based Service Discovery specification (1.1.0) answered from the
//! snapshot, plus forwarding of every other name to upstream resolvers through a cache.
//!
//! Owns: the pure [`answer`] function over the snapshot's [`capstan_table::DnsTable`], the wire
//! edge ([`wire`]: FORMERR, EDNS(0) sizes, truncation), the forwarding [`Cache`], the
//! [`Forwarder`] (upstream health, concurrency cap, loop detection), the UDP + TCP [`serve`]r and
//! its lock-free [`DnsMetrics`].
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes; only `table`. hickory-proto is
//! used for the wire format only: names are answered from Capstan's own table, not a hickory zone
//! store (which sits behind a lock and cannot be swapped atomically).

mod answer;
mod cache;
mod error;
mod forward;
mod metrics;
mod packet_cache;
mod server;
mod udp_batch;
pub mod wire;

pub use answer::{Resolution, answer, lookup_key, reverse_address};
pub use cache::{Cache, CacheConfig, CacheKey, Cached};
pub use error::DnsError;
pub use forward::{ForwardConfig, Forwarder, UpstreamStats};
pub use metrics::{DnsMetrics, RequestSample, Transport};
pub use packet_cache::{PacketCache, PlainQuery};
pub use server::{DnsConfig, Handler, Pending, Step, serve};
