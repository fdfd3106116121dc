//! Gateway compile without sockets: addresses, listener validation and conflicts, certificate
//! references through ReferenceGrants, allowedRoutes, hostname intersection and route status
//! reasons (the names of `apis/v1/gateway_types.go` and `httproute_types.go`).

use std::collections::BTreeMap;
use std::net::IpAddr;

use capstan_table::{GatewayTable, PathMatch, Problem, ProxyTable};

use super::routes::intersect;
use super::*;
use crate::{
    AllowedNamespaces, BackendRef, LabelSelector, ObjectRef, ParentRef, PathSpec, RouteKind,
    RouteMatch, RouteRule,
};

fn class() -> GatewayClass {
    GatewayClass {
        name: "capstan".into(),
        generation: 1,
        controller: "capstan.dev/gateway-controller".into(),
    }
}

fn listener(name: &str, port: u16, protocol: &str, hostname: Option<&str>) -> Listener {
    Listener {
        name: name.into(),
        hostname: hostname.map(Into::into),
        port,
        protocol: protocol.into(),
        passthrough: false,
        certificate_refs: vec![],
        allowed_namespaces: AllowedNamespaces::Same,
        allowed_kinds: vec![],
    }
}

fn gateway(name: &str, listeners: Vec<Listener>) -> Gateway {
    Gateway {
        namespace: "infra".into(),
        name: name.into(),
        generation: 3,
        class_name: "capstan".into(),
        addresses: vec![],
        unusable_addresses: vec![],
        parameters_ref: None,
        listeners,
    }
}

fn route(namespace: &str, name: &str, gateway: &str, hostnames: &[&str]) -> HttpRoute {
    HttpRoute {
        kind: RouteKind::Http,
        namespace: namespace.into(),
        name: name.into(),
        generation: 2,
        created: String::new(),
        parents: vec![ParentRef {
            group: GROUP.into(),
            kind: "Gateway".into(),
            namespace: Some("infra".into()),
            name: gateway.into(),
            section_name: None,
            port: None,
        }],
        hostnames: hostnames.iter().map(|h| (*h).to_owned()).collect(),
        rules: vec![RouteRule {
            matches: vec![RouteMatch {
                path: PathSpec::Prefix("/".into()),
                method: None,
                headers: vec![],
                query: vec![],
            }],
            filters: vec![],
            backends: vec![BackendRef {
                target: ObjectRef {
                    group: String::new(),
                    kind: "Service".into(),
                    namespace: None,
                    name: "missing".into(),
                },
                port: Some(8080),
                weight: 1,
                filters: vec![],
            }],
            request_timeout: None,
            backend_timeout: None,
        }],
    }
}

struct World {
    classes: Vec<GatewayClass>,
    gateways: Vec<Gateway>,
    routes: Vec<HttpRoute>,
    namespaces: Vec<Namespace>,
    grants: Vec<ReferenceGrant>,
    options: GatewayOptions,
}

impl World {
    fn new(gateways: Vec<Gateway>, routes: Vec<HttpRoute>) -> Self {
        Self {
            classes: vec![class()],
            gateways,
            routes,
            namespaces: vec![],
            grants: vec![],
            options: GatewayOptions {
                addresses: Some("10.9.0.0/30".parse().expect("cidr")),
                ..GatewayOptions::default()
            },
        }
    }

    fn compile(&self, previous: Option<&GatewayTable>) -> (GatewayTable, Vec<Problem>) {
        let secrets = BTreeMap::new();
        let services = BTreeMap::new();
        let proxy = ProxyTable::default();
        let inputs = GatewayInputs {
            classes: self.classes.iter().collect(),
            gateways: self.gateways.iter().collect(),
            routes: self.routes.iter().collect(),
            grants: self.grants.iter().collect(),
            namespaces: self.namespaces.iter().collect(),
            secrets: &secrets,
            services: &services,
            proxy: &proxy,
            previous,
        };
        let mut problems = Vec::new();
        let table = compile_gateways(inputs, &self.options, &mut problems);
        (table, problems)
    }
}

fn condition<'a>(conditions: &'a [Condition], kind: &str) -> &'a Condition {
    conditions
        .iter()
        .find(|c| c.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} in {conditions:?}"))
}

/// The route hostnames under which a route is served on a listener (`hostnames` field docs).
#[test]
fn hostname_intersection() {
    let names = |v: Vec<Option<Box<str>>>| -> Vec<String> {
        v.into_iter()
            .map(|h| h.map_or("*".into(), |h| h.to_string()))
            .collect()
    };
    let hosts = |list: &[&str]| list.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>();
    assert_eq!(names(intersect(None, &[])), ["*"]);
    assert_eq!(names(intersect(None, &hosts(&["a.com"]))), ["a.com"]);
    assert_eq!(names(intersect(Some("a.com"), &[])), ["a.com"]);
    assert_eq!(
        names(intersect(
            Some("*.example.com"),
            &hosts(&["foo.example.com", "x.org"])
        )),
        ["foo.example.com"]
    );
    assert_eq!(
        names(intersect(
            Some("foo.example.com"),
            &hosts(&["*.example.com"])
        )),
        ["foo.example.com"]
    );
    assert_eq!(
        names(intersect(
            Some("*.example.com"),
            &hosts(&["*.foo.example.com"])
        )),
        ["*.foo.example.com"]
    );
    assert!(intersect(Some("example.com"), &hosts(&["*.example.com"])).is_empty());
    assert!(intersect(Some("a.com"), &hosts(&["b.com"])).is_empty());
}

#[test]
fn addresses_from_the_range_are_kept_across_compiles() {
    let mut world = World::new(
        vec![
            gateway("b", vec![listener("http", 80, "HTTP", None)]),
            gateway("c", vec![listener("http", 80, "HTTP", None)]),
        ],
        vec![],
    );
    let (first, _) = world.compile(None);
    let ip = |t: &GatewayTable, name: &str| {
        t.status_of("Gateway", "infra", name)
            .expect("status")
            .addresses
            .clone()
    };
    let addr = |s: &str| s.parse::<IpAddr>().expect("ip");
    assert_eq!(ip(&first, "b"), [addr("10.9.0.1")]);
    assert_eq!(ip(&first, "c"), [addr("10.9.0.2")]);
    // A Gateway sorting first arrives: the others keep their addresses, it gets the next.
    world
        .gateways
        .push(gateway("a", vec![listener("http", 80, "HTTP", None)]));
    let (second, _) = world.compile(Some(&first));
    assert_eq!(ip(&second, "b"), [addr("10.9.0.1")]);
    assert_eq!(ip(&second, "c"), [addr("10.9.0.2")]);
    assert!(ip(&second, "a").is_empty(), "a /30 has two host addresses");
    let a = second.status_of("Gateway", "infra", "a").expect("a");
    assert_eq!(
        condition(&a.conditions, "Programmed").reason,
        "AddressNotAssigned"
    );
    assert_eq!(second.sockets.len(), 2);
}

#[test]
fn listener_validation_and_conflicts() {
    let mut https = listener("https", 443, "HTTPS", None);
    https.certificate_refs = vec![ObjectRef {
        group: String::new(),
        kind: "Secret".into(),
        namespace: Some("certs".into()),
        name: "tls".into(),
    }];
    let world = World::new(
        vec![gateway(
            "gw",
            vec![
                listener("a", 80, "HTTP", Some("a.com")),
                listener("dup", 80, "HTTP", Some("a.com")),
                listener("proto", 80, "HTTPS", Some("b.com")),
                listener("tcp", 9000, "TCP", None),
                https,
            ],
        )],
        vec![],
    );
    let (table, _) = world.compile(None);
    let status = table.status_of("Gateway", "infra", "gw").expect("status");
    let of = |name: &str| {
        status
            .listeners
            .iter()
            .find(|l| &*l.name == name)
            .expect("listener")
    };
    assert!(condition(&of("a").conditions, "Programmed").status);
    assert_eq!(
        condition(&of("dup").conditions, "Conflicted").reason,
        "HostnameConflict"
    );
    assert_eq!(
        condition(&of("proto").conditions, "Conflicted").reason,
        "ProtocolConflict"
    );
    assert_eq!(
        condition(&of("tcp").conditions, "Accepted").reason,
        "UnsupportedProtocol"
    );
    let https = &of("https").conditions;
    assert_eq!(condition(https, "ResolvedRefs").reason, "RefNotPermitted");
    assert!(!condition(https, "Programmed").status);
    assert_eq!(table.sockets.len(), 1, "only the valid listener's socket");
}

#[test]
fn allowed_routes_namespaces_and_route_reasons() {
    let mut selected = listener("http", 80, "HTTP", Some("*.example.com"));
    selected.allowed_namespaces = AllowedNamespaces::Selector(LabelSelector {
        match_labels: BTreeMap::from([("team".into(), "web".into())]),
        match_expressions: vec![],
    });
    let mut world = World::new(
        vec![gateway("gw", vec![selected])],
        vec![
            route("web", "ok", "gw", &["shop.example.com"]),
            route("other", "refused", "gw", &[]),
            route("web", "elsewhere", "gw", &["example.org"]),
        ],
    );
    world.namespaces.push(Namespace {
        name: "web".into(),
        labels: BTreeMap::from([("team".into(), "web".into())]),
    });
    let (table, _) = world.compile(None);
    let parent = |ns: &str, name: &str| {
        table
            .status_of("HTTPRoute", ns, name)
            .expect("route status")
            .parents[0]
            .conditions
            .clone()
    };
    let ok = parent("web", "ok");
    assert!(condition(&ok, "Accepted").status);
    assert_eq!(condition(&ok, "ResolvedRefs").reason, "BackendNotFound");
    assert_eq!(
        condition(&parent("other", "refused"), "Accepted").reason,
        "NotAllowedByListeners"
    );
    assert_eq!(
        condition(&parent("web", "elsewhere"), "Accepted").reason,
        "NoMatchingListenerHostname"
    );
    let gw = table.status_of("Gateway", "infra", "gw").expect("gateway");
    assert_eq!(gw.listeners[0].attached_routes, 1);
    let socket = table.sockets.values().next().expect("socket");
    let rules = socket.listeners[0].routes.for_host("shop.example.com");
    assert_eq!(rules.len(), 1);
    assert!(
        rules[0].action.backends[0].route.is_none(),
        "missing Service: 500"
    );
}

#[test]
fn classes_of_other_controllers_are_ignored() {
    let mut world = World::new(
        vec![gateway("gw", vec![listener("http", 80, "HTTP", None)])],
        vec![],
    );
    world.classes[0].controller = "example.com/other".into();
    let (table, _) = world.compile(None);
    assert!(table.status.is_empty());
    assert!(table.sockets.is_empty());
}

/// A GRPCRoute whose rules have these method matches `(service, method)`, each its own rule.
fn grpc_route(name: &str, created: &str, methods: &[(Option<&str>, Option<&str>)]) -> HttpRoute {
    let mut route = route("infra", name, "gw", &[]);
    route.kind = RouteKind::Grpc;
    route.created = created.into();
    let template = route.rules[0].clone();
    route.rules = methods
        .iter()
        .map(|(service, method)| {
            let mut rule = template.clone();
            rule.matches[0].path = PathSpec::Grpc {
                service: service.map(Into::into),
                method: method.map(Into::into),
                regex: false,
            };
            rule
        })
        .collect();
    route
}

/// `GRPCRouteRule` docs (`apis/v1/grpcroute_types.go`): precedence to the most characters of a
/// matching service, then of a matching method; a service alone matches its every method, a
/// method alone that method of every service.
#[test]
fn grpc_method_matches_rank_by_service_then_method_characters() {
    let route = grpc_route(
        "grpc",
        "",
        &[
            (None, Some("Echo")),
            (Some("pkg.Echo"), None),
            (Some("pkg.Echo"), Some("Echo")),
            (Some("pkg.EchoLonger"), None),
        ],
    );
    let world = World::new(
        vec![gateway("gw", vec![listener("http", 80, "HTTP", None)])],
        vec![route],
    );
    let (table, problems) = world.compile(None);
    assert!(problems.is_empty(), "{problems:?}");
    let status = table
        .status_of("GRPCRoute", "infra", "grpc")
        .expect("status");
    assert!(condition(&status.parents[0].conditions, "Accepted").status);
    let socket = table.sockets.values().next().expect("socket");
    let rules = &socket.listeners[0].routes.any;
    let order: Vec<usize> = rules.iter().map(|r| r.action.rule).collect();
    assert_eq!(
        order,
        [3, 2, 1, 0],
        "longer service, then longer method first"
    );
    assert!(rules.iter().all(|r| r.action.grpc));
    let path = |rule: usize| {
        &rules
            .iter()
            .find(|r| r.action.rule == rule)
            .expect("rule")
            .matches
            .path
    };
    assert!(matches!(path(2), PathMatch::Exact(p) if &**p == "/pkg.Echo/Echo"));
    assert!(matches!(path(1), PathMatch::Prefix(p) if &**p == "/pkg.Echo"));
    let PathMatch::Regex(method_only) = path(0) else {
        panic!("a method alone is a pattern: {:?}", path(0));
    };
    assert!(method_only.is_match("/other.Svc/Echo"));
    assert!(!method_only.is_match("/other.Svc/EchoTwo"));
    assert!(!method_only.is_match("/a/b/Echo"));
    let gw = table.status_of("Gateway", "infra", "gw").expect("gateway");
    assert_eq!(gw.listeners[0].supported_kinds, ["HTTPRoute", "GRPCRoute"]);
}

/// `hostnames` docs of GRPCRouteSpec: an HTTPRoute and a GRPCRoute with intersecting hostnames
/// on one listener: the older is accepted, the other is not.
#[test]
fn http_and_grpc_routes_sharing_a_hostname_the_older_wins() {
    let mut http = route("infra", "web", "gw", &["api.example.com"]);
    http.created = "2026-01-02T00:00:00Z".into();
    let mut grpc = grpc_route("rpc", "2026-01-01T00:00:00Z", &[(Some("pkg.Svc"), None)]);
    grpc.hostnames = vec!["*.example.com".into()];
    let mut apart = route("infra", "apart", "gw", &["www.example.org"]);
    apart.created = "2026-01-03T00:00:00Z".into();
    let world = World::new(
        vec![gateway("gw", vec![listener("http", 80, "HTTP", None)])],
        vec![http, grpc, apart],
    );
    let (table, _) = world.compile(None);
    let accepted = |kind: &str, name: &str| {
        let status = table.status_of(kind, "infra", name).expect("status");
        condition(&status.parents[0].conditions, "Accepted").clone()
    };
    assert!(accepted("GRPCRoute", "rpc").status, "older");
    let refused = accepted("HTTPRoute", "web");
    assert!(!refused.status);
    assert_eq!(refused.reason, "NotAllowedByListeners");
    assert!(accepted("HTTPRoute", "apart").status, "hostnames apart");
}
