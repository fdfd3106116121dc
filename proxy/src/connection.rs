//! One accepted TCP connection: snapshot → endpoint → connect (with retry) → relay.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capstan_table::{Endpoint, Frontend, ServicePortTable, SnapshotHandle};
use tokio::net::TcpStream;
use tracing::debug;

use crate::relay::{RelayEnd, relay};
use crate::source::{Links, connect_from};
use crate::{ProxyError, balance, now_ms};

/// Distinct endpoints tried before a connection is given up.
const MAX_ATTEMPTS: usize = 3;

/// Serves one client connection accepted on `frontend`; with `links`, endpoints are reached from
/// the client's address where its replies come back through this node.
pub(crate) async fn serve(
    client: TcpStream,
    peer: SocketAddr,
    frontend: Frontend,
    snapshots: SnapshotHandle,
    links: Option<Arc<Links>>,
) {
    // One snapshot for the whole connection: later swaps never affect it.
    let Some(snapshot) = snapshots.load() else {
        return reset(client);
    };
    let Some(target) = snapshot.proxy.target(&frontend) else {
        debug!(%peer, %frontend, "no service on frontend");
        return reset(client);
    };
    if !target.admit(peer.ip()) {
        // Outside loadBalancerSourceRanges: closed without a reply, as close to kube-proxy's
        // drop as a proxy that has accepted the connection can be.
        debug!(%peer, %frontend, "outside loadBalancerSourceRanges");
        return;
    }
    let (port, scope): (Arc<ServicePortTable>, _) = (Arc::clone(&target.port), target.scope);
    // Keep only this Service port's table: a swap frees the rest of the old snapshot.
    drop(snapshot);
    let counters = &port.state.counters;
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let eligible = &port.endpoints_for(scope).endpoints;
    if eligible.is_empty() {
        counters.no_endpoints.fetch_add(1, Ordering::Relaxed);
        let when_empty = port.endpoints_for(scope).when_empty;
        debug!(%peer, service = %port.key, ?when_empty, "no eligible endpoint");
        return reset(client);
    }

    let Some((endpoint, upstream)) = connect(&port, eligible, peer, links.as_deref()).await else {
        counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
        return reset(client);
    };
    debug!(%peer, service = %port.key, endpoint = %endpoint.addr, "connected");
    let _active = Gauge::up(&counters.active);
    let _in_flight = Gauge::up(&endpoint.stats.in_flight);
    let end = relay(
        client,
        upstream,
        port.timeouts.idle,
        &counters.bytes_from_client,
        &counters.bytes_to_client,
    )
    .await;
    match end {
        RelayEnd::Closed => debug!(%peer, endpoint = %endpoint.addr, "closed"),
        RelayEnd::Idle => {
            counters.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, endpoint = %endpoint.addr, "idle timeout");
        }
        RelayEnd::Error(error) => debug!(%peer, endpoint = %endpoint.addr, %error, "relay ended"),
    }
}

/// Tries up to [`MAX_ATTEMPTS`] distinct endpoints; each failure ejects that endpoint.
async fn connect(
    port: &ServicePortTable,
    eligible: &[Arc<Endpoint>],
    peer: SocketAddr,
    links: Option<&Links>,
) -> Option<(Arc<Endpoint>, TcpStream)> {
    let mut rng = fastrand::Rng::new();
    let mut tried = Vec::new();
    while tried.len() < MAX_ATTEMPTS {
        let endpoint = balance::choose(port, eligible, peer.ip(), &tried, now_ms(), &mut rng)?;
        endpoint.stats.chosen.fetch_add(1, Ordering::Relaxed);
        let source = links.and_then(|links| links.source_for(peer.ip(), &endpoint));
        match connect_one(endpoint.addr, source, port.timeouts.connect).await {
            Ok(stream) => {
                endpoint.stats.record_success();
                return Some((endpoint, stream));
            }
            Err(error) => {
                let until = endpoint.stats.record_failure(now_ms(), &port.timeouts);
                debug!(%peer, service = %port.key, %error, eject_ms = until.saturating_sub(now_ms()), "connect failed");
                tried.push(endpoint.addr);
            }
        }
    }
    None
}

/// Connects to `addr`, from `source` when given (the client's address) or else the node's.
async fn connect_one(
    addr: SocketAddr,
    source: Option<std::net::IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let connecting = async {
        match source {
            Some(source) => connect_from(source, addr).await,
            None => TcpStream::connect(addr).await,
        }
    };
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(source)) => Err(ProxyError::Connect { addr, source }),
        Err(_) => Err(ProxyError::ConnectTimeout { addr }),
    }
}

/// Closes with RST rather than FIN: the client sees "connection refused/reset" at once, as with
/// kube-proxy's REJECT rule, instead of an empty successful connection.
fn reset(client: TcpStream) {
    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
    drop(client);
}

/// Increments a gauge for as long as it lives.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Self(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
