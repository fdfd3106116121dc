//! Header rules of a reverse proxy, pure: which host a request is for, which headers are
//! hop-by-hop (RFC 9110 §7.6.1), and the `X-Forwarded-*`/`Forwarded` headers added upstream.

use std::net::IpAddr;

use bytes::BytesMut;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Version};

/// Headers that describe one connection, never forwarded (plus any named in `Connection`).
pub(crate) const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The headers [`set_forwarded`] sets: what a client sent under these names never goes upstream.
static FORWARDING_HEADERS: [&HeaderName; 6] = [
    &X_FORWARDED_FOR,
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &header::FORWARDED,
];

/// Why a request was refused before routing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BadRequest {
    /// No `Host` (HTTP/1.1) or `:authority` (HTTP/2).
    MissingHost,
    /// A host that is not a DNS name or IP literal with an optional port, or two that disagree.
    InvalidHost,
}

/// The forwarding headers' values that depend only on the downstream connection, rendered once
/// per connection.
#[derive(Clone, Debug)]
pub(crate) struct Forwarding {
    /// The client address, for `X-Forwarded-For` and `X-Real-IP`.
    client: Option<HeaderValue>,
    /// `http` or `https`: the listener the request arrived on.
    proto: &'static str,
    /// The port of the listener the request arrived on.
    port: HeaderValue,
    /// `for=…;proto=…`: the start of the `Forwarded` value.
    forwarded: String,
}

impl Forwarding {
    pub(crate) fn new(client: IpAddr, proto: &'static str, port: u16) -> Self {
        let text = client.to_string();
        let forwarded = match client {
            IpAddr::V4(_) => format!("for={text};proto={proto}"),
            IpAddr::V6(_) => format!("for=\"[{text}]\";proto={proto}"),
        };
        Self {
            client: HeaderValue::from_str(&text).ok(),
            proto,
            port: HeaderValue::from(port),
            forwarded,
        }
    }
}

/// The host a request is for: the URI's authority (HTTP/2, or an absolute-form HTTP/1.1 target,
/// which RFC 9112 §3.2.2 says wins over `Host`), else the `Host` header. Validated.
pub(crate) fn request_host<B>(request: &Request<B>) -> Result<&str, BadRequest> {
    let headers = request.headers();
    let mut hosts = headers.get_all(header::HOST).iter();
    let from_header = hosts.next();
    if hosts.next().is_some() {
        return Err(BadRequest::InvalidHost);
    }
    let host = match (request.uri().authority(), from_header) {
        (Some(authority), _) => authority.as_str(),
        (None, Some(value)) => value.to_str().map_err(|_| BadRequest::InvalidHost)?,
        (None, None) if request.version() == Version::HTTP_10 => "",
        (None, None) => return Err(BadRequest::MissingHost),
    };
    if host.is_empty() && request.version() != Version::HTTP_10 {
        return Err(BadRequest::MissingHost);
    }
    if !host.is_empty() && !valid_host(host) {
        return Err(BadRequest::InvalidHost);
    }
    Ok(host)
}

/// `name[:port]` or `[v6][:port]`: a DNS name (letters, digits, `-`, `_`, `.`) or an IP literal;
/// no userinfo, no spaces, port digits only.
pub(crate) fn valid_host(host: &str) -> bool {
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return false;
        };
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return false;
        }
        match after.strip_prefix(':') {
            Some(port) => ("v6", Some(port)),
            None if after.is_empty() => ("v6", None),
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    port_ok && name_ok
}

/// RFC 9110 §9.2.2: repeating these has the same effect as sending them once.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// Whether an HTTP/1.1 request asks to switch protocols (WebSocket).
pub(crate) fn is_upgrade<B>(request: &Request<B>) -> bool {
    request.version() == Version::HTTP_11
        && request.headers().contains_key(header::UPGRADE)
        && has_token(request.headers(), &header::CONNECTION, "upgrade")
}

/// Removes hop-by-hop headers and those the `Connection` header names. With `keep_upgrade`
/// (a protocol switch in progress), `Connection: upgrade` and `Upgrade` are kept.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds what is there: most messages carry none, or only
    // `Connection: keep-alive`.
    let mut present: Vec<HeaderName> = Vec::new();
    for name in headers.keys() {
        if HOP_BY_HOP.contains(name) && !present.contains(name) {
            present.push(name.clone());
        }
    }
    if present.is_empty() && !keep_upgrade {
        return;
    }
    let named = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.eq_ignore_ascii_case("close") && !token.eq_ignore_ascii_case("keep-alive")
        })
        .filter_map(|token| HeaderName::from_bytes(token.as_bytes()).ok())
        .collect::<Vec<_>>();
    let trailers_te = has_token(headers, &header::TE, "trailers");
    for name in named.iter().chain(present.iter()) {
        if keep_upgrade && (name == header::UPGRADE || name == header::CONNECTION) {
            continue;
        }
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
    if trailers_te {
        // `TE: trailers` is the one TE value that must reach gRPC servers (RFC 9113 §8.2.2).
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host/-Port`, `X-Real-IP` and `Forwarded` (RFC 7239) for the
/// upstream; `host` is the request's host as the client sent it (port included). Values a
/// client sent are replaced, not appended: Capstan is the edge, and a client must not be able
/// to choose the address a backend sees.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, forwarding: &Forwarding, host: &str) {
    headers.reserve(6);
    if let Some(client) = &forwarding.client {
        headers.insert(&X_FORWARDED_FOR, client.clone());
        headers.insert(&X_REAL_IP, client.clone());
    }
    headers.insert(
        &X_FORWARDED_PROTO,
        HeaderValue::from_static(forwarding.proto),
    );
    headers.insert(&X_FORWARDED_PORT, forwarding.port.clone());
    let host_value = (!host.is_empty())
        .then(|| HeaderValue::from_str(host).ok())
        .flatten();
    let forwarded = match host_value {
        Some(host_value) => {
            headers.insert(&X_FORWARDED_HOST, host_value);
            HeaderValue::from_str(&format!("{};host=\"{host}\"", forwarding.forwarded))
        }
        None => {
            headers.remove(&X_FORWARDED_HOST);
            HeaderValue::from_str(&forwarding.forwarded)
        }
    };
    if let Ok(forwarded) = forwarded {
        headers.insert(header::FORWARDED, forwarded);
    }
}

/// The request head the inline client sends, written straight from the client's headers: the
/// same header set as [`strip_hop_by_hop`], [`set_forwarded`] and a default `Host` make of a
/// `HeaderMap` (for a request that is not an upgrade), without changing or rehashing one.
pub(crate) fn encode_upstream_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    forwarding: &Forwarding,
    host: &str,
    out: &mut BytesMut,
) {
    out.reserve(512);
    crate::http1::encode_request_line(method, target, out);
    let mut field = |name: &[u8], value: &[&[u8]]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        for part in value {
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"\r\n");
    };
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .collect();
    let (mut trailers_te, mut wrote_host) = (false, false);
    for (name, value) in headers {
        if name == header::TE {
            trailers_te |= value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
            continue;
        }
        if HOP_BY_HOP.contains(name)
            || FORWARDING_HEADERS.contains(&name)
            || named
                .iter()
                .any(|token| token.eq_ignore_ascii_case(name.as_str()))
        {
            continue;
        }
        wrote_host |= name == header::HOST;
        field(name.as_str().as_bytes(), &[value.as_bytes()]);
    }
    if trailers_te {
        field(b"te", &[b"trailers"]);
    }
    if let Some(client) = &forwarding.client {
        field(b"x-forwarded-for", &[client.as_bytes()]);
        field(b"x-real-ip", &[client.as_bytes()]);
    }
    field(b"x-forwarded-proto", &[forwarding.proto.as_bytes()]);
    field(b"x-forwarded-port", &[forwarding.port.as_bytes()]);
    let forwarded = forwarding.forwarded.as_bytes();
    if host.is_empty() {
        field(b"forwarded", &[forwarded]);
    } else {
        field(b"x-forwarded-host", &[host.as_bytes()]);
        field(
            b"forwarded",
            &[forwarded, b";host=\"", host.as_bytes(), b"\""],
        );
    }
    if !wrote_host {
        field(b"host", &[host.as_bytes()]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: `; `-separated
/// `name=value` pairs, possibly over several header lines), the first if repeated.
pub(crate) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests;
