//! Gateway API Core conformance for Gateways (listener validation, certificate references through
//! ReferenceGrants, attached routes, listeners added and removed) and the remaining Core HTTPRoute
//! tests, re-expressed from `conformance/tests/*.go` of kubernetes-sigs/gateway-api through the
//! real binary with the upstream manifests. Status is read from `/debug/snapshot`, where it has
//! the shape the Kubernetes objects get (the Kubernetes path writes the same JSON back).

use std::time::Duration;

use serde_json::Value;

use crate::gateway_support::{Conformance, INFRA, condition, get, parent_condition};
use crate::support::eventually;

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

/// One expected `ListenerStatus`: its name, kinds that must be listed (none: the list must be
/// empty), conditions `(type, status, reason)` (reason `""`: any), attached routes.
struct Want {
    name: &'static str,
    kinds: &'static [&'static str],
    conditions: &'static [(&'static str, bool, &'static str)],
    attached: u64,
}

/// `gatewayListenersMatch` of the suite: as many listeners as expected, each with its kinds,
/// conditions and attached routes.
fn listeners_match(actual: &Value, wants: &[Want]) -> bool {
    let Some(listeners) = actual.as_array() else {
        return false;
    };
    listeners.len() == wants.len()
        && wants.iter().all(|want| {
            let Some(listener) = listeners.iter().find(|l| l["name"] == want.name) else {
                return false;
            };
            let kinds: Vec<&str> = listener["supportedKinds"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k["kind"].as_str())
                .collect();
            let kinds_ok = if want.kinds.is_empty() {
                kinds.is_empty()
            } else {
                want.kinds.iter().all(|k| kinds.contains(k))
            };
            let conditions_ok = want.conditions.iter().all(|(kind, status, reason)| {
                condition(&listener["conditions"], kind).is_some_and(|c| {
                    c["status"] == if *status { "True" } else { "False" }
                        && (reason.is_empty() || c["reason"] == *reason)
                })
            });
            kinds_ok && conditions_ok && listener["attachedRoutes"] == want.attached
        })
}

/// `GatewayStatusMustHaveListeners`.
fn gateway_must_have_listeners(suite: &Conformance, gateway: &str, wants: &[Want]) {
    let ok = eventually(Duration::from_secs(10), || {
        let status = suite.status("Gateway", INFRA, gateway)?;
        listeners_match(&status["listeners"], wants).then_some(())
    });
    if ok.is_none() {
        panic!(
            "Gateway {gateway}: listeners do not match\n{:#}",
            suite.status("Gateway", INFRA, gateway).unwrap_or_default()
        );
    }
}

/// `GatewayMustHaveCondition` (and `GatewayMustHaveLatestConditions`: every condition observed
/// at the object's generation, 1 from a file without one).
fn gateway_must_have_condition(suite: &Conformance, gateway: &str, want: (&str, bool, &str)) {
    let ok = eventually(Duration::from_secs(10), || {
        let status = suite.status("Gateway", INFRA, gateway)?;
        let conditions = status["conditions"].as_array()?;
        let latest = conditions.iter().all(|c| c["observedGeneration"] == 1);
        let c = condition(&status["conditions"], want.0)?;
        let matches = c["status"] == if want.1 { "True" } else { "False" } && c["reason"] == want.2;
        (latest && matches).then_some(())
    });
    if ok.is_none() {
        panic!(
            "Gateway {gateway}: no {want:?}\n{:#}",
            suite.status("Gateway", INFRA, gateway).unwrap_or_default()
        );
    }
}

const HTTP_ROUTE: &[&str] = &["HTTPRoute"];

/// The `https` listener of the certificate tests, no route attached.
fn https_listener(conditions: &'static [(&'static str, bool, &'static str)]) -> Want {
    Want {
        name: "https",
        kinds: HTTP_ROUTE,
        conditions,
        attached: 0,
    }
}

/// GatewayInvalidListenersUnsupportedProtocol.
#[test]
fn gateway_invalid_listeners_unsupported_protocol() {
    let suite = Conformance::start(
        "gw-core-protocol",
        &["gateway-invalid-listeners-unsupported-protocol.yaml"],
    );
    let invalid = Want {
        name: "invalid",
        kinds: &[],
        conditions: &[("Accepted", false, "UnsupportedProtocol")],
        attached: 0,
    };
    let only = "gateway-only-unsupported-protocols";
    gateway_must_have_condition(&suite, only, ("Accepted", false, "ListenersNotValid"));
    gateway_must_have_listeners(&suite, only, &[invalid]);
    let mixed = "gateway-supported-and-unsupported-protocols";
    gateway_must_have_condition(&suite, mixed, ("Accepted", true, "ListenersNotValid"));
    let http = Want {
        name: "http",
        kinds: HTTP_ROUTE,
        conditions: &[("Accepted", true, "Accepted")],
        attached: 0,
    };
    let invalid = Want {
        name: "invalid",
        kinds: &[],
        conditions: &[("Accepted", false, "UnsupportedProtocol")],
        attached: 0,
    };
    gateway_must_have_listeners(&suite, mixed, &[http, invalid]);
}

/// GatewayInvalidRouteKind.
#[test]
fn gateway_invalid_route_kind() {
    let suite = Conformance::start("gw-core-kind", &["gateway-invalid-route-kind.yaml"]);
    let want = |kinds| Want {
        name: "http",
        kinds,
        conditions: &[("ResolvedRefs", false, "InvalidRouteKinds")],
        attached: 0,
    };
    gateway_must_have_listeners(&suite, "gateway-only-invalid-route-kind", &[want(&[])]);
    gateway_must_have_listeners(
        &suite,
        "gateway-supported-and-invalid-route-kind",
        &[want(HTTP_ROUTE)],
    );
}

/// GatewayInvalidParametersRef: a parametersRef Capstan cannot read is `InvalidParameters`.
#[test]
fn gateway_invalid_parameters_ref() {
    let suite = Conformance::start("gw-core-params", &["gateway-invalid-parameters-ref.yaml"]);
    gateway_must_have_condition(
        &suite,
        "gateway-invalid-parameters-ref",
        ("Accepted", false, "InvalidParameters"),
    );
}

/// GatewayInvalidTLSConfiguration: a missing Secret, another group or kind, a malformed Secret.
/// Through the Kubernetes API, as the suite applies it: each object stands alone there, so the
/// malformed Secret is refused by itself (from a file, it would refuse the whole file).
#[tokio::test(flavor = "multi_thread")]
async fn gateway_invalid_tls_configuration() {
    let api = crate::support::kube_api::FakeApi::start().await;
    let suite = Conformance::start_kube(
        &api,
        "gw-core-tls",
        &["gateway-invalid-tls-configuration.yaml"],
    );
    tokio::task::block_in_place(|| {
        for gateway in [
            "gateway-certificate-nonexistent-secret",
            "gateway-certificate-unsupported-group",
            "gateway-certificate-unsupported-kind",
            "gateway-certificate-malformed-secret",
        ] {
            let want = https_listener(&[("ResolvedRefs", false, "InvalidCertificateRef")]);
            gateway_must_have_listeners(&suite, gateway, &[want]);
        }
    });
}

/// GatewaySecretInvalidReferenceGrant and GatewaySecretMissingReferenceGrant: no grant (or only
/// grants for something else) lets the Gateway use another namespace's Secret.
#[test]
fn gateway_secret_refused_without_a_matching_reference_grant() {
    let suite = Conformance::start(
        "gw-core-secret-refused",
        &[
            "gateway-secret-invalid-reference-grant.yaml",
            "gateway-secret-missing-reference-grant.yaml",
        ],
    );
    for gateway in [
        "gateway-secret-invalid-reference-grant",
        "gateway-secret-missing-reference-grant",
    ] {
        let refused = https_listener(&[("ResolvedRefs", false, "RefNotPermitted")]);
        gateway_must_have_listeners(&suite, gateway, &[refused]);
    }
}

/// GatewaySecretReferenceGrantAllInNamespace and GatewaySecretReferenceGrantSpecific.
#[test]
fn gateway_secret_reference_grant_all_in_namespace_and_specific() {
    let suite = Conformance::start(
        "gw-core-secret-granted",
        &[
            "gateway-secret-reference-grant-all-in-namespace.yaml",
            "gateway-secret-reference-grant-specific.yaml",
        ],
    );
    for gateway in [
        "gateway-secret-reference-grant-all-in-namespace",
        "gateway-secret-reference-grant-specific",
    ] {
        let granted = https_listener(&[
            ("Programmed", true, "Programmed"),
            ("ResolvedRefs", true, ""),
        ]);
        gateway_must_have_listeners(&suite, gateway, &[granted]);
    }
}

/// GatewayNameMaximumLength: a 253-character name is served like any other.
#[test]
fn gateway_name_maximum_length() {
    let suite = Conformance::start("gw-core-long-name", &["gateway-name-maximum-length.yaml"]);
    let name = format!("gateway-name-maximum-length-{}", "a".repeat(225));
    assert_eq!(name.len(), 253);
    gateway_must_have_condition(&suite, &name, ("Programmed", true, "Programmed"));
}

/// GatewayWithAttachedRoutes: attached routes counted per listener, also on a listener whose
/// certificate is missing; a route whose hostname no listener has is not counted.
#[test]
fn gateway_with_attached_routes() {
    let suite = Conformance::start("gw-core-attached", &["gateway-with-attached-routes.yaml"]);
    let valid = |attached| Want {
        name: "http",
        kinds: HTTP_ROUTE,
        conditions: &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
        attached,
    };
    gateway_must_have_listeners(&suite, "gateway-with-one-attached-route", &[valid(1)]);
    let two = "gateway-with-two-attached-routes";
    gateway_must_have_listeners(&suite, two, &[valid(2)]);
    parent_condition(
        &suite,
        (INFRA, "http-route-not-accepted"),
        two,
        "Accepted",
        ("False", "NoMatchingListenerHostname"),
    );
    let unresolved = "unresolved-gateway-with-one-attached-unresolved-route";
    let want = Want {
        name: "tls",
        kinds: HTTP_ROUTE,
        conditions: &[("Programmed", false, ""), ("ResolvedRefs", false, "")],
        attached: 1,
    };
    gateway_must_have_listeners(&suite, unresolved, &[want]);
    let route = suite
        .route_parent(INFRA, "http-route-4", unresolved)
        .expect("http-route-4 status");
    let resolved = condition(&route["conditions"], "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!(resolved["status"], "False", "{route:#}");
}

/// GatewayModifyListeners: a listener added to a Gateway serves, one removed stops serving.
/// The suite patches the Gateway through the API; here its manifest file is rewritten.
#[test]
fn gateway_modify_listeners() {
    let file = "gateway-modify-listeners.yaml";
    let suite = Conformance::start("gw-core-modify", &[file]);
    let https = Want {
        name: "https",
        kinds: HTTP_ROUTE,
        conditions: &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
        attached: 1,
    };
    gateway_must_have_listeners(&suite, "gateway-add-listener", &[https]);
    let original = std::fs::read_to_string(suite.dir.path(file)).expect("manifest");
    let added = original.replacen(
        "        namespace: gateway-conformance-infra\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: http-route-1",
        "        namespace: gateway-conformance-infra\n  - name: http\n    port: 80\n    protocol: HTTP\n    hostname: data.test.com\n    allowedRoutes:\n      namespaces:\n        from: All\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: http-route-1",
        1,
    );
    assert_ne!(added, original, "the listener was added to the manifest");
    let removed = added.replacen(
        "  - name: http\n    port: 80\n    protocol: HTTP\n    allowedRoutes:\n      namespaces:\n        from: All\n",
        "",
        1,
    );
    assert_ne!(removed, added, "the listener was removed from the manifest");
    suite.dir.write(file, &removed);
    let both = [
        Want {
            name: "https",
            kinds: HTTP_ROUTE,
            conditions: &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
            attached: 1,
        },
        Want {
            name: "http",
            kinds: HTTP_ROUTE,
            conditions: &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
            attached: 1,
        },
    ];
    gateway_must_have_listeners(&suite, "gateway-add-listener", &both);
    let gw = suite.gateway_must_accept("gateway-add-listener", &[(INFRA, "http-route-1")]);
    suite.expect_backend(gw, &get("/").host("data.test.com"), V1);

    let left = [Want {
        name: "https",
        kinds: HTTP_ROUTE,
        conditions: &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
        attached: 1,
    }];
    gateway_must_have_listeners(&suite, "gateway-remove-listener", &left);
    let gw = suite.gateway_must_accept("gateway-remove-listener", &[(INFRA, "http-route-2")]);
    let refused = crate::http_support::curl(&[&format!("http://{gw}/"), "--max-time", "2"]);
    assert_eq!(
        refused.0, 0,
        "the removed listener no longer answers: {refused:?}"
    );
}

/// HTTPRouteInvalidCrossNamespaceParentRef: a Gateway admitting only its own namespace refuses
/// a route from another (`NotAllowedByListeners`), and counts no route.
#[test]
fn httproute_invalid_cross_namespace_parent_ref() {
    let suite = Conformance::start(
        "gw-core-parent-ns",
        &["httproute-invalid-cross-namespace-parent-ref.yaml"],
    );
    let route = (
        "gateway-conformance-web-backend",
        "invalid-cross-namespace-parent-ref",
    );
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "Accepted",
        ("False", "NotAllowedByListeners"),
    );
    let status = suite
        .status("Gateway", INFRA, "same-namespace")
        .expect("status");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 0, "{status:#}");
}

/// HTTPRouteMultipleGateways: one route shared by two Gateways, each with its own route too.
#[test]
fn httproute_multiple_gateways() {
    let suite = Conformance::start("gw-core-multi", &["httproute-multiple-gateways.yaml"]);
    let shared = (INFRA, "multiple-gateways-shared-route");
    let same = suite.gateway_must_accept(
        "same-namespace",
        &[shared, (INFRA, "same-namespace-dedicated-route")],
    );
    let all = suite.gateway_must_accept(
        "all-namespaces",
        &[shared, (INFRA, "all-namespaces-dedicated-route")],
    );
    suite.expect_backend(same, &get("/shared"), V1);
    suite.expect_backend(same, &get("/"), V2);
    suite.expect_backend(all, &get("/shared"), V1);
    suite.expect_backend(all, &get("/"), V3);
}

/// HTTPRouteOmittedBackendRefs: rules without backends answer 500; refs stay resolved.
#[test]
fn httproute_omitted_backend_refs() {
    let suite = Conformance::start("gw-core-omitted", &["httproute-omitted-backendrefs.yaml"]);
    let route = (INFRA, "omitted-backendrefs");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    suite.expect_backend(gw, &get("/forward"), V1);
    suite.expect_status(gw, &get("/omitted-no-forward"), 500);
    suite.expect_status(gw, &get("/empty-no-forward"), 500);
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the rule whose backend no grant covers
/// answers 500, its sibling is served.
#[test]
fn httproute_partially_invalid_via_invalid_reference_grant() {
    let suite = Conformance::start(
        "gw-core-partial",
        &["httproute-partially-invalid-via-invalid-reference-grant.yaml"],
    );
    let route = (INFRA, "invalid-reference-grant");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("False", "RefNotPermitted"),
    );
    suite.expect_status(gw, &get("/v2"), 500);
    suite.expect_backend(gw, &get("/"), "app-backend-v1");
}

/// HTTPRoutePathMatchOrder: Exact before PathPrefix, longer prefixes first.
#[test]
fn httproute_path_match_order() {
    let suite = Conformance::start("gw-core-order", &["httproute-path-match-order.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "path-matching-order")]);
    let cases = [
        ("/match/exact/one", V3),
        ("/match/exact", V2),
        ("/match", V1),
        ("/match/prefix/one/any", V2),
        ("/match/prefix/any", V1),
        ("/match/any", V3),
    ];
    for (path, backend) in cases {
        suite.expect_backend(gw, &get(path), backend);
    }
}
