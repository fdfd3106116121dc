//! The `capstan.dev/*` annotations for ingress-nginx users, through the real binary: the same
//! filters as an HTTPRoute (prefix rewrite, header edits, redirect, request timeout) on an
//! Ingress.

use crate::http_support::{DEFAULT_CLASS, HttpBackend, curl, service};
use crate::support::{Capstan, TempDir, path_str};

fn annotated(name: &str, path: &str, annotations: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: {name}\n  namespace: demo\n  annotations:\n{annotations}spec:\n  rules:\n  - host: shop.example\n    http:\n      paths:\n      - {{path: \"{path}\", pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
    )
}

#[test]
fn migration_annotations_rewrite_edit_headers_redirect_and_time_out() {
    let backend = HttpBackend::start("web");
    let dir = TempDir::new("ingress-migration");
    let manifests = format!(
        "{DEFAULT_CLASS}{}{}{}{}",
        service("web", &[backend.addr], None),
        annotated(
            "api",
            "/api",
            "    capstan.dev/rewrite-target: /v2\n    capstan.dev/request-headers-set: \"X-Env: prod\"\n    capstan.dev/request-headers-remove: X-Debug\n    capstan.dev/response-headers-set: \"Cache-Control: no-store\"\n",
        ),
        annotated(
            "old",
            "/old",
            "    capstan.dev/permanent-redirect: https://new.example/home\n",
        ),
        annotated("slow", "/slow", "    capstan.dev/request-timeout: 500ms\n"),
    );
    dir.write("all.yaml", &manifests);
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--http",
        "127.0.0.1:0",
        "--https",
        "off",
    ]);
    let (http, _) = capstan.ingress_addrs();
    let http = http.expect("http listener");
    let resolve = format!("shop.example:{}:127.0.0.1", http.port());
    let url = |path: &str| format!("http://shop.example:{}{path}", http.port());

    let (status, body, head) = curl(&[
        "--resolve",
        &resolve,
        "-H",
        "X-Debug: 1",
        &url("/api/items?page=2"),
    ]);
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(
        body.contains("GET /v2/items?page=2"),
        "prefix rewritten: {body}"
    );
    assert!(body.contains("x-env: prod"), "{body}");
    assert!(!body.contains("x-debug"), "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{head}"
    );

    let (status, _, head) = curl(&["--resolve", &resolve, &url("/old/page")]);
    assert_eq!(status, 301);
    assert!(
        head.contains("location: https://new.example/home"),
        "{head}"
    );

    // The backend answers /slow after 2 s; the route's own timeout answers 504 first.
    let (status, _, _) = curl(&["--resolve", &resolve, &url("/slow")]);
    assert_eq!(status, 504);
}
