//! The listener set: accept loops (and UDP sockets) for the frontends of the current snapshot,
//! opened and closed as snapshots change, without touching established connections. With
//! `--capture nftables` the TCP VIPs of a family share one redirect listener, and the nftables
//! table is kept in step with the set.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{Frontend, Generation, Protocol, Snapshot, SnapshotHandle, WhenEmpty};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::capture::{
    Capture, CaptureMode, CaptureSettings, Nftables, Redirect, original_destination,
};
use crate::connection::serve;
use crate::kernel::{self, Datapath, KernelTable, kernel_capable};
use crate::source::Links;
use crate::{ProxyError, Workers};
use capstan_sockets::PortLock;

type FastSet<T> = HashSet<T, foldhash::fast::RandomState>;

/// How often frontends that failed to bind are retried when no new snapshot arrives.
const BIND_RETRY: Duration = Duration::from_secs(5);
const BACKLOG: i32 = 4096;
/// Upper bound on accept sockets per frontend.
const MAX_ACCEPT_SOCKETS: usize = 8;

/// The listeners as last applied, for the admin endpoint and readiness.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListenerStatus {
    /// The snapshot generation the listeners, capture and kernel rules were last set for;
    /// `None` until the first snapshot's are in force (not ready: connections would be
    /// refused by a port nobody listens on yet).
    pub applied: Option<Generation>,
    /// The state of each frontend's listener.
    pub frontends: BTreeMap<Frontend, ListenerState>,
    /// Syncs done (listeners, capture and kernel rules set for a snapshot), and how long the
    /// last one took: kube-proxy's `sync_proxy_rules` figures.
    pub syncs: u64,
    pub last_sync: Duration,
    /// Whether the last sync rewrote the kernel table whole (kube-proxy's full sync) rather than
    /// only what changed; user-space syncs count as full.
    pub last_sync_full: bool,
    /// Syncs whose capture or kernel rules could not be applied (kube-proxy's
    /// `nftables_sync_failures_total`).
    pub sync_failures: u64,
}

/// What happened to one frontend's listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerState {
    Listening,
    /// Listening on node ports that nftables redirects the frontend's traffic to.
    Redirected(Redirect),
    /// Translated to endpoints by the kernel (nftables DNAT); Capstan holds no socket.
    Kernel,
    /// No socket while the Service has no endpoints, so the kernel refuses connections
    /// (kube-proxy's reject); opened again with the first endpoint.
    Refusing,
    /// Listening, but the nftables redirect could not be programmed; retried periodically.
    CaptureFailed(String),
    /// Bind failed (e.g. the VIP is not a local address); retried periodically.
    BindFailed(String),
    Unsupported(&'static str),
}

/// How an accept loop finds the frontend of a connection.
#[derive(Clone, Copy, Debug)]
enum Accepting {
    /// A listener of one frontend.
    Frontend(Frontend),
    /// The shared listener nftables redirects every TCP VIP to: the connection's original
    /// destination names the frontend.
    Redirected,
}

/// One open frontend: its accept loops stop when `token` is cancelled.
struct Open {
    token: CancellationToken,
    redirect: Option<Redirect>,
    /// The lock of the address bound (none for redirect ports, which the kernel picks).
    _lock: Option<PortLock>,
}

/// What every frontend's listeners share.
struct Shared<'a> {
    workers: &'a Workers,
    snapshots: &'a SnapshotHandle,
    shutdown: &'a CancellationToken,
    connections: &'a TaskTracker,
    /// The node's links, when connections captured by nftables keep the client's address.
    links: &'a Option<Arc<Links>>,
}

/// Keeps the listeners of the current snapshot's frontends until `shutdown` is cancelled.
///
/// Wakes on every new generation. Accepted connections run on `connections`, so closing a
/// listener (a Service removed) or shutting down never cuts an established connection; the caller
/// drains `connections` with its own deadline. With [`CaptureMode::Nftables`], frontends with a
/// specific address are reached through node ports (one shared port per family for TCP) and the
/// nftables table is reprogrammed to match; it is removed when this returns. With
/// `preserve_source` ranges, redirected TCP connections and UDP flows reach endpoints from the
/// client's address where the replies come back through this node ([`crate::source`]).
pub async fn run_listeners(
    workers: Arc<Workers>,
    snapshots: SnapshotHandle,
    mut generations: watch::Receiver<Generation>,
    status: watch::Sender<ListenerStatus>,
    settings: CaptureSettings,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let capture = settings.mode;
    let preserve_source = !settings.preserve_source.is_empty() && capture == CaptureMode::Nftables;
    let links =
        preserve_source.then(|| Arc::new(Links::new(settings.node_name, settings.preserve_source)));
    let mut active: HashMap<Frontend, Open> = HashMap::new();
    let mut nftables = Nftables::default();
    let kernel_mode = capture == CaptureMode::Nftables && settings.datapath == Datapath::Kernel;
    let mut kernel = KernelTable::new(settings.kernel.clone());
    if capture == CaptureMode::Nftables && !kernel_mode {
        kernel::remove_leftover().await;
    }
    // The shared TCP redirect port of each family (IPv4, IPv6), opened when first needed.
    let mut redirect_ports: [Option<u16>; 2] = [None, None];
    let mut retry = tokio::time::interval(BIND_RETRY);
    let (mut syncs, mut sync_failures) = (0, 0);
    loop {
        let mut full = true;
        if let Some(links) = &links {
            links.refresh();
        }
        let sync_started = std::time::Instant::now();
        let snapshot = snapshots.load();
        let kernel_ports: Vec<&Arc<capstan_table::ServicePortTable>> = match &snapshot {
            Some(snapshot) if kernel_mode => snapshot
                .proxy
                .ports
                .values()
                .filter(|port| kernel_capable(port))
                .collect(),
            _ => Vec::new(),
        };
        // Every snapshot visits every frontend: hashed fast (foldhash, seeded per process).
        let in_kernel: FastSet<Frontend> = kernel_ports
            .iter()
            .flat_map(|port| port.frontends.iter().map(|(frontend, _)| *frontend))
            .collect();
        let wanted: FastSet<Frontend> = match (capture, &snapshot) {
            (CaptureMode::Off, _) | (_, None) => FastSet::default(),
            (CaptureMode::Bind | CaptureMode::Nftables, Some(snapshot)) => snapshot
                .proxy
                .frontends
                .keys()
                .filter(|frontend| !in_kernel.contains(frontend))
                .filter(|frontend| !refused(snapshot, frontend))
                .copied()
                .collect(),
        };
        let mut next = BTreeMap::new();
        active.retain(|frontend, open| {
            let keep = wanted.contains(frontend);
            if !keep {
                info!(%frontend, "closing listener");
                open.token.cancel();
            }
            keep
        });
        let shared = Shared {
            workers: &workers,
            snapshots: &snapshots,
            shutdown: &shutdown,
            connections: &connections,
            links: &links,
        };
        if let (Some(snapshot), CaptureMode::Bind | CaptureMode::Nftables) = (&snapshot, capture) {
            for frontend in snapshot.proxy.frontends.keys() {
                if !wanted.contains(frontend) && !in_kernel.contains(frontend) {
                    next.insert(*frontend, ListenerState::Refusing);
                }
            }
        }
        for frontend in wanted {
            if let Some(open) = active.get(&frontend) {
                next.insert(frontend, open.state());
                continue;
            }
            let redirected =
                capture == CaptureMode::Nftables && !frontend.addr.ip().is_unspecified();
            let opened = match frontend.protocol {
                Protocol::Tcp if redirected => {
                    open_tcp_redirect(frontend, &shared, &mut redirect_ports)
                }
                Protocol::Tcp => lock(frontend).and_then(|lock| {
                    open_tcp(frontend, frontend.addr, &shared).map(|(token, _)| Open {
                        token,
                        redirect: None,
                        _lock: lock,
                    })
                }),
                Protocol::Udp if redirected => open_udp_redirect(frontend, &shared),
                Protocol::Udp => lock(frontend).and_then(|lock| {
                    let token = shared.shutdown.child_token();
                    open_udp(frontend, frontend.addr, &shared, &token, None).map(|_| Open {
                        token,
                        redirect: None,
                        _lock: lock,
                    })
                }),
                Protocol::Sctp => Err(ListenerState::Unsupported("SCTP is not proxied")),
            };
            match opened {
                Ok(open) => {
                    next.insert(frontend, open.state());
                    active.insert(frontend, open);
                }
                Err(state) => {
                    next.insert(frontend, state);
                }
            }
        }
        // Before the first snapshot there is nothing to capture yet: a table left by an earlier
        // run keeps working until the first real one replaces it.
        if let (CaptureMode::Nftables, Some(snapshot)) = (capture, &snapshot) {
            let redirects: BTreeMap<Frontend, Redirect> = active
                .iter()
                .filter_map(|(frontend, open)| Some((*frontend, open.redirect?)))
                .collect();
            let drops = dropping(snapshot, &redirects);
            // Refused frontends are not redirected: the table refuses them itself.
            let rejects = snapshot
                .proxy
                .frontends
                .keys()
                .filter(|f| !f.addr.ip().is_unspecified() && !in_kernel.contains(f))
                .filter(|f| refused(snapshot, f))
                .copied()
                .collect();
            let wanted = Capture {
                redirects,
                drops,
                rejects,
                preserve_source,
            };
            let user_space_empty =
                wanted.redirects.is_empty() && wanted.drops.is_empty() && wanted.rejects.is_empty();
            if kernel_mode && user_space_empty {
                nftables.clear().await;
            } else if let Err(error) = nftables.apply(&wanted).await {
                warn!(%error, "nftables capture not applied; retrying");
                sync_failures += 1;
                for frontend in wanted.redirects.keys() {
                    next.insert(*frontend, ListenerState::CaptureFailed(error.to_string()));
                }
            }
        }
        if let Some(snapshot) = snapshot.as_ref().filter(|_| kernel_mode) {
            let state = match kernel.sync(snapshot, &kernel_ports).await {
                Ok(report) => {
                    if report.changed_ports > 0 {
                        info!(ports = report.changed_ports, full = report.full, took = ?report.duration, transaction = ?report.transaction, size = report.size, "kernel data path synced");
                    }
                    full = report.full;
                    ListenerState::Kernel
                }
                Err(error) => {
                    warn!(%error, "kernel data path not synced; retrying");
                    sync_failures += 1;
                    ListenerState::CaptureFailed(error.to_string())
                }
            };
            for frontend in &in_kernel {
                next.insert(*frontend, state.clone());
            }
        }
        if snapshot.is_some() {
            syncs += 1;
        }
        status.send_replace(ListenerStatus {
            applied: snapshot.as_ref().map(|s| s.generation),
            frontends: next,
            syncs,
            last_sync: sync_started.elapsed(),
            last_sync_full: full,
            sync_failures,
        });
        drop(kernel_ports);

        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            _ = retry.tick() => {},
            () = shutdown.cancelled() => break,
        }
    }
    nftables.remove().await;
    if settings.cleanup_on_exit {
        kernel.remove().await;
    } else if kernel_mode {
        info!(
            "kernel data path rules left in place for the next Capstan (--cleanup-on-exit removes them)"
        );
    }
    for open in active.values() {
        open.token.cancel();
    }
}

/// Whether `frontend`'s Service port has no usable endpoint at all. kube-proxy rejects such
/// connections (pkg/proxy/nftables/proxier.go, the `no-endpoint-services` map → `reject`): a
/// frontend Capstan binds itself gets no socket then, so the kernel refuses at once (TCP RST,
/// ICMP port unreachable) instead of a connection accepted and reset, and a captured one is not
/// redirected but rejected by the capture table. Both change back with the first endpoint.
fn refused(snapshot: &Snapshot, frontend: &Frontend) -> bool {
    snapshot.proxy.target(frontend).is_some_and(|target| {
        let set = target.port.endpoints_for(target.scope);
        set.endpoints.is_empty() && set.when_empty == WhenEmpty::Reject
    })
}

/// Captured frontends whose traffic kube-proxy would drop: no eligible endpoint, and endpoints
/// elsewhere under a `Local` policy ([`WhenEmpty::Drop`]).
fn dropping(snapshot: &Snapshot, redirects: &BTreeMap<Frontend, Redirect>) -> BTreeSet<Frontend> {
    redirects
        .keys()
        .filter(|frontend| {
            snapshot.proxy.target(frontend).is_some_and(|target| {
                let set = target.port.endpoints_for(target.scope);
                set.endpoints.is_empty() && set.when_empty == WhenEmpty::Drop
            })
        })
        .copied()
        .collect()
}

impl Open {
    fn state(&self) -> ListenerState {
        self.redirect
            .map_or(ListenerState::Listening, ListenerState::Redirected)
    }
}

/// The lock of a frontend Capstan binds itself: a second Capstan serving it is reported as a
/// failed bind instead of sharing the port through `SO_REUSEPORT`.
fn lock(frontend: Frontend) -> Result<Option<PortLock>, ListenerState> {
    let protocol = match frontend.protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    };
    PortLock::acquire(protocol, frontend.addr).map_err(|error| {
        warn!(%frontend, %error, "not listening");
        ListenerState::BindFailed(error.to_string())
    })
}

/// The wildcard address of `addr`'s family, and its loopback address, with port 0.
fn node_addrs(addr: SocketAddr) -> (SocketAddr, SocketAddr) {
    if addr.is_ipv6() {
        (
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv6Addr::LOCALHOST, 0)),
        )
    } else {
        (
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        )
    }
}

/// Accept sockets for `frontend` on `addr`, one per worker, and the port they share.
fn open_tcp(
    frontend: Frontend,
    addr: SocketAddr,
    shared: &Shared<'_>,
) -> Result<(CancellationToken, u16), ListenerState> {
    open_tcp_accepting(Accepting::Frontend(frontend), addr, shared)
}

fn open_tcp_accepting(
    accepting: Accepting,
    addr: SocketAddr,
    shared: &Shared<'_>,
) -> Result<(CancellationToken, u16), ListenerState> {
    let listeners = bind_all(addr, shared.workers.len()).map_err(|error| {
        debug!(?accepting, %error, "bind failed");
        ListenerState::BindFailed(error.to_string())
    })?;
    let port = listeners
        .first()
        .and_then(|l| l.local_addr().ok())
        .map_or(addr.port(), |a| a.port());
    info!(?accepting, sockets = listeners.len(), port, "listening");
    let token = shared.shutdown.child_token();
    // Only redirected connections can keep the client's address: the mark rule and policy route
    // exist only with the nftables capture.
    let links = match accepting {
        Accepting::Redirected => shared.links.clone(),
        Accepting::Frontend(_) => None,
    };
    // One accept socket per worker: each worker accepts and serves its own.
    for (listener, worker) in listeners.into_iter().zip(shared.workers.handles()) {
        let (snapshots, token) = (shared.snapshots.clone(), token.clone());
        let (connections, links) = (shared.connections.clone(), links.clone());
        worker.spawn(async move {
            // Registered with this worker's reactor.
            match TcpListener::from_std(listener) {
                Ok(listener) => {
                    let serving = Serving {
                        snapshots,
                        connections,
                        links,
                    };
                    accept_loop(listener, accepting, serving, token).await;
                }
                Err(error) => warn!(?accepting, %error, "accept socket not registered"),
            }
        });
    }
    Ok((token, port))
}

/// A TCP frontend captured by nftables: redirected to its family's shared listener (an
/// ephemeral port of every address, opened with the first such frontend), which names the
/// frontend from each connection's original destination.
fn open_tcp_redirect(
    frontend: Frontend,
    shared: &Shared<'_>,
    ports: &mut [Option<u16>; 2],
) -> Result<Open, ListenerState> {
    let slot = &mut ports[usize::from(frontend.addr.is_ipv6())];
    let port = match *slot {
        Some(port) => port,
        None => {
            let (any, _) = node_addrs(frontend.addr);
            // Lives until shutdown: it serves every TCP VIP of its family.
            let (_, port) = open_tcp_accepting(Accepting::Redirected, any, shared)?;
            *slot = Some(port);
            port
        }
    };
    // Nothing to close per frontend: removing its map element stops its traffic.
    Ok(Open {
        token: CancellationToken::new(),
        redirect: Some(Redirect {
            port,
            local_port: port,
        }),
        _lock: None,
    })
}

/// A UDP frontend captured by nftables: one socket on an ephemeral port of every address for
/// traffic from other hosts and pods, one on loopback for this node's own traffic.
fn open_udp_redirect(frontend: Frontend, shared: &Shared<'_>) -> Result<Open, ListenerState> {
    let (any, loopback) = node_addrs(frontend.addr);
    let token = shared.shutdown.child_token();
    let links = || shared.links.clone();
    let ports = open_udp(frontend, any, shared, &token, links())
        .and_then(|port| Ok((port, open_udp(frontend, loopback, shared, &token, links())?)));
    match ports {
        Ok((port, local_port)) => Ok(Open {
            token,
            redirect: Some(Redirect { port, local_port }),
            _lock: None,
        }),
        Err(state) => {
            token.cancel();
            Err(state)
        }
    }
}

/// Binds a UDP socket for `frontend` on `addr` and serves it on one worker (its flows live in
/// that worker's loop) until `token` is cancelled. Returns the bound port.
/// A UDP socket for `frontend` on `addr`, served on one worker; `links` when its flows may keep
/// the client's address (redirected frontends only).
fn open_udp(
    frontend: Frontend,
    addr: SocketAddr,
    shared: &Shared<'_>,
    token: &CancellationToken,
    links: Option<Arc<Links>>,
) -> Result<u16, ListenerState> {
    let socket = bind_udp(addr).map_err(|error| {
        debug!(%frontend, %error, "bind failed");
        ListenerState::BindFailed(error.to_string())
    })?;
    let port = socket.local_addr().map_or(addr.port(), |a| a.port());
    info!(%frontend, port, "listening");
    let workers = shared.workers;
    let index = usize::from(frontend.addr.port()) % workers.len().max(1);
    let (snapshots, token) = (shared.snapshots.clone(), token.clone());
    workers.handles()[index].spawn(async move {
        match tokio::net::UdpSocket::from_std(socket) {
            Ok(socket) => crate::udp::serve(socket, frontend, snapshots, token, links).await,
            Err(error) => warn!(%frontend, %error, "udp socket not registered"),
        }
    });
    Ok(port)
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, ProxyError> {
    let socket = (|| {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        if addr.ip().is_unspecified() {
            // Replies leave from the address each datagram was sent to (see `udp`).
            capstan_sockets::pktinfo::receive_destination(&socket, addr.is_ipv6())?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        Ok(socket.into())
    })();
    socket.map_err(|source| ProxyError::Bind { addr, source })
}

/// `count` listening sockets with `SO_REUSEPORT`, one per worker: the kernel spreads new
/// connections over their accept queues. A port held by another process without `SO_REUSEPORT`
/// still fails the first bind.
pub fn bind_all(addr: SocketAddr, count: usize) -> Result<Vec<std::net::TcpListener>, ProxyError> {
    let first = bind(addr)?;
    // Port 0 (tests) resolves to a real port on the first bind; the others share it.
    let addr = first.local_addr().unwrap_or(addr);
    let mut all = vec![first];
    for _ in 1..count.min(MAX_ACCEPT_SOCKETS) {
        match bind(addr) {
            Ok(listener) => all.push(listener),
            Err(error) => {
                debug!(%addr, %error, "extra accept socket not bound");
                break;
            }
        }
    }
    Ok(all)
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, ProxyError> {
    let socket = (|| {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        // Inherited by every accepted socket on Linux: no setsockopt per connection.
        socket.set_tcp_nodelay(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(BACKLOG)?;
        Ok(socket.into())
    })();
    socket.map_err(|source| ProxyError::Bind { addr, source })
}

/// What an accept loop hands each connection.
struct Serving {
    snapshots: SnapshotHandle,
    connections: TaskTracker,
    links: Option<Arc<Links>>,
}

async fn accept_loop(
    listener: TcpListener,
    accepting: Accepting,
    serving: Serving,
    stop: CancellationToken,
) {
    loop {
        let accepted: std::io::Result<(TcpStream, SocketAddr)> = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                let frontend = match accepting {
                    Accepting::Frontend(frontend) => frontend,
                    Accepting::Redirected => match original_destination(&stream) {
                        Ok(addr) => Frontend {
                            addr,
                            protocol: Protocol::Tcp,
                        },
                        Err(error) => {
                            debug!(%peer, %error, "no original destination");
                            continue;
                        }
                    },
                };
                let links = serving.links.clone();
                let snapshots = serving.snapshots.clone();
                serving
                    .connections
                    .spawn(serve(stream, peer, frontend, snapshots, links));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(?accepting, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_inherit_nodelay_and_share_one_port() {
        let listeners = bind_all(SocketAddr::from(([127, 0, 0, 1], 0)), 2).expect("bind");
        let addr = listeners[0].local_addr().expect("addr");
        assert_eq!(listeners.len(), 2);
        assert!(listeners.iter().all(|l| l.local_addr().ok() == Some(addr)));
        let listeners: Vec<TcpListener> = listeners
            .into_iter()
            .map(|l| TcpListener::from_std(l).expect("register"))
            .collect();
        let client = TcpStream::connect(addr).await.expect("connect");
        // With several SO_REUSEPORT sockets the kernel picks one: accept on whichever has it.
        let accepted = futures_select(&listeners).await;
        assert!(
            accepted.nodelay().expect("nodelay"),
            "TCP_NODELAY inherited from the listener"
        );
        drop(client);
    }

    async fn futures_select(listeners: &[TcpListener]) -> TcpStream {
        loop {
            for listener in listeners {
                if let Ok(Ok((stream, _))) =
                    tokio::time::timeout(Duration::from_millis(20), listener.accept()).await
                {
                    return stream;
                }
            }
        }
    }

    #[test]
    fn a_port_held_without_reuseport_is_a_bind_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = held.local_addr().expect("addr");
        let error = bind_all(addr, 2).expect_err("port in use");
        assert!(error.to_string().contains(&addr.to_string()), "{error}");
    }
}
