//! HTTPRoute and GRPCRoute documents → catalog routes: the CRDs' defaults, GRPCRoute method
//! matches and their validation (`GRPCMethodMatch` docs), `RequestMirror` percent and fraction,
//! and `0s` timeouts.

use capstan_catalog::{Filter, HttpRoute, Object, PathSpec, RouteKind};
use serde_json::json;

use crate::source::convert::gateway_object;

fn route(kind: &str, rules: serde_json::Value) -> Result<HttpRoute, String> {
    let document = json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "r", "namespace": "ns"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": rules},
    });
    match gateway_object(kind, document).map_err(|e| e.to_string())? {
        Some(Object::HttpRoute(route)) => Ok(route),
        other => Err(format!("not a route: {other:?}")),
    }
}

#[test]
fn grpc_method_matches_become_grpc_path_specs() {
    let rules = json!([
        {"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}]},
        {"matches": [{"method": {"method": "Get"}}]},
        {"matches": [{"method": {"type": "RegularExpression", "service": "pkg\\..*"}}]},
        {"backendRefs": [{"name": "b", "port": 9000}]},
    ]);
    let route = route("GRPCRoute", rules).expect("GRPCRoute");
    assert_eq!(route.kind, RouteKind::Grpc);
    let path = |i: usize| route.rules[i].matches[0].path.clone();
    let grpc = |service: Option<&str>, method: Option<&str>, regex| PathSpec::Grpc {
        service: service.map(Into::into),
        method: method.map(Into::into),
        regex,
    };
    assert_eq!(path(0), grpc(Some("pkg.Svc"), Some("Get"), false));
    assert_eq!(path(1), grpc(None, Some("Get"), false));
    assert_eq!(path(2), grpc(Some("pkg\\..*"), None, true));
    // No matches: every gRPC request.
    assert_eq!(path(3), PathSpec::Prefix("/".into()));
    assert_eq!(route.rules[3].matches[0].method, None);
}

/// `GRPCMethodMatch`: at least one of service and method; Exact values without `/`.
#[test]
fn invalid_grpc_method_matches_are_refused_with_the_reason() {
    let empty = route("GRPCRoute", json!([{"matches": [{"method": {}}]}]));
    assert!(
        empty
            .expect_err("refused")
            .contains("a service or a method")
    );
    let slash = route(
        "GRPCRoute",
        json!([{"matches": [{"method": {"service": "a/b", "method": "M"}}]}]),
    );
    assert!(slash.expect_err("refused").contains("must not contain '/'"));
    let http_method_object = route("HTTPRoute", json!([{"matches": [{"method": {"x": 1}}]}]));
    assert!(
        http_method_object
            .expect_err("refused")
            .contains("not an HTTP method")
    );
}

#[test]
fn request_mirror_percent_fraction_and_default() {
    let mirror = |extra: serde_json::Value| {
        let mut filter = json!({"backendRef": {"name": "m", "port": 80}});
        if let (Some(target), Some(extra)) = (filter.as_object_mut(), extra.as_object()) {
            target.extend(extra.clone());
        }
        route(
            "HTTPRoute",
            json!([{"filters": [{"type": "RequestMirror", "requestMirror": filter}]}]),
        )
    };
    let fraction = |route: HttpRoute| match &route.rules[0].filters[0] {
        Filter::Mirror { fraction, port, .. } => {
            assert_eq!(*port, Some(80));
            *fraction
        }
        other => panic!("not a mirror: {other:?}"),
    };
    assert_eq!(fraction(mirror(json!({})).expect("all")), (1, 1));
    assert_eq!(
        fraction(mirror(json!({"percent": 20})).expect("20%")),
        (20, 100)
    );
    let half = mirror(json!({"fraction": {"numerator": 25, "denominator": 50}}));
    assert_eq!(fraction(half.expect("25/50")), (25, 50));
    let over = mirror(json!({"fraction": {"numerator": 3, "denominator": 2}}));
    assert!(over.expect_err("refused").contains("within 0..=1"));
}

/// `HTTPRouteTimeouts` docs: a zero duration turns the timeout off.
#[test]
fn zero_timeouts_are_none() {
    let rules = json!([{"timeouts": {"request": "0s", "backendRequest": "500ms"}}]);
    let route = route("HTTPRoute", rules).expect("route");
    assert_eq!(route.rules[0].request_timeout, None);
    assert_eq!(
        route.rules[0].backend_timeout,
        Some(std::time::Duration::from_millis(500))
    );
}
