//! What happens when a request is over, whichever way it ends: the endpoint's in-flight count
//! goes down, the route's counters and latency histogram go up, and the access log gets its line.
//! Dropping a [`Completion`] does all of it, so an abandoned response is settled too.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use capstan_table::{Endpoint, Route};
use tokio::sync::mpsc;

use crate::metrics::IngressMetrics;

/// The end of one request.
#[derive(Debug)]
pub(crate) struct Completion {
    pub started: Instant,
    pub status: u16,
    pub route: Option<Arc<Route>>,
    /// The endpoint the request went to; its in-flight count was raised when it was chosen.
    pub endpoint: Option<Arc<Endpoint>>,
    pub bytes_sent: u64,
    /// The response body was sent to its end.
    pub complete: bool,
    pub metrics: Arc<IngressMetrics>,
    pub log: Option<LogEntry>,
    /// The request is gRPC: Capstan's own error answers go out as gRPC statuses.
    pub grpc: bool,
}

/// The request side of an access log line, captured only when the access log is on.
#[derive(Debug)]
pub(crate) struct LogEntry {
    pub sink: AccessLog,
    pub method: String,
    pub host: String,
    pub path: String,
    pub protocol: &'static str,
    pub client: std::net::IpAddr,
}

/// Where access log lines go: a bounded queue drained by one writer task, so a slow stdout never
/// blocks a request (lines beyond the queue are counted and dropped).
#[derive(Clone, Debug)]
pub(crate) struct AccessLog {
    lines: mpsc::Sender<String>,
}

// === impl Completion ===

impl Completion {
    pub(crate) fn new(metrics: Arc<IngressMetrics>, log: Option<LogEntry>) -> Self {
        Self {
            started: Instant::now(),
            status: 0,
            route: None,
            endpoint: None,
            bytes_sent: 0,
            complete: false,
            metrics,
            log,
            grpc: false,
        }
    }

    /// Takes an in-flight slot on `endpoint` until this completion is dropped.
    pub(crate) fn hold(&mut self, endpoint: Arc<Endpoint>) {
        endpoint.stats.in_flight.fetch_add(1, Ordering::Relaxed);
        if let Some(previous) = self.endpoint.replace(endpoint) {
            previous.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.started.elapsed();
        if let Some(endpoint) = &self.endpoint {
            endpoint.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
        match &self.route {
            Some(route) => {
                route.stats.record_status(self.status);
                route.stats.duration.record(elapsed);
                route
                    .stats
                    .bytes_to_client
                    .fetch_add(self.bytes_sent, Ordering::Relaxed);
            }
            None => self.metrics.record_unrouted(self.status),
        }
        if let Some(log) = &self.log {
            let line = serde_json::json!({
                "time_ms": std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as u64),
                "client": log.client.to_string(),
                "method": log.method,
                "host": log.host,
                "path": log.path,
                "protocol": log.protocol,
                "status": self.status,
                "ingress": self.route.as_ref().map(|r| &*r.ingress),
                "upstream": self.endpoint.as_ref().map(|e| e.addr.to_string()),
                "duration_ms": elapsed.as_secs_f64() * 1e3,
                "bytes": self.bytes_sent,
                "complete": self.complete,
            });
            if log.sink.lines.try_send(line.to_string()).is_err() {
                self.metrics
                    .access_log_dropped
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

// === impl AccessLog ===

impl AccessLog {
    /// Starts the writer task on the current runtime; lines go to stdout.
    pub(crate) fn start() -> Self {
        let (lines, mut rx) = mpsc::channel::<String>(16 * 1024);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut out = tokio::io::stdout();
            let mut buffer = String::new();
            while let Some(line) = rx.recv().await {
                buffer.clear();
                buffer.push_str(&line);
                buffer.push('\n');
                while let Ok(line) = rx.try_recv() {
                    buffer.push_str(&line);
                    buffer.push('\n');
                }
                if out.write_all(buffer.as_bytes()).await.is_err() {
                    return;
                }
                let _ = out.flush().await;
            }
        });
        Self { lines }
    }
}
