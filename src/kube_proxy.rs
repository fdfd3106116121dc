//! kube-proxy's HTTP endpoints, so that cloud load balancers, probes and scrapers written for
//! kube-proxy work unchanged:
//!
//! - `--healthz` (default `0.0.0.0:10256`): `/healthz` and `/livez` with kube-proxy's JSON
//!   (`lastUpdated`, `currentTime`, `nodeEligible`), 200 once a snapshot is served, else 503.
//! - `--metrics` (default `127.0.0.1:10249`): `/metrics` (the same registry as the admin
//!   endpoint) and `/proxyMode`.
//! - one server per `healthCheckNodePort` in the snapshot (LoadBalancer Services with
//!   `externalTrafficPolicy: Local`): 200 with local endpoints, 503 without, and the
//!   `X-Load-Balancing-Endpoint-Weight` header, opened and closed as snapshots change.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use capstan_table::{Generation, SnapshotHandle};
use http::{Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::telemetry::Metrics;

/// What `/proxyMode` answers: Capstan proxies in user space, whatever captures the traffic.
pub const PROXY_MODE: &str = "capstan";

/// When the data planes last took a new snapshot, shared by the publisher and the servers.
#[derive(Debug)]
pub struct SyncClock {
    /// Unix nanoseconds of the last publish; 0 before the first.
    last_published: AtomicU64,
    /// kube-proxy's `nodeEligible`: false while this Node is being deleted or carries the
    /// cluster autoscaler's `ToBeDeletedByClusterAutoscaler` taint (load balancers drain it).
    node_eligible: AtomicBool,
}

impl Default for SyncClock {
    fn default() -> Self {
        Self {
            last_published: AtomicU64::new(0),
            node_eligible: AtomicBool::new(true),
        }
    }
}

impl SyncClock {
    pub fn published(&self) {
        self.last_published.store(unix_nanos(), Ordering::Relaxed);
    }

    pub fn set_node_eligible(&self, eligible: bool) {
        self.node_eligible.store(eligible, Ordering::Relaxed);
    }

    pub(crate) fn node_eligible(&self) -> bool {
        self.node_eligible.load(Ordering::Relaxed)
    }

    /// Whether a snapshot has been served yet.
    pub(crate) fn has_published(&self) -> bool {
        self.last().is_some()
    }

    fn last(&self) -> Option<u64> {
        match self.last_published.load(Ordering::Relaxed) {
            0 => None,
            at => Some(at),
        }
    }
}

/// Serves `/healthz` and `/livez` on `listener` until `shutdown`.
pub async fn serve_healthz(
    listener: TcpListener,
    clock: Arc<SyncClock>,
    shutdown: CancellationToken,
) {
    serve_http(listener, shutdown, move |request| {
        let livez = request.uri().path() == "/livez";
        match request.uri().path() {
            "/healthz" | "/livez" => healthz(&clock, !livez),
            _ => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    })
    .await;
}

/// Serves `/metrics` and `/proxyMode` on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    serve_http(listener, shutdown, move |request| {
        match request.uri().path() {
            "/metrics" => Response::builder()
                .header(
                    header::CONTENT_TYPE,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(metrics.encode())))
                .unwrap_or_default(),
            "/proxyMode" => plain(StatusCode::OK, PROXY_MODE),
            _ => plain(StatusCode::NOT_FOUND, "404 page not found\n"),
        }
    })
    .await;
}

/// Keeps one health server per `healthCheckNodePort` of the current snapshot, on `addresses`
/// (all addresses when empty), until `shutdown`.
pub async fn serve_health_check_node_ports(
    snapshots: SnapshotHandle,
    mut generations: watch::Receiver<Generation>,
    addresses: Vec<IpAddr>,
    clock: Arc<SyncClock>,
    shutdown: CancellationToken,
) {
    let addresses = if addresses.is_empty() {
        vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]
    } else {
        addresses
    };
    let mut open: BTreeMap<u16, CancellationToken> = BTreeMap::new();
    loop {
        let wanted: Vec<u16> = snapshots
            .load()
            .map(|s| s.proxy.health_checks.keys().copied().collect())
            .unwrap_or_default();
        open.retain(|port, server| {
            let keep = wanted.contains(port);
            if !keep {
                info!(port, "health check node port closed");
                server.cancel();
            }
            keep
        });
        for &port in &wanted {
            if open.contains_key(&port) {
                continue;
            }
            let server = shutdown.child_token();
            for &ip in &addresses {
                let addr = SocketAddr::new(ip, port);
                match TcpListener::bind(addr).await {
                    Ok(listener) => {
                        info!(%addr, "health check node port listening");
                        tokio::spawn(serve_health_check(
                            listener,
                            port,
                            snapshots.clone(),
                            clock.clone(),
                            server.clone(),
                        ));
                    }
                    Err(error) => warn!(%addr, %error, "health check node port not bound"),
                }
            }
            open.insert(port, server);
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = generations.changed() => if changed.is_err() { return },
        }
    }
}

async fn serve_health_check(
    listener: TcpListener,
    port: u16,
    snapshots: SnapshotHandle,
    clock: Arc<SyncClock>,
    shutdown: CancellationToken,
) {
    serve_http(listener, shutdown, move |_request| {
        let snapshot = snapshots.load();
        let Some(check) = snapshot
            .as_ref()
            .and_then(|s| s.proxy.health_checks.get(&port))
        else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "no such health check\n");
        };
        let healthy = clock.last().is_some();
        let body = format!(
            "{{\n\t\"service\": {{\n\t\t\"namespace\": {:?},\n\t\t\"name\": {:?}\n\t}},\n\t\"localEndpoints\": {},\n\t\"serviceProxyHealthy\": {healthy}\n}}",
            &*check.service.namespace, &*check.service.name, check.local_endpoints
        );
        let status = if check.local_endpoints > 0 && healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Content-Type-Options", "nosniff")
            .header(
                "X-Load-Balancing-Endpoint-Weight",
                check.local_endpoints.to_string(),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    })
    .await;
}

/// kube-proxy's healthz body: healthy once a snapshot is served. As kube-proxy does, a healthy
/// answer reports `lastUpdated` as the current time, and `/healthz` (not `/livez`) answers 503
/// while the node is not eligible, so load balancers stop sending to a node being removed.
fn healthz(clock: &SyncClock, with_node: bool) -> Response<Full<Bytes>> {
    let now = unix_nanos();
    let synced = clock.last().is_some();
    let last = if synced { now } else { 0 };
    let eligible = clock.node_eligible();
    let healthy = synced && (eligible || !with_node);
    let body = if with_node {
        format!(
            "{{\"lastUpdated\": {:?},\"currentTime\": {:?}, \"nodeEligible\": {eligible}}}",
            go_time(last),
            go_time(now)
        )
    } else {
        format!(
            "{{\"lastUpdated\": {:?},\"currentTime\": {:?}}}",
            go_time(last),
            go_time(now)
        )
    };
    Response::builder()
        .status(if healthy {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        })
        .header(header::CONTENT_TYPE, "application/json")
        .header("X-Content-Type-Options", "nosniff")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// A time as Go's `time.Time.String()` prints it in UTC: `2006-01-02 15:04:05.999999999 +0000 UTC`.
fn go_time(unix_nanos: u64) -> String {
    let seconds = unix_nanos / 1_000_000_000;
    let nanos = unix_nanos % 1_000_000_000;
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_owned()
    };
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}{fraction} +0000 UTC",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// Howard Hinnant's days-from-civil inverse: days since 1970-01-01 → (year, month, day).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn plain(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain; charset=utf-8")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap_or_default()
}

/// A small HTTP/1.1 server: `answer` for every request, until `shutdown`.
pub(crate) async fn serve_http<F>(listener: TcpListener, shutdown: CancellationToken, answer: F)
where
    F: Fn(&Request<Incoming>) -> Response<Full<Bytes>> + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "accept failed");
                    continue;
                }
            },
        };
        let answer = answer.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = answer(&request);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                result = connection => if let Err(error) = result {
                    debug!(%peer, %error, "health connection ended");
                },
                () = shutdown.cancelled() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_print_as_go_does() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(
            go_time(1_700_000_000_123_456_789),
            "2023-11-14 22:13:20.123456789 +0000 UTC"
        );
        assert_eq!(
            go_time(951_782_400_500_000_000),
            "2000-02-29 00:00:00.5 +0000 UTC"
        );
    }
}
