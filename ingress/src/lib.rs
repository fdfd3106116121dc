//! The HTTP ingress plane: the front door that replaces ingress-nginx for Ingress v1, and the
//! Gateway API data plane (Gateway sockets, HTTPRoute and GRPCRoute rules).
//!
//! Owns: the hyper HTTP/1.1 + HTTP/2 server ([`serve`]: plain with h2c prior knowledge, TLS with
//! ALPN), TLS termination with an SNI resolver that reads the snapshot on every handshake,
//! Ingress v1 request routing ([`route`]), the pure plan step for Ingress and Gateway requests
//! (`plan`: match, filters, weighted backend choice), request mirrors, gRPC statuses for
//! Capstan's own answers to gRPC requests, the https redirect, reverse-proxy header rules,
//! per-request endpoint choice (the proxy crate's balancer, peak-EWMA by default), upstream
//! keep-alive pools (the inline HTTP/1.1 client [`http1`] for bodiless requests, hyper's client
//! for bodies, upgrades and h2c for `appProtocol: kubernetes.io/h2c`), WebSocket upgrades,
//! per-route traffic policy (admission, basic authentication, retries with a budget, outlier
//! ejection), TLS to upstreams (hyper-rustls clients per route setting, per worker), active
//! health checks of Service endpoints ([`health`]), per-route counters and the access log.
//!
//! Must not import: `catalog`, the sources, or anything Kubernetes; only `table` and `proxy`
//! (balance, listeners, clock). Each request loads the snapshot once and never locks.

mod admission;
mod auth;
mod body;
mod completion;
pub mod crypto;
mod edge;
mod error;
mod forward;
mod gateway_sockets;
mod grpc;
mod headers;
pub mod health;
pub mod http1;
mod idle;
mod metrics;
mod outlier;
mod plan;
pub mod proxy_protocol;
mod routing;
mod server;
mod tls;
mod upstream_tls;

use std::net::SocketAddr;
use std::time::Duration;

use capstan_table::BalancePolicy;

pub use error::IngressError;
pub use gateway_sockets::GatewayBinds;
pub use headers::cookie;
pub use metrics::{IngressMetrics, Refusal};
pub use plan::{Blame, FAULTS, Fault};
pub use routing::{Routed, match_path, normalize_host, route, route_host};
pub use server::{Bound, GatewayWatch, serve};
pub use tls::SniResolver;

/// Settings of the ingress listeners.
#[derive(Clone, Debug)]
pub struct IngressConfig {
    /// Plain HTTP listener (HTTP/1.1 and h2c), `None` for off.
    pub http: Option<SocketAddr>,
    /// TLS listener, `None` for off.
    pub https: Option<SocketAddr>,
    /// Endpoint choice per request.
    pub balance: BalancePolicy,
    /// Time to send a complete request head (and the longest idle time between HTTP/1.1
    /// requests); also bounds the TLS handshake.
    pub header_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    pub idle_timeout: Duration,
    /// Time an upstream has to start its response (504 after).
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// Pooled upstream connections idle this long are closed.
    pub upstream_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub access_log: bool,
    /// Peers whose forwarding headers and request IDs are kept and extended
    /// (`--trusted-proxies`), and who may open connections with a PROXY protocol header.
    pub trusted_proxies: std::sync::Arc<[ipnet::IpNet]>,
    /// Accept a PROXY protocol v1/v2 header from trusted peers (`--proxy-protocol`).
    pub proxy_protocol: bool,
    /// TLS key-exchange groups in preference order (`--tls-key-exchange`); empty: rustls's.
    pub tls_key_exchange: Vec<crypto::KeyExchange>,
    /// TLS 1.3 session tickets sent after a full handshake (`--tls-session-tickets`); 0 turns
    /// resumption off (no tickets, no session cache).
    pub tls_session_tickets: usize,
}

impl IngressConfig {
    /// Whether `ip` is one of the trusted proxies.
    pub fn trusts(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.trusted_proxies.iter().any(|range| range.contains(&ip))
    }
}

impl Default for IngressConfig {
    fn default() -> Self {
        Self {
            http: None,
            https: None,
            balance: BalancePolicy::PeakEwma,
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_secs(90),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            trusted_proxies: std::sync::Arc::new([]),
            proxy_protocol: false,
            access_log: false,
            tls_key_exchange: Vec::new(),
            tls_session_tickets: 2,
        }
    }
}

/// The pure per-request steps the criterion benches (`benches/ingress.rs`) time, so a
/// regression on the request path shows without a load test. Not an API.
#[doc(hidden)]
pub mod bench {
    use std::net::IpAddr;

    use bytes::BytesMut;
    use http::{HeaderMap, Method};

    /// The upstream request heads of one downstream connection from `client` to an `http`
    /// listener at `port` (its forwarding values rendered once, as the server does per connection).
    pub struct UpstreamHead(crate::headers::Forwarding);

    impl UpstreamHead {
        pub fn new(client: IpAddr, port: u16, trusted: bool) -> Self {
            Self(crate::headers::Forwarding::new(
                client, "http", port, trusted,
            ))
        }

        /// The head the inline client writes for one request: forwarding headers decided, then
        /// the head encoded into `out`.
        pub fn encode(
            &self,
            method: &Method,
            target: &str,
            headers: &HeaderMap,
            host: &str,
            out: &mut BytesMut,
        ) {
            let fields = crate::headers::forwarded_fields(headers, &self.0, host);
            crate::headers::encode_upstream_head(method, target, headers, &fields, host, out);
        }
    }
}
