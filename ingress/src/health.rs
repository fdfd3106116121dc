//! Active HTTP health checks of the endpoints of every Service port that asks for them
//! (`capstan.dev/health-check-path`): each endpoint is probed once per interval with
//! `GET <path>` on a fresh connection; `unhealthy_threshold` consecutive failures mark it down,
//! `healthy_threshold` consecutive passes bring it back (Envoy's and HAProxy's `rise`/`fall`).
//! Marks live in the endpoint's carried [`EndpointStats`], which the balancer of the ingress and
//! of the user-space L4 path reads; endpoints start healthy, since Kubernetes readiness already
//! admitted them.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use capstan_proxy::now_ms;
use capstan_table::{ActiveHealthCheck, EndpointStats, SnapshotHandle, millis};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http1::{Parsed, parse_response_head};

/// How often the snapshot is scanned for checks that are due.
const SCAN_EVERY: Duration = Duration::from_millis(200);
/// The largest response head a check reads.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Runs every due check until `shutdown`.
pub async fn run(snapshots: SnapshotHandle, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SCAN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(snapshot) = snapshots.load() else {
            continue;
        };
        let now = now_ms();
        for port in snapshot.proxy.ports.values() {
            let Some(check) = &port.health else {
                continue;
            };
            for endpoint in port.endpoints.iter().filter(|e| e.conditions.serving) {
                let due = &endpoint.stats.next_check_ms;
                let next = due.load(Ordering::Relaxed);
                if next > now {
                    continue;
                }
                let after = now + millis(check.interval);
                if due
                    .compare_exchange(next, after, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    let (check, stats, addr) =
                        (check.clone(), endpoint.stats.clone(), endpoint.addr);
                    tokio::spawn(async move {
                        let passed = probe(addr, &check).await;
                        record(&stats, &check, addr, passed);
                    });
                }
            }
        }
    }
}

/// Counts one check's result and flips the endpoint's mark when a threshold is reached.
fn record(stats: &EndpointStats, check: &ActiveHealthCheck, addr: SocketAddr, passed: bool) {
    let (mine, other, threshold) = if passed {
        (
            &stats.checks_passed,
            &stats.checks_failed,
            check.healthy_threshold,
        )
    } else {
        (
            &stats.checks_failed,
            &stats.checks_passed,
            check.unhealthy_threshold,
        )
    };
    other.store(0, Ordering::Relaxed);
    let streak = mine.fetch_add(1, Ordering::Relaxed).saturating_add(1);
    let down = stats.unhealthy.load(Ordering::Relaxed);
    if streak >= threshold && down == passed {
        stats.unhealthy.store(!passed, Ordering::Relaxed);
        stats.health_transitions.fetch_add(1, Ordering::Relaxed);
        if passed {
            info!(endpoint = %addr, path = %check.path, "health check passing: endpoint back in rotation");
        } else {
            warn!(endpoint = %addr, path = %check.path, "health check failing: endpoint taken out of rotation");
        }
    }
}

/// One `GET` of the check's path, over TLS when the check asks for it; passes when the status
/// is one the check expects, within its timeout.
async fn probe(addr: SocketAddr, check: &ActiveHealthCheck) -> bool {
    let host = check
        .host
        .as_deref()
        .map_or_else(|| addr.to_string(), str::to_owned);
    let exchange = async {
        let stream = TcpStream::connect(addr).await.ok()?;
        if !check.tls {
            return exchange(stream, &host, check).await;
        }
        let name = match &check.host {
            Some(host) => ServerName::try_from(host.to_string()).ok()?,
            None => ServerName::IpAddress(addr.ip().into()),
        };
        let connector = TlsConnector::from(crate::upstream_tls::health_check_config());
        let stream = connector.connect(name, stream).await.ok()?;
        exchange(stream, &host, check).await
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Some(status)) => check.passes(status),
        _ => false,
    }
}

/// Sends the check's request on `stream` and reads the status of the response head.
async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    host: &str,
    check: &ActiveHealthCheck,
) -> Option<u16> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: capstan-health-check\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await.ok()? == 0 {
            return None;
        }
        match parse_response_head(&buf, false, MAX_HEAD_BYTES).ok()? {
            Parsed::Complete { head, .. } => return Some(head.status.as_u16()),
            Parsed::Partial => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn check() -> ActiveHealthCheck {
        ActiveHealthCheck {
            path: Arc::from("/healthz"),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            statuses: vec![(200, 399)],
            tls: false,
            host: None,
        }
    }

    #[test]
    fn thresholds_take_an_endpoint_down_and_bring_it_back() {
        let stats = EndpointStats::default();
        let addr = SocketAddr::from(([10, 0, 0, 1], 80));
        let check = check();
        let down = |s: &EndpointStats| s.unhealthy.load(Ordering::Relaxed);
        record(&stats, &check, addr, false);
        record(&stats, &check, addr, false);
        assert!(!down(&stats), "two failures are not three");
        record(&stats, &check, addr, true);
        record(&stats, &check, addr, false);
        record(&stats, &check, addr, false);
        assert!(!down(&stats), "a pass resets the streak");
        record(&stats, &check, addr, false);
        assert!(down(&stats));
        record(&stats, &check, addr, true);
        assert!(down(&stats), "one pass is not two");
        record(&stats, &check, addr, true);
        assert!(!down(&stats));
        assert_eq!(stats.health_transitions.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_probe_passes_on_an_expected_status_only() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            for status in ["200 OK", "503 Service Unavailable"] {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = [0u8; 1024];
                let n = conn.read(&mut buf).await.expect("read");
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
                let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                conn.write_all(answer.as_bytes()).await.expect("write");
            }
        });
        assert!(probe(addr, &check()).await);
        assert!(!probe(addr, &check()).await);
        // Nothing listens any more: a refused connect fails the check.
        assert!(!probe(addr, &check()).await);
    }

    /// `health-check-scheme: https`: the check speaks TLS to an endpoint with a self-signed
    /// certificate and sends the configured Host as SNI; a cleartext check of the same endpoint
    /// fails.
    #[tokio::test]
    async fn a_tls_probe_reaches_a_tls_endpoint_with_its_server_name() {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let generated =
            rcgen::generate_simple_self_signed(vec!["api.internal".to_owned()]).expect("generate");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(generated.cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                    generated.signing_key.serialize_der(),
                )),
            )
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (names_tx, mut names) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (conn, _) = listener.accept().await.expect("accept");
                let Ok(mut tls) = acceptor.accept(conn).await else {
                    continue;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let mut buf = [0u8; 1024];
                let n = tls.read(&mut buf).await.expect("read");
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = names_tx.send((sni, head));
                let answer = "HTTP/1.1 204 No Content\r\ncontent-length: 0\r\n\r\n";
                tls.write_all(answer.as_bytes()).await.expect("write");
                let _ = tls.shutdown().await;
            }
        });
        let tls_check = ActiveHealthCheck {
            tls: true,
            host: Some(Arc::from("api.internal")),
            ..check()
        };
        assert!(probe(addr, &tls_check).await);
        let (sni, head) = names.recv().await.expect("one request");
        assert_eq!(sni.as_deref(), Some("api.internal"));
        assert!(head.contains("Host: api.internal\r\n"), "{head}");
        assert!(
            !probe(addr, &check()).await,
            "cleartext to a TLS endpoint fails"
        );
        let by_address = ActiveHealthCheck {
            tls: true,
            ..check()
        };
        assert!(
            probe(addr, &by_address).await,
            "no host: the address, no SNI"
        );
    }
}
