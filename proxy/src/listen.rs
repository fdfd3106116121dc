//! The listener set: one accept loop per TCP frontend of the current snapshot, opened and closed
//! as snapshots change, without touching established connections.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use capstan_table::{Frontend, Generation, Protocol, SnapshotHandle};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::connection::serve;
use crate::{ProxyError, Workers};

/// How often frontends that failed to bind are retried when no new snapshot arrives.
const BIND_RETRY: Duration = Duration::from_secs(5);
const BACKLOG: i32 = 4096;
/// Upper bound on accept sockets per frontend.
const MAX_ACCEPT_SOCKETS: usize = 8;

/// The state of each frontend's listener, for the admin endpoint.
pub type ListenerStatus = BTreeMap<Frontend, ListenerState>;

/// What happened to one frontend's listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenerState {
    Listening,
    /// Bind failed (e.g. the VIP is not a local address); retried periodically.
    BindFailed(String),
    Unsupported(&'static str),
}

/// Keeps one listener per TCP frontend of the current snapshot until `shutdown` is cancelled.
///
/// Wakes on every new generation. Accepted connections run on `connections`, so closing a
/// listener (a Service removed) or shutting down never cuts an established connection; the caller
/// drains `connections` with its own deadline.
pub async fn run_listeners(
    workers: std::sync::Arc<Workers>,
    snapshots: SnapshotHandle,
    mut generations: watch::Receiver<Generation>,
    status: watch::Sender<ListenerStatus>,
    shutdown: CancellationToken,
    connections: TaskTracker,
) {
    let mut active: HashMap<Frontend, CancellationToken> = HashMap::new();
    let mut retry = tokio::time::interval(BIND_RETRY);
    loop {
        let wanted: Vec<Frontend> = snapshots
            .load()
            .map(|s| s.proxy.frontends.keys().copied().collect())
            .unwrap_or_default();
        let mut next = ListenerStatus::new();
        active.retain(|frontend, token| {
            let keep = wanted.contains(frontend);
            if !keep {
                info!(%frontend, "closing listener");
                token.cancel();
            }
            keep
        });
        for frontend in wanted {
            if active.contains_key(&frontend) {
                next.insert(frontend, ListenerState::Listening);
                continue;
            }
            match frontend.protocol {
                Protocol::Tcp => {}
                Protocol::Udp => {
                    let state = start_udp(frontend, &workers, &snapshots, &shutdown, &mut active);
                    next.insert(frontend, state);
                    continue;
                }
                Protocol::Sctp => {
                    next.insert(frontend, ListenerState::Unsupported("SCTP is not proxied"));
                    continue;
                }
            }
            match bind_all(frontend.addr, workers.len()) {
                Ok(listeners) => {
                    info!(%frontend, sockets = listeners.len(), "listening");
                    let token = shutdown.child_token();
                    active.insert(frontend, token.clone());
                    // One accept socket per worker: each worker accepts and serves its own.
                    for (listener, worker) in listeners.into_iter().zip(workers.handles()) {
                        let (snapshots, token) = (snapshots.clone(), token.clone());
                        let connections = connections.clone();
                        worker.spawn(async move {
                            // Registered with this worker's reactor.
                            match TcpListener::from_std(listener) {
                                Ok(listener) => {
                                    accept_loop(listener, frontend, snapshots, token, connections)
                                        .await;
                                }
                                Err(error) => {
                                    warn!(%frontend, %error, "accept socket not registered")
                                }
                            }
                        });
                    }
                    next.insert(frontend, ListenerState::Listening);
                }
                Err(error) => {
                    debug!(%frontend, %error, "bind failed");
                    next.insert(frontend, ListenerState::BindFailed(error.to_string()));
                }
            }
        }
        status.send_replace(next);

        tokio::select! {
            changed = generations.changed() => if changed.is_err() { break },
            _ = retry.tick() => {},
            () = shutdown.cancelled() => break,
        }
    }
    for token in active.values() {
        token.cancel();
    }
}

/// Binds a UDP frontend and serves it on one worker (its flows live in that worker's loop).
fn start_udp(
    frontend: Frontend,
    workers: &Workers,
    snapshots: &SnapshotHandle,
    shutdown: &CancellationToken,
    active: &mut HashMap<Frontend, CancellationToken>,
) -> ListenerState {
    let socket = match bind_udp(frontend.addr) {
        Ok(socket) => socket,
        Err(error) => {
            debug!(%frontend, %error, "bind failed");
            return ListenerState::BindFailed(error.to_string());
        }
    };
    info!(%frontend, "listening");
    let token = shutdown.child_token();
    active.insert(frontend, token.clone());
    let index = usize::from(frontend.addr.port()) % workers.len().max(1);
    let snapshots = snapshots.clone();
    workers.handles()[index].spawn(async move {
        match tokio::net::UdpSocket::from_std(socket) {
            Ok(socket) => crate::udp::serve(socket, frontend, snapshots, token).await,
            Err(error) => warn!(%frontend, %error, "udp socket not registered"),
        }
    });
    ListenerState::Listening
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, ProxyError> {
    let socket = (|| {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
        socket.set_reuse_address(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
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

async fn accept_loop(
    listener: TcpListener,
    frontend: Frontend,
    snapshots: SnapshotHandle,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    loop {
        let accepted: std::io::Result<(TcpStream, SocketAddr)> = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve(stream, peer, frontend, snapshots.clone()));
            }
            Err(error) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!(%frontend, %error, "accept failed");
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
