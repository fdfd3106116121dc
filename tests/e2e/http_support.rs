//! HTTP test fixtures: a real hyper backend (HTTP/1.1 and h2c, WebSocket echo, gRPC-style
//! trailers, slow answers), TLS material generated with rcgen, manifests for Ingress tests, and a
//! raw HTTP/1.1 client for requests curl will not send.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_util::sync::CancellationToken;

/// A backend on 127.0.0.1:0 that names itself in every answer. Stopped on drop.
pub(crate) struct HttpBackend {
    pub(crate) addr: SocketAddr,
    stop: CancellationToken,
    /// `METHOD target VERSION` of every request received, in order (what the conformance suite reads
    /// from an echo pod's log).
    log: Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpBackend {
    /// Answers:
    /// - `/ws` with a WebSocket upgrade: echoes each text message as `NAME: message`, binary
    ///   messages unchanged;
    /// - `/slow`: after 2 s; any path with `?delay=DURATION`: after that long;
    /// - `/fixed/N`: N bytes of `a..z` with a `Content-Length`; `/stream/N`: the same bytes
    ///   chunked, in 64 KiB frames;
    /// - `content-type: application/grpc`: the echo text below as one gRPC message, with
    ///   trailers `grpc-status: 0`, `grpc-message: ok`;
    /// - anything else: `backend=NAME`, the request line, version, body length and headers,
    ///   with the response headers `X-Echo-Set-Header: Name:value,...` asks for (as the
    ///   Gateway API conformance echo server).
    pub(crate) fn start(name: &str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
        let token = stop.clone();
        let log = Arc::new(std::sync::Mutex::new(Vec::new()));
        let requests = log.clone();
        crate::support::on_own_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    () = token.cancelled() => return,
                };
                let token = token.clone();
                let requests = requests.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let line = format!("{} {} {:?}", req.method(), req.uri(), req.version());
                        requests.lock().expect("log").push(line);
                        answer(name, req)
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self { addr, stop, log }
    }

    /// `METHOD target VERSION` of the requests received so far.
    pub(crate) fn requests(&self) -> Vec<String> {
        self.log.lock().expect("log").clone()
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub(crate) type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

pub(crate) async fn answer(
    name: &'static str,
    mut req: Request<Incoming>,
) -> Result<Response<BoxBody>, Infallible> {
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    // The conformance echo server's `?delay=1s`: answer after that long.
    let delay = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("delay=")))
        .and_then(|d| humantime::parse_duration(d).ok());
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    match req.uri().path() {
        "/ws" if req.headers().contains_key("sec-websocket-key") => {
            let key = req.headers()["sec-websocket-key"].as_bytes().to_vec();
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(upgraded) = upgrade.await else { return };
                let mut ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                while let Some(Ok(message)) = ws.next().await {
                    let reply = if message.is_text() {
                        let text = format!("{name}: {}", message.to_text().unwrap_or_default());
                        text.into()
                    } else if message.is_binary() {
                        message
                    } else {
                        continue;
                    };
                    if ws.send(reply).await.is_err() {
                        return;
                    }
                }
            });
            let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
            let response = Response::builder()
                .status(StatusCode::SWITCHING_PROTOCOLS)
                .header("connection", "upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-accept", accept)
                .body(full(String::new()))
                .expect("101");
            Ok(response)
        }
        path if path.starts_with("/fixed/") || path.starts_with("/stream/") => {
            let (kind, size) = path[1..].split_once('/').unwrap_or_default();
            let bytes = Bytes::from(pattern(size.parse().unwrap_or(0)));
            if kind == "fixed" {
                return Ok(Response::new(Full::new(bytes).boxed()));
            }
            let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = (0..bytes.len())
                .step_by(64 * 1024)
                .map(|at| {
                    Ok(http_body::Frame::data(
                        bytes.slice(at..(at + 64 * 1024).min(bytes.len())),
                    ))
                })
                .collect();
            let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
            Ok(Response::new(BodyExt::boxed(body)))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(Response::new(full(format!("backend={name}\nslow\n"))))
        }
        _ if req
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/grpc") =>
        {
            // One gRPC message (uncompressed, length-prefixed) holding the echo text.
            let (text, echo_set) = echo(name, req).await;
            let mut message = vec![0u8];
            message.extend_from_slice(&u32::try_from(text.len()).unwrap_or(0).to_be_bytes());
            message.extend_from_slice(text.as_bytes());
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            trailers.insert("grpc-message", HeaderValue::from_static("ok"));
            let frames = vec![
                Ok(http_body::Frame::data(Bytes::from(message))),
                Ok(http_body::Frame::trailers(trailers)),
            ];
            let body = BodyExt::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
                frames,
            )));
            let mut response = Response::builder()
                .header("content-type", "application/grpc")
                .body(body)
                .expect("grpc response");
            set_headers(&mut response, echo_set);
            Ok(response)
        }
        _ => {
            let (text, echo_set) = echo(name, req).await;
            let mut response = Response::new(full(text));
            set_headers(&mut response, echo_set);
            Ok(response)
        }
    }
}

/// The echo text (`backend=NAME`, request line, version, body length, headers sorted by name)
/// and the response headers `X-Echo-Set-Header: Name:value,...` asks for (as the Gateway API
/// conformance echo server).
async fn echo(name: &str, req: Request<Incoming>) -> (String, Vec<(String, String)>) {
    let mut text = format!(
        "backend={name}\n{} {}\nversion={:?}\n",
        req.method(),
        req.uri(),
        req.version()
    );
    let echo_set: Vec<(String, String)> = req
        .headers()
        .get_all("x-echo-set-header")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|pair| pair.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut headers: Vec<String> = req
        .headers()
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("?")))
        .collect();
    // By name only (stable): the values of one name keep their order.
    headers.sort_by(|a, b| {
        a.split_once(": ")
            .map(|p| p.0)
            .cmp(&b.split_once(": ").map(|p| p.0))
    });
    let length = req
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes().len())
        .unwrap_or(0);
    text.push_str(&format!("body={length}\n"));
    for header in headers {
        text.push_str(&header);
        text.push('\n');
    }
    (text, echo_set)
}

fn set_headers(response: &mut Response<BoxBody>, headers: Vec<(String, String)>) {
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
}

/// `size` bytes cycling through `a..z`: what `/fixed/N` and `/stream/N` answer.
pub(crate) fn pattern(size: usize) -> Vec<u8> {
    (0..size).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A CA and a certificate for `hosts` signed by it, as PEM.
pub(crate) struct TestCert {
    pub(crate) ca_pem: String,
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
}

impl TestCert {
    pub(crate) fn new(hosts: &[&str]) -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name = DistinguishedName::new();
        ca_params.distinguished_name.push(
            DnType::CommonName,
            format!("Capstan test CA {}", fastrand::u32(..)),
        );
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key"))
            .expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, hosts.first().copied().unwrap_or("leaf"));
        let cert = params.signed_by(&key, &ca).expect("sign");
        Self {
            ca_pem: ca.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A `kubernetes.io/tls` Secret manifest with this certificate (as `stringData`).
    pub(crate) fn secret(&self, namespace: &str, name: &str) -> String {
        let indent = |pem: &str| {
            pem.lines()
                .map(|l| format!("    {l}\n"))
                .collect::<String>()
        };
        format!(
            "apiVersion: v1\nkind: Secret\ntype: kubernetes.io/tls\nmetadata: {{name: {name}, namespace: {namespace}}}\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
            indent(&self.cert_pem),
            indent(&self.key_pem)
        )
    }
}

/// The IngressClass that makes Capstan's class the default.
pub(crate) const DEFAULT_CLASS: &str = "apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata:
  name: capstan
  annotations: {ingressclass.kubernetes.io/is-default-class: \"true\"}
spec: {controller: capstan.dev/ingress}
";

/// A Service `name` in `demo` with port 80 (`http`) → the given backends' ports.
pub(crate) fn service(name: &str, backends: &[SocketAddr], app_protocol: Option<&str>) -> String {
    let app = app_protocol.map_or(String::new(), |p| format!(", appProtocol: {p}"));
    let port = backends.first().map_or(80, SocketAddr::port);
    let slices: String = backends
        .iter()
        .enumerate()
        .map(|(i, backend)| endpoint_slice(name, &format!("{name}-{i}"), *backend, app_protocol))
        .collect();
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  clusterIP: None\n  ports: [{{name: http, port: 80, targetPort: {port}{app}}}]\n{slices}"
    )
}

/// An EndpointSlice `slice` of Service `service` in `demo` with one endpoint (its port named
/// `http`).
pub(crate) fn endpoint_slice(
    service: &str,
    slice: &str,
    backend: SocketAddr,
    app_protocol: Option<&str>,
) -> String {
    let app = app_protocol.map_or(String::new(), |p| format!(", appProtocol: {p}"));
    format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {slice}\n  namespace: demo\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\nports: [{{name: http, port: {}{app}}}]\nendpoints:\n  - addresses: [\"{}\"]\n",
        backend.port(),
        backend.ip()
    )
}

/// An Ingress `name` in `demo`: `rules` are `(host, path, pathType, service)`; `tls` lists
/// `(host, secret)`.
pub(crate) fn ingress(
    name: &str,
    rules: &[(&str, &str, &str, &str)],
    tls: &[(&str, &str)],
) -> String {
    let mut text = format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n"
    );
    if !tls.is_empty() {
        text.push_str("  tls:\n");
        for (host, secret) in tls {
            text.push_str(&format!(
                "  - hosts: [\"{host}\"]\n    secretName: {secret}\n"
            ));
        }
    }
    text.push_str("  rules:\n");
    for (host, path, path_type, service) in rules {
        let host = if host.is_empty() {
            String::new()
        } else {
            format!("host: \"{host}\"\n    ")
        };
        text.push_str(&format!(
            "  - {host}http:\n      paths:\n      - {{path: \"{path}\", pathType: {path_type}, backend: {{service: {{name: {service}, port: {{number: 80}}}}}}}}\n"
        ));
    }
    text
}

/// Sends `raw` bytes and returns the status line of the answer (or the error).
pub(crate) fn raw_status(addr: SocketAddr, raw: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = stream.write_all(raw);
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(2).any(|w| w == b"\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// `curl ARGS` → (HTTP status, body, response headers); status 0 when curl failed.
pub(crate) fn curl(args: &[&str]) -> (u16, String, String) {
    let headers = std::env::temp_dir().join(format!(
        "capstan-curl-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    let head = std::fs::read_to_string(&headers).unwrap_or_default();
    let _ = std::fs::remove_file(&headers);
    (code.trim().parse().unwrap_or(0), body.to_owned(), head)
}
