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
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The headers [`set_forwarded`] sets: what a client sent under these names goes upstream only
/// as [`forwarded_fields`] decides (kept or extended from a trusted proxy, replaced otherwise).
static FORWARDING_HEADERS: [&HeaderName; 7] = [
    &X_FORWARDED_FOR,
    &X_REAL_IP,
    &X_FORWARDED_PROTO,
    &X_FORWARDED_HOST,
    &X_FORWARDED_PORT,
    &header::FORWARDED,
    &X_REQUEST_ID,
];

/// The forwarding headers of one request, in the order they are written upstream; `None`
/// removes the header.
#[derive(Clone, Debug)]
pub(crate) struct ForwardedFields {
    fields: [(&'static HeaderName, Option<HeaderValue>); 7],
}

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
    /// The client is a trusted proxy (`--trusted-proxies`): its `X-Forwarded-*`, `Forwarded`
    /// and `X-Request-Id` are kept and extended rather than replaced.
    trusted: bool,
}

impl Forwarding {
    pub(crate) fn new(client: IpAddr, proto: &'static str, port: u16, trusted: bool) -> Self {
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
            trusted,
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

/// The forwarding headers for one request: `X-Forwarded-For/-Proto/-Host/-Port`, `X-Real-IP`,
/// `Forwarded` (RFC 7239) and `X-Request-Id`; `host` is the request's host as the client sent it
/// (port included). From an untrusted client every value is Capstan's own (a client must not
/// choose the address a backend sees) and the request ID is new. From a trusted proxy,
/// `X-Forwarded-For` and `Forwarded` are extended with the proxy's address, `X-Real-IP` is the
/// first address it reported, and its `X-Forwarded-Proto/-Host/-Port` and `X-Request-Id` are kept
/// (ingress-nginx's `use-forwarded-headers` with `proxy-real-ip-cidr`).
pub(crate) fn forwarded_fields(
    headers: &HeaderMap,
    forwarding: &Forwarding,
    host: &str,
) -> ForwardedFields {
    let trusted = forwarding.trusted;
    let kept = |name: &HeaderName| trusted.then(|| headers.get(name).cloned()).flatten();
    let prior = |name: &HeaderName| -> Option<String> {
        if !trusted {
            return None;
        }
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        (!values.is_empty()).then(|| values.join(", "))
    };
    let client = forwarding.client.clone();
    let client_text = client.as_ref().and_then(|c| c.to_str().ok()).unwrap_or("");
    let prior_for = prior(&X_FORWARDED_FOR);
    let (xff, real_ip) = match &prior_for {
        Some(chain) => (
            HeaderValue::from_str(&format!("{chain}, {client_text}")).ok(),
            chain
                .split(',')
                .next()
                .and_then(|first| HeaderValue::from_str(first.trim()).ok()),
        ),
        None => (client.clone(), client.clone()),
    };
    let proto = kept(&X_FORWARDED_PROTO).unwrap_or(HeaderValue::from_static(forwarding.proto));
    let port = kept(&X_FORWARDED_PORT).unwrap_or_else(|| forwarding.port.clone());
    // The request's own Host value when that is the host (a shared copy, no allocation).
    let forwarded_host = kept(&X_FORWARDED_HOST).or_else(|| {
        let from_header = headers
            .get(header::HOST)
            .filter(|v| v.as_bytes() == host.as_bytes());
        from_header
            .cloned()
            .or_else(|| (!host.is_empty()).then(|| HeaderValue::from_str(host).ok())?)
    });
    let forwarded = forwarded_value(prior(&header::FORWARDED), &forwarding.forwarded, host);
    let request_id = kept(&X_REQUEST_ID).or_else(new_request_id);
    ForwardedFields {
        fields: [
            (&X_FORWARDED_FOR, xff),
            (&X_REAL_IP, real_ip.or(client)),
            (&X_FORWARDED_PROTO, Some(proto)),
            (&X_FORWARDED_PORT, Some(port)),
            (&X_FORWARDED_HOST, forwarded_host),
            (&header::FORWARDED, forwarded),
            (&X_REQUEST_ID, request_id),
        ],
    }
}

/// `Forwarded` (RFC 7239): the trusted chain, then this hop (`for=…;proto=…;host="…"`), written
/// into one buffer that becomes the value without another copy.
fn forwarded_value(chain: Option<String>, ours: &str, host: &str) -> Option<HeaderValue> {
    let mut value =
        Vec::with_capacity(chain.as_ref().map_or(0, |c| c.len() + 2) + ours.len() + host.len() + 8);
    if let Some(chain) = &chain {
        value.extend_from_slice(chain.as_bytes());
        value.extend_from_slice(b", ");
    }
    value.extend_from_slice(ours.as_bytes());
    if !host.is_empty() {
        value.extend_from_slice(b";host=\"");
        value.extend_from_slice(host.as_bytes());
        value.push(b'"');
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(value)).ok()
}

/// A new `X-Request-Id`: 128 random bits as 32 lowercase hex digits (ingress-nginx's
/// `$req_id`), formatted without the formatting machinery.
fn new_request_id() -> Option<HeaderValue> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bits = fastrand::u128(..);
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&text).ok()
}

/// Sets (or removes) the forwarding headers in a header map, for hyper's client.
pub(crate) fn set_forwarded(headers: &mut HeaderMap, fields: &ForwardedFields) {
    headers.reserve(fields.fields.len());
    for (name, value) in &fields.fields {
        match value {
            Some(value) => {
                headers.insert(*name, value.clone());
            }
            None => {
                headers.remove(*name);
            }
        }
    }
}

/// The request head the inline client sends, written straight from the client's headers: the
/// same header set as [`strip_hop_by_hop`], [`set_forwarded`] and a default `Host` make of a
/// `HeaderMap` (for a request that is not an upgrade), without changing or rehashing one.
pub(crate) fn encode_upstream_head(
    method: &Method,
    target: &str,
    headers: &HeaderMap,
    fields: &ForwardedFields,
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
    // The names `Connection` lists (RFC 9110 §7.6.1); no allocation when it lists none.
    let named: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .collect();
    let listed = |name: &HeaderName| named.iter().any(|t| t.eq_ignore_ascii_case(name.as_str()));
    let (mut trailers_te, mut wrote_host) = (false, false);
    for (name, value) in headers {
        if name == header::TE {
            trailers_te |= value.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
            });
            continue;
        }
        if HOP_BY_HOP.contains(name) || FORWARDING_HEADERS.contains(&name) || listed(name) {
            continue;
        }
        wrote_host |= name == header::HOST;
        field(name.as_str().as_bytes(), &[value.as_bytes()]);
    }
    if trailers_te {
        field(b"te", &[b"trailers"]);
    }
    for (name, value) in &fields.fields {
        if let Some(value) = value {
            field(name.as_str().as_bytes(), &[value.as_bytes()]);
        }
    }
    if !wrote_host {
        field(b"host", &[host.as_bytes()]);
    }
    out.extend_from_slice(b"\r\n");
}

/// The value of cookie `name` in the request's `Cookie` headers (RFC 6265 §5.4: `; `-separated
/// `name=value` pairs, possibly over several header lines), the first if repeated.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
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
