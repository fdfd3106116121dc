//! The PROXY protocol (HAProxy's spec, versions 1 and 2): the header a load balancer in front
//! sends before the client's bytes, carrying the client's address. Accepted only from trusted
//! peers (`--trusted-proxies`) when `--proxy-protocol` is on, and optional there (a health check
//! from the same peer may come without one, as Envoy's `allow_requests_without_proxy_protocol`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The v1 prefix.
const V1_PREFIX: &[u8; 6] = b"PROXY ";
/// A v1 header is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The largest v2 header accepted (addresses plus TLVs).
const V2_MAX: usize = 16 + 512;

/// What the first bytes of a connection are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Header {
    /// Too few bytes to tell.
    Incomplete,
    /// Not a PROXY header: the connection starts with the client's own bytes.
    Absent,
    /// A complete header of `len` bytes; `source` is the client's address (`None` for v2 LOCAL
    /// or v1 UNKNOWN: keep the connection's own peer).
    Complete {
        source: Option<SocketAddr>,
        len: usize,
    },
}

/// A malformed PROXY header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed PROXY protocol header: {0}")]
pub struct Malformed(pub &'static str);

/// Reads `buf`, the first bytes of a connection.
pub fn parse(buf: &[u8]) -> Result<Header, Malformed> {
    if starts_like(buf, V2_SIGNATURE) {
        return if buf.len() < V2_SIGNATURE.len() {
            Ok(Header::Incomplete)
        } else {
            parse_v2(buf)
        };
    }
    if starts_like(buf, V1_PREFIX) {
        return if buf.len() < V1_PREFIX.len() {
            Ok(Header::Incomplete)
        } else {
            parse_v1(buf)
        };
    }
    Ok(Header::Absent)
}

/// Whether `buf` is a prefix of `signature` or starts with it.
fn starts_like(buf: &[u8], signature: &[u8]) -> bool {
    let n = buf.len().min(signature.len());
    buf[..n] == signature[..n]
}

fn parse_v1(buf: &[u8]) -> Result<Header, Malformed> {
    let Some(end) = buf.windows(2).take(V1_MAX - 1).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(Malformed("v1 line longer than 107 bytes"))
        } else {
            Ok(Header::Incomplete)
        };
    };
    let line =
        std::str::from_utf8(&buf[V1_PREFIX.len()..end]).map_err(|_| Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = line.split(' ').collect();
    let len = end + 2;
    let source = match parts.as_slice() {
        ["UNKNOWN", ..] => None,
        [family @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| Malformed("v1 source address"))?;
            let _: IpAddr = dst
                .parse()
                .map_err(|_| Malformed("v1 destination address"))?;
            if src.is_ipv4() != (*family == "TCP4") {
                return Err(Malformed("v1 address of the wrong family"));
            }
            let port = |p: &str| {
                (p.len() <= 5 && !p.starts_with('0') || p == "0")
                    .then(|| p.parse::<u16>().ok())
                    .flatten()
                    .ok_or(Malformed("v1 port"))
            };
            let sport = port(sport)?;
            port(dport)?;
            Some(SocketAddr::new(src, sport))
        }
        _ => return Err(Malformed("v1 fields")),
    };
    Ok(Header::Complete { source, len })
}

fn parse_v2(buf: &[u8]) -> Result<Header, Malformed> {
    if buf.len() < 16 {
        return Ok(Header::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(Malformed("v2 version"));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let len = 16 + length;
    if len > V2_MAX {
        return Err(Malformed("v2 header too long"));
    }
    if buf.len() < len {
        return Ok(Header::Incomplete);
    }
    let body = &buf[16..len];
    let source = match (version_command & 0x0f, buf[13]) {
        // LOCAL: the proxy's own connection (a health check): keep the peer.
        (0, _) => None,
        (1, 0x11) if body.len() >= 12 => {
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            Some(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([body[8], body[9]]),
            ))
        }
        (1, 0x21) if body.len() >= 36 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            Some(SocketAddr::new(
                Ipv6Addr::from(octets).into(),
                u16::from_be_bytes([body[32], body[33]]),
            ))
        }
        // UNSPEC, UDP or unix sockets: nothing usable, keep the peer.
        (1, 0x00 | 0x12 | 0x22 | 0x31 | 0x32) => None,
        (1, 0x11 | 0x21) => return Err(Malformed("v2 address block too short")),
        (1, _) => return Err(Malformed("v2 address family")),
        _ => return Err(Malformed("v2 command")),
    };
    Ok(Header::Complete { source, len })
}

/// Reads a PROXY header off `stream` if it starts with one, within `timeout`: the client's
/// address it names (`None` when there is no header, or it names none).
pub(crate) async fn read_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<SocketAddr>, Malformed> {
    let read = async {
        let mut buf = vec![0u8; V2_MAX];
        loop {
            let seen = stream
                .peek(&mut buf)
                .await
                .map_err(|_| Malformed("connection failed"))?;
            if seen == 0 {
                return Err(Malformed("connection closed"));
            }
            match parse(&buf[..seen])? {
                Header::Absent => return Ok(None),
                Header::Complete { source, len } => {
                    let mut header = vec![0u8; len];
                    stream
                        .read_exact(&mut header)
                        .await
                        .map_err(|_| Malformed("connection failed"))?;
                    return Ok(source);
                }
                Header::Incomplete => tokio::time::sleep(Duration::from_millis(1)).await,
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| Malformed("timed out"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(command: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut out = V2_SIGNATURE.to_vec();
        out.push(0x20 | command);
        out.push(family);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn v1_headers_name_the_client() {
        let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n";
        assert_eq!(
            parse(header),
            Ok(Header::Complete {
                source: Some("203.0.113.7:51000".parse().expect("addr")),
                len: 43
            })
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 1 2\r\n";
        assert!(matches!(parse(v6), Ok(Header::Complete { source: Some(a), .. }) if a.is_ipv6()));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Header::Complete {
                source: None,
                len: 15
            })
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Header::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Header::Incomplete));
        for bad in [
            &b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n"[..],
            b"PROXY TCP4 ::1 ::1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP9 1.2.3.4 5.6.7.8 1 1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)).is_err());
    }

    #[test]
    fn requests_without_a_header_are_absent_early() {
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Header::Absent));
        assert_eq!(parse(b"POST"), Ok(Header::Absent));
        assert_eq!(
            parse(b"\x16\x03\x01"),
            Ok(Header::Absent),
            "a TLS ClientHello"
        );
        assert_eq!(parse(b"P"), Ok(Header::Incomplete));
        assert_eq!(parse(b""), Ok(Header::Incomplete));
    }

    #[test]
    fn v2_headers_name_the_client_or_keep_the_peer() {
        let mut body = vec![198, 51, 100, 4, 10, 0, 0, 1];
        body.extend_from_slice(&4000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        body.extend_from_slice(&[0x04, 0, 1, 0]); // a TLV, ignored
        let header = v2(1, 0x11, &body);
        assert_eq!(
            parse(&header),
            Ok(Header::Complete {
                source: Some("198.51.100.4:4000".parse().expect("addr")),
                len: header.len()
            })
        );
        assert_eq!(parse(&header[..20]), Ok(Header::Incomplete));
        let local = v2(0, 0x00, &[]);
        assert_eq!(
            parse(&local),
            Ok(Header::Complete {
                source: None,
                len: 16
            })
        );
        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[32..34].copy_from_slice(&8080u16.to_be_bytes());
        let Ok(Header::Complete {
            source: Some(addr), ..
        }) = parse(&v2(1, 0x21, &v6))
        else {
            panic!("v6");
        };
        assert_eq!(addr.port(), 8080);
        assert!(
            parse(&v2(1, 0x11, &[1, 2, 3])).is_err(),
            "short address block"
        );
        assert!(parse(&v2(5, 0x11, &body)).is_err(), "unknown command");
        let mut bad_version = header.clone();
        bad_version[12] = 0x11;
        assert!(parse(&bad_version).is_err());
    }
}
