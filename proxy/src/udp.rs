//! UDP frontends: one receive loop per frontend socket. Each client address is a flow with its
//! own connected socket to the endpoint chosen for it; replies go back from the frontend address
//! (on a wildcard socket, from the address the client's first datagram was sent to: a NodePort
//! asked on one node address answers from it, and a redirected flow answers from the address
//! conntrack expects).
//! Flows expire after `udp_idle` without a datagram either way, and a flow whose endpoint is no
//! longer eligible (removed, or failed) is re-balanced on its next datagram: the userspace form of
//! kube-proxy's stale-conntrack flush.

mod flows;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use capstan_sockets::pktinfo;
use capstan_table::{Endpoint, Frontend, PortCounters, ServicePortTable, SnapshotHandle};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::source::{self, Links};
use crate::{balance, now_ms};
use flows::FlowTable;

/// Largest datagram relayed.
const DATAGRAM: usize = 64 * 1024;
/// How often idle flows are swept.
const SWEEP: Duration = Duration::from_secs(1);

/// One client's flow.
struct Flow {
    endpoint: Arc<Endpoint>,
    upstream: Arc<UdpSocket>,
    /// Monotonic ms of the last datagram from the endpoint.
    replied: Arc<AtomicU64>,
    replies: JoinHandle<()>,
}

impl Drop for Flow {
    fn drop(&mut self) {
        self.replies.abort();
        self.endpoint
            .stats
            .in_flight
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves one UDP frontend until `stop`; with `links`, flows reach endpoints from the client's
/// address where the replies come back through this node ([`crate::source`]).
pub(crate) async fn serve(
    socket: UdpSocket,
    frontend: Frontend,
    snapshots: SnapshotHandle,
    stop: CancellationToken,
    links: Option<Arc<Links>>,
) {
    let socket = Arc::new(socket);
    let mut flows: FlowTable<Flow> = FlowTable::new(u64::MAX);
    let mut rng = fastrand::Rng::new();
    let mut buffer = vec![0u8; DATAGRAM];
    let mut sweep = tokio::time::interval(SWEEP);
    let last_reply = |flow: &Flow| flow.replied.load(Ordering::Relaxed);
    loop {
        let (n, client, local) = tokio::select! {
            received = pktinfo::recv_with_destination(&socket, &mut buffer) => match received {
                Ok(received) => received,
                Err(error) => {
                    debug!(%frontend, %error, "udp receive failed");
                    continue;
                }
            },
            _ = sweep.tick() => {
                drop(flows.expire(now_ms(), last_reply));
                continue;
            }
            () = stop.cancelled() => return,
        };
        let datagram = &buffer[..n];
        let now = now_ms();
        // The current snapshot, per datagram: a swap applies to the very next one.
        let Some(snapshot) = snapshots.load() else {
            continue;
        };
        let Some(target) = snapshot.proxy.target(&frontend) else {
            continue;
        };
        if !target.admit(client.ip()) {
            continue;
        }
        let port = &target.port;
        let counters = &port.state.counters;
        let eligible = &port.endpoints_for(target.scope).endpoints;
        flows.set_idle_ms(capstan_table::millis(port.timeouts.udp_idle));

        let live = flows.get(client, now, last_reply).filter(|flow| {
            !flow.replies.is_finished() && eligible.iter().any(|e| e.addr == flow.endpoint.addr)
        });
        if let Some(flow) = live {
            counters
                .bytes_from_client
                .fetch_add(n as u64, Ordering::Relaxed);
            if let Err(error) = flow.upstream.send(datagram).await {
                debug!(%client, endpoint = %flow.endpoint.addr, %error, "udp send failed");
            }
            continue;
        }

        counters.connections.fetch_add(1, Ordering::Relaxed);
        let Some(endpoint) = balance::choose(port, eligible, client.ip(), &[], now, &mut rng)
        else {
            // No usable endpoint: the datagram is dropped (no ICMP from userspace).
            counters.no_endpoints.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let opened = open_flow(
            &socket,
            (client, local),
            endpoint,
            Arc::clone(port),
            links.as_deref(),
        );
        let flow = match opened.await {
            Ok(flow) => flow,
            Err(error) => {
                counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
                debug!(%client, %error, "udp flow not opened");
                continue;
            }
        };
        counters
            .bytes_from_client
            .fetch_add(n as u64, Ordering::Relaxed);
        if let Err(error) = flow.upstream.send(datagram).await {
            debug!(%client, endpoint = %flow.endpoint.addr, %error, "udp send failed");
        }
        debug!(%client, endpoint = %flow.endpoint.addr, flows = flows.len() + 1, "udp flow");
        drop(flows.insert(client, flow, now));
    }
}

/// Opens a flow for `client` (and the local address it sent to, on a wildcard socket).
async fn open_flow(
    frontend: &Arc<UdpSocket>,
    (client, local): (SocketAddr, Option<IpAddr>),
    endpoint: Arc<Endpoint>,
    port: Arc<ServicePortTable>,
    links: Option<&Links>,
) -> std::io::Result<Flow> {
    let source = links.and_then(|links| links.source_for(client.ip(), &endpoint));
    let upstream = Arc::new(match source {
        Some(source) => source::udp_from(source, endpoint.addr).await?,
        None => UdpSocket::bind((source::unspecified(endpoint.addr), 0)).await?,
    });
    upstream.connect(endpoint.addr).await?;
    endpoint.stats.chosen.fetch_add(1, Ordering::Relaxed);
    endpoint.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let replied = Arc::new(AtomicU64::new(0));
    let replies = tokio::spawn(relay_replies(
        Arc::clone(&upstream),
        Arc::clone(frontend),
        (client, local),
        Arc::clone(&endpoint),
        Arc::clone(&replied),
        port,
    ));
    Ok(Flow {
        endpoint,
        upstream,
        replied,
        replies,
    })
}

/// Endpoint → client, until the flow is dropped or the endpoint refuses (ICMP port
/// unreachable, seen as an error on the connected socket), which ejects it.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    frontend: Arc<UdpSocket>,
    (client, local): (SocketAddr, Option<IpAddr>),
    endpoint: Arc<Endpoint>,
    replied: Arc<AtomicU64>,
    port: Arc<ServicePortTable>,
) {
    let counters: &PortCounters = &port.state.counters;
    let mut buffer = vec![0u8; DATAGRAM];
    loop {
        match upstream.recv(&mut buffer).await {
            Ok(n) => {
                replied.store(now_ms(), Ordering::Relaxed);
                counters
                    .bytes_to_client
                    .fetch_add(n as u64, Ordering::Relaxed);
                endpoint.stats.record_success();
                let _ = pktinfo::send_from(&frontend, &buffer[..n], client, local).await;
            }
            Err(error) => {
                endpoint.stats.record_failure(now_ms(), &port.timeouts);
                debug!(%client, endpoint = %endpoint.addr, %error, "udp endpoint failed");
                return;
            }
        }
    }
}
