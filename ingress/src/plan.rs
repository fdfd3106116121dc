//! The plan step, pure: a request head and the snapshot in, what to do with the request out —
//! [`Plan::Forward`] to a backend with the rule's edits, [`Plan::Redirect`], or [`Plan::Reply`]
//! with a [`Fault`]. Gateway API listeners are planned here from match to backend choice
//! (HTTPRoute precedence, filters, weights); Ingress v1 routes are planned by [`crate::routing`]
//! and reach the same three outcomes in `forward`. Nothing here touches a socket.

use std::borrow::Cow;
use std::sync::Arc;

use capstan_table::{
    GatewaySocket, HeaderEdits, HttpAction, HttpMatch, HttpRule, IngressTable, PathMatch,
    PathModifier, Redirect, Route, ValueMatch, hostname_matches,
};
use http::{HeaderMap, HeaderValue, Method, StatusCode};

/// What the request needs from its head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestHead<'a> {
    pub method: &'a Method,
    /// Lowercase, no port.
    pub host: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The connection is TLS (for redirects that keep the scheme).
    pub tls: bool,
}

/// The outcome of the plan step.
#[derive(Debug)]
pub(crate) enum Plan {
    Forward(Forward),
    Redirect {
        status: StatusCode,
        location: String,
    },
    /// With the route when one matched (its counters record the fault).
    Reply(Fault, Option<Arc<Route>>),
}

/// A request on its way to a backend, with the edits its rule makes.
#[derive(Debug)]
pub(crate) struct Forward {
    pub route: Arc<Route>,
    /// The Gateway API rule and the backend chosen (its index in the rule); `None` for Ingress.
    pub gateway: Option<(Arc<HttpAction>, usize)>,
    /// The new path and query (`URLRewrite`).
    pub path: Option<String>,
    /// The new `Host` (`URLRewrite`).
    pub host: Option<HeaderValue>,
}

/// Every answer Capstan gives instead of forwarding, with its status and whose fault it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    MissingHost,
    InvalidHost,
    /// No snapshot yet.
    NotLoaded,
    /// No listener hostname, host or rule matched.
    NoRoute,
    /// The route's TLS or authentication Secret is unusable (Ingress).
    RouteUnusable,
    /// The backend Service or port does not exist (Ingress).
    NoService,
    /// The backend reference is invalid, the rule has no backend, or every weight is 0: 500, as
    /// the Gateway API requires (`HTTPBackendRef` docs).
    InvalidBackend,
    /// No ready endpoint: 503 (kube-proxy rejects such connections).
    NoEndpoints,
}

/// Who has to act for a fault to go away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    Client,
    Configuration,
    Backend,
}

/// Every fault, in metric order.
pub const FAULTS: [Fault; 8] = [
    Fault::MissingHost,
    Fault::InvalidHost,
    Fault::NotLoaded,
    Fault::NoRoute,
    Fault::RouteUnusable,
    Fault::NoService,
    Fault::InvalidBackend,
    Fault::NoEndpoints,
];

// === impl Fault ===

impl Fault {
    pub fn status(self) -> StatusCode {
        match self {
            Fault::MissingHost | Fault::InvalidHost => StatusCode::BAD_REQUEST,
            Fault::NoRoute => StatusCode::NOT_FOUND,
            Fault::InvalidBackend => StatusCode::INTERNAL_SERVER_ERROR,
            Fault::NotLoaded | Fault::RouteUnusable | Fault::NoService | Fault::NoEndpoints => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    pub fn text(self) -> &'static str {
        match self {
            Fault::MissingHost => "missing Host header\n",
            Fault::InvalidHost => "invalid Host header\n",
            Fault::NotLoaded => "no configuration loaded yet\n",
            Fault::NoRoute => "no route\n",
            Fault::RouteUnusable => "route settings unusable: a Secret is missing or incomplete\n",
            Fault::NoService => "backend service not found\n",
            Fault::InvalidBackend => "no valid backend for this route\n",
            Fault::NoEndpoints => "no ready endpoints\n",
        }
    }

    pub fn blame(self) -> Blame {
        match self {
            Fault::MissingHost | Fault::InvalidHost | Fault::NoRoute => Blame::Client,
            Fault::NotLoaded | Fault::RouteUnusable | Fault::NoService | Fault::InvalidBackend => {
                Blame::Configuration
            }
            Fault::NoEndpoints => Blame::Backend,
        }
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::MissingHost => "missing_host",
            Fault::InvalidHost => "invalid_host",
            Fault::NotLoaded => "not_loaded",
            Fault::NoRoute => "no_route",
            Fault::RouteUnusable => "route_unusable",
            Fault::NoService => "no_service",
            Fault::InvalidBackend => "invalid_backend",
            Fault::NoEndpoints => "no_endpoints",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl Blame {
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Configuration => "configuration",
            Blame::Backend => "backend",
        }
    }
}

/// ACME HTTP-01 challenges must reach their solver over plain HTTP (ingress-nginx exempts them
/// from the https redirect too).
const ACME_CHALLENGE: &str = "/.well-known/acme-challenge/";

/// Plans a request that arrived on an Ingress listener: the https redirect (308) for a `spec.tls`
/// host over plain HTTP (`https_port`: the TLS listener's), else the Ingress v1 route
/// ([`crate::routing`]) or the default backend, else 404; 503 for a route whose Secrets are
/// unusable, whose Service port is missing, or with no ready endpoint. `authority` is the
/// request's host as sent and `target` its path and query, for the redirect.
pub(crate) fn plan_ingress(
    table: &IngressTable,
    head: &RequestHead<'_>,
    https_port: Option<u16>,
    authority: &str,
    target: &str,
) -> Plan {
    if !head.tls
        && let Some(https_port) = https_port
        && table.tls_for(head.host).is_some()
        && !head.path.starts_with(ACME_CHALLENGE)
    {
        let location = https_location(authority, https_port, target);
        return Plan::Redirect {
            status: StatusCode::PERMANENT_REDIRECT,
            location,
        };
    }
    let route = match crate::routing::route_host(table, head.host, head.path) {
        crate::Routed::Route(route) | crate::Routed::Default(route) => route.clone(),
        crate::Routed::NotFound => return Plan::Reply(Fault::NoRoute, None),
    };
    if !route.unusable
        && let Some((status, location)) = &route.policy.filters.redirect
    {
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::MOVED_PERMANENTLY);
        let location = location.to_string();
        return Plan::Redirect { status, location };
    }
    let fault = match &route.upstream {
        _ if route.unusable => Some(Fault::RouteUnusable),
        None => Some(Fault::NoService),
        Some(upstream) if upstream.internal.endpoints.is_empty() => Some(Fault::NoEndpoints),
        Some(_) => None,
    };
    match fault {
        Some(fault) => Plan::Reply(fault, Some(route)),
        None => {
            // `capstan.dev/rewrite-target`: the rule's path is the prefix replaced.
            let path = route.policy.filters.rewrite.as_ref().map(|modifier| {
                let prefix = route.path.trim_end_matches('/');
                with_query(&rewritten(modifier, prefix, head.path), head.query)
            });
            Plan::Forward(Forward {
                route,
                gateway: None,
                path,
                host: None,
            })
        }
    }
}

/// The https URL of the same host (its port dropped) and target.
pub(crate) fn https_location(authority: &str, https_port: u16, target: &str) -> String {
    let name = match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    };
    if https_port == 443 {
        format!("https://{name}{target}")
    } else {
        format!("https://{name}:{https_port}{target}")
    }
}

/// Plans a request that arrived on a Gateway socket. `pick` is uniform in `u32` (the weighted
/// backend choice).
pub(crate) fn plan_gateway(socket: &GatewaySocket, head: &RequestHead<'_>, pick: u32) -> Plan {
    let listener = socket.listeners.iter().find(|l| {
        l.hostname
            .as_deref()
            .is_none_or(|h| hostname_matches(h, head.host))
    });
    let Some(listener) = listener else {
        return Plan::Reply(Fault::NoRoute, None);
    };
    let rules = listener.routes.for_host(head.host);
    let Some(rule) = rules.iter().find(|rule| matches(&rule.matches, head)) else {
        return Plan::Reply(Fault::NoRoute, None);
    };
    let action = &rule.action;
    if let Some(redirect) = &action.redirect {
        let location = redirect_location(redirect, rule, head, listener.port);
        let status = StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::FOUND);
        return Plan::Redirect { status, location };
    }
    let Some(index) = choose_backend(action, pick) else {
        return Plan::Reply(Fault::InvalidBackend, None);
    };
    let Some(route) = &action.backends[index].route else {
        return Plan::Reply(Fault::InvalidBackend, None);
    };
    match &route.upstream {
        None => return Plan::Reply(Fault::NoService, Some(route.clone())),
        Some(upstream) if upstream.internal.endpoints.is_empty() => {
            return Plan::Reply(Fault::NoEndpoints, Some(route.clone()));
        }
        Some(_) => {}
    }
    let rewrite = action.rewrite.as_ref();
    let path = rewrite
        .and_then(|r| r.path.as_ref())
        .map(|modifier| with_query(&modified_path(modifier, rule, head.path), head.query));
    Plan::Forward(Forward {
        route: route.clone(),
        gateway: Some((action.clone(), index)),
        path,
        host: rewrite.and_then(|r| r.hostname.clone()),
    })
}

/// Whether every condition of `m` holds for the request.
pub(crate) fn matches(m: &HttpMatch, head: &RequestHead<'_>) -> bool {
    let path_ok = match &m.path {
        PathMatch::Exact(p) => head.path == &**p,
        PathMatch::Prefix(p) => crate::routing::prefix_matches(p, head.path),
        PathMatch::Regex(re) => re.is_match(head.path),
    };
    path_ok
        && m.method.as_ref().is_none_or(|method| method == head.method)
        && m.headers.iter().all(|(name, want)| {
            head.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| value_matches(want, v))
        })
        && m.query.iter().all(|(name, want)| {
            query_param(head.query, name).is_some_and(|v| value_matches(want, &v))
        })
}

fn value_matches(want: &ValueMatch, value: &str) -> bool {
    match want {
        ValueMatch::Exact(exact) => value == &**exact,
        ValueMatch::Regex(re) => re.is_match(value),
    }
}

/// The first value of query parameter `name`, percent-decoded.
pub(crate) fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<Cow<'q, str>> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains(['%', '+']) {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The backend for uniform `pick`: each in proportion to its weight; `None` when every
/// weight is 0 or there is no backend.
pub(crate) fn choose_backend(action: &HttpAction, pick: u32) -> Option<usize> {
    if action.total_weight == 0 {
        return None;
    }
    let mut at = (u64::from(pick) * u64::from(action.total_weight)) >> 32;
    for (index, backend) in action.backends.iter().enumerate() {
        let weight = u64::from(backend.weight);
        if at < weight {
            return Some(index);
        }
        at -= weight;
    }
    None
}

/// The request's path after a `ReplaceFullPath` or `ReplacePrefixMatch` (the table in the
/// `HTTPPathModifier` docs: `/foo/bar` with prefix `/foo` and `/xyz` or `/xyz/` gives
/// `/xyz/bar`; with an empty replacement, `/bar`; the result is never empty).
pub(crate) fn modified_path(modifier: &PathModifier, rule: &HttpRule, path: &str) -> String {
    match &rule.matches.path {
        PathMatch::Prefix(prefix) => rewritten(modifier, prefix, path),
        _ => rewritten(modifier, path, path),
    }
}

/// [`modified_path`] for a matched `prefix` (trailing slash removed).
fn rewritten(modifier: &PathModifier, prefix: &str, path: &str) -> String {
    let replaced = match modifier {
        PathModifier::ReplaceFullPath(full) => return absolute(full),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let rest = path.get(prefix.len()..).unwrap_or_default();
            format!("{}{rest}", replacement.trim_end_matches('/'))
        }
    };
    absolute(&replaced)
}

fn absolute(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    }
}

/// The `Location` of a `RequestRedirect` (`HTTPRequestRedirectFilter` docs): the port is the
/// filter's, else the scheme's well-known port when the filter sets a scheme, else the
/// listener's; it is left out when it is the scheme's default (80 for http, 443 for https).
pub(crate) fn redirect_location(
    redirect: &Redirect,
    rule: &HttpRule,
    head: &RequestHead<'_>,
    listener_port: u16,
) -> String {
    let scheme = redirect
        .scheme
        .as_deref()
        .unwrap_or(if head.tls { "https" } else { "http" });
    let host = redirect.hostname.as_deref().unwrap_or(head.host);
    let port = redirect.port.unwrap_or(match redirect.scheme.as_deref() {
        Some("http") => 80,
        Some("https") => 443,
        _ => listener_port,
    });
    let default_port = matches!((scheme, port), ("http", 80) | ("https", 443));
    let path = match &redirect.path {
        Some(modifier) => modified_path(modifier, rule, head.path),
        None => head.path.to_owned(),
    };
    let target = with_query(&path, head.query);
    if default_port {
        format!("{scheme}://{host}{target}")
    } else if host.contains(':') {
        format!("{scheme}://[{host}]:{port}{target}")
    } else {
        format!("{scheme}://{host}:{port}{target}")
    }
}

/// Applies `RequestHeaderModifier` / `ResponseHeaderModifier` edits: set replaces, add appends,
/// remove deletes.
pub(crate) fn apply_edits(edits: &HeaderEdits, headers: &mut HeaderMap) {
    for (name, value) in &edits.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &edits.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &edits.remove {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests;
