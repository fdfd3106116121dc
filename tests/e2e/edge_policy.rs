//! Route policy at the edge, end to end (issue 16): rate limits, body size and source limits,
//! refused annotations, sticky sessions, trusted proxies with the PROXY protocol, CORS and HSTS;
//! the real binary, real clients (curl, oha, raw sockets).

use std::net::SocketAddr;
use std::time::Duration;

use crate::http_support::HttpBackend;
use crate::resilience_support::{
    FaultyBackend, Mode, backend_name, decisions, oha, raw_exchange, raw_head, set_cookie, start,
    start_with, status, status_count, write_manifests,
};
use crate::support::{Capstan, TempDir, eventually, path_str};

/// A route limited to 20/s (burst 5) admits 20/s ±10 % under a much higher offer, and the
/// refused requests get 429 with `Retry-After`.
#[test]
fn a_rate_limited_route_answers_429_beyond_its_rate() {
    let backend = FaultyBackend::start("limited", Mode::Ok);
    let dir = TempDir::new("ratelimit");
    write_manifests(
        &dir,
        &[backend.addr],
        &[],
        &[("rate-limit", "20/s"), ("rate-limit-burst", "5")],
    );
    let (capstan, http) = start(&dir);
    let report = oha(
        &format!("http://{http}/"),
        &["-z", "4s", "-c", "4", "-q", "200", "-w"],
    );
    let passed = status_count(&report, "200");
    let limited = status_count(&report, "429");
    // The run's length at 20/s, plus the burst of 5.
    let seconds = report["summary"]["total"].as_f64().unwrap_or(4.0);
    let expected = seconds * 20.0 + 5.0;
    let error = (passed as f64 - expected).abs() / expected;
    assert!(
        error <= 0.10,
        "{passed} admitted, {limited} limited; expected {expected} ±10 %"
    );
    assert!(limited > 300, "{report:#}");
    assert_eq!(decisions(&capstan, "rate_limited"), limited as f64);
    // Spend the bucket again and look at a refusal: 429 with Retry-After in whole seconds.
    let refusal = (0..20)
        .map(|_| raw_head(http))
        .find(|head| head.starts_with("HTTP/1.1 429"))
        .expect("a 429 within 20 quick requests");
    assert!(
        refusal.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "{refusal}"
    );
}

/// `max-body-size` answers 413 for a declared body over it; `allow-source-ranges` 403 outside.
#[test]
fn body_size_and_source_limits_refuse_with_413_and_403() {
    let backend = FaultyBackend::start("limits", Mode::Ok);
    let dir = TempDir::new("limits");
    write_manifests(&dir, &[backend.addr], &[], &[("max-body-size", "1k")]);
    let (capstan, http) = start(&dir);
    let post = |size: usize| {
        let head = format!("POST / HTTP/1.1\r\nHost: x\r\ncontent-length: {size}\r\n\r\n");
        let mut raw = head.into_bytes();
        raw.extend(std::iter::repeat_n(b'a', size));
        crate::http_support::raw_status(http, &raw)
    };
    assert!(post(1024).contains(" 200 "), "at the limit");
    assert!(post(1025).contains(" 413 "), "over the limit");

    let generation = capstan.generation();
    write_manifests(
        &dir,
        &[backend.addr],
        &[],
        &[("allow-source-ranges", "192.0.2.0/24")],
    );
    eventually(Duration::from_secs(10), || {
        (capstan.generation() > generation).then_some(())
    })
    .expect("reloaded");
    assert_eq!(status(http, "/"), 403, "127.0.0.1 is not allowed");
    assert_eq!(decisions(&capstan, "source_denied"), 1.0);
}

/// A bad annotation refuses that Ingress with a message naming the key; the last good version
/// keeps serving.
#[test]
fn an_invalid_annotation_is_refused_and_the_last_good_route_serves() {
    let backend = FaultyBackend::start("kept", Mode::Ok);
    let dir = TempDir::new("badpolicy");
    write_manifests(&dir, &[backend.addr], &[], &[("retries", "1")]);
    let (capstan, http) = start(&dir);
    assert_eq!(status(http, "/"), 200);
    write_manifests(&dir, &[backend.addr], &[], &[("retries", "lots")]);
    let snapshot = capstan.wait_snapshot("the refusal", |s| {
        s["sources"]
            .to_string()
            .contains("retries: \\\"lots\\\" is not a whole number")
    });
    assert_eq!(
        snapshot["ingress"]["routes"][0]["policy"]["retry"]["retries"], 1,
        "the last good Ingress is kept"
    );
    assert_eq!(status(http, "/"), 200);
}

/// `affinity: cookie`: a client holding the cookie stays on one endpoint across 100 requests and
/// endpoint changes around it, and moves (with a new cookie) only when that endpoint leaves.
#[test]
fn a_sticky_session_stays_on_its_endpoint_until_the_endpoint_leaves() {
    let backends: Vec<HttpBackend> = (0..4)
        .map(|i| HttpBackend::start(&format!("s{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let dir = TempDir::new("sticky");
    let sticky = [("affinity", "cookie"), ("session-cookie-name", "route")];
    write_manifests(&dir, &addrs[..3], &[], &sticky);
    let (capstan, http) = start(&dir);
    let url = format!("http://{http}/");
    let (code, body, head) = crate::http_support::curl(&[&url]);
    assert_eq!(code, 200);
    let cookie = set_cookie(&head).expect("a Set-Cookie for a client without one");
    assert!(head.contains("Path=/; HttpOnly"), "{head}");
    let first = backend_name(&body);
    let sticky_get = |cookie: &str| {
        let (code, body, head) = crate::http_support::curl(&["-b", cookie, &url]);
        assert_eq!(code, 200);
        (backend_name(&body), set_cookie(&head))
    };
    for i in 0..100 {
        let (name, again) = sticky_get(&cookie);
        assert_eq!(name, first, "request {i} stays");
        assert_eq!(again, None, "no new cookie while it holds");
    }
    // Another endpoint joins: the session stays put.
    let generation = capstan.generation();
    write_manifests(&dir, &addrs, &[], &sticky);
    eventually(Duration::from_secs(10), || {
        (capstan.generation() > generation).then_some(())
    })
    .expect("reloaded");
    for _ in 0..20 {
        assert_eq!(sticky_get(&cookie).0, first);
    }
    // Its endpoint leaves: the client moves once and gets a cookie for the new one.
    let index: usize = first.trim_start_matches('s').parse().expect("name");
    let remaining: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|a| *a != addrs[index])
        .collect();
    let generation = capstan.generation();
    write_manifests(&dir, &remaining, &[], &sticky);
    eventually(Duration::from_secs(10), || {
        (capstan.generation() > generation).then_some(())
    })
    .expect("reloaded");
    let (moved, new_cookie) = sticky_get(&cookie);
    assert_ne!(moved, first);
    let new_cookie = new_cookie.expect("a cookie for the new endpoint");
    for _ in 0..20 {
        assert_eq!(sticky_get(&new_cookie).0, moved);
    }
}

/// `--trusted-proxies` and `--proxy-protocol`: a trusted peer's PROXY header names the client
/// (v1 and v2), a trusted peer's `X-Forwarded-For` is extended and its `X-Request-Id` kept; a
/// client behind a PROXY header is not itself trusted; a malformed header closes the connection
/// and is counted.
#[test]
fn trusted_proxies_and_the_proxy_protocol_carry_the_client_address() {
    let backend = HttpBackend::start("echo");
    let dir = TempDir::new("proxyproto");
    write_manifests(&dir, &[backend.addr], &[], &[]);
    let (capstan, http) = start_with(
        &dir,
        &["--trusted-proxies", "127.0.0.0/8", "--proxy-protocol"],
    );
    let request = "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Forwarded-For: 6.6.6.6\r\nX-Request-Id: from-client\r\n\r\n";
    let header_of = |answer: &str, name: &str| {
        answer
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_owned)
    };

    let v1 = raw_exchange(
        http,
        format!("PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\n{request}").as_bytes(),
    );
    assert_eq!(
        header_of(&v1, "x-forwarded-for").as_deref(),
        Some("203.0.113.9"),
        "{v1}"
    );
    assert_eq!(header_of(&v1, "x-real-ip").as_deref(), Some("203.0.113.9"));
    let id = header_of(&v1, "x-request-id").expect("a request ID");
    assert_ne!(
        id, "from-client",
        "the client behind the proxy is not trusted"
    );

    let mut v2 = b"\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c".to_vec();
    v2.extend_from_slice(&[198, 51, 100, 4, 127, 0, 0, 1, 0x0f, 0xa0, 0, 80]);
    v2.extend_from_slice(request.as_bytes());
    let answer = raw_exchange(http, &v2);
    assert_eq!(
        header_of(&answer, "x-forwarded-for").as_deref(),
        Some("198.51.100.4"),
        "{answer}"
    );

    let direct = raw_exchange(http, request.as_bytes());
    assert_eq!(
        header_of(&direct, "x-forwarded-for").as_deref(),
        Some("6.6.6.6, 127.0.0.1"),
        "a trusted peer without a PROXY header: its chain is extended"
    );
    assert_eq!(
        header_of(&direct, "x-request-id").as_deref(),
        Some("from-client")
    );

    let broken = raw_exchange(http, b"PROXY TCP4 nonsense\r\nGET / HTTP/1.1\r\n\r\n");
    assert!(broken.is_empty(), "closed without an answer: {broken}");
    let refused = capstan
        .metrics()
        .lines()
        .find(|l| l.contains("ingress_refused") && l.contains("proxy_protocol"))
        .map(str::to_owned);
    assert!(
        refused.is_some_and(|l| l.ends_with(" 1")),
        "{}",
        capstan.metrics()
    );
}

/// CORS at the edge: a preflight from an allowed origin is answered 204 without reaching the
/// backend, a request from it gets `Access-Control-Allow-Origin`, another origin gets nothing;
/// HSTS is sent over TLS only.
#[test]
fn cors_preflights_are_answered_at_the_edge_and_hsts_goes_over_tls_only() {
    let backend = FaultyBackend::start("cors", Mode::Ok);
    let dir = TempDir::new("cors");
    write_manifests(
        &dir,
        &[backend.addr],
        &[],
        &[
            ("cors-allow-origin", "https://app.example"),
            ("hsts-max-age", "1h"),
        ],
    );
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
    ]);
    let (http, https) = capstan.ingress_addrs();
    let (http, https) = (http.expect("http"), https.expect("https"));
    let url = format!("http://{http}/");
    let (code, _, head) = crate::http_support::curl(&[
        "-X",
        "OPTIONS",
        "-H",
        "Origin: https://app.example",
        "-H",
        "Access-Control-Request-Method: POST",
        &url,
    ]);
    assert_eq!(code, 204, "{head}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-origin: https://app.example"),
        "{head}"
    );
    assert!(
        head.contains("access-control-allow-methods: get, put, post"),
        "{head}"
    );
    assert_eq!(
        backend.requests(),
        0,
        "a preflight never reaches the backend"
    );

    let (code, _, head) = crate::http_support::curl(&["-H", "Origin: https://app.example", &url]);
    assert_eq!(code, 200);
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("access-control-allow-credentials: true"),
        "{head}"
    );
    assert!(
        !head.contains("strict-transport-security"),
        "no HSTS over plain HTTP: {head}"
    );
    let (_, _, head) = crate::http_support::curl(&["-H", "Origin: https://evil.example", &url]);
    assert!(
        !head.to_ascii_lowercase().contains("access-control"),
        "{head}"
    );

    let (code, _, head) = crate::http_support::curl(&["-k", &format!("https://{https}/")]);
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("strict-transport-security: max-age=3600"),
        "{head}"
    );
}

/// A basic-auth Secret (ingress-nginx's `auth-file` shape) labelled for Capstan.
fn auth_secret(dir: &TempDir, lines: &str) {
    dir.write(
        "users.yaml",
        &format!(
            "apiVersion: v1\nkind: Secret\ntype: Opaque\n\
             metadata: {{name: web-users, namespace: demo, labels: {{capstan.dev/basic-auth: \"true\"}}}}\n\
             stringData:\n  auth: |\n{}",
            lines
                .lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        ),
    );
}

/// `alice`'s password is `password` (Apache's documented `$apr1$` example), `bob`'s `s3cret`.
const USERS: &str = "alice:$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00\nbob:{PLAIN}s3cret\n";

#[test]
fn basic_auth_from_a_secret_challenges_admits_its_users_and_follows_secret_changes() {
    let backend = FaultyBackend::start("private", Mode::Ok);
    let dir = TempDir::new("basic-auth");
    write_manifests(
        &dir,
        &[backend.addr],
        &[],
        &[
            ("auth-type", "basic"),
            ("auth-secret", "web-users"),
            ("auth-realm", "Staff only"),
        ],
    );
    auth_secret(&dir, USERS);
    let (capstan, http) = start(&dir);
    let url = format!("http://{http}/");
    let curl = |args: &[&str]| crate::http_support::curl(&[args, &[url.as_str()]].concat());

    let (code, _, head) = curl(&[]);
    assert_eq!(code, 401, "{}", capstan.logs());
    assert!(
        head.contains("www-authenticate: Basic realm=\"Staff only\", charset=\"UTF-8\""),
        "{head}"
    );
    assert_eq!(curl(&["-u", "alice:wrong"]).0, 401);
    assert_eq!(curl(&["-u", "mallory:password"]).0, 401);
    let (code, body, _) = curl(&["-u", "alice:password"]);
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("private"), "{body}");
    assert_eq!(curl(&["-u", "bob:s3cret"]).0, 200);
    assert_eq!(decisions(&capstan, "unauthorized"), 3.0);

    // alice leaves the Secret: her remembered credentials go with the old setting.
    auth_secret(&dir, "bob:{PLAIN}s3cret\n");
    eventually(Duration::from_secs(10), || {
        (curl(&["-u", "alice:password"]).0 == 401).then_some(())
    })
    .unwrap_or_else(|| panic!("alice still admitted\n{}", capstan.logs()));
    assert_eq!(curl(&["-u", "bob:s3cret"]).0, 200);

    // Without its Secret the route fails closed, and says why.
    std::fs::remove_file(dir.path("users.yaml")).expect("remove");
    eventually(Duration::from_secs(10), || {
        (curl(&["-u", "bob:s3cret"]).0 == 503).then_some(())
    })
    .unwrap_or_else(|| panic!("never 503\n{}", capstan.logs()));
    let problems = capstan.snapshot()["problems"].to_string();
    assert!(
        problems.contains("auth-secret demo/web-users not found"),
        "{problems}"
    );
}

#[test]
fn a_standalone_route_admits_the_users_of_its_htpasswd_file() {
    let backend = HttpBackend::start("files");
    let dir = TempDir::new("basic-auth-file");
    dir.write("users.htpasswd", USERS);
    let config = dir.write(
        "capstan.yaml",
        &format!(
            "services:\n  app:\n    listen: '{}'\n    backends: ['{}']\n\
             routes:\n  - service: app\n    policy:\n      auth-type: basic\n      auth-file: users.htpasswd\n",
            crate::support::frontend(),
            backend.addr
        ),
    );
    let capstan = Capstan::start(&["--config", path_str(&config), "--http", "127.0.0.1:0"]);
    let http = capstan.ingress_addrs().0.expect("http listener");
    let url = format!("http://{http}/");
    assert_eq!(crate::http_support::curl(&[url.as_str()]).0, 401);
    let (code, body, _) = crate::http_support::curl(&["-u", "alice:password", url.as_str()]);
    assert_eq!(code, 200, "{body}");
}
