//! Gateway API conformance through the Kubernetes API: the fake API server serves the objects
//! as JSON, Capstan watches them and writes their status back.

use crate::gateway_support::{Conformance, INFRA, condition, get};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";

/// HTTPRouteMatching through the Kubernetes API (the fake API server serving the objects as
/// JSON), and the status written back: GatewayClass Accepted, Gateway Programmed with its
/// address and attached routes, the route's parent Accepted and ResolvedRefs.
#[tokio::test(flavor = "multi_thread")]
async fn httproute_matching_through_the_kubernetes_api_with_status_written_back() {
    let api = crate::support::kube_api::FakeApi::start().await;
    let suite = Conformance::start_kube(&api, "gw-kube", &["httproute-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "matching")]);
    suite.expect_backend(gw, &get("/v2/example"), V2);
    suite.expect_backend(gw, &get("/").header("Version", "one"), V1);
    suite.expect_backend(gw, &get("/v2example"), V1);

    let written = crate::support::eventually(std::time::Duration::from_secs(10), || {
        let route = api.object("httproutes", INFRA, "matching")?;
        let parent = route["status"]["parents"][0].clone();
        crate::gateway_support::condition_true(&parent["conditions"], "Accepted").then_some(parent)
    })
    .unwrap_or_else(|| panic!("route status never written: {:?}", api.requests()));
    assert_eq!(parent_ref_name(&written), "same-namespace");
    assert_eq!(written["controllerName"], "capstan.dev/gateway-controller");
    let resolved = condition(&written["conditions"], "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!(resolved["status"], "True");
    assert!(resolved["lastTransitionTime"].is_string(), "{resolved}");

    let gateway = api
        .object("gateways", INFRA, "same-namespace")
        .expect("gateway");
    let status = &gateway["status"];
    assert_eq!(
        status["addresses"][0]["value"],
        gw.to_string(),
        "{status:#}"
    );
    let programmed = condition(&status["conditions"], "Programmed").expect("Programmed");
    assert_eq!(programmed["status"], "True");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 1, "{status:#}");
    assert_eq!(
        status["listeners"][0]["supportedKinds"][0]["kind"],
        "HTTPRoute"
    );
    let class = api.object("gatewayclasses", "", "capstan").expect("class");
    let accepted = condition(&class["status"]["conditions"], "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "True");
}

fn parent_ref_name(parent: &serde_json::Value) -> &str {
    parent["parentRef"]["name"].as_str().unwrap_or_default()
}
