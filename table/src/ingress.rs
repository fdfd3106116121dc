//! The compiled Ingress routing table: hosts (exact and single-label wildcard) → paths (Exact and
//! Prefix) → backends, normalised once at compile time so a request is routed with a few map
//! lookups and one scan of the host's prefixes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::histogram::{HTTP_BUCKETS, Histogram};
use crate::{
    BasicAuth, RoutePolicy, RouteState, ServiceKey, ServicePortTable, TlsCertificate, UpstreamTls,
};

/// Every Ingress route of one snapshot.
#[derive(Debug, Default)]
pub struct IngressTable {
    /// `(namespace, name)` of every Kubernetes Ingress of Capstan's classes (the ones whose
    /// status Capstan may publish), sorted.
    pub served: Vec<(Arc<str>, Arc<str>)>,
    /// Exact hosts, lowercase.
    pub hosts: HashMap<Box<str>, HostRoutes>,
    /// `*.example.com` rules, keyed by `example.com` (lowercase).
    pub wildcards: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host: every request whose host matched nothing above.
    pub any_host: HostRoutes,
    /// `spec.defaultBackend`: requests no path matched.
    pub default_backend: Option<Arc<Route>>,
    /// Hosts named in `spec.tls` (lowercase), with their certificate; `None` when the Secret is
    /// missing or unusable (the default certificate is served). Plain HTTP requests for these
    /// hosts are redirected to https.
    pub tls_hosts: HashMap<Box<str>, Option<TlsCertificate>>,
    /// `*.example.com` TLS hosts, keyed by `example.com`.
    pub tls_wildcards: HashMap<Box<str>, Option<TlsCertificate>>,
    /// Served for an unknown or absent SNI name (`--default-certificate`); the ingress plane falls
    /// back to its own self-signed certificate when this is `None`.
    pub default_certificate: Option<TlsCertificate>,
}

/// The paths of one host, merged across every Ingress that names it.
#[derive(Debug, Default)]
pub struct HostRoutes {
    /// `pathType: Exact`, by the exact path.
    pub exact: HashMap<Box<str>, Arc<Route>>,
    /// `pathType: Prefix` (and ImplementationSpecific), by the path without its trailing slashes
    /// (`/` becomes the empty string), longest first.
    pub prefixes: Vec<(Box<str>, Arc<Route>)>,
}

/// How a rule's path matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathType {
    Exact,
    /// Element-wise prefix on `/`-separated segments; a trailing slash is ignored.
    Prefix,
}

/// Where a matched request goes.
#[derive(Clone, Debug)]
pub struct Route {
    /// `namespace/name` of the Ingress that declared it (for logs and metrics).
    pub ingress: Arc<str>,
    /// The rule's host as written (`*` for none) and path (empty for the default backend): the
    /// route's identity in metrics.
    pub host: Arc<str>,
    pub path: Arc<str>,
    pub backend: Backend,
    /// The backend's Service port in this snapshot, with its endpoints; `None` when the Service
    /// or the port does not exist (503).
    pub upstream: Option<Arc<ServicePortTable>>,
    /// The HTTP version spoken to the endpoints: the route's `backend-protocol`, else the Service
    /// port's `appProtocol`.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (`backend-protocol: HTTPS` or `GRPCS`); `None`: cleartext.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Basic authentication in force; `None`: none asked.
    pub basic_auth: Option<Arc<BasicAuth>>,
    /// A setting of the route could not be put in force (a missing TLS or basic-auth Secret, a
    /// Secret without `ca.crt`): the route answers 503 rather than serve without it. The reason
    /// is among the snapshot's problems.
    pub unusable: bool,
    /// Retries, rate limits and request limits (the declaring Ingress's annotations).
    pub policy: Arc<RoutePolicy>,
    /// Counters carried over by `compile` from the previous snapshot's route with the same
    /// ingress, host and path.
    pub stats: Arc<RouteStats>,
    /// Rate limiter and retry budget state, carried over like `stats`.
    pub state: Arc<RouteState>,
}

/// The HTTP version spoken to a backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (what ingress-nginx speaks to every backend).
    #[default]
    Http1,
    /// HTTP/2: with prior knowledge in cleartext (`appProtocol: kubernetes.io/h2c`,
    /// `backend-protocol: GRPC`), or by ALPN `h2` over TLS (`backend-protocol: GRPCS`).
    Http2,
}

/// Per-route traffic counters, exported on `/metrics`.
#[derive(Debug)]
pub struct RouteStats {
    /// Responses by status class: 1xx, 2xx, 3xx, 4xx, 5xx.
    pub responses: [AtomicU64; 5],
    /// From the request's arrival to the end of the response body.
    pub duration: Histogram<{ HTTP_BUCKETS.len() }>,
    pub bytes_from_client: AtomicU64,
    pub bytes_to_client: AtomicU64,
    /// Requests answered 502 (connect or protocol errors) and 504 (timeouts) by Capstan.
    pub upstream_errors: AtomicU64,
    pub upstream_timeouts: AtomicU64,
    /// Requests answered 503 because no endpoint was eligible.
    pub no_endpoints: AtomicU64,
}

/// An Ingress backend: a Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    Service {
        service: ServiceKey,
        port: BackendPort,
    },
}

/// `service.port`: by number or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendPort {
    Number(u16),
    Name(Arc<str>),
}

/// A rule could not be added as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteConflict {
    /// The same host, path and type already route elsewhere: the first one added is kept.
    Duplicate { existing: Arc<str> },
}

// === impl IngressTable ===

impl IngressTable {
    /// The routes of `host` as written in a rule: `None` for no host, `*.suffix` for a wildcard.
    pub fn host_mut(&mut self, host: Option<&str>) -> &mut HostRoutes {
        match host.map(|h| h.trim_end_matches('.').to_ascii_lowercase()) {
            None => &mut self.any_host,
            Some(host) => match host.strip_prefix("*.") {
                Some(suffix) => self.wildcards.entry(suffix.into()).or_default(),
                None => self.hosts.entry(host.into()).or_default(),
            },
        }
    }

    /// The `spec.tls` entry covering `host` (lowercase, no port): exact, then a one-label wildcard.
    pub fn tls_for(&self, host: &str) -> Option<&Option<TlsCertificate>> {
        self.tls_hosts.get(host).or_else(|| {
            let (_, parent) = host.split_once('.')?;
            self.tls_wildcards.get(parent)
        })
    }

    /// Every route of the table, the default backend included.
    pub fn routes(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.hosts
            .values()
            .chain(self.wildcards.values())
            .chain(std::iter::once(&self.any_host))
            .flat_map(|h| h.exact.values().chain(h.prefixes.iter().map(|(_, r)| r)))
            .chain(self.default_backend.iter())
    }

    /// Sorts every host's prefixes longest first; call once after adding every rule.
    pub fn finish(&mut self) {
        let all = self
            .hosts
            .values_mut()
            .chain(self.wildcards.values_mut())
            .chain(std::iter::once(&mut self.any_host));
        for routes in all {
            routes
                .prefixes
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        }
    }
}

// === impl HostRoutes ===

impl HostRoutes {
    /// Adds one path. A path already routed by an earlier rule keeps its first route (the order
    /// `compile` adds Ingresses in: by namespace and name).
    pub fn add(
        &mut self,
        path: &str,
        path_type: PathType,
        route: Arc<Route>,
    ) -> Result<(), RouteConflict> {
        match path_type {
            PathType::Exact => match self.exact.get(path) {
                Some(existing) => Err(RouteConflict::Duplicate {
                    existing: existing.ingress.clone(),
                }),
                None => {
                    self.exact.insert(path.into(), route);
                    Ok(())
                }
            },
            PathType::Prefix => {
                let prefix = path.trim_end_matches('/');
                match self.prefixes.iter().find(|(p, _)| &**p == prefix) {
                    Some((_, existing)) => Err(RouteConflict::Duplicate {
                        existing: existing.ingress.clone(),
                    }),
                    None => {
                        self.prefixes.push((prefix.into(), route));
                        Ok(())
                    }
                }
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.prefixes.is_empty()
    }
}

// === impl RouteStats ===

impl Default for RouteStats {
    fn default() -> Self {
        Self {
            responses: Default::default(),
            duration: Histogram::new(&HTTP_BUCKETS),
            bytes_from_client: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            upstream_errors: AtomicU64::new(0),
            upstream_timeouts: AtomicU64::new(0),
            no_endpoints: AtomicU64::new(0),
        }
    }
}

impl RouteStats {
    /// Counts one response by its status class.
    pub fn record_status(&self, status: u16) {
        self.responses[status_class(status)].fetch_add(1, Ordering::Relaxed);
    }
}

/// Metric labels of the status classes, in the order of [`status_class`].
pub const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`] (out-of-range codes clamp to 1xx/5xx).
pub fn status_class(status: u16) -> usize {
    usize::from(status / 100).clamp(1, 5) - 1
}
