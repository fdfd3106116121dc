//! Gateway API changes under load: routes rewritten (weights, backends), a second Gateway (its
//! own socket) added and removed, and the HTTPS listener's certificate Secret rotated, 100
//! swaps while oha loads the HTTP Gateway and, one TLS handshake per request, the HTTPS one:
//! zero failed requests, as the Ingress path shows in
//! `ingress::oha_load_across_100_swaps_has_no_failed_requests`.

use std::time::Duration;

use crate::gateway_support::{Conformance, INFRA, TLS_SECRET_FILE};
use crate::http_support::{TestCert, curl};
use crate::support::{eventually, oha_all_ok, path_str, spawn_oha};

/// The HTTPS Gateway of the conformance base, and its catch-all listener.
const TLS_GATEWAY: &str = "same-namespace-with-https-listener";

/// An HTTPRoute `load` on `same-namespace` with the given `(backend, weight)`s.
fn load_route(backends: &[(&str, u32)]) -> String {
    let refs: String = backends
        .iter()
        .map(|(name, weight)| format!("    - {{name: {name}, port: 8080, weight: {weight}}}\n"))
        .collect();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: load, namespace: {INFRA}}}\nspec:\n  parentRefs: [{{name: same-namespace}}, {{name: {TLS_GATEWAY}, sectionName: https}}]\n  rules:\n  - backendRefs:\n{refs}"
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

/// A new certificate for the HTTPS listeners' Secret, written over the old.
fn rotate_certificate(suite: &Conformance) -> TestCert {
    let cert = TestCert::new(&["example.org", "second-example.org", "*.wildcard.org"]);
    let secret = cert.secret(INFRA, "tls-validity-checks-certificate");
    suite.dir.write(TLS_SECRET_FILE, &secret);
    cert
}

#[test]
fn oha_load_across_100_gateway_route_and_certificate_swaps_has_no_failed_requests() {
    let suite = Conformance::start("gw-load", &[]);
    suite
        .dir
        .write("load.yaml", &load_route(&[("infra-backend-v1", 1)]));
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "load")]);
    let tls_gw = suite.gateway_must_accept(TLS_GATEWAY, &[(INFRA, "load")]);
    suite.expect_backend(gw, &crate::gateway_support::get("/"), "infra-backend-v1");
    let mut oha = spawn_oha(
        &format!("http://{gw}/"),
        "40s",
        16,
        &["-H", "Host: load.example"],
    );
    // No SNI (an address): the catch-all `https` listener's certificate, a handshake per request.
    let tls_url = format!("https://{tls_gw}/");
    let oha_tls = spawn_oha(&tls_url, "40s", 4, &["--insecure", "--disable-keepalive"]);
    std::thread::sleep(Duration::from_millis(500));
    let capstan = &suite.capstan;
    let mut cert = None;
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
        if round % 10 == 5 {
            cert = Some(rotate_certificate(&suite));
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
    oha_all_ok(oha, 1_000);
    oha_all_ok(oha_tls, 100);
    // The last rotation is what new handshakes get: its CA verifies the listener.
    let ca = suite
        .dir
        .write("last-ca.pem", &cert.expect("rotated").ca_pem);
    let resolve = format!("example.org:443:{tls_gw}");
    let args = [
        "--cacert",
        path_str(&ca),
        "--resolve",
        &resolve,
        "https://example.org/",
    ];
    let (status, body, _) = curl(&args);
    if status != 200 {
        let verbose = std::process::Command::new("curl")
            .arg("-v")
            .args(args)
            .output()
            .expect("curl -v");
        panic!(
            "the rotated certificate is not served ({status} {body}):\n{}\n{:#}",
            String::from_utf8_lossy(&verbose.stderr),
            capstan.snapshot()["sources"]
        );
    }
}
