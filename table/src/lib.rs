//! The vocabulary of Capstan and the compiled, immutable tables the data planes read.
//!
//! Owns: [`ServiceKey`], [`ServicePortKey`], [`Protocol`], [`Endpoint`] and its carried-over
//! [`EndpointStats`], the proxy routing table ([`ProxyTable`]), HTTP traffic policy
//! ([`RoutePolicy`], [`ActiveHealthCheck`], [`OutlierPolicy`]) with its carried state, the
//! authoritative DNS data ([`DnsTable`]), the Ingress routes ([`IngressTable`]), the Gateway API listeners, rules and status
//! ([`GatewayTable`]) with their TLS
//! certificates ([`TlsCertificate`]), upstream TLS settings ([`UpstreamTls`]) and basic-auth users
//! ([`Htpasswd`], [`BasicAuth`]), the [`Snapshot`] that bundles every
//! table under one [`Generation`], and [`SnapshotHandle`], the only code in the workspace that names
//! `ArcSwap`.
//!
//! Must not import: any other workspace crate, tokio, or anything that does I/O (rustls is used for
//! its certificate types and to parse and check a key once, in [`TlsCertificate::from_pem`]).
//! Everything here is plain data plus lock-free atomics, so it can be built by the pure `compile`
//! step and read by every plane without locks.

mod auth;
mod dns;
mod endpoint;
mod gateway;
mod histogram;
mod ingress;
mod key;
mod policy;
mod proxy;
mod snapshot;
mod tls;

pub use auth::{BasicAuth, Htpasswd, PasswordHash, VERIFIED_CAPACITY, base64_decode};
pub use dns::{DNS_SCHEMA_VERSION, DnsNode, DnsTable, DnsZone, SrvData, in_zone};
pub use endpoint::{
    Endpoint, EndpointConditions, EndpointStats, LATENCY_DECAY_MS, TopologyHints, millis,
};
pub use gateway::{
    Condition, GatewayListener, GatewaySocket, GatewayTable, HeaderEdits, HostRules, HttpAction,
    HttpMatch, HttpRule, ListenerStatus, Mirror, ObjectStatus, ParentStatus, PathMatch,
    PathModifier, Redirect, Rewrite, RouteFilters, ValueMatch, WeightedBackend, hostname_matches,
};
pub use histogram::{HTTP_BUCKETS, Histogram, HistogramSample};
pub use ingress::{
    Backend, BackendPort, HostRoutes, IngressTable, PathType, Route, RouteConflict, RouteStats,
    STATUS_CLASSES, UpstreamProtocol, status_class,
};
pub use key::{Frontend, Protocol, ServiceKey, ServicePortKey, TrafficScope};
pub use policy::{
    ActiveHealthCheck, BUDGET_WINDOW_SECONDS, BackendPolicy, BackendProtocol, BasicAuthPolicy,
    CLIENT_LIMITERS_SWEEP_AT, Cors, Gcra, Hsts, OutlierPolicy, RateLimit, RetryBudget, RetryOn,
    RetryPolicy, RoutePolicy, RouteState, StickyCookie, endpoint_cookie,
};
pub use proxy::{
    AffinityEntry, BalancePolicy, EndpointSet, FrontendTarget, HealthCheck, PortCounters,
    ProxyTable, ServicePortState, ServicePortTable, Timeouts, WhenEmpty,
};
pub use snapshot::{Generation, Problem, Snapshot, SnapshotHandle};
pub use tls::{TlsCertificate, UpstreamTls, UpstreamVerify, ca_bundle_from_pem};
