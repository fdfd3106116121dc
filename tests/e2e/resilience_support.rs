//! A backend that fails on cue, for the HTTP resilience tests: it answers 200, 500 or 503,
//! resets the connection, or fails only its health check, as its mode says at that moment, and
//! counts what it saw. Plain HTTP/1.1 with keep-alive, written by hand so that a reset is a
//! real reset.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

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
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
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
