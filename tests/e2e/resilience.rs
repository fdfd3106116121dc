//! HTTP resilience end to end (issue 16): the real binary behind an Ingress, backends that fail
//! on cue, real clients (raw HTTP, oha, hyper on one keep-alive connection). Retries and their
//! budget, active health checks, outlier ejection, circuit breaking, the balancer under scaling,
//! and a rolling update with the default retry policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::dns_support::metric_value;
use crate::http_support::HttpBackend;
use crate::resilience_support::{
    FaultyBackend, Mode, decisions, oha, start, start_with, status, status_count, wait_endpoints,
    write_manifests,
};
use crate::support::{Capstan, TempDir, eventually, http_get};

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
        let retried_before = decisions(&capstan, "retried");
        // Every request that meets the failing endpoint is answered 200: it was retried. How
        // many meet it depends on the balancer, which learns to avoid a failing endpoint and
        // probes it one choice in sixteen, so requests go on until it has been met.
        let mut sent = 0;
        while sent < 40 || failing.requests() == before {
            assert_eq!(status(http, "/"), 200, "{mode:?} request {sent}");
            sent += 1;
            assert!(
                sent < 1_000,
                "{mode:?}: the failing endpoint was never tried"
            );
        }
        let retried = decisions(&capstan, "retried") - retried_before;
        assert!(retried >= 1.0, "{mode:?}: retries counted: {retried}");
    }
    let retried = decisions(&capstan, "retried");
    assert!(
        retried <= 160.0,
        "at most two retries per request: {retried}"
    );
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
