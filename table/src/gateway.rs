//! The compiled Gateway API tables: the sockets Gateway listeners are served on, each listener's
//! HTTPRoute rules by hostname in the spec's precedence order, and the status of every Gateway API
//! object as the conformance suite reads it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use crate::{Route, TlsCertificate};

/// Every programmed Gateway listener of one snapshot, and the status of every object.
#[derive(Debug, Default)]
pub struct GatewayTable {
    /// The sockets to listen on, by local address (`0.0.0.0` / `::` when a Gateway is served on
    /// every node address).
    pub sockets: BTreeMap<SocketAddr, GatewaySocket>,
    /// GatewayClasses, Gateways and routes of Capstan's controller, with their conditions.
    pub status: Vec<ObjectStatus>,
}

/// The listeners that share one socket: one Gateway's listeners on one port (several Gateways
/// only when their addresses coincide).
#[derive(Debug, Default)]
pub struct GatewaySocket {
    /// `HTTPS` (TLS terminated here) or `HTTP`.
    pub tls: bool,
    /// Most specific hostname first: exact, then wildcards longest first, then none.
    pub listeners: Vec<Arc<GatewayListener>>,
}

/// One programmed `Gateway.spec.listeners[]` entry.
#[derive(Debug)]
pub struct GatewayListener {
    /// `namespace/name` of the Gateway.
    pub gateway: Arc<str>,
    pub name: Arc<str>,
    /// The listener's `port` (the socket's, unless the socket was remapped).
    pub port: u16,
    /// Lowercase; `*.example.com` matches any name under `example.com`.
    pub hostname: Option<Box<str>>,
    /// The first usable `certificateRefs` Secret (HTTPS).
    pub certificate: Option<TlsCertificate>,
    pub routes: HostRules,
}

/// Route rules by request hostname, each list in precedence order.
#[derive(Debug, Default)]
pub struct HostRules {
    pub exact: HashMap<Box<str>, Vec<HttpRule>>,
    /// `*.example.com` as `.example.com`, longest first.
    pub wildcards: Vec<(Box<str>, Vec<HttpRule>)>,
    /// Routes without hostnames on a listener without one.
    pub any: Vec<HttpRule>,
}

/// One `matches[]` entry of one rule, with the rule's action.
#[derive(Debug, Clone)]
pub struct HttpRule {
    pub matches: HttpMatch,
    pub action: Arc<HttpAction>,
}

/// `HTTPRouteMatch`: every condition must hold.
#[derive(Debug, Clone)]
pub struct HttpMatch {
    pub path: PathMatch,
    pub method: Option<Method>,
    /// Names lowercase.
    pub headers: Vec<(HeaderName, ValueMatch)>,
    /// Names exact (query parameter names are case-sensitive).
    pub query: Vec<(Box<str>, ValueMatch)>,
}

/// `HTTPPathMatch`.
#[derive(Debug, Clone)]
pub enum PathMatch {
    Exact(Box<str>),
    /// Element-wise, trailing slash removed (`/` is the empty prefix).
    Prefix(Box<str>),
    /// Anchored to the whole path.
    Regex(Regex),
}

/// A header or query value match.
#[derive(Debug, Clone)]
pub enum ValueMatch {
    Exact(Box<str>),
    /// Anchored to the whole value.
    Regex(Regex),
}

/// What a matched rule does: filters, then a backend (or a redirect).
#[derive(Debug, Default)]
pub struct HttpAction {
    /// `namespace/name` of the HTTPRoute and the rule's index: identity in logs and metrics.
    pub route: Arc<str>,
    pub rule: usize,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<Rewrite>,
    /// Weighted backends; empty with no redirect: 500 (no backend).
    pub backends: Vec<WeightedBackend>,
    /// Sum of the weights.
    pub total_weight: u32,
    /// `timeouts.request`: the whole request, response headers included.
    pub request_timeout: Option<Duration>,
    /// `timeouts.backendRequest`: one attempt at a backend.
    pub backend_timeout: Option<Duration>,
    /// `RequestMirror` filters: copies of the request, answers ignored.
    pub mirrors: Vec<Mirror>,
    /// The rule is a GRPCRoute's (its matches are method matches). Informational: whether
    /// Capstan's own answers are gRPC statuses is decided per request, by its content type.
    pub grpc: bool,
}

/// One `RequestMirror` filter.
#[derive(Debug, Clone)]
pub struct Mirror {
    /// `None`: the backend could not be resolved (nothing is mirrored; the route's
    /// `ResolvedRefs` says why).
    pub route: Option<Arc<Route>>,
    /// Mirrored when a uniform draw below `denominator` is under `numerator`.
    pub numerator: u32,
    pub denominator: u32,
}

/// The HTTPRoute filters an Ingress route can carry (`capstan.dev/*` migration annotations).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteFilters {
    /// ingress-nginx `rewrite-target` (prefix form) / `capstan.dev/rewrite-full-path`.
    pub rewrite: Option<PathModifier>,
    /// ingress-nginx `permanent-redirect` / `temporal-redirect`: status and the whole
    /// `Location`.
    pub redirect: Option<(u16, Box<str>)>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub add: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

/// `RequestRedirect`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Option<Box<str>>,
    pub hostname: Option<Box<str>>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301, 302 (the default), 303, 307 or 308.
    pub status: u16,
}

/// `URLRewrite`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    pub hostname: Option<HeaderValue>,
    pub path: Option<PathModifier>,
}

/// `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathModifier {
    ReplaceFullPath(Box<str>),
    /// Replaces the matched `PathPrefix` (only valid with one).
    ReplacePrefixMatch(Box<str>),
}

/// One `backendRefs[]` entry.
#[derive(Debug, Clone)]
pub struct WeightedBackend {
    pub weight: u32,
    /// `None`: the reference is invalid (missing Service, not permitted, unknown kind): the
    /// requests it would get are answered 500, as the spec requires.
    pub route: Option<Arc<Route>>,
    /// The backendRef's own `RequestHeaderModifier` / `ResponseHeaderModifier`.
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
}

/// One Gateway API object's status, as Capstan computes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectStatus {
    /// `GatewayClass`, `Gateway`, `HTTPRoute`, `GRPCRoute`.
    pub kind: &'static str,
    /// Empty for cluster-scoped kinds.
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `metadata.generation` the status describes.
    pub generation: i64,
    pub conditions: Vec<Condition>,
    /// Gateways: `status.addresses`.
    pub addresses: Vec<IpAddr>,
    /// Gateways: `status.listeners`.
    pub listeners: Vec<ListenerStatus>,
    /// Routes: `status.parents`.
    pub parents: Vec<ParentStatus>,
}

/// A `metav1.Condition` without its timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    pub kind: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

/// `ListenerStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub name: Arc<str>,
    /// `(group, kind)`: kinds the listener accepts.
    pub supported_kinds: Vec<&'static str>,
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

/// `RouteParentStatus`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParentStatus {
    pub gateway_namespace: Arc<str>,
    pub gateway_name: Arc<str>,
    pub section_name: Option<Arc<str>>,
    pub port: Option<u16>,
    pub conditions: Vec<Condition>,
}

// === impl GatewayTable ===

impl GatewayTable {
    /// Every backend route of every listener (for counters and the admin endpoint).
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.sockets
            .values()
            .flat_map(|socket| socket.listeners.iter())
            .flat_map(|listener| listener.routes.all())
            .flat_map(|rule| {
                let backends = rule.action.backends.iter().map(|b| &b.route);
                backends.chain(rule.action.mirrors.iter().map(|m| &m.route))
            })
            .filter_map(Option::as_ref)
    }

    /// The status of one object.
    pub fn status_of(&self, kind: &str, namespace: &str, name: &str) -> Option<&ObjectStatus> {
        self.status
            .iter()
            .find(|s| s.kind == kind && &*s.namespace == namespace && &*s.name == name)
    }
}

// === impl HostRules ===

impl HostRules {
    /// Every rule, each host's list in turn.
    pub fn all(&self) -> impl Iterator<Item = &HttpRule> {
        self.exact
            .values()
            .chain(self.wildcards.iter().map(|(_, rules)| rules))
            .chain(std::iter::once(&self.any))
            .flatten()
    }

    /// The rules for a request `host` (lowercase, no port): the exact name, else the longest
    /// wildcard it falls under, else the hostless rules.
    pub fn for_host(&self, host: &str) -> &[HttpRule] {
        if let Some(rules) = self.exact.get(host) {
            return rules;
        }
        self.wildcards
            .iter()
            .find(|(suffix, _)| host.len() > suffix.len() && host.ends_with(&**suffix))
            .map_or(&self.any, |(_, rules)| rules)
    }
}

// === impl Condition ===

impl Condition {
    pub fn new(kind: &'static str, status: bool, reason: &'static str, message: String) -> Self {
        Self {
            kind,
            status,
            reason,
            message,
        }
    }
}

/// Whether `host` (lowercase, no port) falls under the Gateway API `hostname` (exact, or
/// `*.suffix`: any name with at least one more label).
pub fn hostname_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => pattern == host,
    }
}
