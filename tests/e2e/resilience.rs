//! HTTP resilience end to end (issue 16): the real binary behind an Ingress, backends that fail
//! on cue, real clients (raw HTTP, oha, hyper on one keep-alive connection). Retries and their
//! budget, active health checks, outlier ejection, rate limits, size and source limits, the
//! balancer under scaling, and a rolling update with the default retry policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dns_support::metric_value;
use crate::http_support::{DEFAULT_CLASS, HttpBackend, endpoint_slice};
use crate::resilience_support::{FaultyBackend, Mode};
use crate::support::{Capstan, TempDir, eventually, http_get, path_str};

/// Writes the default class, Service `web` (with `service_annotations`) over `backends`, and an
/// Ingress sending every host and path to it (with `ingress_annotations`); annotations are
/// `key: value` pairs without the `capstan.dev/` prefix.
fn write_manifests(
    dir: &TempDir,
    backends: &[SocketAddr],
    service_annotations: &[(&str, &str)],
    ingress_annotations: &[(&str, &str)],
) {
    let annotations = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| format!("capstan.dev/{k}: \"{v}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    dir.write("class.yaml", DEFAULT_CLASS);
    write_service(dir, backends, &annotations(service_annotations));
    dir.write(
        "ingress.yaml",
        &format!(
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: web, namespace: demo, annotations: {{{}}}}}\n\
             spec: {{defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n",
            annotations(ingress_annotations)
        ),
    );
}

/// Service `web` in `demo` on port 80 → each backend's port, one slice per backend. Every
/// backend must share one port number unless they are all on 127.0.0.1 with distinct ports,
/// which slices express per endpoint.
fn write_service(dir: &TempDir, backends: &[SocketAddr], annotations: &str) {
    let slices: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| endpoint_slice("web", &format!("web-{i}"), *b, None))
        .collect();
    dir.write(
        "service.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: demo, annotations: {{{annotations}}}}}\n\
             spec:\n  clusterIP: None\n  ports: [{{name: http, port: 80, targetPort: http}}]\n{slices}"
        ),
    );
}

fn start(dir: &TempDir) -> (Capstan, SocketAddr) {
    start_with(dir, &[])
}

fn start_with(dir: &TempDir, extra: &[&str]) -> (Capstan, SocketAddr) {
    let mut args = vec!["--manifests", path_str(&dir.0), "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let capstan = Capstan::start(&args);
    let http = capstan.ingress_addrs().0.expect("http listener");
    (capstan, http)
}

fn status(http: SocketAddr, path: &str) -> u16 {
    http_get(http, path).map_or(0, |(status, _)| status)
}

/// A `capstan_ingress_policy_decisions_total` counter of the Ingress `demo/web`.
fn decisions(capstan: &Capstan, decision: &str) -> f64 {
    let metrics = capstan.metrics();
    metrics
        .lines()
        .filter(|l| l.contains("policy_decisions") && l.contains("demo/web"))
        .find(|l| l.contains(&format!("decision=\"{decision}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs oha against `url` with `args` and returns its JSON report.
fn oha(url: &str, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new("oha")
        .args(args)
        .args(["--no-tui", "--output-format", "json", url])
        .output()
        .expect("oha (cargo install oha) is needed for this test");
    serde_json::from_slice(&output.stdout).expect("oha JSON report")
}

fn status_count(report: &serde_json::Value, code: &str) -> u64 {
    report["statusCodeDistribution"][code].as_u64().unwrap_or(0)
}

/// Waits until every endpoint of Service `web` is in the snapshot.
fn wait_endpoints(capstan: &Capstan, n: usize) {
    capstan.wait_snapshot(&format!("{n} endpoints"), |s| {
        s["ingress"]["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["endpoints"].as_u64() == Some(n as u64)))
    });
}

/// With `retry-on: 503` and the default `reset`, requests that meet a failing endpoint are
/// sent to the healthy one: every answer is 200, and the retries are counted.
#[test]
fn retries_turn_503s_and_resets_into_successes_and_are_counted() {
    let failing = FaultyBackend::start("failing", Mode::Status503);
    let healthy = FaultyBackend::start("healthy", Mode::Ok);
    let dir = TempDir::new("retry");
    write_manifests(
        &dir,
        &[failing.addr, healthy.addr],
        &[],
        &[
            ("retry-on", "connect-failure,reset,503"),
            ("retry-budget-min-per-second", "100"),
        ],
    );
    let (capstan, http) = start(&dir);
    for mode in [Mode::Status503, Mode::Reset] {
        failing.set(mode);
        let before = failing.requests();
        for i in 0..40 {
            assert_eq!(status(http, "/"), 200, "{mode:?} request {i}");
        }
        assert!(
            failing.requests() > before,
            "{mode:?}: the failing endpoint was tried"
        );
    }
    // About half of the 80 requests met the failing endpoint first and were retried.
    let retried = decisions(&capstan, "retried");
    assert!(retried >= 10.0, "retries counted: {retried}");
    assert!(
        metric_value(&capstan.metrics(), "capstan_ingress_retries_total").unwrap_or(0.0) >= retried
    );
    let snapshot = capstan.snapshot();
    let policy = &snapshot["ingress"]["routes"][0]["policy"]["retry"];
    assert_eq!(
        policy["on"],
        serde_json::json!(["connect-failure", "reset", "503"])
    );
    assert_eq!(policy["retries"], 2);
}

/// In a full outage (every endpoint answers 503 and 503 is retried twice) the retry budget holds
/// the load on the upstreams to at most 1.2× what clients offered.
#[test]
fn the_retry_budget_caps_upstream_load_in_a_full_outage() {
    let a = FaultyBackend::start("a", Mode::Status503);
    let b = FaultyBackend::start("b", Mode::Status503);
    let dir = TempDir::new("budget");
    write_manifests(
        &dir,
        &[a.addr, b.addr],
        &[],
        &[
            ("retry-on", "503"),
            ("retries", "2"),
            ("retry-budget", "20%"),
            ("retry-budget-min-per-second", "0"),
            ("retry-backoff", "1ms"),
            ("retry-backoff-max", "2ms"),
        ],
    );
    let (capstan, http) = start(&dir);
    let report = oha(&format!("http://{http}/"), &["-n", "2000", "-c", "8", "-w"]);
    let offered = status_count(&report, "503");
    assert_eq!(offered, 2_000, "every request answered 503: {report:#}");
    let upstream = a.requests() + b.requests();
    let ratio = upstream as f64 / offered as f64;
    assert!(
        ratio <= 1.2 + 1e-9 && ratio > 1.1,
        "upstream load {upstream} for {offered} offered: {ratio:.3}× (want ≤ 1.2×, and the budget used)"
    );
    assert!(decisions(&capstan, "retry_budget_exhausted") > 0.0);
}

/// An endpoint whose health check fails is out of rotation within two intervals (unhealthy
/// threshold 2) and back after the healthy threshold once it passes again.
#[test]
fn failing_health_checks_take_an_endpoint_out_and_passing_ones_bring_it_back() {
    let sick = FaultyBackend::start("sick", Mode::Ok);
    let well = FaultyBackend::start("well", Mode::Ok);
    let dir = TempDir::new("health");
    write_manifests(
        &dir,
        &[sick.addr, well.addr],
        &[
            ("health-check-path", "/healthz"),
            ("health-check-interval", "500ms"),
            ("health-check-timeout", "200ms"),
            ("health-check-unhealthy-threshold", "2"),
            ("health-check-healthy-threshold", "2"),
        ],
        &[],
    );
    let (capstan, http) = start(&dir);
    eventually(Duration::from_secs(5), || {
        (sick.health_checks() >= 2).then_some(())
    })
    .expect("health checks run");
    for _ in 0..20 {
        assert_eq!(status(http, "/"), 200);
    }
    assert!(sick.requests() > 0, "in rotation while healthy");

    sick.set(Mode::FailHealthCheck);
    let failed_at = Instant::now();
    let failing = |capstan: &Capstan| {
        capstan.metrics().lines().any(|l| {
            l.contains("proxy_endpoint_health_check_failing")
                && l.contains(&sick.addr.to_string())
                && l.ends_with(" 1")
        })
    };
    eventually(Duration::from_secs(5), || failing(&capstan).then_some(()))
        .expect("the failing endpoint is marked down");
    let took = failed_at.elapsed();
    assert!(
        took <= Duration::from_millis(1_500),
        "marked down after {took:?}: two 500 ms intervals plus a scan"
    );
    let before = sick.requests();
    for _ in 0..40 {
        assert_eq!(status(http, "/"), 200, "the other endpoint keeps serving");
    }
    assert_eq!(
        sick.requests(),
        before,
        "no request reaches a down endpoint"
    );

    sick.set(Mode::Ok);
    eventually(Duration::from_secs(5), || {
        let before = sick.requests();
        for _ in 0..20 {
            status(http, "/");
        }
        (sick.requests() > before).then_some(())
    })
    .expect("back in rotation after two passing checks");
}

/// Five 500s in a row eject an endpoint (outlier detection); the others take its traffic.
#[test]
fn consecutive_5xx_eject_an_endpoint() {
    let bad = FaultyBackend::start("bad", Mode::Status500);
    let good = FaultyBackend::start("good", Mode::Ok);
    let dir = TempDir::new("outlier");
    write_manifests(
        &dir,
        &[bad.addr, good.addr],
        &[
            ("outlier-consecutive-5xx", "5"),
            ("outlier-max-ejection-percent", "50"),
        ],
        &[],
    );
    // A 30 s ejection outlasts the requests below on a loaded machine.
    let (capstan, http) = start_with(&dir, &["--eject-backoff", "30s"]);
    // Until the fifth 500 in a row at the bad endpoint, clients see its 500s.
    let mut errors = 0;
    for _ in 0..500 {
        errors += u32::from(status(http, "/") == 500);
        if errors == 5 {
            break;
        }
    }
    assert_eq!(errors, 5, "the bad endpoint answered");
    for i in 0..30 {
        assert_eq!(status(http, "/"), 200, "request {i} after the ejection");
    }
    let snapshot = capstan.snapshot();
    let text = snapshot.to_string();
    assert!(text.contains("\"outlier_ejections\":1"), "{snapshot:#}");
}

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
        &["-z", "4s", "-c", "4", "-q", "200"],
    );
    let passed = status_count(&report, "200");
    let limited = status_count(&report, "429");
    // 4 s at 20/s plus the burst of 5.
    let expected = 4.0 * 20.0 + 5.0;
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

/// A GET on a fresh connection; the response head as text.
fn raw_head(addr: SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
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

/// Requests on one keep-alive connection (HTTP/1.1 and HTTP/2): 600 reach all of three
/// endpoints; after scaling from 1 to 10 endpoints, the next 100 reach all ten.
#[test]
fn one_keep_alive_connection_spreads_over_every_endpoint_and_new_ones() {
    let backends: Vec<HttpBackend> = (0..10)
        .map(|i| HttpBackend::start(&format!("b{i}")))
        .collect();
    let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
    let dir = TempDir::new("spread");
    write_manifests(&dir, &addrs[..3], &[], &[]);
    let (capstan, http) = start(&dir);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for http2 in [false, true] {
        write_manifests(&dir, &addrs[..3], &[], &[]);
        wait_endpoints(&capstan, 3);
        let mut client = runtime.block_on(KeepAlive::connect(http, http2));
        let seen = runtime.block_on(client.names(600));
        assert_eq!(
            seen.len(),
            3,
            "http2={http2}: 600 requests reached {seen:?}"
        );

        write_manifests(&dir, &addrs[..1], &[], &[]);
        wait_endpoints(&capstan, 1);
        runtime.block_on(client.names(50));
        write_manifests(&dir, &addrs, &[], &[]);
        wait_endpoints(&capstan, 10);
        let seen = runtime.block_on(client.names(100));
        assert_eq!(
            seen.len(),
            10,
            "http2={http2}: after 1 → 10, 100 requests reached {seen:?}"
        );
    }
}

/// Endpoints replaced one by one under oha load, each old one refusing connections from the
/// moment it is replaced: no failed request, with the default retry policy.
#[test]
fn a_rolling_update_under_load_fails_no_request_with_the_default_policy() {
    let mut live: Vec<FaultyBackend> = (0..3)
        .map(|i| FaultyBackend::start(&format!("v1-{i}"), Mode::Ok))
        .collect();
    let dir = TempDir::new("rolling");
    let addrs = |live: &[FaultyBackend]| live.iter().map(|b| b.addr).collect::<Vec<_>>();
    write_manifests(&dir, &addrs(&live), &[], &[]);
    let (capstan, http) = start(&dir);
    let url = format!("http://{http}/");
    let load = std::thread::spawn(move || oha(&url, &["-z", "8s", "-c", "8", "-w"]));
    std::thread::sleep(Duration::from_millis(800));
    for i in 0..3 {
        let generation = capstan.generation();
        let new = FaultyBackend::start(&format!("v2-{i}"), Mode::Ok);
        let old = std::mem::replace(&mut live[i], new);
        // The old endpoint goes away as the update is written, before Capstan has seen it (as
        // when a pod dies before its endpoint removal propagates): its port refuses, its
        // connections close, and requests that already chose it must be retried.
        drop(old);
        write_manifests(&dir, &addrs(&live), &[], &[]);
        eventually(Duration::from_secs(10), || {
            (capstan.generation() > generation).then_some(())
        })
        .expect("the update applied");
        std::thread::sleep(Duration::from_millis(1_500));
    }
    let report = load.join().expect("oha thread");
    let ok = status_count(&report, "200");
    let total: u64 = report["statusCodeDistribution"]
        .as_object()
        .map_or(0, |c| c.values().filter_map(|v| v.as_u64()).sum());
    assert!(ok > 1_000, "load ran: {report:#}");
    assert_eq!(ok, total, "every response 200: {report:#}");
    let errors = &report["errorDistribution"];
    assert!(
        errors.as_object().is_none_or(|e| e.is_empty()),
        "no failed requests: {errors}"
    );
    assert!(live.iter().all(|b| b.requests() > 0));
}

/// One client connection to the ingress, HTTP/1.1 keep-alive or HTTP/2.
struct KeepAlive {
    sender: KeepAliveSender,
}

enum KeepAliveSender {
    Http1(hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>),
    Http2(hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>),
}

impl KeepAlive {
    async fn connect(addr: SocketAddr, http2: bool) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let io = hyper_util::rt::TokioIo::new(stream);
        let sender = if http2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("h2c handshake");
            tokio::spawn(conn);
            KeepAliveSender::Http2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("http1 handshake");
            tokio::spawn(conn);
            KeepAliveSender::Http1(sender)
        };
        Self { sender }
    }

    /// Sends `n` sequential GETs and counts answers per backend name.
    async fn names(&mut self, n: usize) -> BTreeMap<String, usize> {
        use http_body_util::BodyExt;
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let request = http::Request::builder()
                .uri("http://spread.example/")
                .header("host", "spread.example")
                .body(http_body_util::Empty::new())
                .expect("request");
            let response = match &mut self.sender {
                KeepAliveSender::Http1(s) => {
                    s.ready().await.expect("connection ready");
                    s.send_request(request).await
                }
                KeepAliveSender::Http2(s) => {
                    let mut request = request;
                    *request.version_mut() = http::Version::HTTP_2;
                    s.send_request(request).await
                }
            }
            .expect("response on the same connection");
            let body = response.into_body().collect().await.expect("body");
            let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
            let name = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("backend="))
                .unwrap_or("?")
                .to_owned();
            *seen.entry(name).or_default() += 1;
        }
        seen
    }
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

/// `max-requests-per-endpoint`: with the only endpoint busy at its limit, the next request is
/// answered 503 at once (circuit breaking), and counted.
#[test]
fn an_endpoint_at_its_request_limit_gets_no_more_and_clients_get_503() {
    let backend = HttpBackend::start("busy");
    let dir = TempDir::new("circuit");
    write_manifests(
        &dir,
        &[backend.addr],
        &[("max-requests-per-endpoint", "1")],
        &[],
    );
    let (capstan, http) = start(&dir);
    let slow = std::thread::spawn(move || status(http, "/slow"));
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let (code, body) = http_get(http, "/").expect("answer");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("overloaded"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "at once, not after the slow one"
    );
    assert_eq!(slow.join().expect("slow request"), 200);
    assert_eq!(status(http, "/"), 200, "room again");
    assert_eq!(decisions(&capstan, "circuit_open"), 1.0);
}

fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

fn backend_name(body: &str) -> String {
    body.lines()
        .next()
        .and_then(|l| l.strip_prefix("backend="))
        .unwrap_or("?")
        .to_owned()
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

/// Sends `raw` on a fresh connection and reads the answer to its end.
fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    stream.write_all(raw).expect("write");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
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
