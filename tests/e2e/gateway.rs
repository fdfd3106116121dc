//! Gateway API conformance, Core and the Extended features Capstan claims, re-expressed through
//! the real binary from manifest files: each test is named after the upstream test
//! (`conformance/tests/*.go` of kubernetes-sigs/gateway-api), loads its manifest unchanged, and
//! sends its requests with its expectations.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};

use crate::gateway_support::{Conformance, INFRA, Reply, Req, condition, get, parent_condition};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

/// The request headers the backend saw, joined as the suite compares them.
fn seen_joined(reply: &Reply, name: &str) -> Option<String> {
    reply.seen.get(name).map(|values| values.join(","))
}

fn response_joined(reply: &Reply, name: &str) -> Option<String> {
    reply.response.get(name).map(|values| values.join(","))
}

#[test]
fn httproute_simple_same_namespace() {
    let suite = Conformance::start("gw-simple", &["httproute-simple-same-namespace.yaml"]);
    let route = (INFRA, "gateway-conformance-infra-test");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    suite.expect_backend(gw, &get("/"), V1);
}

#[test]
fn httproute_matching() {
    let suite = Conformance::start("gw-matching", &["httproute-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "matching")]);
    let cases = [
        (get("/"), V1),
        (get("/example"), V1),
        (get("/").header("Version", "one"), V1),
        (get("/v2"), V2),
        (get("/v2/example"), V2),
        (get("/").header("Version", "two"), V2),
        (get("/v2/"), V2),
        (get("/v2example"), V1),
        (get("/foo/v2/example"), V1),
    ];
    for (req, backend) in cases {
        suite.expect_backend(gw, &req, backend);
    }
}

#[test]
fn httproute_exact_path_matching() {
    let suite = Conformance::start("gw-exact", &["httproute-exact-path-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "exact-matching")]);
    suite.expect_backend(gw, &get("/one"), V1);
    suite.expect_backend(gw, &get("/two"), V2);
    for path in ["/", "/one/example", "/two/", "/Two"] {
        suite.expect_status(gw, &get(path), 404);
    }
}

#[test]
fn httproute_header_matching() {
    let suite = Conformance::start("gw-headers", &["httproute-header-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "header-matching")]);
    let with = |pairs: &[(&'static str, &'static str)]| {
        pairs.iter().fold(get("/"), |req, (n, v)| req.header(n, v))
    };
    type Headers = &'static [(&'static str, &'static str)];
    let cases: [(Headers, Option<&str>); 11] = [
        (&[("Version", "one")], Some(V1)),
        (&[("Version", "two")], Some(V2)),
        (&[("Version", "two"), ("Color", "orange")], Some(V1)),
        (&[("Version", "two"), ("Color", "blue")], Some(V2)),
        (&[("Color", "orange")], None),
        (&[("Some-Other-Header", "one")], None),
        (&[("Color", "blue")], Some(V1)),
        (&[("Color", "green")], Some(V1)),
        (&[("Color", "red")], Some(V2)),
        (&[("Color", "yellow")], Some(V2)),
        (&[("Color", "purple")], None),
    ];
    for (headers, want) in cases {
        match want {
            Some(backend) => suite.expect_backend(gw, &with(headers), backend),
            None => suite.expect_status(gw, &with(headers), 404),
        }
    }
}

#[test]
fn httproute_hostname_intersection() {
    let suite = Conformance::start("gw-hostnames", &["httproute-hostname-intersection.yaml"]);
    let routes = [
        (INFRA, "specific-host-matches-listener-specific-host"),
        (INFRA, "specific-host-matches-listener-wildcard-host"),
        (INFRA, "wildcard-host-matches-listener-specific-host"),
        (INFRA, "wildcard-host-matches-listener-wildcard-host"),
    ];
    let gw = suite.gateway_must_accept("httproute-hostname-intersection", &routes);
    let cases = [
        ("very.specific.com", "/s1", Some(V1)),
        ("very.specific.com:1234", "/s1", Some(V1)),
        ("non.matching.com", "/s1", None),
        ("foo.nonmatchingwildcard.io", "/s1", None),
        ("foo.wildcard.io", "/s1", None),
        ("very.specific.com", "/non-matching-prefix", None),
        ("foo.wildcard.io", "/s2", Some(V2)),
        ("bar.wildcard.io", "/s2", Some(V2)),
        ("foo.bar.wildcard.io", "/s2", Some(V2)),
        ("non.matching.com", "/s2", None),
        ("wildcard.io", "/s2", None),
        ("very.specific.com", "/s2", None),
        ("foo.wildcard.io", "/non-matching-prefix", None),
        ("very.specific.com", "/s3", Some(V3)),
        ("non.matching.com", "/s3", None),
        ("foo.specific.com", "/s3", None),
    ];
    for (host, path, want) in cases {
        let req = get(path).host(host);
        match want {
            Some(backend) => suite.expect_backend(gw, &req, backend),
            None => suite.expect_status(gw, &req, 404),
        }
    }
    // The fourth route's hostnames intersect no listener: NoMatchingListenerHostname.
    let status = suite
        .status("HTTPRoute", INFRA, "no-intersecting-hosts")
        .expect("status of no-intersecting-hosts");
    let parent = &status["parents"][0];
    let accepted = condition(&parent["conditions"], "Accepted").expect("Accepted");
    assert_eq!(accepted["status"], "False");
    assert_eq!(accepted["reason"], "NoMatchingListenerHostname");
}

#[test]
fn httproute_listener_hostname_matching() {
    let suite = Conformance::start(
        "gw-listeners",
        &["httproute-listener-hostname-matching.yaml"],
    );
    let routes = [
        (INFRA, "backend-v1"),
        (INFRA, "backend-v2"),
        (INFRA, "backend-v3"),
    ];
    let gw = suite.gateway_must_accept("httproute-listener-hostname-matching", &routes);
    let cases = [
        ("bar.com", Some(V1)),
        ("foo.bar.com", Some(V2)),
        ("baz.bar.com", Some(V3)),
        ("boo.bar.com", Some(V3)),
        ("multiple.prefixes.bar.com", Some(V3)),
        ("multiple.prefixes.foo.com", Some(V3)),
        ("foo.com", None),
        ("no.matching.host", None),
    ];
    for (host, want) in cases {
        let req = get("/").host(host);
        match want {
            Some(backend) => suite.expect_backend(gw, &req, backend),
            None => suite.expect_status(gw, &req, 404),
        }
    }
}

#[test]
fn httproute_matching_across_routes() {
    let suite = Conformance::start("gw-across", &["httproute-matching-across-routes.yaml"]);
    let routes = [(INFRA, "matching-part1"), (INFRA, "matching-part2")];
    let gw = suite.gateway_must_accept("same-namespace", &routes);
    let cases = [
        (get("/").host("example.com"), V1),
        (get("/example").host("example.com"), V1),
        (get("/example").host("example.net"), V1),
        (
            get("/example").host("example.com").header("Version", "one"),
            V1,
        ),
        (get("/v2").host("example.com"), V2),
        (get("/v2").host("example.net"), V1),
        (get("/v2/example").host("example.com"), V2),
        (get("/").host("example.com").header("Version", "two"), V2),
    ];
    for (req, backend) in cases {
        suite.expect_backend(gw, &req, backend);
    }
}

#[test]
fn httproute_cross_namespace() {
    let suite = Conformance::start("gw-crossns", &["httproute-cross-namespace.yaml"]);
    let route = ("gateway-conformance-web-backend", "cross-namespace");
    let gw = suite.gateway_must_accept("backend-namespaces", &[route]);
    parent_condition(
        &suite,
        route,
        "backend-namespaces",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    suite.expect_backend(gw, &get("/"), "web-backend");
}

/// HTTPRouteReferenceGrant: the backend in another namespace is served while the grant exists,
/// and answers 500 (RefNotPermitted) once the grant is deleted.
#[test]
fn httproute_reference_grant() {
    let suite = Conformance::start("gw-grant", &["httproute-reference-grant.yaml"]);
    let route = (INFRA, "reference-grant");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("True", "ResolvedRefs"),
    );
    suite.expect_backend(gw, &get("/"), "web-backend");

    let manifest = crate::gateway_support::conformance_manifest("httproute-reference-grant.yaml");
    let without_grant: Vec<&str> = manifest
        .split("\n---")
        .filter(|doc| !doc.contains("kind: ReferenceGrant"))
        .collect();
    suite.dir.write(
        "httproute-reference-grant.yaml",
        &without_grant.join("\n---"),
    );
    suite.expect_status(gw, &get("/"), 500);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("False", "RefNotPermitted"),
    );
}

#[test]
fn httproute_invalid_cross_namespace_backend_ref() {
    let suite = Conformance::start(
        "gw-badcross",
        &["httproute-invalid-cross-namespace-backend-ref.yaml"],
    );
    let route = (INFRA, "invalid-cross-namespace-backend-ref");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("False", "RefNotPermitted"),
    );
    suite.expect_status(gw, &get("/"), 500);
}

#[test]
fn httproute_invalid_backend_ref_unknown_kind() {
    let suite = Conformance::start(
        "gw-badkind",
        &["httproute-invalid-backendref-unknown-kind.yaml"],
    );
    let route = (INFRA, "invalid-backend-ref-unknown-kind");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("False", "InvalidKind"),
    );
    suite.expect_status(gw, &get("/v2"), 500);
}

#[test]
fn httproute_invalid_nonexistent_backend_ref() {
    let suite = Conformance::start(
        "gw-nobackend",
        &["httproute-invalid-nonexistent-backendref.yaml"],
    );
    let route = (INFRA, "invalid-nonexistent-backend-ref");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "ResolvedRefs",
        ("False", "BackendNotFound"),
    );
    suite.expect_status(gw, &get("/"), 500);
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName: not accepted (NoMatchingParent), and the
/// Gateway counts no attached route.
#[test]
fn httproute_invalid_parentref_not_matching_section_name() {
    let suite = Conformance::start(
        "gw-badsection",
        &["httproute-invalid-parentref-not-matching-section-name.yaml"],
    );
    let route = (INFRA, "httproute-listener-not-matching-section-name");
    parent_condition(
        &suite,
        route,
        "same-namespace",
        "Accepted",
        ("False", "NoMatchingParent"),
    );
    let gateway = suite
        .status("Gateway", INFRA, "same-namespace")
        .expect("gateway status");
    assert_eq!(gateway["listeners"][0]["attachedRoutes"], 0, "{gateway:#}");
}

#[test]
fn httproute_request_header_modifier() {
    let suite = Conformance::start("gw-reqheaders", &["httproute-request-header-modifier.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "request-header-modifier")]);
    type Case = (Req, Vec<(&'static str, &'static str)>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            get("/set").header("Some-Other-Header", "val"),
            vec![
                ("some-other-header", "val"),
                ("x-header-set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            get("/set")
                .header("Some-Other-Header", "val")
                .header("X-Header-Set", "some-other-value"),
            vec![
                ("some-other-header", "val"),
                ("x-header-set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            get("/add").header("Some-Other-Header", "val"),
            vec![
                ("some-other-header", "val"),
                ("x-header-add", "add-appends-values"),
            ],
            vec![],
        ),
        (
            get("/add")
                .header("Some-Other-Header", "val")
                .header("X-Header-Add", "some-other-value"),
            vec![("x-header-add", "some-other-value,add-appends-values")],
            vec![],
        ),
        (
            get("/remove").header("X-Header-Remove", "val"),
            vec![],
            vec!["x-header-remove"],
        ),
        (
            get("/multiple")
                .header("X-Header-Set-2", "set-val-2")
                .header("X-Header-Add-2", "add-val-2")
                .header("X-Header-Remove-2", "remove-val-2")
                .header("Another-Header", "another-header-val"),
            vec![
                ("x-header-set-1", "header-set-1"),
                ("x-header-set-2", "header-set-2"),
                ("x-header-add-1", "header-add-1"),
                ("x-header-add-2", "add-val-2,header-add-2"),
                ("x-header-add-3", "header-add-3"),
                ("another-header", "another-header-val"),
            ],
            vec!["x-header-remove-1", "x-header-remove-2"],
        ),
        (
            get("/case-insensitivity")
                .header("x-header-set", "original-val-set")
                .header("x-header-add", "original-val-add")
                .header("x-header-remove", "original-val-remove")
                .header("Another-Header", "another-header-val"),
            vec![
                ("x-header-set", "header-set"),
                ("x-header-add", "original-val-add,header-add"),
                ("another-header", "another-header-val"),
            ],
            vec!["x-header-remove"],
        ),
    ];
    for (req, present, absent) in cases {
        suite.expect(gw, &req, |r| {
            r.backend.as_deref() == Some(V1)
                && present
                    .iter()
                    .all(|(n, v)| seen_joined(r, n).as_deref() == Some(*v))
                && absent.iter().all(|n| r.seen(n).is_none())
        });
    }
}

#[test]
fn httproute_response_header_modifier() {
    let suite = Conformance::start(
        "gw-respheaders",
        &["httproute-response-header-modifier.yaml"],
    );
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "response-header-modifier")]);
    let echo = |path: &'static str, set: &'static str| get(path).header("X-Echo-Set-Header", set);
    type Case = (Req, Vec<(&'static str, &'static str)>, Vec<&'static str>);
    let cases: Vec<Case> = vec![
        (
            echo("/set", "Some-Other-Header:val"),
            vec![
                ("some-other-header", "val"),
                ("x-header-set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            echo(
                "/set",
                "Some-Other-Header:val,X-Header-Set:some-other-value",
            ),
            vec![
                ("some-other-header", "val"),
                ("x-header-set", "set-overwrites-values"),
            ],
            vec![],
        ),
        (
            echo(
                "/add",
                "Some-Other-Header:val,X-Header-Add:some-other-value",
            ),
            vec![("x-header-add", "some-other-value,add-appends-values")],
            vec![],
        ),
        (
            echo("/remove", "X-Header-Remove:val"),
            vec![],
            vec!["x-header-remove"],
        ),
    ];
    for (req, present, absent) in cases {
        suite.expect(gw, &req, |r| {
            r.status == 200
                && present
                    .iter()
                    .all(|(n, v)| response_joined(r, n).as_deref() == Some(*v))
                && absent.iter().all(|n| r.response(n).is_none())
        });
    }
}

#[test]
fn httproute_query_param_matching() {
    let suite = Conformance::start("gw-query", &["httproute-query-param-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "query-param-matching")]);
    let cases = [
        (get("/?animal=whale"), Some(V1)),
        (get("/?animal=dolphin"), Some(V2)),
        (get("/?animal=dolphin&color=blue"), Some(V3)),
        (get("/?ANIMAL=Whale"), Some(V3)),
        (get("/?animal=whale&otherparam=irrelevant"), Some(V1)),
        (get("/?animal=dolphin&color=yellow"), Some(V2)),
        (get("/?color=blue"), None),
        (get("/?animal=dog"), None),
        (get("/?animal=whaledolphin"), None),
        (get("/"), None),
        (get("/path1?animal=whale"), Some(V1)),
        (get("/?animal=whale").header("version", "one"), Some(V2)),
        (
            get("/path2?animal=whale").header("version", "two"),
            Some(V3),
        ),
        (get("/path3?animal=shark"), Some(V1)),
        (
            get("/path4?animal=kraken").header("version", "three"),
            Some(V1),
        ),
        (get("/?animal=shark"), None),
        (get("/path4?animal=kraken"), None),
        (get("/path5?animal=hydra"), Some(V1)),
        (get("/?animal=hydra").header("version", "four"), Some(V3)),
    ];
    for (req, want) in cases {
        match want {
            Some(backend) => suite.expect_backend(gw, &req, backend),
            None => suite.expect_status(gw, &req, 404),
        }
    }
}

#[test]
fn httproute_method_matching() {
    let suite = Conformance::start("gw-method", &["httproute-method-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "method-matching")]);
    let cases = [
        (get("/").method("POST"), Some(V1)),
        (get("/"), Some(V2)),
        (get("/").method("HEAD"), None),
        (get("/path1"), Some(V1)),
        (get("/").method("PUT").header("version", "one"), Some(V2)),
        (
            get("/path2").method("POST").header("version", "two"),
            Some(V3),
        ),
        (get("/path3").method("PATCH"), Some(V1)),
        (
            get("/path4").method("DELETE").header("version", "three"),
            Some(V1),
        ),
        (get("/").method("PUT"), None),
        (get("/path4").method("DELETE"), None),
        (get("/path5").method("PATCH"), Some(V1)),
        (get("/").method("PATCH").header("version", "four"), Some(V2)),
    ];
    for (req, want) in cases {
        match want {
            Some(backend) => suite.expect_backend(gw, &req, backend),
            None => suite.expect_status(gw, &req, 404),
        }
    }
}

/// A redirect's expected status and `Location` parts (`roundtripper.RedirectRequest`): `None`
/// parts must equal the request's.
struct Redirected {
    status: u16,
    scheme: Option<&'static str>,
    host: Option<&'static str>,
    port: Option<&'static str>,
    path: Option<&'static str>,
}

fn redirected(status: u16) -> Redirected {
    Redirected {
        status,
        scheme: None,
        host: None,
        port: None,
        path: None,
    }
}

fn expect_redirect(suite: &Conformance, gw: IpAddr, req: &Req, want: &Redirected) {
    suite.expect(gw, req, |r| {
        let Some(location) = r.response("location") else {
            return false;
        };
        let Some((scheme, rest)) = location.split_once("://") else {
            return false;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (authority, ""),
        };
        let gateway = gw.to_string();
        r.status == want.status
            && scheme == want.scheme.unwrap_or("http")
            && host == want.host.unwrap_or(&gateway)
            && want.port.is_none_or(|p| p == port)
            && path == want.path.unwrap_or(req.path)
    });
}

#[test]
fn httproute_redirect_path() {
    let suite = Conformance::start("gw-redirect-path", &["httproute-redirect-path.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "redirect-path")]);
    let cases = [
        (
            "/original-prefix/lemon",
            302,
            None,
            "/replacement-prefix/lemon",
        ),
        ("/full/path/original", 302, None, "/full-path-replacement"),
        (
            "/path-and-host",
            302,
            Some("example.org"),
            "/replacement-prefix",
        ),
        ("/path-and-status", 301, None, "/replacement-prefix"),
        (
            "/full-path-and-host",
            302,
            Some("example.org"),
            "/replacement-full",
        ),
        ("/full-path-and-status", 301, None, "/replacement-full"),
    ];
    for (path, status, host, target) in cases {
        let want = Redirected {
            host,
            path: Some(target),
            ..redirected(status)
        };
        expect_redirect(&suite, gw, &get(path), &want);
    }
}

#[test]
fn httproute_redirect_port_and_scheme_and_host() {
    let suite = Conformance::start(
        "gw-redirect-port",
        &[
            "httproute-redirect-port.yaml",
            "httproute-redirect-scheme.yaml",
            "httproute-redirect-host-and-status.yaml",
        ],
    );
    let routes = [
        (INFRA, "redirect-port"),
        (INFRA, "redirect-scheme"),
        (INFRA, "redirect-host-and-status"),
    ];
    let gw = suite.gateway_must_accept("same-namespace", &routes);
    let cases = [
        ("/port", 302, None, None, Some("8083")),
        (
            "/port-and-host",
            302,
            None,
            Some("example.org"),
            Some("8083"),
        ),
        ("/port-and-status", 301, None, None, Some("8083")),
        (
            "/port-and-host-and-status",
            302,
            None,
            Some("example.org"),
            Some("8083"),
        ),
        ("/scheme", 302, Some("https"), None, Some("")),
        (
            "/scheme-and-host",
            302,
            Some("https"),
            Some("example.org"),
            Some(""),
        ),
        ("/scheme-and-status", 301, Some("https"), None, Some("")),
        (
            "/scheme-and-host-and-status",
            302,
            Some("https"),
            Some("example.org"),
            Some(""),
        ),
        ("/hostname-redirect", 302, None, Some("example.org"), None),
        ("/host-and-status", 301, None, Some("example.org"), None),
    ];
    for (path, status, scheme, host, port) in cases {
        let want = Redirected {
            scheme,
            host,
            port,
            ..redirected(status)
        };
        expect_redirect(&suite, gw, &get(path), &want);
    }
}

#[test]
fn httproute_rewrite_host_and_path() {
    let suite = Conformance::start(
        "gw-rewrite",
        &["httproute-rewrite-host.yaml", "httproute-rewrite-path.yaml"],
    );
    let routes = [(INFRA, "rewrite-host"), (INFRA, "rewrite-path")];
    let gw = suite.gateway_must_accept("same-namespace", &routes);
    let host_cases = [("/one", V1, "one.example.org"), ("/two", V2, "example.org")];
    for (path, backend, host) in host_cases {
        suite.expect(gw, &get(path).host("rewrite.example"), |r| {
            r.backend.as_deref() == Some(backend)
                && r.seen("host") == Some(host)
                && r.path() == path
        });
    }
    let modified = get("/rewrite-host-and-modify-headers")
        .host("rewrite.example")
        .header("X-Header-Remove", "remove-val")
        .header("X-Header-Add-Append", "append-val-1");
    suite.expect(gw, &modified, |r| {
        r.backend.as_deref() == Some(V2)
            && r.seen("host") == Some("test.example.org")
            && r.seen("x-header-add") == Some("header-val-1")
            && seen_joined(r, "x-header-add-append").as_deref() == Some("append-val-1,header-val-2")
            && r.seen("x-header-set") == Some("set-overwrites-values")
            && r.seen("x-header-remove").is_none()
    });
    let path_cases = [
        ("/prefix/one/two", "/one/two"),
        ("/strip-prefix/three", "/three"),
        ("/strip-prefix", "/"),
        ("/full/one/two", "/one"),
    ];
    for (path, target) in path_cases {
        suite.expect(gw, &get(path), |r| {
            r.backend.as_deref() == Some(V1) && r.path() == target
        });
    }
    for (path, target) in [
        ("/full/rewrite-path-and-modify-headers/test", "/test"),
        ("/prefix/rewrite-path-and-modify-headers/one", "/prefix/one"),
    ] {
        let req = get(path)
            .header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val");
        suite.expect(gw, &req, |r| {
            r.backend.as_deref() == Some(V1)
                && r.path() == target
                && r.seen("x-header-add") == Some("header-val-1")
                && seen_joined(r, "x-header-add-append").as_deref()
                    == Some("append-val-1,header-val-2")
                && r.seen("x-header-set") == Some("set-overwrites-values")
                && r.seen("x-header-remove").is_none()
        });
    }
}

/// HTTPRouteWeight: 70/30/0 within the suite's tolerance, over 1,000 requests (one connection
/// each, as the suite's sender).
#[test]
fn httproute_weight() {
    let suite = Conformance::start("gw-weight", &["httproute-weight.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "weighted-backends")]);
    suite.expect(gw, &get("/"), |r| r.status == 200);
    let mut counts: HashMap<String, u32> = HashMap::new();
    let total = 1_000;
    for _ in 0..total {
        let mut stream = TcpStream::connect((gw, 80)).expect("connect");
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: weights\r\nConnection: close\r\n\r\n")
            .expect("send");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        let backend = answer
            .lines()
            .find_map(|l| l.strip_prefix("backend="))
            .unwrap_or("none")
            .to_owned();
        *counts.entry(backend).or_default() += 1;
    }
    for (backend, weight) in [(V1, 0.7), (V2, 0.3), (V3, 0.0)] {
        let share = f64::from(counts.get(backend).copied().unwrap_or(0)) / f64::from(total);
        // The suite's tolerance (weight.TestWeightedDistribution): 5 percentage points.
        assert!(
            (share - weight).abs() <= 0.05,
            "{backend}: {share} ({counts:?})"
        );
    }
}

/// HTTPRouteHTTPSListener: TLS terminated with the listener's certificateRefs Secret (checked by
/// curl against the test CA), routes by hostname and sectionName.
#[test]
fn httproute_https_listener() {
    let suite = Conformance::start("gw-https", &["httproute-https-listener.yaml"]);
    let routes = [
        (INFRA, "httproute-https-test"),
        (INFRA, "httproute-https-test-no-hostname"),
    ];
    let gw = suite.gateway_must_accept("same-namespace-with-https-listener", &routes);
    suite.expect_tls(gw, "example.org", 200, Some(V1));
    suite.expect_tls(gw, "unknown-example.org", 404, None);
    suite.expect_tls(gw, "second-example.org", 200, Some(V2));
}
