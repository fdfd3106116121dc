//! The DNS server: one `SO_REUSEPORT` UDP socket per worker thread and one TCP listener (RFC 7766:
//! pipelined queries answered as they complete, idle timeout). Answers from the snapshot are
//! written inline; forwarded queries run as tasks so one slow upstream never stalls a socket.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use capstan_table::{Snapshot, SnapshotHandle, in_zone};
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::answer::{Resolution, answer, error, lookup_key};
use crate::forward::Forwarder;
use crate::metrics::{Answered, DnsMetrics, Transport};
use crate::packet_cache::{PacketCache, PlainQuery};
use crate::udp_batch::serve_udp;
use crate::{DnsError, wire};

/// A TCP connection with no complete query for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Queries of one TCP connection being answered at once.
const TCP_PIPELINE: usize = 64;

/// Server settings.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// Zones answered from the snapshot (lowercase, no trailing dot): SERVFAIL for them until the
    /// first snapshot is published.
    pub zones: Vec<String>,
}

/// Turns packets into answers. Shared by every socket.
#[derive(Debug)]
pub struct Handler {
    snapshots: SnapshotHandle,
    zones: Vec<String>,
    forwarder: Arc<Forwarder>,
    metrics: Arc<DnsMetrics>,
}

/// The first, synchronous step of answering a packet.
#[derive(Debug)]
pub enum Step {
    Reply(Vec<u8>),
    Ignore,
    /// Needs an upstream: finish with [`Handler::complete`].
    Pending(Pending),
}

/// A query waiting for an upstream.
#[derive(Debug)]
pub struct Pending {
    request: Box<Message>,
    chase: Option<Box<(Message, Name)>>,
    started: Instant,
    transport: Transport,
    /// The query's length on the wire.
    request_bytes: usize,
}

// === impl Handler ===

impl Handler {
    pub fn new(
        snapshots: SnapshotHandle,
        zones: Vec<String>,
        forwarder: Arc<Forwarder>,
        metrics: Arc<DnsMetrics>,
    ) -> Self {
        Self {
            snapshots,
            zones,
            forwarder,
            metrics,
        }
    }

    /// Answers `raw` from the snapshot if it can.
    pub fn start(&self, raw: &[u8], transport: Transport) -> Step {
        self.start_with(raw, transport, self.snapshots.load(), Instant::now())
    }

    /// The snapshot a batch of queries is answered from.
    pub fn snapshot(&self) -> Option<Arc<Snapshot>> {
        self.snapshots.load()
    }

    /// [`Handler::start`] for UDP with the socket's packet cache: repeated plain questions about
    /// Capstan's names are answered by copying bytes. `snapshot` and `started` are taken once per
    /// received batch.
    pub fn start_cached(
        &self,
        raw: &[u8],
        cache: &mut PacketCache,
        snapshot: &Option<Arc<Snapshot>>,
        started: Instant,
    ) -> Step {
        let (Some(generation), Some(plain)) = (
            snapshot.as_ref().map(|s| s.generation),
            PlainQuery::parse(raw),
        ) else {
            return self.start_with(raw, Transport::Udp, snapshot.clone(), started);
        };
        if let Some(reply) = cache.answer(generation, raw, &plain) {
            self.metrics.record(Answered {
                transport: Transport::Udp,
                qtype: Some(RecordType::from(plain.qtype())),
                rcode: ResponseCode::from_low(reply[3] & 0x0f),
                elapsed: started.elapsed(),
                request_bytes: raw.len(),
                response_bytes: reply.len(),
                dnssec_ok: plain.dnssec_ok(),
            });
            return Step::Reply(reply);
        }
        let step = self.start_with(raw, Transport::Udp, snapshot.clone(), started);
        if let Step::Reply(reply) = &step {
            cache.store(generation, plain, reply);
        }
        step
    }

    fn start_with(
        &self,
        raw: &[u8],
        transport: Transport,
        snapshot: Option<Arc<Snapshot>>,
        started: Instant,
    ) -> Step {
        let request = match wire::parse(raw) {
            wire::Packet::Query(request) => request,
            wire::Packet::Malformed(reply) => {
                self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                self.metrics.record(Answered {
                    transport,
                    qtype: None,
                    rcode: ResponseCode::FormErr,
                    elapsed: started.elapsed(),
                    request_bytes: raw.len(),
                    response_bytes: reply.len(),
                    dnssec_ok: false,
                });
                return Step::Reply(reply);
            }
            wire::Packet::Ignore => {
                self.metrics.malformed.fetch_add(1, Ordering::Relaxed);
                return Step::Ignore;
            }
        };
        if let Some(badvers) = wire::unsupported_edns_version(&request) {
            return Step::Reply(self.finish(badvers, &request, transport, started, raw.len()));
        }
        if self.forwarder.is_loop(&request) {
            let servfail = error(&request, ResponseCode::ServFail);
            return Step::Reply(self.finish(servfail, &request, transport, started, raw.len()));
        }
        let resolution = match snapshot {
            Some(snapshot) => answer(&snapshot.dns, &request),
            None => self.before_first_snapshot(&request),
        };
        match resolution {
            Resolution::Answer(response) => {
                Step::Reply(self.finish(response, &request, transport, started, raw.len()))
            }
            Resolution::Forward => Step::Pending(Pending {
                request,
                chase: None,
                started,
                transport,
                request_bytes: raw.len(),
            }),
            Resolution::Chase { partial, target } => Step::Pending(Pending {
                request,
                chase: Some(Box::new((partial, target))),
                started,
                transport,
                request_bytes: raw.len(),
            }),
        }
    }

    /// Finishes a query that needed an upstream.
    pub async fn complete(&self, pending: Pending) -> Vec<u8> {
        let Pending {
            request,
            chase,
            started,
            transport,
            request_bytes,
        } = pending;
        let response = match chase {
            None => self.forwarder.forward(&request).await,
            Some(chase) => {
                let (mut partial, target) = *chase;
                let qtype = request
                    .queries
                    .first()
                    .map(|q| q.query_type())
                    .unwrap_or(RecordType::A);
                let upstream = self.forwarder.resolve(&request, target, qtype).await;
                partial.metadata.response_code = upstream.metadata.response_code;
                partial.answers.extend(upstream.answers);
                partial.authorities = upstream.authorities;
                partial
            }
        };
        self.finish(response, &request, transport, started, request_bytes)
    }

    fn before_first_snapshot(&self, request: &Message) -> Resolution {
        let ours = request.queries.first().is_some_and(|q| {
            let key = lookup_key(q.name());
            self.zones.iter().any(|zone| in_zone(&key, zone))
        });
        if ours {
            Resolution::Answer(error(request, ResponseCode::ServFail))
        } else {
            Resolution::Forward
        }
    }

    fn finish(
        &self,
        response: Message,
        request: &Message,
        transport: Transport,
        started: Instant,
        request_bytes: usize,
    ) -> Vec<u8> {
        let qtype = request.queries.first().map(|q| q.query_type());
        let rcode = response.metadata.response_code;
        let limit = wire::response_limit(request, transport == Transport::Tcp);
        let encoded = wire::encode(response, request, limit);
        self.metrics.record(Answered {
            transport,
            qtype,
            rcode,
            elapsed: started.elapsed(),
            request_bytes,
            response_bytes: encoded.len(),
            dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        });
        encoded
    }
}

/// Binds the UDP sockets (one per worker) and the TCP listener, starts serving on the workers'
/// runtimes until `shutdown`, and returns the bound address (useful with port 0).
pub fn serve(
    config: &DnsConfig,
    workers: &[Handle],
    handler: Arc<Handler>,
    shutdown: &CancellationToken,
) -> Result<SocketAddr, DnsError> {
    let (udp, tcp, addr) =
        bind(config.listen, workers.len().max(1)).map_err(|source| DnsError::Bind {
            addr: config.listen,
            source,
        })?;
    for (socket, worker) in udp.into_iter().zip(workers.iter().cycle()) {
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        worker.spawn(async move {
            match UdpSocket::from_std(socket) {
                Ok(socket) => {
                    tokio::select! {
                        () = serve_udp(Arc::new(socket), handler) => {}
                        () = shutdown.cancelled() => {}
                    }
                }
                Err(error) => tracing::error!(%error, "dns: UDP socket"),
            }
        });
    }
    let worker = workers.first().cloned().unwrap_or_else(Handle::current);
    let shutdown = shutdown.clone();
    worker.spawn(async move {
        match TcpListener::from_std(tcp) {
            Ok(listener) => serve_tcp(listener, handler, shutdown).await,
            Err(error) => tracing::error!(%error, "dns: TCP listener"),
        }
    });
    Ok(addr)
}

type Bound = (Vec<std::net::UdpSocket>, std::net::TcpListener, SocketAddr);

/// `count` UDP sockets sharing one address with `SO_REUSEPORT`, and a TCP listener on the same
/// port. With port 0 the kernel picks a port free for UDP; if TCP cannot have it, try again.
fn bind(listen: SocketAddr, count: usize) -> io::Result<Bound> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match bind_once(listen, count) {
            Err(e)
                if listen.port() == 0 && attempts < 8 && e.kind() == io::ErrorKind::AddrInUse =>
            {
                continue;
            }
            other => return other,
        }
    }
}

fn bind_once(listen: SocketAddr, count: usize) -> io::Result<Bound> {
    let mut udp = Vec::with_capacity(count);
    let mut addr = listen;
    for _ in 0..count {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false)?;
        }
        if addr.ip().is_unspecified() {
            // Answers leave from the address each query was sent to (see `udp_batch`).
            capstan_sockets::pktinfo::receive_destination(&socket, addr.is_ipv6())?;
        }
        socket.bind(&addr.into())?;
        if addr.port() == 0 {
            addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| io::Error::other("UDP socket has no address"))?;
        }
        udp.push(socket.into());
    }
    let tcp = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    tcp.set_reuse_address(true)?;
    tcp.set_nonblocking(true)?;
    tcp.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        tcp.set_only_v6(false)?;
    }
    tcp.bind(&addr.into())?;
    tcp.listen(1024)?;
    Ok((udp, tcp.into(), addr))
}

async fn serve_tcp(listener: TcpListener, handler: Arc<Handler>, shutdown: CancellationToken) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    debug!(%error, "dns: TCP accept");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        tokio::spawn(serve_tcp_connection(stream, handler.clone()));
    }
}

/// Reads length-prefixed queries until the client closes or idles; answers may leave in any
/// order (RFC 7766 pipelining). Answers still in flight are delivered after the client's FIN.
async fn serve_tcp_connection(stream: TcpStream, handler: Arc<Handler>) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(TCP_PIPELINE);
    let write = tokio::spawn(async move {
        while let Some(reply) = outgoing.recv().await {
            let Ok(len) = u16::try_from(reply.len()) else {
                continue;
            };
            let mut frame = Vec::with_capacity(reply.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&reply);
            if writer.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = writer.shutdown().await;
    });
    let in_flight = Arc::new(Semaphore::new(TCP_PIPELINE));
    loop {
        let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, reader.read_u16()).await else {
            break;
        };
        let mut query = vec![0; usize::from(len)];
        let Ok(Ok(_)) = tokio::time::timeout(TCP_IDLE, reader.read_exact(&mut query)).await else {
            break;
        };
        match handler.start(&query, Transport::Tcp) {
            Step::Reply(reply) => {
                if replies.send(reply).await.is_err() {
                    break;
                }
            }
            Step::Ignore => {}
            Step::Pending(pending) => {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    break;
                };
                let replies = replies.clone();
                let handler = handler.clone();
                tokio::spawn(async move {
                    let reply = handler.complete(pending).await;
                    let _ = replies.send(reply).await;
                    drop(permit);
                });
            }
        }
    }
    drop(replies);
    let _ = write.await;
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use capstan_table::{DnsTable, DnsZone, Snapshot};
    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::RecordType;

    use super::*;
    use crate::cache::CacheConfig;
    use crate::forward::ForwardConfig;

    fn handler(snapshots: SnapshotHandle) -> Handler {
        let metrics = Arc::new(DnsMetrics::default());
        let config = ForwardConfig {
            upstreams: vec![],
            timeout: Duration::from_secs(1),
            max_concurrent: 1,
            cache: CacheConfig {
                capacity: 0,
                min_ttl: Duration::ZERO,
                max_ttl: Duration::ZERO,
            },
        };
        let forwarder = Arc::new(Forwarder::new(config, None, metrics.clone()));
        Handler::new(snapshots, vec!["cluster.local".into()], forwarder, metrics)
    }

    fn query(name: &str) -> Vec<u8> {
        let mut message = Message::new(3, MessageType::Query, OpCode::Query);
        let name = Name::from_ascii(name).expect("name");
        message.add_query(Query::query(name, RecordType::A));
        message.to_vec().expect("encode")
    }

    fn rcode(step: Step) -> ResponseCode {
        match step {
            Step::Reply(bytes) => {
                Message::from_vec(&bytes)
                    .expect("decode")
                    .metadata
                    .response_code
            }
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    #[test]
    fn cluster_names_are_servfail_until_the_first_snapshot_and_others_forwarded() {
        let snapshots = SnapshotHandle::default();
        let handler = handler(snapshots.clone());
        let web = query("web.ns.svc.cluster.local.");
        assert_eq!(
            rcode(handler.start(&web, Transport::Udp)),
            ResponseCode::ServFail
        );
        assert!(matches!(
            handler.start(&query("example.org."), Transport::Udp),
            Step::Pending(_)
        ));

        let mut table = DnsTable::new(
            vec![DnsZone {
                name: "cluster.local".into(),
                pods: true,
            }],
            5,
            1,
        );
        let node = table.node_mut("web.ns.svc.cluster.local").expect("zone");
        node.a.push(Ipv4Addr::new(10, 0, 0, 1));
        snapshots.store(Arc::new(Snapshot {
            dns: Arc::new(table),
            ..Snapshot::default()
        }));
        assert_eq!(
            rcode(handler.start(&web, Transport::Udp)),
            ResponseCode::NoError
        );
    }

    #[tokio::test]
    async fn with_no_upstream_forwarded_names_are_servfail() {
        let handler = handler(SnapshotHandle::default());
        let Step::Pending(pending) = handler.start(&query("example.org."), Transport::Tcp) else {
            panic!("expected pending");
        };
        let reply = Message::from_vec(&handler.complete(pending).await).expect("decode");
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
}
