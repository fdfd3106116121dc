//! Cluster DNS (not built yet).
//!
//! Will own: the pure `answer(&DnsTable, &Message) -> Message` for the cluster domain, the UDP and
//! TCP servers, and the upstream forwarder with its cache. It reads the DNS table of the snapshot.
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes; only `table`.
