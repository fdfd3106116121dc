//! Ingress manifests through the real conversion and compile to the pure router: class
//! selection, merging across Ingresses, backends resolved to Service ports, problems reported.

use std::path::Path;

use capstan::source::parse_manifests;
use capstan_catalog::{Catalog, CompileOptions, SourceId, Update, compile};
use capstan_ingress::{Routed, route};
use capstan_table::{Generation, Snapshot};

const MANIFESTS: &str = r#"
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: capstan
  annotations: {ingressclass.kubernetes.io/is-default-class: "true"}
spec: {controller: capstan.dev/ingress}
---
apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: nginx}
spec: {controller: k8s.io/ingress-nginx}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: a-shop, namespace: shop}
spec:
  ingressClassName: capstan
  defaultBackend: {service: {name: web, port: {number: 80}}}
  rules:
    - host: shop.example.com
      http:
        paths:
          - {path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}
          - {path: /admin, pathType: Exact, backend: {service: {name: web, port: {name: admin}}}}
          - {path: /gone, pathType: Prefix, backend: {service: {name: missing, port: {number: 80}}}}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: b-classless, namespace: shop}
spec:
  rules:
    - host: "*.example.com"
      http:
        paths: [{path: /, pathType: ImplementationSpecific, backend: {service: {name: web, port: {name: http}}}}]
    - host: shop.example.com
      http:
        paths: [{path: /admin, pathType: Exact, backend: {service: {name: web, port: {number: 80}}}}]
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: c-other, namespace: shop}
spec:
  ingressClassName: nginx
  rules:
    - host: nginx.test
      http:
        paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]
"#;

fn snapshot() -> Snapshot {
    let objects = parse_manifests(Path::new("ingress.yaml"), MANIFESTS).expect("parse");
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("test"),
        objects,
    });
    compile(&catalog, None, &CompileOptions::default(), Generation(1))
}

/// `ingress → service:port` of the routed request, `default:` for the default backend.
fn routed(snapshot: &Snapshot, host: &str, path: &str) -> String {
    let describe = |r: &capstan_table::Route| {
        let upstream = r
            .upstream
            .as_ref()
            .map_or("none".to_owned(), |p| p.key.to_string());
        format!("{} → {upstream}", r.ingress)
    };
    match route(&snapshot.ingress, host, path) {
        Routed::Route(r) => describe(r),
        Routed::Default(r) => format!("default: {}", describe(r)),
        Routed::NotFound => "404".into(),
    }
}

#[test]
fn ingresses_of_our_class_are_merged_and_resolved() {
    let snapshot = snapshot();
    let cases = [
        (
            "shop.example.com",
            "/cart",
            "shop/a-shop → shop/web:http/TCP",
        ),
        (
            "shop.example.com",
            "/admin",
            "shop/a-shop → shop/web:admin/TCP",
        ),
        ("shop.example.com", "/gone/x", "shop/a-shop → none"),
        (
            "blog.example.com",
            "/",
            "shop/b-classless → shop/web:http/TCP",
        ),
        (
            "nginx.test",
            "/",
            "default: shop/a-shop → shop/web:http/TCP",
        ),
        (
            "unknown.test",
            "/",
            "default: shop/a-shop → shop/web:http/TCP",
        ),
    ];
    for (host, path, expected) in cases {
        assert_eq!(routed(&snapshot, host, path), expected, "{host}{path}");
    }
    let problems: Vec<String> = snapshot.problems.iter().map(ToString::to_string).collect();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("shop/a-shop") && p.contains("missing")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("shop/b-classless") && p.contains("/admin ignored")),
        "{problems:?}"
    );
}

#[test]
fn without_a_default_class_classless_ingresses_are_not_served() {
    let text = MANIFESTS.replace("\"true\"", "\"false\"");
    let objects = parse_manifests(Path::new("ingress.yaml"), &text).expect("parse");
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("test"),
        objects,
    });
    let snapshot = compile(&catalog, None, &CompileOptions::default(), Generation(1));
    assert!(routed(&snapshot, "blog.example.com", "/").starts_with("default:"));
}

#[test]
fn invalid_ingresses_fail_their_file_with_a_reason() {
    for (bad, reason) in [
        ("pathType: Regex", "pathType"),
        ("path: nope", "must start with /"),
        ("host: \"a.*.example.com\"", "host"),
    ] {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: x}}\nspec:\n  rules:\n    - {}\n      http:\n        paths: [{{path: /, pathType: Prefix, backend: {{service: {{name: web, port: {{number: 80}}}}}}}}]\n",
            if bad.starts_with("host") {
                bad.to_owned()
            } else {
                "host: a.test".to_owned()
            }
        );
        let text = if bad.starts_with("host") {
            text
        } else {
            text.replace(
                if bad.starts_with("pathType") {
                    "pathType: Prefix"
                } else {
                    "path: /"
                },
                bad,
            )
        };
        let error = parse_manifests(Path::new("bad.yaml"), &text).expect_err(bad);
        assert!(error.to_string().contains(reason), "{bad}: {error}");
    }
}
