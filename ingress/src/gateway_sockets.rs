//! The Gateway API listeners: the sockets of the current snapshot's Gateway table, opened on
//! every worker (`SO_REUSEPORT`) and closed as Gateways change, without touching established
//! connections (a closed socket's connections finish on their own). HTTPS sockets terminate TLS
//! with the certificate of the listener whose hostname matches the SNI name.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_proxy::bind_all;
use capstan_table::{Generation, SnapshotHandle, TlsCertificate, hostname_matches};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::crypto::KeyExchange;
use crate::server::{Listening, accept_loop};
use crate::tls::server_config;

/// Sockets that could not be bound are retried this often while no snapshot arrives.
const BIND_RETRY: Duration = Duration::from_secs(5);
/// Without failures only a new snapshot wakes the reconciler.
const IDLE: Duration = Duration::from_secs(24 * 3600);

/// Each Gateway socket of the current snapshot: `Ok` when listening, else why not (an address
/// not on this node, a port in use).
pub type GatewayBinds = BTreeMap<SocketAddr, Result<(), String>>;

/// The reconciler of Gateway sockets.
pub(crate) struct GatewaySockets {
    pub snapshots: SnapshotHandle,
    /// Served when no listener of an HTTPS socket has a certificate for the SNI name.
    pub fallback: TlsCertificate,
    pub key_exchange: Vec<KeyExchange>,
    pub session_tickets: usize,
    pub status: watch::Sender<GatewayBinds>,
}

/// One open Gateway socket.
struct Open {
    tls: bool,
    stop: CancellationToken,
}

impl GatewaySockets {
    /// Waits for every worker's [`Listening`], then keeps the sockets in step with each new
    /// snapshot until `shutdown`.
    pub(crate) async fn run(
        self,
        mut generations: watch::Receiver<Generation>,
        mut workers: mpsc::UnboundedReceiver<(Handle, Arc<Listening>)>,
        count: usize,
        shutdown: CancellationToken,
    ) {
        let mut listening = Vec::with_capacity(count);
        while listening.len() < count {
            match workers.recv().await {
                Some(worker) => listening.push(worker),
                None => return,
            }
        }
        let mut open: BTreeMap<SocketAddr, Open> = BTreeMap::new();
        loop {
            let failed = self.reconcile(&mut open, &listening, &shutdown);
            let retry = tokio::time::sleep(if failed { BIND_RETRY } else { IDLE });
            tokio::select! {
                changed = generations.changed() => if changed.is_err() { break },
                () = retry => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// Opens the wanted sockets not open yet, closes the open ones no longer wanted (or whose
    /// TLS changed). Returns whether a bind failed.
    fn reconcile(
        &self,
        open: &mut BTreeMap<SocketAddr, Open>,
        workers: &[(Handle, Arc<Listening>)],
        shutdown: &CancellationToken,
    ) -> bool {
        let wanted: BTreeMap<SocketAddr, bool> = self
            .snapshots
            .load()
            .map(|s| s.gateway.sockets.iter().map(|(a, s)| (*a, s.tls)).collect())
            .unwrap_or_default();
        open.retain(|addr, socket| {
            let keep = wanted.get(addr) == Some(&socket.tls);
            if !keep {
                socket.stop.cancel();
                info!(%addr, "gateway listener closed");
            }
            keep
        });
        let mut status = GatewayBinds::new();
        for (&addr, &tls) in &wanted {
            if open.contains_key(&addr) {
                status.insert(addr, Ok(()));
                continue;
            }
            match self.open(addr, tls, workers, shutdown) {
                Ok(socket) => {
                    info!(%addr, tls, "gateway listener open");
                    open.insert(addr, socket);
                    status.insert(addr, Ok(()));
                }
                Err(error) => {
                    warn!(%addr, %error, "gateway listener not bound; retrying");
                    status.insert(addr, Err(error));
                }
            }
        }
        let failed = status.values().any(Result::is_err);
        self.status.send_replace(status);
        failed
    }

    fn open(
        &self,
        addr: SocketAddr,
        tls: bool,
        workers: &[(Handle, Arc<Listening>)],
        shutdown: &CancellationToken,
    ) -> Result<Open, String> {
        let sockets = bind_all(addr, workers.len()).map_err(|e| e.to_string())?;
        let acceptor = if tls {
            let resolver = GatewayResolver {
                snapshots: self.snapshots.clone(),
                socket: addr,
                fallback: self.fallback.certified.clone(),
            };
            let config = server_config(resolver, &self.key_exchange, self.session_tickets)
                .map_err(|e| e.to_string())?;
            Some(TlsAcceptor::from(Arc::new(config)))
        } else {
            None
        };
        let stop = shutdown.child_token();
        for (socket, (handle, listening)) in sockets.into_iter().zip(workers) {
            let (listening, acceptor, stop) = (listening.clone(), acceptor.clone(), stop.clone());
            handle.spawn(async move {
                match TcpListener::from_std(socket) {
                    Ok(listener) => {
                        accept_loop(listener, acceptor, listening, Some(addr), stop).await;
                    }
                    Err(error) => warn!(%addr, %error, "gateway listener not registered"),
                }
            });
        }
        Ok(Open { tls, stop })
    }
}

/// The certificate of an HTTPS Gateway socket for an SNI name: the most specific listener whose
/// hostname matches and has one, else the first listener with one, else the fallback. Read from
/// the current snapshot on every handshake, so a renewed Secret is served at once.
#[derive(Debug)]
pub(crate) struct GatewayResolver {
    snapshots: SnapshotHandle,
    socket: SocketAddr,
    fallback: Arc<CertifiedKey>,
}

impl GatewayResolver {
    pub(crate) fn certificate_for(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(snapshot) = self.snapshots.load() else {
            return self.fallback.clone();
        };
        let Some(socket) = snapshot.gateway.sockets.get(&self.socket) else {
            return self.fallback.clone();
        };
        let name = server_name.map(|n| n.trim_end_matches('.').to_ascii_lowercase());
        let with_certificate = socket.listeners.iter().filter(|l| l.certificate.is_some());
        let matched = socket.listeners.iter().find(|l| {
            l.certificate.is_some()
                && match (&l.hostname, &name) {
                    (Some(h), Some(name)) => hostname_matches(h, name),
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        });
        matched
            .or_else(|| with_certificate.clone().next())
            .and_then(|l| l.certificate.as_ref())
            .map_or_else(|| self.fallback.clone(), |c| c.certified.clone())
    }
}

impl ResolvesServerCert for GatewayResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate_for(client_hello.server_name()))
    }
}
