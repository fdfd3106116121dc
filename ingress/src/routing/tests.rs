//! Every Ingress v1 matching rule as a table of (host, path) → expected backend, including the
//! examples table of the Kubernetes documentation ("Examples" under "Path types").

use std::sync::Arc;

use capstan_table::{
    Backend, BackendPort, IngressTable, PathType, Route, RouteConflict, ServiceKey,
    UpstreamProtocol,
};

use super::*;

fn to(service: &str) -> Arc<Route> {
    Arc::new(Route {
        ingress: format!("test/{service}").into(),
        host: "*".into(),
        path: "/".into(),
        backend: Backend::Service {
            service: ServiceKey::new("test", service),
            port: BackendPort::Number(80),
        },
        upstream: None,
        protocol: UpstreamProtocol::Http1,
        tls: None,
        basic_auth: None,
        unusable: false,
        policy: Arc::default(),
        stats: Arc::default(),
        state: Arc::default(),
    })
}

fn name(routed: Routed<'_>) -> String {
    let service = |r: &Route| match &r.backend {
        Backend::Service { service, .. } => service.name.to_string(),
    };
    match routed {
        Routed::Route(r) => service(r),
        Routed::Default(r) => format!("default:{}", service(r)),
        Routed::NotFound => "404".into(),
    }
}

/// Hosts and paths covering every rule; one backend per rule, named after it.
fn table(with_default: bool) -> IngressTable {
    use PathType::{Exact, Prefix};
    let mut table = IngressTable::default();
    let rules: &[(Option<&str>, &str, PathType, &str)] = &[
        (Some("docs.example.com"), "/", Prefix, "docs-root"),
        (Some("docs.example.com"), "/foo", Exact, "docs-foo-exact"),
        (Some("docs.example.com"), "/foo", Prefix, "docs-foo"),
        (Some("docs.example.com"), "/aaa", Prefix, "docs-aaa"),
        (
            Some("docs.example.com"),
            "/aaa/bbb/",
            Prefix,
            "docs-aaa-bbb",
        ),
        (Some("docs.example.com"), "/impl", Prefix, "docs-impl"),
        (Some("*.example.com"), "/", Prefix, "wildcard"),
        (Some("Exact.Example.COM"), "/only", Exact, "exact-only"),
        (None, "/api", Prefix, "any-api"),
    ];
    for &(host, path, path_type, service) in rules {
        table
            .host_mut(host)
            .add(path, path_type, to(service))
            .expect("no conflicts");
    }
    if with_default {
        table.default_backend = Some(to("fallback"));
    }
    table.finish();
    table
}

#[test]
fn every_matching_rule() {
    let table = table(true);
    #[rustfmt::skip]
    let cases: &[(&str, &str, &str, &str)] = &[
        // Prefix `/` matches every path.
        ("prefix /", "docs.example.com", "/", "docs-root"),
        ("prefix /", "docs.example.com", "/anything/at/all", "docs-root"),
        // Exact is case-sensitive and exact; it wins over an equal Prefix.
        ("exact over prefix", "docs.example.com", "/foo", "docs-foo-exact"),
        ("exact: no trailing slash", "docs.example.com", "/foo/", "docs-foo"),
        ("exact: case-sensitive", "docs.example.com", "/FOO", "docs-root"),
        // Prefix is element-wise.
        ("prefix /foo: child", "docs.example.com", "/foo/bar", "docs-foo"),
        ("prefix /foo: not /foobar", "docs.example.com", "/foobar", "docs-root"),
        ("prefix /aaa/bbb/: /aaa/bbb", "docs.example.com", "/aaa/bbb", "docs-aaa-bbb"),
        ("prefix /aaa/bbb/: /aaa/bbb/", "docs.example.com", "/aaa/bbb/", "docs-aaa-bbb"),
        ("prefix /aaa/bbb/: /aaa/bbb/ccc", "docs.example.com", "/aaa/bbb/ccc", "docs-aaa-bbb"),
        ("prefix /aaa/bbb: not /aaa/bbbxyz", "docs.example.com", "/aaa/bbbxyz", "docs-aaa"),
        ("longest prefix wins", "docs.example.com", "/aaa/ccc", "docs-aaa"),
        ("ImplementationSpecific is Prefix", "docs.example.com", "/impl/x", "docs-impl"),
        // Hosts: exact over wildcard; the wildcard covers exactly one label.
        ("wildcard one label", "a.example.com", "/x", "wildcard"),
        ("wildcard not two labels", "a.b.example.com", "/api/v1", "any-api"),
        ("wildcard not the bare domain", "example.com", "/api", "any-api"),
        ("host case and port", "DOCS.Example.com:8443", "/foo", "docs-foo-exact"),
        ("host trailing dot", "docs.example.com.", "/foo", "docs-foo-exact"),
        ("rule host lowercased", "exact.example.com", "/only", "exact-only"),
        // Nothing matches within the chosen host: the default backend, not other hosts' rules.
        ("host without the path", "exact.example.com", "/api", "default:fallback"),
        ("no host rule, no path", "other.test", "/", "default:fallback"),
        ("host-less rule", "other.test", "/api/x", "any-api"),
        ("IPv6 literal host", "[2001:db8::1]:80", "/api", "any-api"),
    ];
    let mut failures = Vec::new();
    for &(rule, host, path, expected) in cases {
        let got = name(route(&table, host, path));
        if got != expected {
            failures.push(format!("{rule}: {host}{path} → {got}, expected {expected}"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn without_a_default_backend_nothing_matched_is_404() {
    let table = table(false);
    assert_eq!(name(route(&table, "other.test", "/")), "404");
    assert_eq!(name(route(&table, "exact.example.com", "/api")), "404");
    assert_eq!(name(route(&IngressTable::default(), "any", "/")), "404");
}

#[test]
fn the_first_rule_for_a_path_is_kept() {
    let mut table = IngressTable::default();
    let host = table.host_mut(Some("a.test"));
    host.add("/x/", PathType::Prefix, to("first"))
        .expect("first");
    assert_eq!(
        host.add("/x", PathType::Prefix, to("second")),
        Err(RouteConflict::Duplicate {
            existing: "test/first".into()
        }),
        "/x/ and /x are the same prefix"
    );
    host.add("/x", PathType::Exact, to("exact"))
        .expect("a different type");
    table.finish();
    assert_eq!(name(route(&table, "a.test", "/x/y")), "first");
}

proptest::proptest! {
    /// Any host and path: a decision, never a panic; and a matched Prefix rule really is an
    /// element-wise prefix of the path.
    #[test]
    fn any_request_is_routed_without_panicking(host in "\\PC{0,40}", path in "/[a-z/]{0,20}") {
        let table = table(false);
        if let Routed::Route(route) = route(&table, &host, &path)
            && route.ingress.as_ref() == "test/docs-foo"
        {
            proptest::prop_assert!(path == "/foo" || path.starts_with("/foo/"));
        }
    }
}
