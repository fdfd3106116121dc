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

    let (endpoint, upstream) = match connect(&port, eligible, peer, links.as_deref()).await {
        Ok(connected) => connected,
        Err(Unserved::Overloaded) => {
            counters.overloaded.fetch_add(1, Ordering::Relaxed);
            debug!(%peer, service = %port.key, "every endpoint at its connection limit");
            return reset(client);
        }
        Err(Unserved::Failed) => {
            counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
            return reset(client);
        }
    };
    debug!(%peer, service = %port.key, endpoint = %endpoint.addr, "connected");
    let _active = Gauge::up(&counters.active);
    // Taken by `connect` (a slot under the endpoint's connection limit).
    let _in_flight = Gauge(&endpoint.stats.in_flight);
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

/// Why a connection got no endpoint.
enum Unserved {
    /// Every endpoint left was at `max-connections-per-endpoint`.
    Overloaded,
    /// No endpoint could be connected to.
    Failed,
}

/// Tries up to [`MAX_ATTEMPTS`] distinct endpoints; each failure ejects that endpoint.
/// Endpoints at their connection limit are passed over without an attempt. On success the
/// endpoint's `in_flight` count includes this connection.
async fn connect(
    port: &ServicePortTable,
    eligible: &[Arc<Endpoint>],
    peer: SocketAddr,
    links: Option<&Links>,
) -> Result<(Arc<Endpoint>, TcpStream), Unserved> {
    let mut rng = fastrand::Rng::new();
    let mut passed_over = Vec::new();
    let mut attempts = 0;
    let limit = port.max_connections_per_endpoint.map(u64::from);
    while attempts < MAX_ATTEMPTS {
        let Some(endpoint) =
            balance::choose(port, eligible, peer.ip(), &passed_over, now_ms(), &mut rng)
        else {
            break;
        };
        passed_over.push(endpoint.addr);
        if !reserve(&endpoint.stats.in_flight, limit) {
            continue;
        }
        attempts += 1;
        endpoint.stats.chosen.fetch_add(1, Ordering::Relaxed);
        let source = links.and_then(|links| links.source_for(peer.ip(), &endpoint));
        match connect_one(endpoint.addr, source, port.timeouts.connect).await {
            Ok(stream) => {
                endpoint.stats.record_success();
                return Ok((endpoint, stream));
            }
            Err(error) => {
                endpoint.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                let until = endpoint.stats.record_failure(now_ms(), &port.timeouts);
                debug!(%peer, service = %port.key, %error, eject_ms = until.saturating_sub(now_ms()), "connect failed");
            }
        }
    }
    // Nothing was attempted although endpoints were there: all full.
    Err(match (attempts, limit) {
        (0, Some(_)) => Unserved::Overloaded,
        _ => Unserved::Failed,
    })
}

/// Takes one of `counter`'s places under `limit` (any number without one).
fn reserve(counter: &AtomicU64, limit: Option<u64>) -> bool {
    match limit {
        None => {
            counter.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(max) => counter
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok(),
    }
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
