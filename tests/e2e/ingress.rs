//! The ingress plane end to end: the real binary, real hyper backends, and real clients (curl,
//! a WebSocket client, an HTTP/2 client, raw sockets, oha).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::dns_support::metric_value;
use crate::http_support::{
    DEFAULT_CLASS, HttpBackend, TestCert, curl, endpoint_slice, ingress, pattern, raw_status,
    service,
};
use crate::support::{Capstan, TempDir, eventually, frontend, path_str};

/// Capstan with only the ingress listeners (both on port 0) over `dir`.
fn start(dir: &TempDir, extra: &[&str]) -> (Capstan, SocketAddr, SocketAddr) {
    let mut args = vec![
        "--manifests",
        path_str(&dir.0),
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let capstan = Capstan::start(&args);
    let (http, https) = capstan.ingress_addrs();
    (
        capstan,
        http.expect("http listener"),
        https.expect("https listener"),
    )
}

fn host_url(addr: SocketAddr, host: &str, path: &str) -> (String, String) {
    (
        format!("http://{host}:{}{path}", addr.port()),
        format!("{host}:{}:127.0.0.1", addr.port()),
    )
}

/// `curl` for `host` + `path` on the plain listener (HTTP/1.1 unless `extra` says otherwise).
fn get(addr: SocketAddr, host: &str, path: &str, extra: &[&str]) -> (u16, String, String) {
    let (url, resolve) = host_url(addr, host, path);
    let mut args = vec!["--resolve", &resolve];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args)
}

/// The default class, Service `name` → `backend`, and an Ingress sending every path of `host`
/// to it.
fn single_route(name: &str, host: &str, backend: SocketAddr, app_protocol: Option<&str>) -> String {
    format!(
        "{DEFAULT_CLASS}{}{}",
        service(name, &[backend], app_protocol),
        ingress(name, &[(host, "/", "Prefix", name)], &[])
    )
}

fn wait_for(what: &str, capstan: &Capstan, mut check: impl FnMut() -> bool) {
    eventually(Duration::from_secs(10), || check().then_some(()))
        .unwrap_or_else(|| panic!("never saw {what}\n{}", capstan.logs()));
}

#[test]
fn http1_and_h2c_are_proxied_with_forwarded_headers_and_no_hop_by_hop() {
    let backend = HttpBackend::start("web");
    let dir = TempDir::new("ingress-basic");
    dir.write(
        "all.yaml",
        &single_route("web", "web.example", backend.addr, None),
    );
    let (capstan, http, _) = start(&dir, &[]);

    let (status, body, head) = get(
        http,
        "web.example",
        "/a/b?q=1",
        &[
            "-H",
            "Connection: X-Secret",
            "-H",
            "X-Secret: 1",
            "-H",
            "X-Forwarded-For: 6.6.6.6",
        ],
    );
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(body.contains("backend=web"), "{body}");
    assert!(body.contains("GET /a/b?q=1"), "{body}");
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    assert!(
        body.contains(&format!("host: web.example:{}", http.port())),
        "Host kept: {body}"
    );
    assert!(
        body.contains("x-forwarded-for: 127.0.0.1"),
        "client's XFF replaced: {body}"
    );
    assert!(body.contains("x-forwarded-proto: http"), "{body}");
    assert!(
        body.contains(&format!("x-forwarded-host: web.example:{}", http.port())),
        "{body}"
    );
    assert!(
        body.contains("forwarded: for=127.0.0.1;proto=http"),
        "{body}"
    );
    assert!(
        !body.contains("x-secret"),
        "Connection-named header removed: {body}"
    );
    assert!(
        head.to_ascii_lowercase().contains("server: capstan"),
        "{head}"
    );

    let (status, body, head) = get(http, "web.example", "/h2", &["--http2-prior-knowledge"]);
    assert_eq!(status, 200, "{body}");
    assert!(head.starts_with("HTTP/2 200"), "h2c to Capstan: {head}");
    assert!(
        body.contains("version=HTTP/1.1"),
        "HTTP/1.1 upstream: {body}"
    );
    assert!(
        body.contains(&format!("host: web.example:{}", http.port())),
        "{body}"
    );

    let (status, _, _) = get(http, "nothing.example", "/", &[]);
    assert_eq!(status, 404);

    // An upload streams through and arrives whole.
    let upload = dir.write("upload.bin", &"x".repeat(3 << 20));
    let data = format!("@{}", upload.display());
    let (status, body, _) = get(
        http,
        "web.example",
        "/upload",
        &[
            "--data-binary",
            &data,
            "-H",
            "Content-Type: application/octet-stream",
        ],
    );
    assert_eq!(status, 200);
    assert!(body.contains("body=3145728"), "{body}");

    // Downloads stream back whole, with a Content-Length or chunked, over HTTP/1.1 and h2c; a
    // HEAD keeps the upstream's Content-Length and has no body.
    let size = 5 << 20;
    let expected = String::from_utf8(pattern(size)).expect("ascii");
    for (path, extra) in [
        (format!("/fixed/{size}"), "--http1.1"),
        (format!("/stream/{size}"), "--http1.1"),
        (format!("/stream/{size}"), "--http2-prior-knowledge"),
    ] {
        let (status, body, head) = get(http, "web.example", &path, &[extra]);
        assert_eq!(status, 200, "{path} {extra}: {head}");
        assert!(body == expected, "{path} {extra}: {} bytes", body.len());
    }
    // curl --head prints the response head as its output; a body would follow it.
    let (status, output, _) = get(http, "web.example", "/fixed/1000", &["--head"]);
    assert_eq!(status, 200, "{output}");
    assert!(
        output.to_ascii_lowercase().contains("content-length: 1000"),
        "{output}"
    );
    assert!(
        output.ends_with("\r\n\r\n"),
        "no body after the head: {output:?}"
    );

    let metrics = capstan.metrics();
    let ok = r#"capstan_ingress_requests_total{ingress="demo/web",host="web.example",path="/",service="demo/web",code="2xx"}"#;
    assert_eq!(metric_value(&metrics, ok), Some(7.0), "{metrics}");
}

/// Every Ingress v1 matching rule, through the real binary: each rule has its own backend, named
/// after it, and each case says which backend answers (or 404).
#[test]
fn every_matching_rule_routes_to_its_backend() {
    let names = [
        "exact-host-root",
        "exact-foo",
        "prefix-foo",
        "prefix-aaa-bbb",
        "wild-root",
        "any-host",
        "trailing",
    ];
    let backends: Vec<HttpBackend> = names.iter().map(|n| HttpBackend::start(n)).collect();
    let mut manifests = DEFAULT_CLASS.to_owned();
    for (name, backend) in names.iter().zip(&backends) {
        manifests.push_str(&service(name, &[backend.addr], None));
    }
    // Split over two Ingresses: rules are merged across Ingresses.
    manifests.push_str(&ingress(
        "one",
        &[
            ("foo.example", "/", "Prefix", "exact-host-root"),
            ("foo.example", "/foo", "Exact", "exact-foo"),
            ("foo.example", "/foo", "Prefix", "prefix-foo"),
            ("*.example", "/", "Prefix", "wild-root"),
        ],
        &[],
    ));
    manifests.push_str(&ingress(
        "two",
        &[
            ("foo.example", "/aaa/bbb", "Prefix", "prefix-aaa-bbb"),
            ("foo.example", "/dir/", "ImplementationSpecific", "trailing"),
            ("", "/", "Prefix", "any-host"),
        ],
        &[],
    ));
    let dir = TempDir::new("ingress-rules");
    dir.write("all.yaml", &manifests);
    let (capstan, http, _) = start(&dir, &[]);

    let cases: &[(&str, &str, &str)] = &[
        ("foo.example", "/foo", "exact-foo"),
        ("foo.example", "/foo/", "prefix-foo"),
        ("foo.example", "/foo/bar", "prefix-foo"),
        ("foo.example", "/foobar", "exact-host-root"),
        ("foo.example", "/aaa/bbb", "prefix-aaa-bbb"),
        ("foo.example", "/aaa/bbb/ccc", "prefix-aaa-bbb"),
        ("foo.example", "/aaa/bbbxyz", "exact-host-root"),
        ("foo.example", "/dir", "trailing"),
        ("foo.example", "/dir/x", "trailing"),
        ("FOO.Example", "/foo", "exact-foo"),
        ("bar.example", "/anything", "wild-root"),
        ("a.b.example", "/", "any-host"),
        ("example", "/", "any-host"),
        ("other.test", "/x", "any-host"),
    ];
    let mut wrong = Vec::new();
    for (host, path, want) in cases {
        let (status, body, _) = get(http, host, path, &[]);
        let got = body
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("backend="))
            .map_or_else(|| status.to_string(), str::to_owned);
        if got != *want {
            wrong.push(format!("{host}{path}: want {want}, got {got}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}\n{}", capstan.logs());
}

#[test]
fn tls_by_sni_with_redirect_default_certificate_and_rotation() {
    let backend = HttpBackend::start("secure");
    let first = TestCert::new(&["secure.example"]);
    let dir = TempDir::new("ingress-tls");
    let ca = dir.write("ca-1.pem", &first.ca_pem);
    dir.write("secret.yaml", &first.secret("demo", "secure-tls"));
    dir.write(
        "all.yaml",
        &format!(
            "{DEFAULT_CLASS}{}{}",
            service("secure", &[backend.addr], None),
            ingress(
                "secure",
                &[("secure.example", "/", "Prefix", "secure")],
                &[("secure.example", "secure-tls")]
            )
        ),
    );
    let (capstan, http, https) = start(&dir, &[]);
    let resolve = format!("secure.example:{}:127.0.0.1", https.port());
    let url = format!("https://secure.example:{}/x?y=1", https.port());
    let ca_path = path_str(&ca).to_owned();

    let (status, body, head) = curl(&["--cacert", &ca_path, "--resolve", &resolve, &url]);
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(head.starts_with("HTTP/2 200"), "h2 by ALPN: {head}");
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
    let (status, _, head) = curl(&[
        "--http1.1",
        "--cacert",
        &ca_path,
        "--resolve",
        &resolve,
        &url,
    ]);
    assert_eq!(status, 200);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // Plain HTTP for a TLS host: 308 to https on the TLS listener's port, target kept.
    let (status, _, head) = get(http, "secure.example", "/x?y=1", &[]);
    assert_eq!(status, 308);
    assert!(
        head.contains(&format!(
            "location: https://secure.example:{}/x?y=1",
            https.port()
        )),
        "{head}"
    );
    // ACME challenges stay on plain HTTP.
    let (status, _, _) = get(http, "secure.example", "/.well-known/acme-challenge/t", &[]);
    assert_eq!(status, 200);

    // An unknown SNI name gets the self-signed default certificate: not trusted by our CA.
    let other = format!("other.example:{}:127.0.0.1", https.port());
    let other_url = format!("https://other.example:{}/", https.port());
    let (status, _, _) = curl(&["--cacert", &ca_path, "--resolve", &other, &other_url]);
    assert_eq!(status, 0, "default certificate must not verify");
    let (status, _, _) = curl(&["-k", "--resolve", &other, &other_url]);
    assert_eq!(status, 404, "but the handshake works and routing answers");

    // Rotation: a new certificate from a new CA, served on the next handshake, no restart.
    let second = TestCert::new(&["secure.example"]);
    let ca2 = dir.write("ca-2.pem", &second.ca_pem);
    let ca2_path = path_str(&ca2).to_owned();
    dir.write("secret.yaml", &second.secret("demo", "secure-tls"));
    wait_for("the rotated certificate", &capstan, || {
        curl(&["--cacert", &ca2_path, "--resolve", &resolve, &url]).0 == 200
    });
    let (status, _, _) = curl(&["--cacert", &ca_path, "--resolve", &resolve, &url]);
    assert_eq!(status, 0, "the old certificate is no longer served");

    // A broken Secret is rejected with its reason; the last good certificate stays.
    dir.write(
        "secret.yaml",
        "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {name: secure-tls, namespace: demo}\nstringData: {tls.crt: garbage, tls.key: garbage}\n",
    );
    wait_for("the broken Secret reported", &capstan, || {
        capstan.logs().contains("Secret demo/secure-tls")
    });
    let (status, _, _) = curl(&["--cacert", &ca2_path, "--resolve", &resolve, &url]);
    assert_eq!(status, 200, "last good certificate kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stays_open_across_50_route_and_endpoint_swaps() {
    let backend = HttpBackend::start("ws");
    let spare = HttpBackend::start("spare");
    let dir = TempDir::new("ingress-ws");
    dir.write(
        "all.yaml",
        &single_route("ws", "ws.example", backend.addr, None),
    );
    let (capstan, http, _) = tokio::task::block_in_place(|| start(&dir, &[]));

    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let request = "ws://ws.example/ws".into_client_request().expect("request");
    let (mut ws, response) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("websocket handshake through capstan");
    assert_eq!(response.status(), 101);

    for round in 0..50 {
        let generation = capstan.generation();
        // Alternate: another Ingress and Service appear, then the backend's own endpoints move
        // to include the spare and back.
        let extra = if round % 2 == 0 {
            format!(
                "{}{}",
                service("spare", &[spare.addr], None),
                ingress(
                    "spare",
                    &[(&*format!("s{round}.example"), "/", "Prefix", "spare")],
                    &[]
                )
            )
        } else {
            endpoint_slice("ws", "ws-extra", spare.addr, None)
        };
        dir.write("extra.yaml", &extra);
        tokio::task::block_in_place(|| {
            wait_for("the swap", &capstan, || capstan.generation() > generation)
        });
        ws.send(Message::text(format!("ping {round}")))
            .await
            .expect("send");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("reply in time")
            .expect("open")
            .expect("message");
        assert_eq!(reply.to_text().expect("text"), format!("ws: ping {round}"));
    }
    ws.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_upstream_round_trip_keeps_grpc_trailers() {
    let backend = HttpBackend::start("grpc");
    let dir = TempDir::new("ingress-grpc");
    dir.write(
        "all.yaml",
        &single_route(
            "grpc",
            "grpc.example",
            backend.addr,
            Some("kubernetes.io/h2c"),
        ),
    );
    let (capstan, http, _) = tokio::task::block_in_place(|| start(&dir, &[]));

    let tcp = tokio::net::TcpStream::connect(http).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = http::Request::post("http://grpc.example/helloworld.Greeter/SayHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::from_static(b"\0\0\0\0\x05hello")))
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert_eq!(response.status(), 200, "{}", capstan.logs());
    let collected = response.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "ok");
    let message = collected.to_bytes();
    assert_eq!(message[0], 0, "one uncompressed gRPC message");
    let text = String::from_utf8_lossy(&message[5..]).to_string();
    assert!(text.starts_with("backend=grpc\n"), "{text}");

    // The backend saw HTTP/2 (appProtocol kubernetes.io/h2c), not HTTP/1.1.
    let (_, body, _) = tokio::task::block_in_place(|| get(http, "grpc.example", "/echo", &[]));
    assert!(body.contains("version=HTTP/2.0"), "{body}");
}

#[test]
fn bad_requests_get_4xx_are_counted_and_never_crash() {
    let backend = HttpBackend::start("web");
    let dir = TempDir::new("ingress-bad");
    dir.write(
        "all.yaml",
        &single_route("web", "web.example", backend.addr, None),
    );
    let (capstan, http, https) = start(&dir, &[]);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: web.example\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: web.example\r\n{many}\r\n");
    let cases: &[(&[u8], &str)] = &[
        (b"GARBAGE\r\n\r\n", "400"),
        (b"GET / HTTP/9.9\r\nHost: web.example\r\n\r\n", "400"),
        (big.as_bytes(), "431"),
        (many.as_bytes(), "431"),
        (b"GET / HTTP/1.1\r\nHost: bad host\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "400"),
        (b"GET / HTTP/1.1\r\nHost: web.example\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n", "400"),
    ];
    for (raw, want) in cases {
        let line = raw_status(http, raw);
        assert!(
            line.split_whitespace().nth(1) == Some(*want),
            "{:?} → {line:?}, want {want}",
            String::from_utf8_lossy(&raw[..raw.len().min(60)])
        );
    }
    // Not TLS on the TLS port: the handshake fails, counted.
    let _ = raw_status(https, b"GET / HTTP/1.1\r\nHost: web.example\r\n\r\n");
    let (status, _, _) = get(http, "web.example", "/", &[]);
    assert_eq!(status, 200, "still serving");
    let metrics = capstan.metrics();
    let refused = |reason: &str| {
        metric_value(
            &metrics,
            &format!("capstan_ingress_refused_total{{reason=\"{reason}\"}}"),
        )
        .unwrap_or(0.0)
    };
    assert_eq!(refused("headers_too_large"), 2.0, "{metrics}");
    assert!(refused("malformed") >= 3.0, "{metrics}");
    assert_eq!(refused("invalid_host"), 4.0, "{metrics}");
    assert_eq!(refused("tls_handshake"), 1.0, "{metrics}");
}

#[test]
fn unavailable_backends_503_connect_failures_502_with_retry_and_timeouts_504() {
    let live = HttpBackend::start("live");
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }; // closed again: connections are refused
    let dir = TempDir::new("ingress-fail");
    dir.write(
        "all.yaml",
        &format!(
            "{DEFAULT_CLASS}{}{}{}",
            service("mixed", &[dead, live.addr], None),
            service("dead", &[dead], None),
            ingress(
                "fail",
                &[
                    ("mixed.example", "/", "Prefix", "mixed"),
                    ("dead.example", "/", "Prefix", "dead"),
                    ("none.example", "/", "Prefix", "missing"),
                    ("slow.example", "/", "Prefix", "mixed"),
                ],
                &[]
            )
        ),
    );
    let (capstan, http, _) = start(&dir, &["--http-request-timeout", "500ms"]);

    for _ in 0..20 {
        let (status, body, _) = get(http, "mixed.example", "/", &[]);
        assert_eq!(
            status, 200,
            "a refused connect is retried on the other endpoint: {body}"
        );
    }
    let (status, _, _) = get(http, "dead.example", "/", &[]);
    assert_eq!(status, 502);
    let (status, body, _) = get(http, "dead.example", "/", &["-X", "POST", "-d", "x"]);
    assert_eq!(status, 502, "{body}");
    let (status, _, _) = get(http, "none.example", "/", &[]);
    assert_eq!(status, 503);
    let (status, _, _) = get(http, "slow.example", "/slow", &[]);
    assert_eq!(status, 504);

    let metrics = capstan.metrics();
    assert!(
        metric_value(&metrics, "capstan_ingress_retries_total").unwrap_or(0.0) >= 1.0,
        "{metrics}"
    );
    let timeouts = r#"capstan_ingress_upstream_errors_total{ingress="demo/fail",host="slow.example",path="/",service="demo/mixed",kind="timeout"}"#;
    assert_eq!(metric_value(&metrics, timeouts), Some(1.0), "{metrics}");
}

/// Under oha load, 100 swaps of routes and endpoints (Ingresses added and removed, endpoints
/// added and removed) cost zero failed requests.
#[test]
fn oha_load_across_100_swaps_has_no_failed_requests() {
    let a = HttpBackend::start("a");
    let b = HttpBackend::start("b");
    let dir = TempDir::new("ingress-load");
    let base = format!(
        "{DEFAULT_CLASS}{}",
        ingress("load", &[("load.example", "/", "Prefix", "load")], &[])
    );
    dir.write("base.yaml", &base);
    dir.write("svc.yaml", &service("load", &[a.addr], None));
    let (capstan, http, _) = start(&dir, &[]);
    let url = format!("http://127.0.0.1:{}/", http.port());
    let mut oha = crate::support::spawn_oha(&url, "40s", 16, &["-H", "Host: load.example"]);
    std::thread::sleep(Duration::from_millis(500));
    for round in 0..100 {
        let generation = capstan.generation();
        let endpoints: &[SocketAddr] = match round % 3 {
            0 => &[a.addr, b.addr],
            1 => &[b.addr],
            _ => &[a.addr],
        };
        dir.write("svc.yaml", &service("load", endpoints, None));
        if round % 2 == 0 {
            dir.write(
                "other.yaml",
                &ingress(
                    "other",
                    &[(&*format!("o{round}.example"), "/", "Prefix", "load")],
                    &[],
                ),
            );
        } else {
            let _ = std::fs::remove_file(dir.path("other.yaml"));
        }
        wait_for("the swap", &capstan, || capstan.generation() > generation);
    }
    assert!(
        oha.try_wait().expect("oha status").is_none(),
        "the 100 swaps finished while oha was still loading"
    );
    crate::support::oha_all_ok(oha, 1_000);
}

/// `routes:` in capstan.yaml: the compose user's ingress, plain and TLS from PEM files.
#[test]
fn capstan_yaml_routes_serve_http_and_tls_from_pem_files() {
    let backend = HttpBackend::start("compose");
    let cert = TestCert::new(&["app.example"]);
    let dir = TempDir::new("ingress-yaml");
    dir.write("cert.pem", &cert.cert_pem);
    dir.write("key.pem", &cert.key_pem);
    let ca = dir.write("ca.pem", &cert.ca_pem);
    let config = dir.write(
        "capstan.yaml",
        &format!(
            "services:\n  app:\n    listen: {}\n    backends: [{}]\nroutes:\n  - host: app.example\n    service: app\n    tls: {{cert: cert.pem, key: key.pem}}\n  - {{host: plain.example, path: /, service: app}}\n",
            frontend(),
            backend.addr
        ),
    );
    let capstan = Capstan::start(&[
        "--config",
        path_str(&config),
        "--http",
        "127.0.0.1:0",
        "--https",
        "127.0.0.1:0",
    ]);
    let (http, https) = capstan.ingress_addrs();
    let (http, https) = (http.expect("http"), https.expect("https"));

    let (status, body, _) = get(http, "plain.example", "/x", &[]);
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(body.contains("backend=compose"), "{body}");
    let (status, _, _) = get(http, "app.example", "/x", &[]);
    assert_eq!(status, 308, "a TLS route redirects plain HTTP");
    let resolve = format!("app.example:{}:127.0.0.1", https.port());
    let url = format!("https://app.example:{}/x", https.port());
    let (status, body, _) = curl(&["--cacert", path_str(&ca), "--resolve", &resolve, &url]);
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(body.contains("x-forwarded-proto: https"), "{body}");
}

#[test]
fn access_log_writes_one_json_line_per_request() {
    let backend = HttpBackend::start("logged");
    let dir = TempDir::new("ingress-log");
    dir.write(
        "all.yaml",
        &single_route("logged", "log.example", backend.addr, None),
    );
    let (capstan, http, _) = start(&dir, &["--access-log"]);
    assert_eq!(get(http, "log.example", "/a?q=1", &[]).0, 200);
    assert_eq!(get(http, "nothing.example", "/b", &[]).0, 404);
    let lines = eventually(Duration::from_secs(10), || {
        let lines = capstan.stdout_lines();
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no access log lines: {:?}", capstan.stdout_lines()));
    let entries: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let routed = &entries[0];
    assert_eq!(routed["method"], "GET");
    assert_eq!(routed["host"], format!("log.example:{}", http.port()));
    assert_eq!(routed["path"], "/a");
    assert_eq!(routed["status"], 200);
    assert_eq!(routed["ingress"], "demo/logged");
    assert_eq!(routed["upstream"], backend.addr.to_string());
    assert_eq!(routed["complete"], true);
    assert!(routed["bytes"].as_u64().unwrap_or(0) > 0, "{routed}");
    let unrouted = &entries[1];
    assert_eq!(unrouted["status"], 404);
    assert_eq!(unrouted["ingress"], serde_json::Value::Null);
}
