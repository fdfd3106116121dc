//! A backend that fails on cue, for the HTTP resilience tests: it answers 200, 500 or 503,
//! resets the connection, or fails only its health check, as its mode says at that moment, and
//! counts what it saw. Plain HTTP/1.1 with keep-alive, written by hand so that a reset is a
//! real reset. Also the manifests, clients and metric readers the policy tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::http_support::{DEFAULT_CLASS, endpoint_slice};
use crate::support::{Capstan, TempDir, http_get, path_str};

/// What a [`FaultyBackend`] does with the next request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Mode {
    Ok = 0,
    Status500 = 1,
    Status503 = 2,
    /// Reads the request and closes the connection without an answer.
    Reset = 3,
    /// Answers requests; `/healthz` answers 503.
    FailHealthCheck = 4,
}

/// A backend on 127.0.0.1:0 named in its 200 answers (`backend=NAME`). Stopped on drop: its
/// port then refuses connections.
pub(crate) struct FaultyBackend {
    pub(crate) addr: SocketAddr,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    health_checks: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl FaultyBackend {
    pub(crate) fn start(name: &str, mode: Mode) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let backend = Self {
            addr,
            mode: Arc::new(AtomicU8::new(mode as u8)),
            requests: Arc::default(),
            health_checks: Arc::default(),
            stop: CancellationToken::new(),
        };
        let name: Arc<str> = Arc::from(name);
        let (mode, requests, health, token) = (
            backend.mode.clone(),
            backend.requests.clone(),
            backend.health_checks.clone(),
            backend.stop.clone(),
        );
        crate::support::on_own_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = token.cancelled() => return,
                };
                let conn = Connection {
                    name: name.clone(),
                    mode: mode.clone(),
                    requests: requests.clone(),
                    health_checks: health.clone(),
                };
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = conn.serve(stream) => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        backend
    }

    pub(crate) fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests seen (health checks not counted).
    pub(crate) fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }

    pub(crate) fn health_checks(&self) -> u64 {
        self.health_checks.load(Ordering::SeqCst)
    }
}

impl Drop for FaultyBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

struct Connection {
    name: Arc<str>,
    mode: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    health_checks: Arc<AtomicU64>,
}

impl Connection {
    async fn serve(self, mut stream: TcpStream) {
        let mut buf = Vec::new();
        loop {
            let Some((path, body_length, head_end)) = read_head(&mut stream, &mut buf).await else {
                return;
            };
            while buf.len() < head_end + body_length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.drain(..head_end + body_length);
            let mode = self.mode.load(Ordering::SeqCst);
            let (status, text) = if path == "/healthz" {
                self.health_checks.fetch_add(1, Ordering::SeqCst);
                if mode == Mode::FailHealthCheck as u8 {
                    ("503 Service Unavailable", String::new())
                } else {
                    ("200 OK", String::new())
                }
            } else {
                self.requests.fetch_add(1, Ordering::SeqCst);
                match mode {
                    m if m == Mode::Status500 as u8 => ("500 Internal Server Error", String::new()),
                    m if m == Mode::Status503 as u8 => ("503 Service Unavailable", String::new()),
                    m if m == Mode::Reset as u8 => return,
                    _ => ("200 OK", format!("backend={}\n", self.name)),
                }
            };
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{text}",
                text.len()
            );
            if stream.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
        }
    }
}

/// Reads one request head: its path, `content-length` and where the head ends in `buf`.
async fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, usize, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            return Some((path, length, end + 4));
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Writes the default class, Service `web` (with `service_annotations`) over `backends`, and an
/// Ingress sending every host and path to it (with `ingress_annotations`); annotations are
/// `key: value` pairs without the `capstan.dev/` prefix.
pub(crate) fn write_manifests(
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
pub(crate) fn write_service(dir: &TempDir, backends: &[SocketAddr], annotations: &str) {
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

pub(crate) fn start(dir: &TempDir) -> (Capstan, SocketAddr) {
    start_with(dir, &[])
}

pub(crate) fn start_with(dir: &TempDir, extra: &[&str]) -> (Capstan, SocketAddr) {
    let mut args = vec!["--manifests", path_str(&dir.0), "--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let capstan = Capstan::start(&args);
    let http = capstan.ingress_addrs().0.expect("http listener");
    (capstan, http)
}

pub(crate) fn status(http: SocketAddr, path: &str) -> u16 {
    http_get(http, path).map_or(0, |(status, _)| status)
}

/// A `capstan_ingress_policy_decisions_total` counter of the Ingress `demo/web`.
pub(crate) fn decisions(capstan: &Capstan, decision: &str) -> f64 {
    let metrics = capstan.metrics();
    metrics
        .lines()
        .filter(|l| l.contains("policy_decisions") && l.contains("demo/web"))
        .find(|l| l.contains(&format!("decision=\"{decision}\"")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

/// Runs oha against `url` with `args` and returns its JSON report.
pub(crate) fn oha(url: &str, args: &[&str]) -> serde_json::Value {
    let output = std::process::Command::new("oha")
        .args(args)
        .args(["--no-tui", "--output-format", "json", url])
        .output()
        .expect("oha (cargo install oha) is needed for this test");
    serde_json::from_slice(&output.stdout).expect("oha JSON report")
}

pub(crate) fn status_count(report: &serde_json::Value, code: &str) -> u64 {
    report["statusCodeDistribution"][code].as_u64().unwrap_or(0)
}

/// Waits until every endpoint of Service `web` is in the snapshot.
pub(crate) fn wait_endpoints(capstan: &Capstan, n: usize) {
    capstan.wait_snapshot(&format!("{n} endpoints"), |s| {
        s["ingress"]["routes"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r["endpoints"].as_u64() == Some(n as u64)))
    });
}

/// A GET on a fresh connection; the response head as text.
pub(crate) fn raw_head(addr: SocketAddr) -> String {
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

/// Sends `raw` on a fresh connection and reads the answer to its end.
pub(crate) fn raw_exchange(addr: SocketAddr, raw: &[u8]) -> String {
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

pub(crate) fn set_cookie(head: &str) -> Option<String> {
    head.lines()
        .find_map(|l| {
            l.strip_prefix("set-cookie: ")
                .or_else(|| l.strip_prefix("Set-Cookie: "))
        })
        .and_then(|v| v.split(';').next())
        .map(str::to_owned)
}

pub(crate) fn backend_name(body: &str) -> String {
    body.lines()
        .next()
        .and_then(|l| l.strip_prefix("backend="))
        .unwrap_or("?")
        .to_owned()
}
