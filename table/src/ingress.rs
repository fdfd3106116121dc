//! The compiled Ingress routing table: hosts (exact and single-label wildcard) → paths (Exact and
//! Prefix) → backends, normalised once at compile time so a request is routed with a few map
//! lookups and one scan of the host's prefixes.

use std::collections::HashMap;
use std::sync::Arc;

use crate::{ServiceKey, ServicePortTable};

/// Every Ingress route of one snapshot.
#[derive(Debug, Default)]
pub struct IngressTable {
    /// Exact hosts, lowercase.
    pub hosts: HashMap<Box<str>, HostRoutes>,
    /// `*.example.com` rules, keyed by `example.com` (lowercase).
    pub wildcards: HashMap<Box<str>, HostRoutes>,
    /// Rules without a host: every request whose host matched nothing above.
    pub any_host: HostRoutes,
    /// `spec.defaultBackend`: requests no path matched.
    pub default_backend: Option<Arc<Route>>,
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
    pub backend: Backend,
    /// The backend's Service port in this snapshot, with its endpoints; `None` when the Service
    /// or the port does not exist (503).
    pub upstream: Option<Arc<ServicePortTable>>,
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
