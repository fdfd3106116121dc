//! The plan step without sockets: listener and host choice, HTTPRoute match precedence, every
//! filter, weights, and the faults. Expectations cite the Gateway API spec or conformance test
//! they come from.

use std::sync::Arc;

use capstan_table::{
    Backend, BackendPort, Endpoint, GatewayListener, GatewaySocket, HeaderEdits, HostRules,
    HttpAction, HttpMatch, HttpRule, PathMatch, PathModifier, Protocol, Redirect, Rewrite, Route,
    ServiceKey, ServicePortKey, ServicePortTable, UpstreamProtocol, ValueMatch, WeightedBackend,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use regex::Regex;

use super::*;

fn backend(name: &str, endpoints: usize) -> Arc<Route> {
    let key = ServicePortKey {
        service: ServiceKey::new("ns", name),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    };
    let eps: Vec<Arc<Endpoint>> = (0..endpoints)
        .map(|i| {
            Arc::new(Endpoint::ready(
                format!("10.0.0.{}:80", i + 1).parse().expect("addr"),
            ))
        })
        .collect();
    Arc::new(Route {
        ingress: "ns/route".into(),
        host: "*".into(),
        path: name.into(),
        backend: Backend::Service {
            service: ServiceKey::new("ns", name),
            port: BackendPort::Number(80),
        },
        upstream: Some(Arc::new(ServicePortTable::with_endpoints(key, eps.into()))),
        protocol: UpstreamProtocol::Http1,
        tls: None,
        basic_auth: None,
        unusable: false,
        policy: Arc::default(),
        stats: Arc::default(),
        state: Arc::default(),
    })
}

fn to(name: &str) -> WeightedBackend {
    weighted(name, 1)
}

fn weighted(name: &str, weight: u32) -> WeightedBackend {
    WeightedBackend {
        weight,
        route: Some(backend(name, 1)),
        request_headers: HeaderEdits::default(),
        response_headers: HeaderEdits::default(),
    }
}

fn action(backends: Vec<WeightedBackend>) -> HttpAction {
    HttpAction {
        total_weight: backends.iter().map(|b| b.weight).sum(),
        backends,
        ..HttpAction::default()
    }
}

fn prefix(p: &str) -> HttpMatch {
    path(PathMatch::Prefix(p.trim_end_matches('/').into()))
}

fn path(path: PathMatch) -> HttpMatch {
    HttpMatch {
        path,
        method: None,
        headers: vec![],
        query: vec![],
    }
}

fn rule(matches: HttpMatch, action: HttpAction) -> HttpRule {
    HttpRule {
        matches,
        action: Arc::new(action),
    }
}

fn socket(hostname: Option<&str>, rules: Vec<HttpRule>) -> GatewaySocket {
    GatewaySocket {
        tls: false,
        listeners: vec![Arc::new(GatewayListener {
            gateway: "ns/gw".into(),
            name: "http".into(),
            port: 8080,
            hostname: hostname.map(Into::into),
            certificate: None,
            routes: HostRules {
                any: rules,
                ..HostRules::default()
            },
        })],
    }
}

struct Req<'a> {
    method: Method,
    host: &'a str,
    path: &'a str,
    query: Option<&'a str>,
    headers: HeaderMap,
}

fn get(path: &str) -> Req<'_> {
    Req {
        method: Method::GET,
        host: "example.com",
        path,
        query: None,
        headers: HeaderMap::new(),
    }
}

impl Req<'_> {
    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: &self.method,
            host: self.host,
            path: self.path,
            query: self.query,
            headers: &self.headers,
            tls: false,
        }
    }
}

/// The chosen backend's name, or the fault's status, or `redirect LOCATION`.
fn outcome(socket: &GatewaySocket, req: &Req<'_>) -> String {
    match plan_gateway(socket, &req.head(), 0) {
        Plan::Forward(forward) => forward.route.path.to_string(),
        Plan::Redirect { status, location } => format!("{} {location}", status.as_u16()),
        Plan::Reply(fault, _) => fault.status().as_u16().to_string(),
    }
}

fn header(name: &str, value: &str) -> (HeaderName, ValueMatch) {
    (
        HeaderName::from_bytes(name.as_bytes()).expect("name"),
        ValueMatch::Exact(value.into()),
    )
}

/// conformance `HTTPRouteMatching` (tests/httproute-matching.yaml): two rules, each with a
/// PathPrefix match and a header match; rules sorted as `compile` sorts them (longest prefix
/// first, then more headers).
#[test]
fn httproute_matching_conformance_cases() {
    let with_header = |name, value| HttpMatch {
        headers: vec![header(name, value)],
        ..prefix("/")
    };
    let socket = socket(
        None,
        vec![
            rule(prefix("/v2"), action(vec![to("v2")])),
            rule(with_header("version", "one"), action(vec![to("v1")])),
            rule(with_header("version", "two"), action(vec![to("v2")])),
            rule(prefix("/"), action(vec![to("v1")])),
        ],
    );
    let mut req = get("/");
    let cases = [
        ("/", None, "v1"),
        ("/example", None, "v1"),
        ("/", Some("one"), "v1"),
        ("/v2", None, "v2"),
        ("/v2/example", None, "v2"),
        ("/", Some("two"), "v2"),
        ("/v2/", None, "v2"),
        ("/v2example", None, "v1"),
        ("/foo/v2/example", None, "v1"),
    ];
    for (path, version, want) in cases {
        req.path = path;
        req.headers.clear();
        if let Some(v) = version {
            req.headers.insert("version", HeaderValue::from_static(v));
        }
        assert_eq!(outcome(&socket, &req), want, "{path} version={version:?}");
    }
}

#[test]
fn exact_regex_method_and_query_matches() {
    let socket = socket(
        None,
        vec![
            rule(
                path(PathMatch::Exact("/exact".into())),
                action(vec![to("exact")]),
            ),
            rule(
                path(PathMatch::Regex(
                    Regex::new("^(?:/v[0-9]+/.*)$").expect("re"),
                )),
                action(vec![to("regex")]),
            ),
            rule(
                HttpMatch {
                    method: Some(Method::POST),
                    ..prefix("/")
                },
                action(vec![to("post")]),
            ),
            rule(
                HttpMatch {
                    query: vec![("animal".into(), ValueMatch::Exact("whale".into()))],
                    ..prefix("/")
                },
                action(vec![to("whale")]),
            ),
        ],
    );
    let mut req = get("/exact");
    assert_eq!(outcome(&socket, &req), "exact");
    req.path = "/exact/";
    assert_eq!(outcome(&socket, &req), "404", "Exact is exact");
    req.path = "/v12/x";
    assert_eq!(outcome(&socket, &req), "regex");
    req.path = "/v/x";
    assert_eq!(outcome(&socket, &req), "404", "the regex is anchored");
    req.method = Method::POST;
    assert_eq!(outcome(&socket, &req), "post");
    req.method = Method::GET;
    req.query = Some("x=1&animal=whale");
    assert_eq!(outcome(&socket, &req), "whale");
    req.query = Some("animal=dolphin");
    assert_eq!(outcome(&socket, &req), "404");
    req.query = Some("animal=wh%61le");
    assert_eq!(
        outcome(&socket, &req),
        "whale",
        "values are percent-decoded"
    );
}

/// Listener hostnames: exact before wildcard; a wildcard covers any depth but not the bare
/// domain (Listener `hostname` docs).
#[test]
fn listener_and_host_choice() {
    let listener = |hostname: &str, name: &str| {
        Arc::new(GatewayListener {
            gateway: "ns/gw".into(),
            name: name.into(),
            port: 80,
            hostname: Some(hostname.into()),
            certificate: None,
            routes: HostRules {
                any: vec![rule(prefix("/"), action(vec![to(name)]))],
                ..HostRules::default()
            },
        })
    };
    let socket = GatewaySocket {
        tls: false,
        listeners: vec![
            listener("foo.example.com", "exact"),
            listener("*.example.com", "wildcard"),
        ],
    };
    let mut req = get("/");
    for (host, want) in [
        ("foo.example.com", "exact"),
        ("bar.example.com", "wildcard"),
        ("a.b.example.com", "wildcard"),
        ("example.com", "404"),
        ("example.net", "404"),
    ] {
        req.host = host;
        assert_eq!(outcome(&socket, &req), want, "{host}");
    }

    let mut hosts = HostRules::default();
    hosts.exact.insert(
        "a.example.com".into(),
        vec![rule(prefix("/"), action(vec![to("a")]))],
    );
    hosts.wildcards.push((
        ".example.com".into(),
        vec![rule(prefix("/"), action(vec![to("any-example")]))],
    ));
    assert_eq!(hosts.for_host("a.example.com")[0].action.backends.len(), 1);
    assert!(hosts.for_host("example.com").is_empty());
    assert!(!hosts.for_host("x.y.example.com").is_empty());
}

/// Weights: over 10,000 plans each backend gets its share within 2 %; weight 0 gets nothing;
/// every weight 0, no backend, or an invalid reference is a 500 (`HTTPBackendRef` docs).
#[test]
fn weights_zero_and_invalid_backends() {
    let weights = [("a", 70), ("b", 20), ("c", 10), ("zero", 0)];
    let act = action(weights.iter().map(|(n, w)| weighted(n, *w)).collect());
    let socket = socket(None, vec![rule(prefix("/"), act)]);
    let req = get("/");
    let mut counts = std::collections::HashMap::new();
    let mut rng = fastrand::Rng::with_seed(7);
    let plans = 10_000;
    for _ in 0..plans {
        let Plan::Forward(forward) = plan_gateway(&socket, &req.head(), rng.u32(..)) else {
            panic!("not forwarded");
        };
        *counts.entry(forward.route.path.to_string()).or_insert(0u32) += 1;
    }
    for (name, weight) in weights {
        let share = f64::from(counts.get(name).copied().unwrap_or(0)) / f64::from(plans);
        let want = f64::from(weight) / 100.0;
        assert!((share - want).abs() <= 0.02, "{name}: {share} vs {want}");
    }
    assert!(!counts.contains_key("zero"));

    let all_zero = socket_with(action(vec![weighted("a", 0)]));
    assert_eq!(outcome(&all_zero, &req), "500");
    let none = socket_with(action(vec![]));
    assert_eq!(outcome(&none, &req), "500");
    let mut invalid = weighted("gone", 1);
    invalid.route = None;
    assert_eq!(outcome(&socket_with(action(vec![invalid])), &req), "500");
    let mut drained = weighted("empty", 1);
    drained.route = Some(backend("empty", 0));
    assert_eq!(outcome(&socket_with(action(vec![drained])), &req), "503");
}

fn socket_with(action: HttpAction) -> GatewaySocket {
    socket(None, vec![rule(prefix("/"), action)])
}

/// `HTTPPathModifier` docs table for ReplacePrefixMatch, and ReplaceFullPath.
#[test]
fn path_rewrites() {
    let cases = [
        ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
        ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
        ("/foo", "/foo", "/xyz", "/xyz"),
        ("/foo/", "/foo", "/xyz", "/xyz/"),
        ("/foo/bar", "/foo", "", "/bar"),
        ("/foo/", "/foo", "", "/"),
        ("/foo", "/foo", "", "/"),
        ("/foo/", "/foo", "/", "/"),
        ("/foo", "/foo", "/", "/"),
    ];
    for (request, matched, replacement, want) in cases {
        let prefix_rule = rule(prefix(matched), action(vec![]));
        let modifier = PathModifier::ReplacePrefixMatch(replacement.into());
        assert_eq!(
            modified_path(&modifier, &prefix_rule, request),
            want,
            "{request} {matched} {replacement}"
        );
    }
    let full_rule = rule(prefix("/full"), action(vec![]));
    let full = PathModifier::ReplaceFullPath("/one".into());
    assert_eq!(modified_path(&full, &full_rule, "/full/x/y"), "/one");

    let mut act = action(vec![to("v1")]);
    act.rewrite = Some(Rewrite {
        hostname: Some(HeaderValue::from_static("rewritten.example.org")),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
    });
    let socket = socket(None, vec![rule(prefix("/old"), act)]);
    let mut req = get("/old/page");
    req.query = Some("a=1");
    let Plan::Forward(forward) = plan_gateway(&socket, &req.head(), 0) else {
        panic!("forwarded");
    };
    assert_eq!(forward.path.as_deref(), Some("/new/page?a=1"));
    assert_eq!(
        forward.host,
        Some(HeaderValue::from_static("rewritten.example.org"))
    );
}

/// `HTTPRequestRedirectFilter` port rules, as conformance `HTTPRouteRedirectPortAndScheme`
/// checks them: no port written for a scheme's default, the listener's port kept when nothing
/// is set.
#[test]
fn redirect_locations() {
    let redirect = |scheme: Option<&str>, hostname: Option<&str>, port: Option<u16>| Redirect {
        scheme: scheme.map(Into::into),
        hostname: hostname.map(Into::into),
        port,
        path: None,
        status: 302,
    };
    let r = rule(prefix("/"), action(vec![]));
    let req = get("/p");
    let head = req.head();
    let at =
        |redirect: Redirect, listener_port| redirect_location(&redirect, &r, &head, listener_port);
    assert_eq!(
        at(redirect(None, None, None), 8080),
        "http://example.com:8080/p"
    );
    assert_eq!(at(redirect(None, None, None), 80), "http://example.com/p");
    assert_eq!(
        at(redirect(Some("https"), None, None), 8080),
        "https://example.com/p"
    );
    assert_eq!(
        at(redirect(Some("https"), None, Some(8443)), 80),
        "https://example.com:8443/p"
    );
    assert_eq!(
        at(redirect(Some("http"), None, Some(443)), 80),
        "http://example.com:443/p"
    );
    assert_eq!(
        at(redirect(None, Some("other.org"), Some(80)), 8080),
        "http://other.org/p"
    );

    let mut act = action(vec![]);
    act.redirect = Some(Redirect {
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        status: 301,
        ..redirect(None, Some("moved.example.com"), None)
    });
    let socket = socket(None, vec![rule(prefix("/old"), act)]);
    let mut req = get("/old/x");
    req.query = Some("q=1");
    assert_eq!(
        outcome(&socket, &req),
        "301 http://moved.example.com:8080/new/x?q=1"
    );
}

#[test]
fn header_edits_set_add_remove() {
    let name = |n: &'static str| HeaderName::from_static(n);
    let edits = HeaderEdits {
        set: vec![(name("x-set"), HeaderValue::from_static("new"))],
        add: vec![(name("x-add"), HeaderValue::from_static("second"))],
        remove: vec![name("x-gone")],
    };
    let mut headers = HeaderMap::new();
    headers.insert("x-set", HeaderValue::from_static("old"));
    headers.insert("x-add", HeaderValue::from_static("first"));
    headers.insert("x-gone", HeaderValue::from_static("bye"));
    apply_edits(&edits, &mut headers);
    assert_eq!(headers["x-set"], "new");
    let added: Vec<_> = headers.get_all("x-add").iter().collect();
    assert_eq!(added, ["first", "second"]);
    assert!(!headers.contains_key("x-gone"));
}

#[test]
fn faults_have_one_status_and_blame_each() {
    for fault in FAULTS {
        assert_eq!(FAULTS[fault.index()], fault);
        assert!(!fault.text().is_empty());
    }
    assert_eq!(Fault::InvalidBackend.status().as_u16(), 500);
    assert_eq!(Fault::NoRoute.blame(), Blame::Client);
    assert_eq!(Fault::NoEndpoints.blame(), Blame::Backend);
}

/// The Ingress plan: https redirect for `spec.tls` hosts over plain HTTP (not for ACME
/// challenges, not over TLS), routes, the default backend, and the 404/503 faults.
#[test]
fn ingress_plan_redirects_routes_and_faults() {
    use capstan_table::{IngressTable, PathType};
    let mut table = IngressTable::default();
    let host = table.host_mut(Some("shop.example"));
    host.add("/", PathType::Prefix, backend("web", 1))
        .expect("add");
    host.add("/drained", PathType::Prefix, backend("drained", 0))
        .expect("add");
    let mut unusable = (*backend("locked", 1)).clone();
    unusable.unusable = true;
    host.add("/locked", PathType::Prefix, Arc::new(unusable))
        .expect("add");
    let mut missing = (*backend("missing", 1)).clone();
    missing.upstream = None;
    host.add("/missing", PathType::Prefix, Arc::new(missing))
        .expect("add");
    table.tls_hosts.insert("secure.example".into(), None);
    table.finish();

    let plan = |host: &str, path: &str, tls: bool| {
        let headers = HeaderMap::new();
        let head = RequestHead {
            method: &Method::GET,
            host,
            path,
            query: None,
            headers: &headers,
            tls,
        };
        match plan_ingress(&table, &head, Some(8443), &format!("{host}:8080"), path) {
            Plan::Forward(forward) => forward.route.path.to_string(),
            Plan::Redirect { status, location } => format!("{} {location}", status.as_u16()),
            Plan::Reply(fault, route) => format!(
                "{} {}",
                fault.status().as_u16(),
                route.map_or("-".into(), |r| r.path.to_string())
            ),
        }
    };
    assert_eq!(plan("shop.example", "/cart", false), "web");
    assert_eq!(plan("shop.example", "/drained/x", false), "503 drained");
    assert_eq!(plan("shop.example", "/locked", false), "503 locked");
    assert_eq!(plan("shop.example", "/missing", false), "503 missing");
    assert_eq!(plan("other.example", "/", false), "404 -");
    assert_eq!(
        plan("secure.example", "/a?b", false),
        "308 https://secure.example:8443/a?b"
    );
    assert_eq!(
        plan("secure.example", "/.well-known/acme-challenge/t", false),
        "404 -",
        "ACME challenges are not redirected"
    );
    assert_eq!(
        plan("secure.example", "/a", true),
        "404 -",
        "no redirect over TLS"
    );
    assert_eq!(
        https_location("a.example:80", 443, "/x"),
        "https://a.example/x"
    );
}
