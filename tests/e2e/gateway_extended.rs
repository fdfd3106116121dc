//! Gateway API Extended HTTPRoute features, re-expressed from the upstream conformance suite
//! (`conformance/tests/*.go` of kubernetes-sigs/gateway-api) through the real binary with the
//! upstream manifests: `RequestMirror` (one, several, a percentage) and `timeouts`. Where the
//! suite greps an echo pod's log for "Echoing back request made to PATH", these read the echo
//! server's request log.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::gateway_support::{Conformance, INFRA, get};

const V1: &str = "infra-backend-v1";
const V2: &str = "infra-backend-v2";
const V3: &str = "infra-backend-v3";

/// How many requests for exactly `path` the backend `name` has received.
fn received(suite: &Conformance, name: &str, path: &str) -> usize {
    let prefix = format!("GET {path} ");
    suite
        .backend(name)
        .requests()
        .iter()
        .filter(|line| line.starts_with(&prefix))
        .count()
}

/// `ExpectMirroredRequest`: the mirror backend received the request (within 10 s).
fn expect_mirrored(suite: &Conformance, name: &str, path: &str) {
    let seen = crate::support::eventually(Duration::from_secs(10), || {
        (received(suite, name, path) > 0).then_some(())
    });
    assert!(
        seen.is_some(),
        "{name} never received a mirrored {path}: {:?}",
        suite.backend(name).requests()
    );
}

/// HTTPRouteRequestMirror: the request reaches its backend and a copy reaches the mirror, with
/// the rule's header edits applied to both.
#[test]
fn httproute_request_mirror() {
    let suite = Conformance::start("gw-mirror", &["httproute-request-mirror.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "request-mirror")]);
    suite.expect_backend(gw, &get("/mirror"), V1);
    expect_mirrored(&suite, V2, "/mirror");
    let req = get("/mirror-and-modify-headers")
        .header("X-Header-Remove", "remove-val")
        .header("X-Header-Add-Append", "append-val-1");
    suite.expect(gw, &req, |r| {
        r.status == 200
            && r.backend.as_deref() == Some(V1)
            && r.seen("x-header-set") == Some("set-overwrites-values")
            && r.seen("x-header-add") == Some("header-val-1")
            && r.seen.get("x-header-add-append").map(|v| v.join(","))
                == Some("append-val-1,header-val-2".into())
            && r.seen("x-header-remove").is_none()
    });
    expect_mirrored(&suite, V2, "/mirror-and-modify-headers");
    assert_eq!(
        received(&suite, V1, "/mirror"),
        1,
        "the mirror is a copy, not a retry"
    );
}

/// HTTPRouteRequestMultipleMirrors: one request, two mirrors.
#[test]
fn httproute_request_multiple_mirrors() {
    let suite = Conformance::start(
        "gw-multi-mirror",
        &["httproute-request-multiple-mirrors.yaml"],
    );
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "request-multiple-mirrors")]);
    suite.expect_backend(gw, &get("/multi-mirror"), V1);
    expect_mirrored(&suite, V2, "/multi-mirror");
    expect_mirrored(&suite, V3, "/multi-mirror");
}

/// Sends `count` plain `GET path` requests, one connection each, and expects 200s.
fn hammer(gateway: IpAddr, path: &str, count: usize) {
    for _ in 0..count {
        let mut stream = TcpStream::connect((gateway, 80)).expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nHost: mirror\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
}

/// The count of mirrored `path` at `name` once it stops growing.
fn settled(suite: &Conformance, name: &str, path: &str) -> usize {
    let mut last = received(suite, name, path);
    let mut stable_since = Instant::now();
    let start = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(500)
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
        let now = received(suite, name, path);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
    }
    last
}

/// HTTPRouteRequestPercentageMirror: `percent: 20` and `fraction: 25/50` over 500 requests
/// each, within the suite's band of 3 binomial standard deviations
/// (`testMirroredRequestsDistribution`).
#[test]
fn httproute_request_percentage_mirror() {
    let suite = Conformance::start(
        "gw-percent-mirror",
        &["httproute-request-percentage-mirror.yaml"],
    );
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "request-percentage-mirror")]);
    suite.expect_backend(gw, &get("/percent-mirror"), V1);
    for (path, p) in [("/percent-mirror", 0.2), ("/percent-mirror-fraction", 0.5)] {
        let before = settled(&suite, V2, path);
        let total: f64 = 500.0;
        hammer(gw, path, total as usize);
        let mirrored = (settled(&suite, V2, path) - before) as f64;
        let margin = 3.0 * (total * p * (1.0 - p)).sqrt();
        assert!(
            (mirrored - total * p).abs() <= margin,
            "{path}: {mirrored} of {total} mirrored, expected {} ± {margin}",
            total * p
        );
    }
}

/// HTTPRouteRequestTimeout: `timeouts.request: 500ms` answers 504 to a backend that takes 1 s;
/// `0s` disables it.
#[test]
fn httproute_timeout_request() {
    let suite = Conformance::start("gw-timeout", &["httproute-timeout-request.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "request-timeout")]);
    suite.expect_status(gw, &get("/request-timeout"), 200);
    suite.expect_status(gw, &get("/request-timeout?delay=1s"), 504);
    suite.expect_status(gw, &get("/disable-request-timeout?delay=1s"), 200);
}

/// HTTPRouteBackendRequestTimeout: `timeouts.backendRequest: 500ms` for each attempt.
#[test]
fn httproute_timeout_backend_request() {
    let suite = Conformance::start(
        "gw-backend-timeout",
        &["httproute-timeout-backend-request.yaml"],
    );
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "backend-request-timeout")]);
    suite.expect_status(gw, &get("/backend-timeout"), 200);
    suite.expect_status(gw, &get("/backend-timeout?delay=1s"), 504);
    suite.expect_status(gw, &get("/disable-backend-timeout?delay=1s"), 200);
}
