//! The listeners: per proxy worker thread, one `SO_REUSEPORT` accept socket per listener (plain
//! and TLS), one [`Forwarder`] with its upstream pools, and a task per connection serving
//! HTTP/1.1 and HTTP/2 (ALPN on TLS, prior knowledge on plain) with hyper, limits and timeouts
//! applied, drained gracefully on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capstan_proxy::{bind_all, now_ms};
use capstan_table::{Generation, SnapshotHandle};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::completion::AccessLog;
use crate::forward::{ConnInfo, Forwarder, Shared};
use crate::gateway_sockets::{GatewayBinds, GatewaySockets};
use crate::idle::IdleIo;
use crate::metrics::{IngressMetrics, Refusal};
use crate::proxy_protocol;
use crate::tls::{SniResolver, self_signed, server_config};
use crate::{IngressConfig, IngressError};

/// HTTP/2 streams a client may have open at once on one connection.
const MAX_CONCURRENT_STREAMS: u32 = 256;
/// HTTP/2 pings detect dead peers.
const H2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The addresses the ingress listeners were bound to (port 0 resolved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
}

/// What the Gateway listeners follow: each new snapshot's generation, and where they report
/// which sockets listen.
#[derive(Debug)]
pub struct GatewayWatch {
    pub generations: watch::Receiver<Generation>,
    pub binds: watch::Sender<GatewayBinds>,
}

/// Everything a worker's accept loops share.
pub(crate) struct Listening {
    forwarder: Arc<Forwarder>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    metrics: Arc<IngressMetrics>,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    shutdown: CancellationToken,
    connections: TaskTracker,
    /// For the trusted-proxy and PROXY protocol decisions at accept.
    config: IngressConfig,
}

/// Binds the configured listeners on every worker and starts serving. Connections are tracked
/// by `connections`; on `shutdown` accept stops and open connections are drained gracefully
/// (HTTP/1.1 closes after the response in progress, HTTP/2 sends GOAWAY).
///
/// Gateway API listeners are opened and closed on the same workers as snapshots change
/// (`gateways`), each socket's state sent back on it; see
/// [`crate::gateway_sockets`].
pub fn serve(
    config: IngressConfig,
    workers: &[Handle],
    snapshots: SnapshotHandle,
    gateways: GatewayWatch,
    metrics: Arc<IngressMetrics>,
    shutdown: &CancellationToken,
    connections: &TaskTracker,
) -> Result<Bound, IngressError> {
    let http = config
        .http
        .map(|addr| bind_all(addr, workers.len()))
        .transpose()?;
    let https = config
        .https
        .map(|addr| bind_all(addr, workers.len()))
        .transpose()?;
    let local = |sockets: &Option<Vec<std::net::TcpListener>>| {
        sockets
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| s.local_addr().ok())
    };
    let bound = Bound {
        http: local(&http),
        https: local(&https),
    };
    let fallback = self_signed()?;
    let acceptor = match &https {
        Some(_) => {
            let resolver = SniResolver::new(snapshots.clone(), &fallback);
            let tls = server_config(
                resolver,
                &config.tls_key_exchange,
                config.tls_session_tickets,
            )?;
            Some(TlsAcceptor::from(Arc::new(tls)))
        }
        None => None,
    };
    let builder = Arc::new(http_builder(&config));
    let (listening_tx, listening_rx) = tokio::sync::mpsc::unbounded_channel();
    if let Some(first) = workers.first() {
        let sockets = GatewaySockets {
            snapshots: snapshots.clone(),
            fallback,
            key_exchange: config.tls_key_exchange.clone(),
            session_tickets: config.tls_session_tickets,
            status: gateways.binds,
        };
        first.spawn(sockets.run(
            gateways.generations,
            listening_rx,
            workers.len(),
            shutdown.clone(),
        ));
    }
    let shared = Arc::new(Shared {
        snapshots,
        access_log: config.access_log.then(AccessLog::start),
        https_port: bound.https.map(|a| a.port()),
        metrics: metrics.clone(),
        config,
    });

    let mut http = http.map(Vec::into_iter);
    let mut https = https.map(Vec::into_iter);
    for worker in workers {
        let plain = http.as_mut().and_then(Iterator::next);
        let tls = https.as_mut().and_then(Iterator::next);
        let listening_tx = listening_tx.clone();
        let handle = worker.clone();
        let shared = shared.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let metrics = metrics.clone();
        let shutdown = shutdown.clone();
        let connections = connections.clone();
        worker.spawn(async move {
            let listening = Arc::new(Listening {
                idle_timeout: shared.config.idle_timeout,
                handshake_timeout: shared.config.header_timeout,
                config: shared.config.clone(),
                forwarder: Arc::new(Forwarder::new(shared)),
                builder,
                metrics,
                shutdown,
                connections,
            });
            let _ = listening_tx.send((handle, listening.clone()));
            let listen = |socket: std::net::TcpListener| TcpListener::from_std(socket);
            let stop = listening.shutdown.clone();
            if let Some(socket) = plain {
                match listen(socket) {
                    Ok(listener) => {
                        let listening = listening.clone();
                        tokio::spawn(accept_loop(listener, None, listening, None, stop.clone()));
                    }
                    Err(error) => warn!(%error, "ingress listener not registered"),
                }
            }
            if let (Some(socket), Some(acceptor)) = (tls, acceptor) {
                match listen(socket) {
                    Ok(listener) => {
                        let tls = Some(acceptor);
                        tokio::spawn(accept_loop(listener, tls, listening, None, stop));
                    }
                    Err(error) => warn!(%error, "ingress TLS listener not registered"),
                }
            }
        });
    }
    Ok(bound)
}

fn http_builder(config: &IngressConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_timeout)
        .max_headers(config.max_headers)
        .max_buf_size(config.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(H2_KEEPALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEPALIVE_TIMEOUT);
    builder
}

/// Accepts until `stop` (shutdown, or a Gateway socket closed) and serves each connection on its
/// own task. `gateway`: the Gateway socket's bound address, which the plan step routes by.
pub(crate) async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    listening: Arc<Listening>,
    gateway: Option<SocketAddr>,
    stop: CancellationToken,
) {
    let kind = usize::from(tls.is_some());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                warn!(%error, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        listening.metrics.connections[kind].fetch_add(1, Ordering::Relaxed);
        let listening_conn = listening.clone();
        let tls = tls.clone();
        listening.connections.spawn(async move {
            let mut stream = stream;
            let local = stream.local_addr().unwrap_or(peer);
            let config = &listening_conn.config;
            let mut peer = peer;
            if config.proxy_protocol && config.trusts(peer.ip()) {
                let timeout = listening_conn.handshake_timeout;
                match proxy_protocol::read_header(&mut stream, timeout).await {
                    Ok(Some(client)) => peer = client,
                    Ok(None) => {}
                    Err(error) => {
                        listening_conn.metrics.refuse(Refusal::ProxyProtocol);
                        debug!(%peer, %error, "connection closed");
                        return;
                    }
                }
            }
            let trusted = config.trusts(peer.ip());
            let mut info = ConnInfo::new(peer, local, tls.is_some(), trusted);
            info.gateway = gateway;
            let info = Arc::new(info);
            let metrics = listening_conn.metrics.clone();
            metrics.active_connections.fetch_add(1, Ordering::Relaxed);
            match tls {
                None => serve_connection(stream, info, &listening_conn).await,
                Some(acceptor) => {
                    handshake_and_serve(stream, acceptor, info, &listening_conn).await
                }
            }
            metrics.active_connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

async fn handshake_and_serve(
    stream: TcpStream,
    acceptor: TlsAcceptor,
    info: Arc<ConnInfo>,
    listening: &Listening,
) {
    let handshake = tokio::time::timeout(listening.handshake_timeout, acceptor.accept(stream));
    match handshake.await {
        Ok(Ok(tls)) => serve_connection(tls, info, listening).await,
        Ok(Err(error)) => {
            debug!(peer = %info.peer, %error, "TLS handshake failed");
            listening.metrics.refuse(Refusal::TlsHandshake);
        }
        Err(_) => {
            debug!(peer = %info.peer, "TLS handshake timed out");
            listening.metrics.refuse(Refusal::TlsHandshake);
        }
    }
}

async fn serve_connection<IO>(io: IO, info: Arc<ConnInfo>, listening: &Listening)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, activity) = IdleIo::new(io);
    let forwarder = listening.forwarder.clone();
    let peer = info.peer;
    let service = service_fn(move |request| {
        let forwarder = forwarder.clone();
        let info = info.clone();
        async move { Ok::<_, Infallible>(forwarder.handle(&info, request).await) }
    });
    let connection = listening
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    let idle_ms = capstan_table::millis(listening.idle_timeout);
    let mut idle_check =
        tokio::time::interval((listening.idle_timeout / 4).max(Duration::from_millis(250)));
    idle_check.tick().await;
    let (mut seen, mut quiet_since) = (0, now_ms());
    let mut draining = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(error) = served {
                    classify(&*error, &listening.metrics, peer);
                }
                return;
            }
            () = listening.shutdown.cancelled(), if !draining => {
                connection.as_mut().graceful_shutdown();
                draining = true;
            }
            _ = idle_check.tick() => {
                let now = now_ms();
                let moved = activity.load(Ordering::Relaxed);
                if moved != seen {
                    (seen, quiet_since) = (moved, now);
                }
                if now.saturating_sub(quiet_since) >= idle_ms {
                    if draining {
                        return; // idle even while draining: give up on it
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// Counts the connection errors that mean a bad client (hyper has already answered 400/431).
fn classify(error: &(dyn std::error::Error + 'static), metrics: &IngressMetrics, peer: SocketAddr) {
    let Some(error) = error.downcast_ref::<hyper::Error>() else {
        debug!(%peer, %error, "ingress connection ended with an error");
        return;
    };
    if error.is_parse_too_large() {
        metrics.refuse(Refusal::HeadersTooLarge);
    } else if error.is_parse() {
        metrics.refuse(Refusal::Malformed);
    } else if error.is_timeout() {
        metrics.refuse(Refusal::HeaderTimeout);
    }
    debug!(%peer, %error, "ingress connection ended with an error");
}
