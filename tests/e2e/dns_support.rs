//! DNS test helpers: `dig` against the running binary, and a real upstream resolver (UDP + TCP)
//! with scripted answers and counters.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::io::{Read, Write};

use crate::support::unique_ip;

/// Runs `dig @SERVER -p PORT ARGS` with a short timeout and returns its output.
pub(crate) fn dig(server: SocketAddr, args: &[&str]) -> String {
    let output = Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=3", "+tries=1"])
        .args(args)
        .output()
        .expect("run dig (Debian package bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `dig +short` lines, sorted.
pub(crate) fn dig_short(server: SocketAddr, args: &[&str]) -> Vec<String> {
    let mut args = args.to_vec();
    args.push("+short");
    let mut lines: Vec<String> = dig(server, &args).lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

/// The `status:` of a dig answer.
pub(crate) fn status(output: &str) -> &str {
    output
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("NO ANSWER")
}

/// The value of the first sample in `metrics` (OpenMetrics text) whose line starts with `prefix`.
pub(crate) fn metric_value(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An upstream resolver: `*.example.test` A → 192.0.2.1 (TTL 60), `nx.example.test` NXDOMAIN
/// with an SOA, `big.example.test` 60 A records (truncated over UDP), `slow.example.test` never
/// answered; anything else REFUSED.
pub(crate) struct Upstream {
    pub(crate) addr: SocketAddr,
    pub(crate) udp_queries: Arc<AtomicUsize>,
    pub(crate) tcp_queries: Arc<AtomicUsize>,
}

impl Upstream {
    pub(crate) fn start() -> Self {
        let ip = unique_ip();
        let (udp, tcp) = loop {
            let udp = UdpSocket::bind((ip, 0)).expect("bind upstream udp");
            let addr = udp.local_addr().expect("addr");
            if let Ok(tcp) = TcpListener::bind(addr) {
                break (udp, tcp);
            }
        };
        let addr = udp.local_addr().expect("addr");
        let udp_queries = Arc::new(AtomicUsize::new(0));
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let counter = udp_queries.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 65535];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                counter.fetch_add(1, Ordering::SeqCst);
                if let Some(reply) = reply(&buf[..n], false) {
                    let _ = udp.send_to(&reply, from);
                }
            }
        });
        let counter = tcp_queries.clone();
        std::thread::spawn(move || {
            for stream in tcp.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let mut len = [0; 2];
                    while stream.read_exact(&mut len).is_ok() {
                        let mut query = vec![0; usize::from(u16::from_be_bytes(len))];
                        if stream.read_exact(&mut query).is_err() {
                            return;
                        }
                        counter.fetch_add(1, Ordering::SeqCst);
                        if let Some(reply) = reply(&query, true) {
                            let len = u16::try_from(reply.len()).expect("fits").to_be_bytes();
                            let _ = stream.write_all(&[&len[..], &reply].concat());
                        }
                    }
                });
            }
        });
        Self {
            addr,
            udp_queries,
            tcp_queries,
        }
    }

    pub(crate) fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::SeqCst) + self.tcp_queries.load(Ordering::SeqCst)
    }
}

fn reply(raw: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(raw).ok()?;
    let question = query.queries.first()?.clone();
    let name = question.name().to_lowercase().to_ascii();
    let mut response = Message::new(
        query.metadata.id,
        MessageType::Response,
        query.metadata.op_code,
    );
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_query(question.clone());
    let owner = question.name().clone();
    let a = |last: u8| Record::from_rdata(owner.clone(), 60, RData::A(A::new(192, 0, 2, last)));
    match name.as_str() {
        "slow.example.test." => return None,
        "nx.example.test." => {
            response.metadata.response_code = ResponseCode::NXDomain;
            let zone = Name::from_ascii("example.test.").ok()?;
            let soa = SOA::new(zone.clone(), zone.clone(), 1, 1, 1, 1, 30);
            response.add_authority(Record::from_rdata(zone, 30, RData::SOA(soa)));
        }
        "big.example.test." if !tcp => response.metadata.truncation = true,
        "big.example.test." => {
            for last in 1..=60 {
                response.add_answer(a(last));
            }
        }
        n if n.ends_with(".example.test.") && question.query_type() == RecordType::A => {
            response.add_answer(a(1));
        }
        _ => response.metadata.response_code = ResponseCode::Refused,
    }
    response.to_vec().ok()
}

/// A UDP relay that sends every datagram on to `target` and relays the reply: an upstream that
/// forwards back to Capstan, i.e. a resolver loop.
pub(crate) struct Relay {
    pub(crate) addr: SocketAddr,
    pub(crate) relayed: Arc<AtomicUsize>,
}

impl Relay {
    pub(crate) fn start(target: SocketAddr) -> Self {
        let socket = UdpSocket::bind((unique_ip(), 0)).expect("bind relay");
        let addr = socket.local_addr().expect("addr");
        let relayed = Arc::new(AtomicUsize::new(0));
        let counter = relayed.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0; 65535];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                counter.fetch_add(1, Ordering::SeqCst);
                let out = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
                let _ = out.set_read_timeout(Some(Duration::from_secs(3)));
                let _ = out.send_to(&buf[..n], target);
                let mut reply = vec![0; 65535];
                if let Ok(m) = out.recv(&mut reply) {
                    let _ = socket.send_to(&reply[..m], from);
                }
            }
        });
        Self { addr, relayed }
    }
}

/// A loopback address with nothing listening on UDP port `port` (queries to it time out).
pub(crate) fn silent_upstream() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind((unique_ip(), 0)).expect("bind");
    let addr = socket.local_addr().expect("addr");
    (socket, addr)
}

pub(crate) fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}
