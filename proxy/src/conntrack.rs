//! Stale UDP conntrack entries deleted over ctnetlink, as kube-proxy does
//! (pkg/proxy/conntrack/cleanup.go): one dump of the UDP entries of each family, the entries
//! that match a filter deleted by their original tuple. No process is run per filter.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use capstan_sockets::SocketError;
use capstan_sockets::netlink::{
    Messages, NLM_F_ACK, NLM_F_DUMP, NetfilterSocket, parse_attrs, parse_messages,
};
use tracing::{debug, warn};

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const UDP: u8 = 17;

// Attributes (linux/netfilter/nfnetlink_conntrack.h).
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// Deletions per datagram.
const DELETES_PER_SEND: usize = 256;

/// One direction of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Tuple {
    pub(crate) source: SocketAddr,
    pub destination: SocketAddr,
    pub protocol: u8,
}

/// A conntrack entry: the original direction and the reply (whose source is where a
/// translated flow really goes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flow {
    pub original: Tuple,
    pub reply: Tuple,
}

/// Which UDP entries to delete: those sent to `frontend` (any address when unspecified: a
/// NodePort), and, if given, translated to `endpoint` (conntrack's `--dst-nat`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Filter {
    pub frontend: SocketAddr,
    pub endpoint: Option<IpAddr>,
}

impl Filter {
    pub(crate) fn matches(&self, flow: &Flow) -> bool {
        let original = flow.original;
        original.protocol == UDP
            && original.destination.is_ipv4() == self.frontend.is_ipv4()
            && original.destination.port() == self.frontend.port()
            && (self.frontend.ip().is_unspecified()
                || original.destination.ip() == self.frontend.ip())
            && self
                .endpoint
                .is_none_or(|endpoint| flow.reply.source.ip() == endpoint)
    }
}

/// Deletes the UDP entries matching any of `filters` off the async threads, logging the
/// outcome; the first failure is a warning (`warned` remembers it), later ones debug lines.
pub(crate) async fn delete_stale(filters: Vec<Filter>, warned: &mut bool) {
    if filters.is_empty() {
        return;
    }
    match tokio::task::spawn_blocking(move || delete_matching(&filters)).await {
        Ok(Ok(count)) => debug!(count, "stale udp conntrack entries deleted"),
        Ok(Err(error)) if !*warned => {
            *warned = true;
            warn!(%error, "stale UDP conntrack entries not deleted: they expire on their own");
        }
        Ok(Err(error)) => debug!(%error, "stale udp conntrack entries not deleted"),
        Err(error) => warn!(%error, "conntrack task failed"),
    }
}

/// Deletes the UDP entries matching any of `filters`; returns how many were deleted.
/// Blocking: run it off the async threads.
pub(crate) fn delete_matching(filters: &[Filter]) -> Result<usize, SocketError> {
    let mut deleted = 0;
    for (family, v4) in [(AF_INET, true), (AF_INET6, false)] {
        let wanted: Vec<&Filter> = filters
            .iter()
            .filter(|f| f.frontend.is_ipv4() == v4)
            .collect();
        if wanted.is_empty() {
            continue;
        }
        let stale: Vec<Flow> = dump(family)?
            .into_iter()
            .filter(|flow| wanted.iter().any(|f| f.matches(flow)))
            .collect();
        for chunk in stale.chunks(DELETES_PER_SEND) {
            deleted += delete(family, chunk)?;
        }
    }
    Ok(deleted)
}

/// Every conntrack entry of one family.
fn dump(family: u8) -> Result<Vec<Flow>, SocketError> {
    let mut request = Messages::new();
    request.begin(
        NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET,
        NLM_F_DUMP,
        family,
        0,
    );
    request.end();
    let socket = NetfilterSocket::open(request.len())?;
    Ok(socket
        .dump(&request)?
        .iter()
        .filter_map(|payload| parse_flow(payload))
        .collect())
}

/// Deletes `flows` by their original tuples; entries already gone do not count as errors.
fn delete(family: u8, flows: &[Flow]) -> Result<usize, SocketError> {
    let mut request = Messages::new();
    for flow in flows {
        request.begin(
            NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_DELETE,
            NLM_F_ACK,
            family,
            0,
        );
        write_tuple(&mut request, CTA_TUPLE_ORIG, &flow.original);
        request.end();
    }
    let socket = NetfilterSocket::open(request.len())?;
    socket.send(request.bytes())?;
    let (last, mut acked, mut deleted) = (request.last_seq(), 0, 0);
    let mut buf = vec![0u8; 64 * 1024];
    while acked < flows.len() {
        let n = socket.receive(&mut buf)?;
        for message in parse_messages(&buf[..n]) {
            let Some((seq, errno)) = message.ack() else {
                continue;
            };
            acked += 1;
            match errno {
                0 => deleted += 1,
                // ENOENT: expired or deleted since the dump.
                2 => {}
                errno => {
                    return Err(SocketError::Refused {
                        message: seq,
                        source: io::Error::from_raw_os_error(errno),
                    });
                }
            }
            if seq == last {
                return Ok(deleted);
            }
        }
    }
    Ok(deleted)
}

fn write_tuple(m: &mut Messages, attr: u16, tuple: &Tuple) {
    let nest = m.nest_begin(attr);
    let ip = m.nest_begin(CTA_TUPLE_IP);
    match (tuple.source.ip(), tuple.destination.ip()) {
        (IpAddr::V4(source), IpAddr::V4(destination)) => {
            m.attr(CTA_IP_V4_SRC, &source.octets());
            m.attr(CTA_IP_V4_DST, &destination.octets());
        }
        (source, destination) => {
            m.attr(CTA_IP_V6_SRC, &v6(source).octets());
            m.attr(CTA_IP_V6_DST, &v6(destination).octets());
        }
    }
    m.nest_end(ip);
    let proto = m.nest_begin(CTA_TUPLE_PROTO);
    m.attr(CTA_PROTO_NUM, &[tuple.protocol]);
    m.attr(CTA_PROTO_SRC_PORT, &tuple.source.port().to_be_bytes());
    m.attr(CTA_PROTO_DST_PORT, &tuple.destination.port().to_be_bytes());
    m.nest_end(proto);
    m.nest_end(nest);
}

fn v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V6(v6) => v6,
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
    }
}

/// A conntrack message's payload (after `nfgenmsg`) as a flow; `None` when a tuple is
/// missing or not IP with ports.
pub(crate) fn parse_flow(payload: &[u8]) -> Option<Flow> {
    let mut original = None;
    let mut reply = None;
    for (attr, value) in parse_attrs(payload) {
        match attr {
            CTA_TUPLE_ORIG => original = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            _ => {}
        }
    }
    Some(Flow {
        original: original?,
        reply: reply?,
    })
}

fn parse_tuple(value: &[u8]) -> Option<Tuple> {
    let (mut source, mut destination) = (None, None);
    let (mut protocol, mut source_port, mut destination_port) = (None, 0u16, 0u16);
    for (attr, value) in parse_attrs(value) {
        match attr {
            CTA_TUPLE_IP => {
                for (kind, bytes) in parse_attrs(value) {
                    let ip = match kind {
                        CTA_IP_V4_SRC | CTA_IP_V4_DST => {
                            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(bytes).ok()?))
                        }
                        CTA_IP_V6_SRC | CTA_IP_V6_DST => {
                            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?))
                        }
                        _ => continue,
                    };
                    if matches!(kind, CTA_IP_V4_SRC | CTA_IP_V6_SRC) {
                        source = Some(ip);
                    } else {
                        destination = Some(ip);
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, bytes) in parse_attrs(value) {
                    match kind {
                        CTA_PROTO_NUM => protocol = bytes.first().copied(),
                        CTA_PROTO_SRC_PORT => {
                            source_port = u16::from_be_bytes(bytes.try_into().ok()?);
                        }
                        CTA_PROTO_DST_PORT => {
                            destination_port = u16::from_be_bytes(bytes.try_into().ok()?);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        source: SocketAddr::new(source?, source_port),
        destination: SocketAddr::new(destination?, destination_port),
        protocol: protocol?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(original: (&str, &str), reply_source: &str) -> Flow {
        let tuple = |s: &str, d: &str| Tuple {
            source: s.parse().unwrap(),
            destination: d.parse().unwrap(),
            protocol: UDP,
        };
        Flow {
            original: tuple(original.0, original.1),
            reply: tuple(reply_source, original.0),
        }
    }

    #[test]
    fn a_written_tuple_parses_back() {
        for (s, d) in [
            ("10.244.0.5:40000", "10.96.0.10:53"),
            ("[fd00::5]:40000", "[fd00:96::a]:53"),
        ] {
            let f = flow((s, d), d);
            let mut m = Messages::new();
            m.begin(0x0100, 0, AF_INET, 0);
            write_tuple(&mut m, CTA_TUPLE_ORIG, &f.original);
            write_tuple(&mut m, CTA_TUPLE_REPLY, &f.reply);
            m.end();
            let messages = parse_messages(m.bytes());
            assert_eq!(parse_flow(&messages[0].payload[4..]), Some(f));
        }
        assert_eq!(parse_flow(&[0xff, 0x00, 0x01]), None);
    }

    /// The filters of `conntrack -D -p udp --orig-dst VIP --orig-port-dst P [--dst-nat EP]`.
    #[test]
    fn filters_match_like_the_conntrack_tool() {
        let to_vip = flow(("10.244.0.5:40000", "10.96.0.10:53"), "10.244.1.7:5353");
        let vip = Filter {
            frontend: "10.96.0.10:53".parse().unwrap(),
            endpoint: None,
        };
        assert!(vip.matches(&to_vip));
        let gone = Filter {
            endpoint: Some("10.244.1.7".parse().unwrap()),
            ..vip
        };
        assert!(gone.matches(&to_vip));
        let other = Filter {
            endpoint: Some("10.244.1.8".parse().unwrap()),
            ..vip
        };
        assert!(!other.matches(&to_vip));
        let node_port = Filter {
            frontend: "0.0.0.0:53".parse().unwrap(),
            endpoint: None,
        };
        assert!(node_port.matches(&to_vip));
        let mut tcp = to_vip;
        tcp.original.protocol = 6;
        assert!(!vip.matches(&tcp));
        let six = Filter {
            frontend: "[::]:53".parse().unwrap(),
            endpoint: None,
        };
        assert!(!six.matches(&to_vip));
    }
}
