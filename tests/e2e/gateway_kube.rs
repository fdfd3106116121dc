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

/// Whether every condition of the object's written status (route: of each parent) was observed
/// at its current `metadata.generation`; returns that generation.
fn latest_generation(
    api: &crate::support::kube_api::FakeApi,
    resource: &'static str,
    namespace: &str,
    name: &str,
) -> Option<i64> {
    let object = api.object(resource, namespace, name)?;
    let generation = object["metadata"]["generation"].as_i64()?;
    let status = &object["status"];
    let lists: Vec<&serde_json::Value> = if resource == "httproutes" {
        status["parents"]
            .as_array()?
            .iter()
            .map(|p| &p["conditions"])
            .collect()
    } else {
        vec![&status["conditions"]]
    };
    let all_latest = !lists.is_empty()
        && lists.iter().all(|conditions| {
            conditions.as_array().is_some_and(|list| {
                !list.is_empty() && list.iter().all(|c| c["observedGeneration"] == generation)
            })
        });
    all_latest.then_some(generation)
}

/// GatewayClassObservedGenerationBump, GatewayObservedGenerationBump and
/// HTTPRouteObservedGenerationBump through the Kubernetes API: each object's spec is changed
/// (a class description, a listener added, a backend renamed), the API server bumps its
/// generation, and the status Capstan writes back is observed at the new one.
#[tokio::test(flavor = "multi_thread")]
async fn observed_generation_bumps_through_the_kubernetes_api() {
    let api = crate::support::kube_api::FakeApi::start().await;
    let files = [
        "gatewayclass-observed-generation-bump.yaml",
        "gateway-observed-generation-bump.yaml",
        "httproute-observed-generation-bump.yaml",
    ];
    let suite = Conformance::start_kube(&api, "gw-kube-generation", &files);
    let objects = [
        (
            "gatewayclasses",
            "",
            "gatewayclass-observed-generation-bump",
        ),
        ("gateways", INFRA, "gateway-observed-generation-bump"),
        ("httproutes", INFRA, "observed-generation-bump"),
    ];
    tokio::task::block_in_place(|| {
        let wait = |generation: i64| {
            for (resource, namespace, name) in objects {
                let seen = crate::support::eventually(std::time::Duration::from_secs(10), || {
                    latest_generation(&api, resource, namespace, name).filter(|g| *g == generation)
                });
                assert!(
                    seen.is_some(),
                    "{resource} {name}: status not at generation {generation}: {:#}",
                    api.object(resource, namespace, name).unwrap_or_default()
                );
            }
        };
        wait(1);
        let edits = [
            (files[0], "description: \"old\"", "description: \"new\""),
            (
                files[1],
                "      allowedRoutes:",
                "      allowedRoutes:\n        namespaces:\n          from: All\n    - name: alternate\n      hostname: \"foo.com\"\n      port: 80\n      protocol: HTTP\n      allowedRoutes:",
            ),
            (files[2], "name: infra-backend-v1", "name: infra-backend-v2"),
        ];
        for (file, from, to) in edits {
            let text = crate::gateway_support::conformance_yaml(file);
            let edited = text.replacen(from, to, 1);
            assert_ne!(edited, text, "{file} edited");
            api.apply_yaml(&edited);
        }
        wait(2);
        let gw =
            suite.gateway_must_accept("same-namespace", &[(INFRA, "observed-generation-bump")]);
        suite.expect_backend(gw, &get("/"), V2);
        let gateway = api
            .object("gateways", INFRA, "gateway-observed-generation-bump")
            .expect("gateway");
        assert_eq!(
            gateway["status"]["listeners"].as_array().map(Vec::len),
            Some(2)
        );
    });
}
