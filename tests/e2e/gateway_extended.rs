//! Gateway API Extended HTTPRoute features, re-expressed from the upstream conformance suite
//! (`conformance/tests/*.go` of kubernetes-sigs/gateway-api) through the real binary with the
//! upstream manifests: `RequestMirror` (one, several, a percentage), `timeouts`, `parentRef`
//! ports, backend request header filters, 303/307/308 redirects, h2c and WebSocket backends. Where the
//! suite greps an echo pod's log for "Echoing back request made to PATH", these read the echo
//! server's request log.

use std::io::{Read, Write};
use std::net::{IpAddr, TcpStream};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::gateway_support::{Conformance, INFRA, get, parent_condition};

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

/// HTTPRouteListenerPortMatching: `parentRefs[].port` picks the listeners of that port
/// (ParentRefPort); `bar.com:8090` has no route (its listener is not named by the sectionName).
#[test]
fn httproute_listener_port_matching() {
    let suite = Conformance::start("gw-port-match", &["httproute-listener-port-matching.yaml"]);
    let gateway = "httproute-listener-port-matching";
    let routes = [
        (INFRA, "backend-v1"),
        (INFRA, "backend-v2"),
        (INFRA, "backend-v3"),
    ];
    let gw = suite.gateway_must_accept(gateway, &routes);
    for (host, port, backend) in [
        ("foo.com", 80, Some(V1)),
        ("foo.com:8080", 8080, Some(V2)),
        ("bar.com:8080", 8080, Some(V2)),
        ("foo.com:8090", 8090, Some(V3)),
        ("bar.com:8090", 8090, None),
    ] {
        let req = get("/").host(host);
        suite.expect_on(gw, port, &req, |r| match backend {
            Some(b) => r.status == 200 && r.backend.as_deref() == Some(b),
            None => r.status == 404,
        });
    }
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort: sectionName and port must name the same
/// listener, else `NoMatchingParent` and no route attached.
#[test]
fn httproute_invalid_parent_ref_section_name_not_matching_port() {
    let suite = Conformance::start(
        "gw-section-port",
        &["httproute-invalid-parentref-section-name-not-matching-port.yaml"],
    );
    let gateway = "gateway-with-one-not-matching-port-and-section-name-route";
    let route = (INFRA, "httproute-listener-section-name-not-matching-port");
    parent_condition(
        &suite,
        route,
        gateway,
        "Accepted",
        ("False", "NoMatchingParent"),
    );
    let status = suite.status("Gateway", INFRA, gateway).expect("status");
    assert_eq!(status["listeners"][0]["attachedRoutes"], 0, "{status:#}");
}

/// HTTPRouteRequestHeaderModifierBackendWeights: each backendRef's own `RequestHeaderModifier`
/// applies to the requests that backend gets (100 requests, 50/50 weights).
#[test]
fn httproute_request_header_modifier_backend_weights() {
    let suite = Conformance::start(
        "gw-backend-headers",
        &["httproute-request-header-modifier-backend-weights.yaml"],
    );
    let route = (INFRA, "request-header-modifier-backend-weights");
    let gw = suite.gateway_must_accept("same-namespace", &[route]);
    suite.expect_status(gw, &get("/"), 200);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let reply = suite.send(gw, 80, &get("/"));
        assert_eq!(reply.status, 200);
        let backend = reply.backend.clone().expect("backend");
        assert_eq!(
            reply.seen.get("backend"),
            Some(&vec![backend.clone()]),
            "{reply:?}"
        );
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 2, "both backends served: {seen:?}");
}

/// HTTPRoute303RedirectStatusCode, HTTPRoute307RedirectStatusCode,
/// HTTPRoute308RedirectStatusCode: a POST gets the status, the Location keeps the path.
#[test]
fn httproute_303_307_308_redirects() {
    let files = [
        "httproute-303-redirect.yaml",
        "httproute-307-redirect.yaml",
        "httproute-308-redirect.yaml",
    ];
    let suite = Conformance::start("gw-redirect-codes", &files);
    let routes = [
        (INFRA, "303-redirect"),
        (INFRA, "307-redirect"),
        (INFRA, "308-redirect"),
    ];
    let gw = suite.gateway_must_accept("same-namespace", &routes);
    for (path, status) in [
        ("/see-other", 303),
        ("/temporary", 307),
        ("/permanent", 308),
    ] {
        suite.expect(gw, &get(path).method("POST"), |r| {
            r.status == status && r.response("location").is_some_and(|l| l.ends_with(path))
        });
    }
}

/// HTTPRouteBackendProtocolH2C: a port with `appProtocol: kubernetes.io/h2c`; the client speaks
/// HTTP/2 with prior knowledge, and so does Capstan to the backend.
#[test]
fn httproute_backend_protocol_h2c() {
    let suite = Conformance::start("gw-h2c", &["httproute-backend-protocol-h2c.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "backend-protocol-h2c")]);
    let url = format!("http://{gw}/");
    let ok = crate::support::eventually(Duration::from_secs(10), || {
        let (status, body, _) = crate::http_support::curl(&["--http2-prior-knowledge", &url]);
        (status == 200 && body.starts_with("backend=infra-backend-v1\n")).then_some(())
    });
    assert!(ok.is_some(), "{}", suite.capstan.logs());
    let requests = suite.backend(V1).requests();
    let last = requests.last().expect("the backend was called");
    assert!(last.ends_with("HTTP/2.0"), "h2c to the backend: {last}");
}

/// HTTPRouteBackendProtocolWebSocket: a port with `appProtocol: kubernetes.io/ws`; text and
/// binary frames both ways. The suite's echo server returns each message as it came; this one
/// prefixes text with its name and echoes binary frames unchanged.
#[tokio::test(flavor = "multi_thread")]
async fn httproute_backend_protocol_websocket() {
    let suite = Conformance::start("gw-ws", &["httproute-backend-protocol-websocket.yaml"]);
    let gw = tokio::task::block_in_place(|| {
        suite.gateway_must_accept("same-namespace", &[(INFRA, "backend-protocol-ws")])
    });
    let tcp = tokio::net::TcpStream::connect((gw, 80))
        .await
        .expect("connect");
    let request = format!("ws://{gw}/ws")
        .into_client_request()
        .expect("request");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("WebSocket handshake through the Gateway");
    assert_eq!(response.status(), 101);
    ws.send(Message::text("Websocket Support!"))
        .await
        .expect("send");
    let reply = ws.next().await.expect("open").expect("message");
    assert_eq!(
        reply.to_text().expect("text"),
        "infra-backend-v1: Websocket Support!"
    );
    let binary = vec![1u8, 2, 3, 4, 5, 6, 7];
    ws.send(Message::binary(binary.clone()))
        .await
        .expect("send");
    let reply = ws.next().await.expect("open").expect("message");
    assert_eq!(reply.into_data().to_vec(), binary);
}
