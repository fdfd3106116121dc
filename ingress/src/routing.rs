//! Ingress v1 request routing, pure: a `Host` header and a path in, the route (or the default
//! backend, or nothing: 404) out.
//!
//! Hosts: an exact host rule wins over a `*.suffix` wildcard (which matches exactly one more
//! label), which wins over rules without a host. Paths within the chosen host: an Exact match wins
//! (it is as long as the request path), then the longest element-wise Prefix match. A host whose
//! paths do not match goes to the default backend, as ingress-nginx's server blocks do.

use std::borrow::Cow;

use std::sync::Arc;

use capstan_table::{HostRoutes, IngressTable, Route};

/// The outcome of routing one request.
#[derive(Debug)]
pub enum Routed<'t> {
    Route(&'t Arc<Route>),
    /// No rule matched: `spec.defaultBackend`.
    Default(&'t Arc<Route>),
    NotFound,
}

/// Routes a request for `host` (a `Host` header or `:authority`, port allowed) and `path` (no
/// query string).
pub fn route<'t>(table: &'t IngressTable, host: &str, path: &str) -> Routed<'t> {
    route_host(table, &normalize_host(host), path)
}

/// [`route`] for a host already passed through [`normalize_host`].
pub fn route_host<'t>(table: &'t IngressTable, host: &str, path: &str) -> Routed<'t> {
    let routes = table
        .hosts
        .get(host)
        .or_else(|| {
            let (_, parent) = host.split_once('.')?;
            table.wildcards.get(parent)
        })
        .unwrap_or(&table.any_host);
    match match_path(routes, path) {
        Some(route) => Routed::Route(route),
        None => match &table.default_backend {
            Some(route) => Routed::Default(route),
            None => Routed::NotFound,
        },
    }
}

/// The path's route within one host.
pub fn match_path<'t>(routes: &'t HostRoutes, path: &str) -> Option<&'t Arc<Route>> {
    if let Some(route) = routes.exact.get(path) {
        return Some(route);
    }
    routes
        .prefixes
        .iter()
        .find(|(prefix, _)| prefix_matches(prefix, path))
        .map(|(_, route)| route)
}

/// Element-wise prefix: `prefix` (trailing slashes already removed) matches `path` when they are
/// equal or `path` continues with `/` right after it. The empty prefix (`/`) matches every path.
pub(crate) fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// Lowercase, without a port or a trailing dot. `[v6]:port` loses its brackets.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let without_port = if host.starts_with('[') {
        host.split_once(']')
            .map_or(host, |(v6, _)| v6)
            .trim_start_matches('[')
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = without_port.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

#[cfg(test)]
mod tests;
