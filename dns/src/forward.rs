//! Forwarding to upstream resolvers (CoreDNS's `forward` plugin): UDP with TCP on truncation,
//! per-attempt timeouts, failover across upstreams with passive health and active probes of
//! unhealthy ones, a cap on queries in flight, the cache, and resolver-loop detection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use crate::DnsError;
use crate::answer::{lookup_key, response};
use crate::cache::{Cache, CacheConfig, CacheKey};
use crate::metrics::DnsMetrics;
use crate::wire::{UDP_PAYLOAD, loop_marker, mark};

/// Consecutive failures after which an upstream is considered down and probed.
const MAX_FAILS: u32 = 2;
/// How often down upstreams are probed.
const PROBE_INTERVAL: Duration = Duration::from_millis(500);
/// Upstreams tried per query, at most.
const MAX_ATTEMPTS: usize = 3;

/// Forwarding settings.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    pub upstreams: Vec<SocketAddr>,
    /// Time allowed for one upstream exchange (UDP, plus TCP when truncated).
    pub timeout: Duration,
    /// Forwarded queries in flight at most; more are answered REFUSED.
    pub max_concurrent: usize,
    pub cache: CacheConfig,
}

/// One upstream resolver and its health.
#[derive(Debug)]
struct Upstream {
    addr: SocketAddr,
    consecutive_failures: AtomicU32,
    /// Set when a query forwarded to it came back to Capstan: never used again.
    looping: AtomicBool,
    requests: AtomicU64,
    failures: AtomicU64,
    probe_failures: AtomicU64,
    responses: [AtomicU64; 4],
}

/// Per-upstream figures for metrics and the admin endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamStats {
    pub addr: SocketAddr,
    pub healthy: bool,
    pub looping: bool,
    pub requests: u64,
    pub failures: u64,
    pub probe_failures: u64,
    /// Responses by rcode: NOERROR, NXDOMAIN, SERVFAIL, other.
    pub responses: [(&'static str, u64); 4],
}

/// The forwarder. Shared by every server task.
#[derive(Debug)]
pub struct Forwarder {
    upstreams: Vec<Upstream>,
    timeout: Duration,
    max_concurrent: usize,
    in_flight: AtomicUsize,
    cache: Cache,
    /// Random per process: marks the queries this process forwards.
    token: [u8; 8],
    metrics: Arc<DnsMetrics>,
    started: Instant,
}

/// Decrements the in-flight count when a forwarded query finishes.
struct InFlight<'f>(&'f AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Forwarder ===

impl Forwarder {
    /// Upstreams equal to `own` (the server's address) are left out: that is a loop by
    /// construction. Other loops are caught at run time by [`Forwarder::is_loop`].
    pub fn new(config: ForwardConfig, own: Option<SocketAddr>, metrics: Arc<DnsMetrics>) -> Self {
        let upstreams = config
            .upstreams
            .iter()
            .filter(|&&addr| {
                let own = Some(addr) == own;
                if own {
                    error!(%addr, "upstream is Capstan's own DNS address (resolver loop); not using it");
                }
                !own
            })
            .map(|&addr| Upstream {
                addr,
                consecutive_failures: AtomicU32::new(0),
                looping: AtomicBool::new(false),
                requests: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                probe_failures: AtomicU64::new(0),
                responses: Default::default(),
            })
            .collect();
        Self {
            upstreams,
            timeout: config.timeout,
            max_concurrent: config.max_concurrent,
            in_flight: AtomicUsize::new(0),
            cache: Cache::new(config.cache),
            token: fastrand::u64(..).to_be_bytes(),
            metrics,
            started: Instant::now(),
        }
    }

    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// Positive and negative answers in the cache.
    pub fn cache_counts(&self) -> (usize, usize) {
        self.cache.counts()
    }

    pub fn upstreams(&self) -> Vec<UpstreamStats> {
        self.upstreams
            .iter()
            .map(|u| UpstreamStats {
                addr: u.addr,
                healthy: u.consecutive_failures.load(Ordering::Relaxed) < MAX_FAILS,
                looping: u.looping.load(Ordering::Relaxed),
                requests: u.requests.load(Ordering::Relaxed),
                failures: u.failures.load(Ordering::Relaxed),
                probe_failures: u.probe_failures.load(Ordering::Relaxed),
                responses: [
                    ("NOERROR", u.responses[0].load(Ordering::Relaxed)),
                    ("NXDOMAIN", u.responses[1].load(Ordering::Relaxed)),
                    ("SERVFAIL", u.responses[2].load(Ordering::Relaxed)),
                    ("other", u.responses[3].load(Ordering::Relaxed)),
                ],
            })
            .collect()
    }

    /// Whether `request` is a query this process forwarded, come back: a resolver loop. The
    /// upstream it was sent to is taken out of service.
    pub fn is_loop(&self, request: &Message) -> bool {
        let Some((token, index)) = loop_marker(request) else {
            return false;
        };
        if token != self.token {
            return false;
        }
        self.metrics.loops.fetch_add(1, Ordering::Relaxed);
        if let Some(upstream) = self.upstreams.get(usize::from(index))
            && !upstream.looping.swap(true, Ordering::Relaxed)
        {
            error!(
                upstream = %upstream.addr,
                "queries forwarded to this upstream come back to Capstan (resolver loop); not using it"
            );
        }
        true
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The answer to `request` from the cache or an upstream: a complete response (SERVFAIL when
    /// every upstream failed, REFUSED past the concurrency cap).
    pub async fn forward(&self, request: &Message) -> Message {
        let Some(query) = request.queries.first() else {
            return response(request, ResponseCode::FormErr);
        };
        let dnssec_ok = request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok);
        let key = CacheKey {
            name: lookup_key(query.name()).into(),
            qtype: u16::from(query.query_type()),
            qclass: u16::from(query.query_class()),
            dnssec_ok,
            checking_disabled: request.metadata.checking_disabled,
        };
        if let Some(hit) = self.cache.get(&key, self.now_ms()) {
            let counter = if hit.negative {
                &self.metrics.cache_hits_denial
            } else {
                &self.metrics.cache_hits_success
            };
            counter.fetch_add(1, Ordering::Relaxed);
            return relayed(request, hit.reply);
        }
        self.metrics.cache_misses.fetch_add(1, Ordering::Relaxed);

        if self.in_flight.fetch_add(1, Ordering::Relaxed) >= self.max_concurrent {
            self.in_flight.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .forward_rejected
                .fetch_add(1, Ordering::Relaxed);
            return upstream_response(request, ResponseCode::Refused);
        }
        let _in_flight = InFlight(&self.in_flight);

        let mut last: Option<Message> = None;
        for index in self.attempt_order() {
            let upstream = &self.upstreams[index];
            let outgoing = self.outgoing(query, request, dnssec_ok, index);
            upstream.requests.fetch_add(1, Ordering::Relaxed);
            match exchange(upstream.addr, &outgoing, self.timeout).await {
                Ok(reply) => {
                    upstream.consecutive_failures.store(0, Ordering::Relaxed);
                    let code = reply.metadata.response_code;
                    let slot = match code {
                        ResponseCode::NoError => 0,
                        ResponseCode::NXDomain => 1,
                        ResponseCode::ServFail => 2,
                        _ => 3,
                    };
                    upstream.responses[slot].fetch_add(1, Ordering::Relaxed);
                    if matches!(code, ResponseCode::ServFail | ResponseCode::Refused) {
                        // The upstream is alive but could not answer: another may.
                        last = Some(reply);
                        continue;
                    }
                    self.cache.insert(key, &reply, self.now_ms());
                    return relayed(request, reply);
                }
                Err(error) => {
                    upstream.failures.fetch_add(1, Ordering::Relaxed);
                    let fails = upstream
                        .consecutive_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    if fails == MAX_FAILS {
                        warn!(upstream = %upstream.addr, %error, "upstream marked down");
                    }
                }
            }
        }
        match last {
            Some(reply) => relayed(request, reply),
            None => upstream_response(request, ResponseCode::ServFail),
        }
    }

    /// Resolves `target` with `qtype` upstream, for chasing an ExternalName CNAME.
    pub async fn resolve(&self, request: &Message, target: Name, qtype: RecordType) -> Message {
        let mut chase = Message::new(request.metadata.id, MessageType::Query, OpCode::Query);
        chase.metadata.recursion_desired = true;
        chase.metadata.checking_disabled = request.metadata.checking_disabled;
        chase.edns.clone_from(&request.edns);
        chase.add_query(Query::query(target, qtype));
        self.forward(&chase).await
    }

    /// Healthy upstreams in random order, then the unhealthy ones (better than nothing); never
    /// those found looping.
    fn attempt_order(&self) -> Vec<usize> {
        let mut healthy = Vec::new();
        let mut down = Vec::new();
        for (index, upstream) in self.upstreams.iter().enumerate() {
            if upstream.looping.load(Ordering::Relaxed) {
                continue;
            }
            if upstream.consecutive_failures.load(Ordering::Relaxed) < MAX_FAILS {
                healthy.push(index);
            } else {
                down.push(index);
            }
        }
        fastrand::shuffle(&mut healthy);
        fastrand::shuffle(&mut down);
        healthy.extend(down);
        healthy.truncate(MAX_ATTEMPTS);
        healthy
    }

    fn outgoing(&self, query: &Query, request: &Message, dnssec_ok: bool, index: usize) -> Message {
        let mut out = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
        out.metadata.recursion_desired = true;
        out.metadata.checking_disabled = request.metadata.checking_disabled;
        out.add_query(query.clone());
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD);
        edns.set_dnssec_ok(dnssec_ok);
        out.set_edns(edns);
        mark(
            &mut out,
            self.token,
            u16::try_from(index).unwrap_or(u16::MAX),
        );
        out
    }

    /// Probes down upstreams every 500 ms with `. NS` until `shutdown`; an answer of any kind
    /// brings one back.
    pub async fn probe_down_upstreams(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(PROBE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            for upstream in &self.upstreams {
                let down = upstream.consecutive_failures.load(Ordering::Relaxed) >= MAX_FAILS;
                if !down || upstream.looping.load(Ordering::Relaxed) {
                    continue;
                }
                let mut probe = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
                probe.add_query(Query::query(Name::root(), RecordType::NS));
                match exchange(upstream.addr, &probe, self.timeout).await {
                    Ok(_) => {
                        upstream.consecutive_failures.store(0, Ordering::Relaxed);
                        warn!(upstream = %upstream.addr, "upstream answers again");
                    }
                    Err(_) => {
                        upstream.probe_failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    }
}

/// The client's response carrying an upstream's (or the cache's) reply: the client's ID, flags
/// and question, the upstream's rcode, AD flag and records.
fn relayed(request: &Message, reply: Message) -> Message {
    let mut out = upstream_response(request, reply.metadata.response_code);
    out.metadata.authentic_data = reply.metadata.authentic_data;
    out.answers = reply.answers;
    out.authorities = reply.authorities;
    out.additionals = reply.additionals;
    out
}

/// A response to `request` carrying upstream data: not authoritative.
fn upstream_response(request: &Message, code: ResponseCode) -> Message {
    let mut out = response(request, code);
    out.metadata.authoritative = false;
    out
}

/// One exchange with `upstream`: UDP from a fresh random port, then TCP if the answer was
/// truncated. Replies whose ID or question do not match are ignored (spoofing, stale replies).
async fn exchange(
    upstream: SocketAddr,
    query: &Message,
    timeout: Duration,
) -> Result<Message, DnsError> {
    let bytes = query
        .to_vec()
        .map_err(|e| DnsError::Encode(e.to_string()))?;
    let attempt = async {
        let reply = exchange_udp(upstream, query, &bytes).await?;
        if reply.metadata.truncation {
            return exchange_tcp(upstream, query, &bytes).await;
        }
        Ok(reply)
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| DnsError::UpstreamTimeout(upstream))?
}

async fn exchange_udp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<Message, DnsError> {
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let io = |e| DnsError::Upstream(upstream, e);
    let socket = UdpSocket::bind(local).await.map_err(io)?;
    socket.connect(upstream).await.map_err(io)?;
    socket.send(bytes).await.map_err(io)?;
    let mut buf = vec![0; 65_535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(io)?;
        if let Ok(reply) = Message::from_vec(&buf[..n])
            && matches_query(&reply, query)
        {
            return Ok(reply);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    query: &Message,
    bytes: &[u8],
) -> Result<Message, DnsError> {
    let io = |e| DnsError::Upstream(upstream, e);
    let mut stream = TcpStream::connect(upstream).await.map_err(io)?;
    let len = u16::try_from(bytes.len()).map_err(|_| DnsError::Encode("query too long".into()))?;
    let mut frame = Vec::with_capacity(bytes.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(bytes);
    stream.write_all(&frame).await.map_err(io)?;
    loop {
        let len = stream.read_u16().await.map_err(io)?;
        let mut buf = vec![0; usize::from(len)];
        stream.read_exact(&mut buf).await.map_err(io)?;
        if let Ok(reply) = Message::from_vec(&buf)
            && matches_query(&reply, query)
        {
            return Ok(reply);
        }
    }
}

fn matches_query(reply: &Message, query: &Message) -> bool {
    reply.metadata.message_type == MessageType::Response
        && reply.metadata.id == query.metadata.id
        && match (reply.queries.first(), query.queries.first()) {
            (Some(a), Some(b)) => {
                a.query_type() == b.query_type()
                    && a.query_class() == b.query_class()
                    && a.name().eq_ignore_root(b.name())
            }
            // Some servers omit the question in error replies.
            (None, _) => reply.metadata.response_code != ResponseCode::NoError,
            _ => false,
        }
}
