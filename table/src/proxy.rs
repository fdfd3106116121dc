//! The L4 routing table: which Service port each frontend serves and which endpoints may get it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::{ActiveHealthCheck, Endpoint, Frontend, OutlierPolicy, ServicePortKey, TrafficScope};

/// Everything the L4 proxy needs, for one generation.
#[derive(Debug, Default)]
pub struct ProxyTable {
    /// Every proxied Service port, by key (ordered, for stable dumps and metrics).
    pub ports: BTreeMap<ServicePortKey, Arc<ServicePortTable>>,
    /// The frontend → Service port index used on every accepted connection.
    pub frontends: HashMap<Frontend, FrontendTarget>,
    /// kube-proxy's per-Service health servers: `healthCheckNodePort` → what it reports.
    pub health_checks: BTreeMap<u16, HealthCheck>,
}

/// What a `healthCheckNodePort` answers for its Service (LoadBalancer,
/// `externalTrafficPolicy: Local`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    pub service: crate::ServiceKey,
    /// Ready endpoints on this node (distinct addresses over every port).
    pub local_endpoints: usize,
}

/// What a frontend leads to.
#[derive(Clone, Debug)]
pub struct FrontendTarget {
    pub port: Arc<ServicePortTable>,
    pub scope: TrafficScope,
    /// `loadBalancerSourceRanges`, on the LoadBalancer IPs of a Service that sets them: only
    /// clients inside one of them are served, the rest are dropped. `None`: everyone.
    pub source_ranges: Option<Arc<[ipnet::IpNet]>>,
}

/// One compiled Service port.
#[derive(Debug)]
pub struct ServicePortTable {
    pub key: ServicePortKey,
    /// The frontends of this port, with the traffic policy scope each one uses.
    pub frontends: Vec<(Frontend, TrafficScope)>,
    pub policy: BalancePolicy,
    /// `sessionAffinity: ClientIP` timeout; `None` when affinity is off.
    pub affinity: Option<Duration>,
    pub timeouts: Timeouts,
    /// Active HTTP health checks of the endpoints (the Service's annotations); `None`: off.
    pub health: Option<Arc<ActiveHealthCheck>>,
    /// Ejection on consecutive 5xx and gateway errors, by the ingress plane.
    pub outlier: OutlierPolicy,
    /// Circuit breaking: requests in flight per endpoint at most; when every endpoint is at the
    /// limit the ingress answers 503. `None`: no limit.
    pub max_requests_per_endpoint: Option<u32>,
    /// Circuit breaking on the user-space L4 path: connections open per endpoint at most
    /// (Envoy's `max_connections`, per endpoint); a connection finding every endpoint full is
    /// reset. Services with it stay in user space (the kernel cannot count).
    pub max_connections_per_endpoint: Option<u32>,
    /// Every endpoint known for this port, with its conditions (for dumps and metrics).
    pub endpoints: Arc<[Arc<Endpoint>]>,
    /// Endpoints eligible for traffic arriving on a ClusterIP.
    pub internal: EndpointSet,
    /// Endpoints eligible for traffic arriving on a NodePort, external or LoadBalancer IP.
    pub external: EndpointSet,
    /// `externalTrafficPolicy: Local`: `external` holds this node's endpoints only, and the
    /// kernel data path keeps the client's address and short-circuits pod and node traffic to
    /// `internal` (kube-proxy's external chain).
    pub external_local: bool,
    /// State carried across swaps: round-robin position, affinity table, counters.
    pub state: Arc<ServicePortState>,
    /// The compile step's fingerprint of what this table was built from (its Service's and
    /// slices' catalog revisions): equal inputs let the next compile reuse the table as it is.
    pub inputs: u64,
}

/// Endpoints that may receive a connection, already categorised by kube-proxy's rules. Shared by
/// `Arc` when several sets are equal (the common case: every endpoint ready, Cluster policy).
#[derive(Clone, Debug)]
pub struct EndpointSet {
    pub endpoints: Arc<[Arc<Endpoint>]>,
    /// What to do when `endpoints` is empty.
    pub when_empty: WhenEmpty,
}

/// How a connection with no eligible endpoint is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenEmpty {
    /// The Service has no usable endpoints at all: refuse at once (TCP RST, like kube-proxy's
    /// REJECT rule).
    Reject,
    /// Endpoints exist but none is local under a `Local` traffic policy: drop (kube-proxy drops).
    Drop,
}

/// Load-balancing policy of a Service port.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BalancePolicy {
    /// Uniform random choice: kube-proxy's iptables/nftables behaviour.
    #[default]
    Random,
    RoundRobin,
    /// Power of two random choices on in-flight connections.
    LeastConnections,
    /// Power of two random choices on in-flight requests weighted by each endpoint's peak-EWMA
    /// response latency (linkerd's and Finagle's balancer); the ingress default.
    PeakEwma,
}

/// Timeouts and passive-health settings of a Service port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// A connection with no bytes in either direction for this long is closed.
    pub idle: Duration,
    /// First ejection period after a failed connect; doubles per consecutive failure.
    pub eject_base: Duration,
    pub eject_max: Duration,
    /// A UDP flow (client address → endpoint) with no datagram either way for this long is
    /// forgotten: conntrack's UDP timeout.
    pub udp_idle: Duration,
}

/// State of a Service port that outlives snapshots: carried over by key by `compile`.
#[derive(Debug, Default)]
pub struct ServicePortState {
    pub round_robin: AtomicUsize,
    /// `sessionAffinity: ClientIP`: client address → chosen endpoint and last use. Created on
    /// first use, so ports without affinity pay nothing for it.
    affinity: OnceLock<papaya::HashMap<IpAddr, AffinityEntry>>,
    pub counters: PortCounters,
}

/// An entry of the ClientIP affinity table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityEntry {
    pub endpoint: SocketAddr,
    pub last_used_ms: u64,
}

/// Traffic counters of one Service port, exported on `/metrics`.
#[derive(Debug, Default)]
pub struct PortCounters {
    pub connections: AtomicU64,
    pub active: AtomicU64,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Connections refused because no endpoint was eligible.
    pub no_endpoints: AtomicU64,
    /// Connections and datagrams dropped by `loadBalancerSourceRanges`.
    pub source_denied: AtomicU64,
    /// Connections closed because every connect attempt failed.
    pub upstream_failures: AtomicU64,
    /// Connections reset because every endpoint was at `max-connections-per-endpoint`.
    pub overloaded: AtomicU64,
    pub idle_timeouts: AtomicU64,
}

// === impl ProxyTable ===

impl ProxyTable {
    pub fn target(&self, frontend: &Frontend) -> Option<&FrontendTarget> {
        self.frontends.get(frontend)
    }
}

// === impl FrontendTarget ===

impl FrontendTarget {
    /// Whether a client at `ip` may use this frontend (`loadBalancerSourceRanges`).
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        let ip = match ip {
            std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
            v4 => v4,
        };
        self.source_ranges
            .as_ref()
            .is_none_or(|ranges| ranges.iter().any(|range| range.contains(&ip)))
    }

    /// [`Self::admits`], counting a refusal in the port's `source_denied`.
    pub fn admit(&self, ip: std::net::IpAddr) -> bool {
        let admitted = self.admits(ip);
        if !admitted {
            let denied = &self.port.state.counters.source_denied;
            denied.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        admitted
    }
}

// === impl ServicePortTable ===

impl ServicePortTable {
    /// A port whose every endpoint is eligible in both scopes (refused when empty), with the
    /// default policy and timeouts and no frontends: the base that tests and benchmarks of
    /// endpoint choice fill in.
    pub fn with_endpoints(key: ServicePortKey, endpoints: Arc<[Arc<Endpoint>]>) -> Self {
        let set = EndpointSet {
            endpoints: endpoints.clone(),
            when_empty: WhenEmpty::Reject,
        };
        Self {
            key,
            frontends: vec![],
            policy: BalancePolicy::default(),
            affinity: None,
            timeouts: Timeouts::default(),
            health: None,
            outlier: OutlierPolicy::default(),
            max_requests_per_endpoint: None,
            max_connections_per_endpoint: None,
            endpoints,
            internal: set.clone(),
            external: set,
            external_local: false,
            state: Arc::default(),
            inputs: 0,
        }
    }

    pub fn endpoints_for(&self, scope: TrafficScope) -> &EndpointSet {
        match scope {
            TrafficScope::Internal => &self.internal,
            TrafficScope::External => &self.external,
        }
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    pub fn empty(when_empty: WhenEmpty) -> Self {
        Self {
            endpoints: Arc::new([]),
            when_empty,
        }
    }
}

// === impl ServicePortState ===

impl ServicePortState {
    /// The ClientIP affinity table, created on first use.
    pub fn affinity(&self) -> &papaya::HashMap<IpAddr, AffinityEntry> {
        self.affinity.get_or_init(papaya::HashMap::new)
    }
}

// === impl BalancePolicy ===

impl BalancePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            BalancePolicy::Random => "random",
            BalancePolicy::RoundRobin => "round-robin",
            BalancePolicy::LeastConnections => "least-connections",
            BalancePolicy::PeakEwma => "ewma",
        }
    }
}

// === impl Timeouts ===

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            idle: Duration::from_secs(3600),
            eject_base: Duration::from_secs(1),
            eject_max: Duration::from_secs(30),
            udp_idle: Duration::from_secs(30),
        }
    }
}
