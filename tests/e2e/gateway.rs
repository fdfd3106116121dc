//! Gateway API conformance, Core and the Extended features Capstan claims, re-expressed through
//! the real binary from manifest files: each test is named after the upstream test
//! (`conformance/tests/*.go` of kubernetes-sigs/gateway-api) and sends its requests with its
//! expectations.

use crate::gateway_support::{Conformance, INFRA, condition, get};

#[test]
fn httproute_simple_same_namespace() {
    let suite = Conformance::start("gw-simple", &["httproute-simple-same-namespace.yaml"]);
    let gw = suite.gateway_must_accept(
        "same-namespace",
        &[(INFRA, "gateway-conformance-infra-test")],
    );
    let parent = suite
        .route_parent(INFRA, "gateway-conformance-infra-test", "same-namespace")
        .expect("parent status");
    let resolved = condition(&parent["conditions"], "ResolvedRefs").expect("ResolvedRefs");
    assert_eq!(resolved["status"], "True");
    suite.expect_backend(gw, &get("/"), "infra-backend-v1");
}
