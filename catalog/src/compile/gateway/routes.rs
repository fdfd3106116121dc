//! HTTPRoutes and GRPCRoutes onto Gateway listeners: parentRefs resolved (sectionName, port,
//! `allowedRoutes`), hostnames intersected with the listener's, rules compiled (matches, filters,
//! mirrors, weighted backends through ReferenceGrants) and ordered by the spec's precedence
//! (`HTTPRouteRule` docs in `apis/v1/httproute_types.go`, `GRPCRouteRule` docs in
//! `grpcroute_types.go`), and each parent's `Accepted` / `ResolvedRefs` status.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;

use capstan_table::{
    BackendPort, Condition, GatewayTable, HeaderEdits, HttpAction, HttpMatch, HttpRule, Mirror,
    ObjectStatus, ParentStatus, PathMatch, Redirect, Rewrite, Route, RoutePolicy, RouteState,
    RouteStats, ServiceKey, UpstreamProtocol, ValueMatch, WeightedBackend,
};
use http::{HeaderName, HeaderValue, Method};
use regex::Regex;

use super::{
    GROUP, GatewayInputs, Grants, ListenerBuild, accepted, namespace_allowed, set_condition,
};
use crate::{
    Filter, HttpRoute, IngressBackend, Namespace, ObjectRef, PathSpec, RouteKind, RouteRule,
};

/// A previous backend route's counters and state, by identity.
type Carried<'a> = HashMap<(&'a str, &'a str, &'a str), (&'a Arc<RouteStats>, &'a Arc<RouteState>)>;

/// One compiled rule match with its precedence key.
struct Ranked {
    key: RankKey,
    rule: HttpRule,
}

/// A hostname (`None`: any) a listener serves, and the kind of route serving it.
type ServedHost = (RouteKind, Option<Box<str>>);

/// The rules placed so far, by listener and hostname, and the hostnames each listener serves
/// by route kind: an HTTPRoute and a GRPCRoute must not share one (the `hostnames` docs of
/// GRPCRouteSpec: the older route keeps it).
#[derive(Default)]
struct Placement {
    ranked: HashMap<(usize, Option<Box<str>>), Vec<Ranked>>,
    served: HashMap<usize, Vec<ServedHost>>,
}

/// Attaches every route to the listeners it may attach to; returns the routes' status.
pub(super) fn attach_routes(
    inputs: &GatewayInputs<'_>,
    listeners: &mut [ListenerBuild<'_>],
    grants: &Grants<'_>,
    namespaces: &HashMap<&str, &Namespace>,
    previous: Option<&GatewayTable>,
) -> Vec<ObjectStatus> {
    let carried: Carried<'_> = previous
        .into_iter()
        .flat_map(GatewayTable::routes)
        .map(|r| ((&*r.ingress, &*r.host, &*r.path), (&r.stats, &r.state)))
        .collect();
    let mut routes = inputs.routes.clone();
    routes.sort_by(|a, b| {
        (&a.created, &a.namespace, &a.name).cmp(&(&b.created, &b.namespace, &b.name))
    });
    let mut placement = Placement::default();
    let mut statuses = Vec::new();
    for route in routes {
        let compiled = compile_rules(route, inputs, grants, &carried);
        let parents: Vec<ParentStatus> = route
            .parents
            .iter()
            .filter_map(|parent| {
                let attach = (route, parent, &compiled);
                attach_parent(attach, listeners, namespaces, &mut placement)
            })
            .collect();
        if !parents.is_empty() {
            statuses.push(ObjectStatus {
                kind: route.kind.as_str(),
                namespace: route.namespace.clone(),
                name: route.name.clone(),
                generation: route.generation,
                conditions: vec![],
                addresses: vec![],
                listeners: vec![],
                parents,
            });
        }
    }
    placement.install(listeners);
    statuses
}

/// One parentRef of a route: the listeners of that Gateway it attaches to (its rules placed
/// there) and its parent status; `None` when the Gateway is not Capstan's.
fn attach_parent(
    (route, parent, compiled): (
        &HttpRoute,
        &crate::ParentRef,
        &Result<CompiledRules, String>,
    ),
    listeners: &mut [ListenerBuild<'_>],
    namespaces: &HashMap<&str, &Namespace>,
    placement: &mut Placement,
) -> Option<ParentStatus> {
    if parent.group != GROUP || parent.kind != "Gateway" {
        return None;
    }
    let gateway_namespace = parent.namespace.clone().unwrap_or(route.namespace.clone());
    let of_gateway: Vec<usize> = (0..listeners.len())
        .filter(|&i| {
            let g = listeners[i].gateway;
            g.namespace == gateway_namespace && g.name == parent.name
        })
        .collect();
    if of_gateway.is_empty() {
        return None; // Not a Gateway of Capstan's: not ours to report on.
    }
    let (mut accepted_on, mut condition) =
        match_listeners(route, parent, &of_gateway, listeners, namespaces);
    if condition.is_none() {
        accepted_on.retain(|(index, hostnames)| {
            !placement.taken_by_other_kind(route.kind, *index, hostnames)
        });
        if accepted_on.is_empty() {
            let message = "an older route of the other kind (HTTPRoute / GRPCRoute) \
                           serves these hostnames on the listener";
            condition = Some(accepted(false, "NotAllowedByListeners", message));
        }
    }
    let attached = match (compiled, condition) {
        (Err(message), None) => Err(accepted(false, "UnsupportedValue", message)),
        (_, Some(refused)) => Err(refused),
        (Ok(_), None) => Ok(()),
    };
    let mut conditions = vec![match &attached {
        Ok(()) => accepted(true, "Accepted", ""),
        Err(refused) => refused.clone(),
    }];
    let resolved = match compiled {
        Ok((_, Some(unresolved))) => unresolved.clone(),
        _ => Condition::new("ResolvedRefs", true, "ResolvedRefs", String::new()),
    };
    set_condition(&mut conditions, resolved);
    if let (Ok(()), Ok((rules, _))) = (&attached, compiled) {
        for (index, hostnames) in &accepted_on {
            listeners[*index].status.attached_routes += 1;
            placement.place(route.kind, *index, hostnames, rules);
        }
    }
    Some(ParentStatus {
        gateway_namespace,
        gateway_name: parent.name.clone(),
        section_name: parent.section_name.clone(),
        port: parent.port,
        conditions,
    })
}

// === impl Placement ===

impl Placement {
    /// Whether a route of the other kind already serves one of `hostnames` on the listener.
    fn taken_by_other_kind(
        &self,
        kind: RouteKind,
        index: usize,
        hostnames: &[Option<Box<str>>],
    ) -> bool {
        let taken = self.served.get(&index).into_iter().flatten();
        taken.into_iter().any(|(other_kind, other)| {
            *other_kind != kind
                && hostnames
                    .iter()
                    .any(|h| hostnames_meet(h.as_deref(), other.as_deref()))
        })
    }

    fn place(
        &mut self,
        kind: RouteKind,
        index: usize,
        hostnames: &[Option<Box<str>>],
        rules: &[(RankKey, HttpRule)],
    ) {
        let taken = self.served.entry(index).or_default();
        taken.extend(hostnames.iter().map(|h| (kind, h.clone())));
        for hostname in hostnames {
            let list = self.ranked.entry((index, hostname.clone())).or_default();
            list.extend(rules.iter().map(|(key, rule)| Ranked {
                key: *key,
                rule: rule.clone(),
            }));
        }
    }

    /// Puts each listener's rules in precedence order under their hostnames.
    fn install(self, listeners: &mut [ListenerBuild<'_>]) {
        for ((index, hostname), mut list) in self.ranked {
            // Stable: among equal keys, the older route, then the earlier rule and match, first.
            list.sort_by_key(|r| r.key);
            let rules = list.into_iter().map(|r| r.rule).collect();
            let routes = &mut listeners[index].routes;
            match hostname {
                None => routes.any = rules,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) => routes.wildcards.push((suffix.into(), rules)),
                    None => {
                        routes.exact.insert(h, rules);
                    }
                },
            }
        }
        for listener in listeners.iter_mut() {
            listener
                .routes
                .wildcards
                .sort_by_key(|(s, _)| Reverse(s.len()));
        }
    }
}

/// The listeners of one parentRef's Gateway that take the route, each with the hostnames the
/// route is served under there; or the `Accepted: False` condition saying why none does.
fn match_listeners(
    route: &HttpRoute,
    parent: &crate::ParentRef,
    of_gateway: &[usize],
    listeners: &[ListenerBuild<'_>],
    namespaces: &HashMap<&str, &Namespace>,
) -> (Vec<Attachment>, Option<Condition>) {
    let named: Vec<usize> = of_gateway
        .iter()
        .copied()
        .filter(|&i| {
            let spec = listeners[i].spec;
            parent.section_name.as_ref().is_none_or(|s| *s == spec.name)
                && parent.port.is_none_or(|p| p == spec.port)
        })
        .collect();
    if named.is_empty() {
        let message = "no listener has the parentRef's sectionName and port";
        return (vec![], Some(accepted(false, "NoMatchingParent", message)));
    }
    let allowed: Vec<usize> = named
        .into_iter()
        .filter(|&i| {
            let l = &listeners[i];
            l.status.supported_kinds.contains(&route.kind.as_str())
                && namespace_allowed(l.spec, l.gateway, &route.namespace, namespaces)
        })
        .collect();
    if allowed.is_empty() {
        let message = "the listeners' allowedRoutes do not admit this route";
        return (
            vec![],
            Some(accepted(false, "NotAllowedByListeners", message)),
        );
    }
    let on: Vec<Attachment> = allowed
        .into_iter()
        .filter_map(|i| {
            let hostnames = intersect(listeners[i].spec.hostname.as_deref(), &route.hostnames);
            (!hostnames.is_empty()).then_some((i, hostnames))
        })
        .collect();
    if on.is_empty() {
        let message = "no route hostname intersects a listener hostname";
        return (
            vec![],
            Some(accepted(false, "NoMatchingListenerHostname", message)),
        );
    }
    (on, None)
}

/// The hostnames a route is served under on a listener (`None`: any), per the `hostnames` field
/// docs of HTTPRouteSpec: the more specific of two intersecting names; none when disjoint.
pub(crate) fn intersect(listener: Option<&str>, route: &[String]) -> Vec<Option<Box<str>>> {
    let Some(listener) = listener else {
        if route.is_empty() {
            return vec![None];
        }
        return route.iter().map(|h| Some(h.as_str().into())).collect();
    };
    if route.is_empty() {
        return vec![Some(listener.into())];
    }
    let mut out: Vec<Option<Box<str>>> = Vec::new();
    for host in route {
        let chosen = if host == listener {
            Some(host.as_str())
        } else if capstan_table::hostname_matches(host, listener) {
            Some(listener) // route *.example.com, listener foo.example.com (or *.foo.example.com)
        } else if capstan_table::hostname_matches(listener, host) {
            Some(host.as_str())
        } else {
            None
        };
        if let Some(chosen) = chosen
            && !out.iter().any(|h| h.as_deref() == Some(chosen))
        {
            out.push(Some(chosen.into()));
        }
    }
    out
}

/// Whether two served hostnames (`None`: any) can name the same host.
fn hostnames_meet(a: Option<&str>, b: Option<&str>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => {
            a == b || capstan_table::hostname_matches(a, b) || capstan_table::hostname_matches(b, a)
        }
        _ => true,
    }
}

/// A listener (by index) a route attaches to, with the hostnames it is served under there
/// (`None`: any).
type Attachment = (usize, Vec<Option<Box<str>>>);

type CompiledRules = (Vec<(RankKey, HttpRule)>, Option<Condition>);
/// HTTPRoute: (path class, path length, 0, no method, headers, query parameters); GRPCRoute:
/// (3, service length, method length, true, headers, 0). Lower sorts first.
type RankKey = (
    u8,
    Reverse<usize>,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
);

/// Every rule's matches with their precedence keys, and the `ResolvedRefs: False` condition
/// when a backend could not be resolved; or why the route cannot be accepted.
fn compile_rules(
    route: &HttpRoute,
    inputs: &GatewayInputs<'_>,
    grants: &Grants<'_>,
    carried: &Carried<'_>,
) -> Result<CompiledRules, String> {
    let id: Arc<str> = format!("{}/{}", route.namespace, route.name).into();
    let host: Arc<str> = if route.hostnames.is_empty() {
        "*".into()
    } else {
        route.hostnames.join(",").into()
    };
    let mut out = Vec::new();
    let mut unresolved = None;
    for (index, rule) in route.rules.iter().enumerate() {
        let mut action = rule_action(rule, &id, index)?;
        action.grpc = route.kind == RouteKind::Grpc;
        let mut resolve =
            |target: &ObjectRef, port: Option<u16>, path: String| match resolve_backend(
                route, target, port, inputs, grants,
            ) {
                Ok(resolved) => Some(service_route(
                    (&id, &host, path.into()),
                    resolved,
                    rule,
                    carried,
                )),
                Err(condition) => {
                    unresolved.get_or_insert(condition);
                    None
                }
            };
        for (b, backend) in rule.backends.iter().enumerate() {
            let path = format!("rules[{index}].backendRefs[{b}]");
            let route = resolve(&backend.target, backend.port, path);
            let (request_headers, response_headers) = header_filters(&backend.filters)?;
            action.total_weight += backend.weight;
            action.backends.push(WeightedBackend {
                weight: backend.weight,
                route,
                request_headers,
                response_headers,
            });
        }
        for (f, filter) in rule.filters.iter().enumerate() {
            if let Filter::Mirror {
                backend,
                port,
                fraction: (numerator, denominator),
            } = filter
            {
                let path = format!("rules[{index}].filters[{f}].requestMirror");
                action.mirrors.push(Mirror {
                    route: resolve(backend, *port, path),
                    numerator: *numerator,
                    denominator: *denominator,
                });
            }
        }
        let action = Arc::new(action);
        for matched in &rule.matches {
            let (matches, key) = compile_match(matched)?;
            out.push((
                key,
                HttpRule {
                    matches,
                    action: action.clone(),
                },
            ));
        }
    }
    Ok((out, unresolved))
}

/// A backend (or mirror) of a rule as a route: `(route id, hostnames, path)` name it (and carry
/// its counters over from the previous snapshot); the rule's timeouts are its policy.
fn service_route(
    (id, host, path): (&Arc<str>, &Arc<str>, Arc<str>),
    (backend, upstream, protocol): ResolvedBackend,
    rule: &RouteRule,
    carried: &Carried<'_>,
) -> Arc<Route> {
    let previous = carried.get(&(&**id, &**host, &*path));
    let (stats, state) =
        previous.map_or_else(Default::default, |(s, t)| (Arc::clone(s), Arc::clone(t)));
    let mut policy = RoutePolicy::default();
    policy.retry.per_try_timeout = rule.backend_timeout;
    policy.request_timeout = rule.request_timeout;
    Arc::new(Route {
        ingress: id.clone(),
        host: host.clone(),
        path,
        backend: capstan_table::Backend::Service {
            service: backend.service,
            port: backend.port,
        },
        upstream,
        protocol,
        tls: None,
        basic_auth: None,
        unusable: false,
        policy: Arc::new(policy),
        stats,
        state,
    })
}

/// A backendRef resolved: the Service port, its table, the protocol to speak.
type ResolvedBackend = (
    IngressBackend,
    Option<Arc<capstan_table::ServicePortTable>>,
    capstan_table::UpstreamProtocol,
);

/// A rule's filters and timeouts.
fn rule_action(rule: &RouteRule, id: &Arc<str>, index: usize) -> Result<HttpAction, String> {
    let mut action = HttpAction {
        route: id.clone(),
        rule: index,
        request_timeout: rule.request_timeout,
        backend_timeout: rule.backend_timeout,
        ..HttpAction::default()
    };
    let (request, response) = header_filters(&rule.filters)?;
    action.request_headers = request;
    action.response_headers = response;
    for filter in &rule.filters {
        match filter {
            Filter::Redirect {
                scheme,
                hostname,
                port,
                path,
                status,
            } => {
                action.redirect = Some(Redirect {
                    scheme: scheme.as_deref().map(Into::into),
                    hostname: hostname.as_deref().map(Into::into),
                    port: *port,
                    path: path.clone(),
                    status: *status,
                });
            }
            Filter::Rewrite { hostname, path } => {
                let hostname = hostname
                    .as_deref()
                    .map(HeaderValue::from_str)
                    .transpose()
                    .map_err(|_| "URLRewrite hostname is not a valid Host value".to_owned())?;
                action.rewrite = Some(Rewrite {
                    hostname,
                    path: path.clone(),
                });
            }
            _ => {}
        }
    }
    Ok(action)
}

/// The request and response header edits of a filter list; an unsupported filter is an error.
fn header_filters(filters: &[Filter]) -> Result<(HeaderEdits, HeaderEdits), String> {
    let mut request = HeaderEdits::default();
    let mut response = HeaderEdits::default();
    for filter in filters {
        match filter {
            Filter::RequestHeaders(edits) => merge(&mut request, edits),
            Filter::ResponseHeaders(edits) => merge(&mut response, edits),
            Filter::Unsupported(kind) => {
                return Err(format!("filter {kind} is not supported"));
            }
            Filter::Redirect { .. } | Filter::Rewrite { .. } | Filter::Mirror { .. } => {}
        }
    }
    Ok((request, response))
}

fn merge(into: &mut HeaderEdits, edits: &HeaderEdits) {
    into.set.extend(edits.set.iter().cloned());
    into.add.extend(edits.add.iter().cloned());
    into.remove.extend(edits.remove.iter().cloned());
}

/// A match compiled, with its precedence: Exact path, then RegularExpression (implementation
/// specific: Capstan puts it between the two), then PathPrefix longest first; then a method;
/// then more header matches; then more query matches. A GRPCRoute method match: more
/// characters of service, then of method, then more header matches.
fn compile_match(matched: &crate::RouteMatch) -> Result<(HttpMatch, RankKey), String> {
    let anchored = |pattern: &str| {
        Regex::new(&format!("^(?:{pattern})$"))
            .map_err(|e| format!("invalid regular expression {pattern:?}: {e}"))
    };
    let (path, class, length, second) = match &matched.path {
        PathSpec::Exact(p) => (PathMatch::Exact(p.as_str().into()), 0, p.len(), 0),
        PathSpec::Regex(p) => (PathMatch::Regex(anchored(p)?), 1, p.len(), 0),
        PathSpec::Prefix(p) => {
            let prefix = p.trim_end_matches('/');
            (PathMatch::Prefix(prefix.into()), 2, prefix.len(), 0)
        }
        PathSpec::Grpc {
            service,
            method,
            regex,
        } => {
            let lengths = |s: &Option<String>| s.as_ref().map_or(0, String::len);
            let path = grpc_path(service.as_deref(), method.as_deref(), *regex, anchored)?;
            (path, 3, lengths(service), lengths(method))
        }
    };
    let value = |value: &str, regex: bool| -> Result<ValueMatch, String> {
        Ok(if regex {
            ValueMatch::Regex(anchored(value)?)
        } else {
            ValueMatch::Exact(value.into())
        })
    };
    let mut headers = Vec::new();
    for (name, v, regex) in &matched.headers {
        let name = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
            .map_err(|_| format!("invalid header name {name:?}"))?;
        headers.push((name, value(v, *regex)?));
    }
    let mut query = Vec::new();
    for (name, v, regex) in &matched.query {
        query.push((name.as_str().into(), value(v, *regex)?));
    }
    let method = matched
        .method
        .as_deref()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("invalid method {m:?}")))
        .transpose()?;
    let key = (
        class,
        Reverse(length),
        Reverse(second),
        method.is_none(),
        Reverse(headers.len()),
        Reverse(query.len()),
    );
    Ok((
        HttpMatch {
            path,
            method,
            headers,
            query,
        },
        key,
    ))
}

/// The request path a `GRPCMethodMatch` selects (`/service/method`): both exact, an exact
/// path; the service alone, its path prefix; otherwise a regular expression (`[^/]+` for the
/// missing half).
fn grpc_path(
    service: Option<&str>,
    method: Option<&str>,
    regex: bool,
    anchored: impl Fn(&str) -> Result<Regex, String>,
) -> Result<PathMatch, String> {
    Ok(match (service, method, regex) {
        (Some(s), Some(m), false) => PathMatch::Exact(format!("/{s}/{m}").into()),
        (Some(s), None, false) => PathMatch::Prefix(format!("/{s}").into()),
        (None, Some(m), false) => {
            PathMatch::Regex(anchored(&format!("/[^/]+/{}", regex::escape(m)))?)
        }
        (s, m, _) => {
            let part =
                |p: Option<&str>| p.map_or_else(|| "[^/]+".to_owned(), |p| format!("(?:{p})"));
            PathMatch::Regex(anchored(&format!("/{}/{}", part(s), part(m)))?)
        }
    })
}

/// A backendRef resolved to a Service port of the snapshot, or its `ResolvedRefs: False`.
/// GRPCRoute backends speak HTTP/2 (h2c) whatever their port's `appProtocol`.
fn resolve_backend(
    route: &HttpRoute,
    target: &ObjectRef,
    port: Option<u16>,
    inputs: &GatewayInputs<'_>,
    grants: &Grants<'_>,
) -> Result<ResolvedBackend, Condition> {
    let unresolved =
        |reason, message: String| Condition::new("ResolvedRefs", false, reason, message);
    if !(target.group.is_empty() || target.group == "core") || target.kind != "Service" {
        let message = format!(
            "backendRef kind {}/{} is not supported",
            target.group, target.kind
        );
        return Err(unresolved("InvalidKind", message));
    }
    let namespace = target.namespace.clone().unwrap_or(route.namespace.clone());
    if namespace != route.namespace
        && !grants.permits(
            (route.kind.as_str(), &route.namespace),
            ("", "Service", &namespace),
            &target.name,
        )
    {
        let message = format!(
            "Service {namespace}/{} is in another namespace and no ReferenceGrant allows it",
            target.name
        );
        return Err(unresolved("RefNotPermitted", message));
    }
    let Some(port) = port else {
        let message = format!(
            "backendRef to Service {namespace}/{} has no port",
            target.name
        );
        return Err(unresolved("UnsupportedValue", message));
    };
    let service = ServiceKey::new(&namespace, &target.name);
    if !inputs.services.contains_key(&service) {
        let message = format!("Service {service} not found");
        return Err(unresolved("BackendNotFound", message));
    }
    let backend = IngressBackend {
        service,
        port: BackendPort::Number(port),
    };
    let (upstream, mut protocol, missing) =
        crate::compile::ingress::upstream(&backend, inputs.services, inputs.proxy);
    if let Some(message) = missing {
        return Err(unresolved("BackendNotFound", message));
    }
    if route.kind == RouteKind::Grpc {
        protocol = UpstreamProtocol::Http2;
    }
    Ok((backend, upstream, protocol))
}
