//! Gateway API GRPCRoute conformance (`conformance/tests/grpcroute-*.go` of
//! kubernetes-sigs/gateway-api), re-expressed through the real binary from the upstream
//! manifests: gRPC calls over h2c (HTTP/2 with prior knowledge, as grpc-go dials a plain
//! Gateway) to the conformance Services `grpc-infra-backend-v{1,2,3}` (`appProtocol:
//! kubernetes.io/h2c`), whose echo servers answer one gRPC message naming the backend and the
//! request metadata it saw. The status code is read as a gRPC client reads it: `grpc-status`
//! from the trailers, or from the headers of a Trailers-Only answer.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::gateway_support::{Conformance, INFRA, Reply};

const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
const V1: &str = "grpc-infra-backend-v1";
const V2: &str = "grpc-infra-backend-v2";
const V3: &str = "grpc-infra-backend-v3";

/// gRPC codes the tests expect (`google.golang.org/grpc/codes`).
const OK: u32 = 0;
const UNIMPLEMENTED: u32 = 12;

/// One call of a test case (`conformance/utils/grpc.ExpectedResponse`).
#[derive(Clone, Debug)]
struct Call {
    method: &'static str,
    authority: Option<&'static str>,
    metadata: Vec<(&'static str, &'static str)>,
}

fn call(method: &'static str) -> Call {
    Call {
        method,
        authority: None,
        metadata: vec![],
    }
}

impl Call {
    fn authority(mut self, authority: &'static str) -> Self {
        self.authority = Some(authority);
        self
    }

    fn metadata(mut self, name: &'static str, value: &'static str) -> Self {
        self.metadata
            .push((name.to_ascii_lowercase().leak(), value));
        self
    }
}

/// What came back: the gRPC code, and (code OK) the echo: backend, request metadata, version.
#[derive(Debug)]
struct Answer {
    code: u32,
    echo: Option<Reply>,
}

/// Sends `calls` on one h2c connection to `gateway:80`.
fn send(gateway: IpAddr, calls: &[Call]) -> Result<Vec<Answer>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect((gateway, 80))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(connection);
        let mut answers = Vec::new();
        for c in calls {
            let authority = c
                .authority
                .map_or_else(|| gateway.to_string(), str::to_owned);
            let mut request =
                http::Request::post(format!("http://{authority}/{SERVICE}/{}", c.method))
                    .header("content-type", "application/grpc")
                    .header("te", "trailers");
            for (name, value) in &c.metadata {
                request = request.header(*name, *value);
            }
            // An empty EchoRequest: one uncompressed message of length 0.
            let request = request
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
                .map_err(|e| e.to_string())?;
            let response =
                tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
                    .await
                    .map_err(|_| "timed out".to_owned())?
                    .map_err(|e| format!("request: {e}"))?;
            answers.push(read_answer(response).await?);
        }
        Ok(answers)
    })
}

async fn read_answer(response: http::Response<hyper::body::Incoming>) -> Result<Answer, String> {
    let (head, body) = response.into_parts();
    if head.status != 200 {
        return Err(format!("HTTP status {} to a gRPC call", head.status));
    }
    let collected = body.collect().await.map_err(|e| format!("body: {e}"))?;
    let trailers = collected.trailers().cloned().unwrap_or_default();
    let status = trailers
        .get("grpc-status")
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .ok_or("no grpc-status")?;
    let message = collected.to_bytes();
    let echo = (status == OK && message.len() >= 5).then(|| {
        let text = String::from_utf8_lossy(&message[5..]).to_string();
        crate::gateway_support::reply(200, &text, "")
    });
    Ok(Answer { code: status, echo })
}

/// `MakeRequestAndExpectEventuallyConsistentResponse`: retries until `check` holds (10 s).
fn expect(suite: &Conformance, gateway: IpAddr, c: &Call, check: impl Fn(&Answer) -> bool) {
    let mut last = None;
    let ok = crate::support::eventually(Duration::from_secs(10), || {
        let answer = send(gateway, std::slice::from_ref(c)).map(|mut a| a.remove(0));
        let good = answer.as_ref().is_ok_and(&check);
        last = Some(answer);
        good.then_some(())
    });
    if ok.is_none() {
        panic!("{c:?}: unexpected {last:#?}\n{}", suite.capstan.logs());
    }
}

fn expect_backend(suite: &Conformance, gateway: IpAddr, c: &Call, backend: &str) {
    expect(suite, gateway, c, |a| {
        a.code == OK && a.echo.as_ref().and_then(|e| e.backend.as_deref()) == Some(backend)
    });
}

fn expect_code(suite: &Conformance, gateway: IpAddr, c: &Call, code: u32) {
    expect(suite, gateway, c, |a| a.code == code);
}

/// GRPCExactMethodMatching: Echo → v1, EchoTwo → v2, EchoThree (no rule) → UNIMPLEMENTED
/// from the Gateway; the backends are reached over HTTP/2.
#[test]
fn grpcroute_exact_method_matching() {
    let suite = Conformance::start("gw-grpc-exact", &["grpcroute-exact-method-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "exact-matching")]);
    expect_backend(&suite, gw, &call("Echo"), V1);
    expect_backend(&suite, gw, &call("EchoTwo"), V2);
    expect_code(&suite, gw, &call("EchoThree"), UNIMPLEMENTED);
    let answer = send(gw, &[call("Echo")]).expect("call").remove(0);
    let echo = answer.echo.expect("echo");
    assert!(
        echo.request_line.ends_with(&format!("/{SERVICE}/Echo")),
        "{echo:?}"
    );
    assert!(
        echo.seen.contains_key("te"),
        "TE: trailers reaches the backend"
    );
    let requests = suite.backend(V1).requests();
    let last = requests.last().expect("the backend was called");
    assert!(last.ends_with("HTTP/2.0"), "h2c to the backend: {last}");
    let status = suite
        .status("GRPCRoute", INFRA, "exact-matching")
        .expect("status");
    assert_eq!(
        status["parents"][0]["conditions"][1]["reason"],
        "ResolvedRefs"
    );
}

/// GRPCExactMethodMatching through the Kubernetes API (the fake API server serving the
/// GRPCRoute as JSON), and its parent status written back to `grpcroutes/status`.
#[tokio::test(flavor = "multi_thread")]
async fn grpcroute_exact_method_matching_through_the_kubernetes_api() {
    let api = crate::support::kube_api::FakeApi::start().await;
    let suite = Conformance::start_kube(
        &api,
        "gw-grpc-kube",
        &["grpcroute-exact-method-matching.yaml"],
    );
    tokio::task::block_in_place(|| {
        let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "exact-matching")]);
        expect_backend(&suite, gw, &call("EchoTwo"), V2);
        expect_code(&suite, gw, &call("EchoThree"), UNIMPLEMENTED);
        let written = crate::support::eventually(Duration::from_secs(10), || {
            let route = api.object("grpcroutes", INFRA, "exact-matching")?;
            let parent = route["status"]["parents"][0].clone();
            crate::gateway_support::condition_true(&parent["conditions"], "Accepted")
                .then_some(parent)
        })
        .unwrap_or_else(|| panic!("GRPCRoute status never written: {:?}", api.requests()));
        assert_eq!(written["parentRef"]["name"], "same-namespace");
        assert_eq!(written["controllerName"], "capstan.dev/gateway-controller");
        let gateway = api
            .object("gateways", INFRA, "same-namespace")
            .expect("gateway");
        let kinds = &gateway["status"]["listeners"][0]["supportedKinds"];
        assert_eq!(kinds[1]["kind"], "GRPCRoute", "{kinds}");
    });
}

/// GRPCRouteHeaderMatching: ties between rules with as many header matches go to the earlier
/// rule (`Version: two` + `Color: blue` → v2).
#[test]
fn grpcroute_header_matching() {
    let suite = Conformance::start("gw-grpc-headers", &["grpcroute-header-matching.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "grpc-header-matching")]);
    let echo = || call("Echo");
    let cases = [
        (echo().metadata("Version", "one"), Some(V1)),
        (echo().metadata("Version", "two"), Some(V2)),
        (
            echo()
                .metadata("Version", "two")
                .metadata("Color", "orange"),
            Some(V1),
        ),
        (
            echo().metadata("Version", "two").metadata("Color", "blue"),
            Some(V2),
        ),
        (echo().metadata("Color", "orange"), None),
        (echo().metadata("Some-Other-Header", "one"), None),
        (echo().metadata("Color", "blue"), Some(V1)),
        (echo().metadata("Color", "green"), Some(V1)),
        (echo().metadata("Color", "red"), Some(V2)),
        (echo().metadata("Color", "yellow"), Some(V2)),
        (echo().metadata("Color", "purple"), None),
    ];
    for (c, backend) in cases {
        match backend {
            Some(backend) => expect_backend(&suite, gw, &c, backend),
            None => expect_code(&suite, gw, &c, UNIMPLEMENTED),
        }
    }
}

/// GRPCRouteListenerHostnameMatching: four listeners on port 80 told apart by `:authority`.
#[test]
fn grpcroute_listener_hostname_matching() {
    let suite = Conformance::start(
        "gw-grpc-hostnames",
        &["grpcroute-listener-hostname-matching.yaml"],
    );
    let routes = [
        (INFRA, "backend-v1"),
        (INFRA, "backend-v2"),
        (INFRA, "backend-v3"),
    ];
    let gw = suite.gateway_must_accept("grpcroute-listener-hostname-matching", &routes);
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
    for (authority, backend) in cases {
        let c = call("Echo").authority(authority);
        match backend {
            Some(backend) => expect_backend(&suite, gw, &c, backend),
            None => expect_code(&suite, gw, &c, UNIMPLEMENTED),
        }
    }
}

/// GRPCRouteRequestHeaderModifier: set, add and remove on the metadata the backend receives.
/// The upstream test repeats `Echo` in four rules (the first wins) and lists expectations for
/// the headers it sends; the cases kept are those the manifest's first `Echo` rule and its
/// `EchoTwo` rule decide.
#[test]
fn grpcroute_request_header_modifier() {
    let suite = Conformance::start(
        "gw-grpc-header-mod",
        &["grpcroute-request-header-modifier.yaml"],
    );
    let gw =
        suite.gateway_must_accept("same-namespace", &[(INFRA, "grpc-request-header-modifier")]);
    let authority = SERVICE;
    let seen = |c: Call| -> (String, BTreeMap<String, Vec<String>>) {
        let mut answer = None;
        expect(&suite, gw, &c, |a| a.code == OK);
        if let Ok(mut answers) = send(gw, &[c]) {
            answer = answers.pop();
        }
        let echo = answer.and_then(|a| a.echo).expect("echo");
        (echo.backend.clone().unwrap_or_default(), echo.seen)
    };
    let (backend, headers) = seen(
        call("Echo")
            .authority(authority)
            .metadata("Some-Other-Header", "this-header-should-be-set")
            .metadata("X-Header-Set", "this-value-should-be-overwritten"),
    );
    assert_eq!(backend, V1);
    assert_eq!(headers["x-header-set"], ["set-overwrites-values"]);
    assert_eq!(headers["some-other-header"], ["this-header-should-be-set"]);
    let (backend, headers) = seen(
        call("EchoTwo")
            .authority(authority)
            .metadata("X-Header-Set-2", "set-header-2")
            .metadata("X-Header-Add-2", "add-header-2")
            .metadata("X-Header-Remove-2", "should-be-removed-2")
            .metadata("Some-Other-Header", "another-header-val"),
    );
    assert_eq!(backend, V2);
    assert_eq!(headers["x-header-set-1"], ["header-set-1"]);
    assert_eq!(headers["x-header-set-2"], ["header-set-2"]);
    assert_eq!(headers["x-header-add-1"], ["header-add-1"]);
    assert_eq!(headers["x-header-add-2"], ["add-header-2", "header-add-2"]);
    assert_eq!(headers["some-other-header"], ["another-header-val"]);
    assert!(!headers.contains_key("x-header-remove-2"));
}

/// GRPCRouteWeight: 70/30/0 within the suite's tolerance (`weight.TestWeightedDistribution`:
/// 5 percentage points) over 1,000 calls on one connection.
#[test]
fn grpcroute_weight() {
    let suite = Conformance::start("gw-grpc-weight", &["grpcroute-weight.yaml"]);
    let gw = suite.gateway_must_accept("same-namespace", &[(INFRA, "weighted-backends")]);
    expect(&suite, gw, &call("Echo"), |a| a.code == OK);
    let calls = vec![call("Echo"); 1000];
    let answers = send(gw, &calls).expect("calls");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for answer in &answers {
        assert_eq!(answer.code, OK, "{answer:?}");
        let backend = answer.echo.as_ref().and_then(|e| e.backend.clone());
        *seen.entry(backend.unwrap_or_default()).or_default() += 1;
    }
    for (backend, weight) in [(V1, 0.7), (V2, 0.3), (V3, 0.0)] {
        let share = seen.get(backend).copied().unwrap_or(0) as f64 / 1000.0;
        assert!(
            (share - weight).abs() <= 0.05,
            "{backend}: {share} of calls, weight {weight}: {seen:?}"
        );
    }
}
