//! Gateway API changes under load: routes rewritten (weights, backends), a second Gateway (its
//! own socket) added and removed, 100 times while oha loads the first Gateway: zero failed
//! requests, as the Ingress path shows in `ingress::oha_load_across_100_swaps_has_no_failed_requests`.

use std::time::Duration;

use crate::gateway_support::{Conformance, INFRA};
use crate::support::eventually;

/// An HTTPRoute `load` on `same-namespace` with the given `(backend, weight)`s.
fn load_route(backends: &[(&str, u32)]) -> String {
    let refs: String = backends
        .iter()
        .map(|(name, weight)| format!("    - {{name: {name}, port: 8080, weight: {weight}}}\n"))
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: load, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}]\n  rules:\n  - backendRefs:\n{refs}"
    )
}

const EXTRA_GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: extra, namespace: gateway-conformance-infra}
spec:
  gatewayClassName: capstan
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: extra, namespace: gateway-conformance-infra}
spec:
  parentRefs: [{name: extra}]
  rules: [{backendRefs: [{name: infra-backend-v3, port: 8080}]}]
";

#[test]
fn oha_load_across_100_gateway_and_route_swaps_has_no_failed_requests() {
    let suite = Conformance::start("gw-load", &[]);
    suite
        .dir
        .write("load.yaml", &load_route(&[("infra-backend-v1", 1)]));
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "load")]);
    suite.expect_backend(gw, &crate::gateway_support::get("/"), "infra-backend-v1");
    let url = format!("http://{gw}/");
    let mut oha = std::process::Command::new("oha")
        .args([
            "-z",
            "40s",
            "-w",
            "-c",
            "16",
            "--no-tui",
            "--output-format",
            "json",
        ])
        .args(["-H", "Host: load.example", &url])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("oha (cargo install oha) is needed for this test");
    std::thread::sleep(Duration::from_millis(500));
    let capstan = &suite.capstan;
    for round in 0..100 {
        let generation = capstan.generation();
        let backends: &[(&str, u32)] = match round % 3 {
            0 => &[("infra-backend-v1", 1), ("infra-backend-v2", 1)],
            1 => &[("infra-backend-v2", 3), ("infra-backend-v3", 0)],
            _ => &[("infra-backend-v1", 1)],
        };
        suite.dir.write("load.yaml", &load_route(backends));
        if round % 2 == 0 {
            suite.dir.write("extra.yaml", EXTRA_GATEWAY);
        } else {
            let _ = std::fs::remove_file(suite.dir.path("extra.yaml"));
        }
        eventually(Duration::from_secs(10), || {
            (capstan.generation() > generation).then_some(())
        })
        .unwrap_or_else(|| panic!("swap {round} never applied\n{}", capstan.logs()));
    }
    assert!(
        oha.try_wait().expect("oha status").is_none(),
        "the 100 swaps finished while oha was still loading"
    );
    let output = oha.wait_with_output().expect("oha finished");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("oha JSON report");
    let codes = &report["statusCodeDistribution"];
    let ok = codes["200"].as_u64().unwrap_or(0);
    let total: u64 = codes
        .as_object()
        .map_or(0, |c| c.values().filter_map(|v| v.as_u64()).sum());
    assert!(ok > 1_000, "load ran: {report:#}");
    assert_eq!(ok, total, "every response 200: {codes}");
    let errors = &report["errorDistribution"];
    assert!(
        errors.as_object().is_none_or(|e| e.is_empty()),
        "no connection errors: {errors}"
    );
}
