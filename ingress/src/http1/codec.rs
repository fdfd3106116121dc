//! HTTP/1.1 wire format of the inline upstream client, pure: the request head Capstan writes,
//! the response head it reads (status, headers, and how the body is framed, RFC 9112 §6.3), and
//! the chunked transfer coding (RFC 9112 §7.1), decoded incrementally from a buffer.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

use crate::headers::HOP_BY_HOP;

/// Headers a response head may carry at most (hyper's server default is 100).
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
/// A chunk-size line (size and extensions) longer than this is refused.
const MAX_CHUNK_LINE: usize = 4096;

/// What was wrong with an upstream response (carried by [`crate::IngressError::Upstream`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    Head,
    HeadTooLarge,
    ContentLength,
    Chunked,
    TrailersTooLarge,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WireError::Head => "malformed response head",
            WireError::HeadTooLarge => "response head too large",
            WireError::ContentLength => "invalid or conflicting Content-Length",
            WireError::Chunked => "malformed chunked body",
            WireError::TrailersTooLarge => "trailers too large",
        })
    }
}

/// How a response body ends (RFC 9112 §6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// No body: a response to HEAD, or 1xx, 204, 304.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the upstream closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request once this response's body is read.
    pub reusable: bool,
}

/// The outcome of parsing what has arrived so far.
#[derive(Debug)]
pub enum Parsed {
    /// More bytes are needed.
    Partial,
    /// A complete head of `len` bytes.
    Complete { head: ResponseHead, len: usize },
}

/// Writes `METHOD target HTTP/1.1` and its line end.
pub fn encode_request_line(method: &Method, target: &str, out: &mut BytesMut) {
    out.extend_from_slice(method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// Writes a request head: request line, headers as given, empty line. The request has no body
/// (the inline client only carries bodiless requests), so no framing header is added.
pub fn encode_request_head(method: &Method, target: &str, headers: &HeaderMap, out: &mut BytesMut) {
    let size = headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>();
    out.reserve(method.as_str().len() + target.len() + size + 16);
    encode_request_line(method, target, out);
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Parses a response head from the start of `buf`. `head_request` says the request was HEAD,
/// whose response has no body whatever its headers say. A buffer longer than `max_bytes` with
/// no complete head is [`WireError::HeadTooLarge`].
pub fn parse_response_head(
    buf: &[u8],
    head_request: bool,
    max_bytes: usize,
) -> Result<Parsed, WireError> {
    parse_head(buf, None, head_request, max_bytes)
}

/// [`parse_response_head`] where `buf` is `shared`'s bytes, so header values can share them.
pub(crate) fn parse_response_head_shared(
    shared: &Bytes,
    head_request: bool,
    max_bytes: usize,
) -> Result<Parsed, WireError> {
    parse_head(shared, Some(shared), head_request, max_bytes)
}

fn parse_head(
    buf: &[u8],
    shared: Option<&Bytes>,
    head_request: bool,
    max_bytes: usize,
) -> Result<Parsed, WireError> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
            return Err(WireError::HeadTooLarge);
        }
        Ok(httparse::Status::Partial) => return Ok(Parsed::Partial),
        Err(httparse::Error::TooManyHeaders) => return Err(WireError::HeadTooLarge),
        Err(_) => return Err(WireError::Head),
    };
    if len > max_bytes {
        return Err(WireError::HeadTooLarge);
    }
    let code = response.code.ok_or(WireError::Head)?;
    let status = StatusCode::from_u16(code).map_err(|_| WireError::Head)?;
    let version = match response.version {
        Some(1) => Version::HTTP_11,
        Some(0) => Version::HTTP_10,
        _ => return Err(WireError::Head),
    };
    // Hop-by-hop fields describe this connection only: they decide framing and reuse here and
    // are kept apart, so the headers passed on never carry them.
    let mut headers = HeaderMap::with_capacity(response.headers.len());
    let mut hop = HeaderMap::new();
    for parsed in response.headers.iter() {
        let name = HeaderName::from_bytes(parsed.name.as_bytes()).map_err(|_| WireError::Head)?;
        let value = match shared {
            // The value's bytes are a range of `shared`: sliced, not copied.
            Some(shared) => HeaderValue::from_maybe_shared(shared.slice_ref(parsed.value)),
            None => HeaderValue::from_bytes(parsed.value),
        }
        .map_err(|_| WireError::Head)?;
        if HOP_BY_HOP.contains(&name) {
            hop.append(name, value);
        } else {
            headers.append(name, value);
        }
    }
    let (framing, framing_reusable) = framing(status, head_request, &hop, &headers)?;
    let reusable = framing_reusable && keep_alive(version, &hop);
    remove_connection_named(&hop, &mut headers);
    Ok(Parsed::Complete {
        head: ResponseHead {
            status,
            version,
            headers,
            framing,
            reusable,
        },
        len,
    })
}

/// RFC 9112 §6.3, for a response: the body's framing, and whether it leaves the connection in
/// a state to be reused.
fn framing(
    status: StatusCode,
    head_request: bool,
    hop: &HeaderMap,
    headers: &HeaderMap,
) -> Result<(Framing, bool), WireError> {
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok((Framing::Empty, true));
    }
    if hop.contains_key(header::TRANSFER_ENCODING) {
        let last = hop
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|coding| !coding.is_empty());
        let chunked = last.is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        // Transfer-Encoding with Content-Length is a smuggling shape: read by the coding, then
        // close (§6.1).
        let alone = !headers.contains_key(header::CONTENT_LENGTH);
        return Ok(if chunked {
            (Framing::Chunked, alone)
        } else {
            (Framing::UntilClose, false)
        });
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        for item in value.as_bytes().split(|&b| b == b',') {
            let item = item.trim_ascii();
            if item.is_empty() || item.len() > 19 || !item.iter().all(u8::is_ascii_digit) {
                return Err(WireError::ContentLength);
            }
            let parsed: u64 = std::str::from_utf8(item)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(WireError::ContentLength)?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(WireError::ContentLength);
            }
            length = Some(parsed);
        }
    }
    Ok(match length {
        Some(length) => (Framing::Length(length), true),
        None => (Framing::UntilClose, false),
    })
}

/// Removes the headers a `Connection` field names (RFC 9110 §7.6.1).
fn remove_connection_named(hop: &HeaderMap, headers: &mut HeaderMap) {
    for value in hop.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            if token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close") {
                continue;
            }
            if let Ok(name) = HeaderName::from_bytes(token) {
                headers.remove(name);
            }
        }
    }
}

/// HTTP/1.1 keeps the connection unless `Connection: close`; HTTP/1.0 only with `keep-alive`.
fn keep_alive(version: Version, headers: &HeaderMap) -> bool {
    let token = |wanted: &str| {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(wanted.as_bytes()))
    };
    match version {
        Version::HTTP_11 => !token("close"),
        _ => token("keep-alive") && !token("close"),
    }
}

/// One step of a chunked body.
#[derive(Debug, PartialEq, Eq)]
pub enum Chunk {
    /// Body bytes.
    Data(Bytes),
    /// The buffer holds no complete next step: read more.
    NeedMore,
    /// The last chunk and the trailer section are read; trailers if there were any.
    End(Option<HeaderMap>),
}

/// Incremental decoder of the chunked transfer coding. Framing bytes are consumed from the
/// buffer as they are decoded; data is split off without copying.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: ChunkState,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    #[default]
    Size,
    /// Inside a chunk with this many bytes left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: expecting trailer fields or the final CRLF.
    Trailers,
    Done,
}

impl ChunkedDecoder {
    /// Whether the final chunk and trailers have been decoded.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes the next step from `buf`. `max_trailer_bytes` bounds the trailer section.
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        max_trailer_bytes: usize,
    ) -> Result<Chunk, WireError> {
        loop {
            match self.state {
                ChunkState::Size => {
                    let Some(line_end) = find_lf(buf, MAX_CHUNK_LINE)? else {
                        return Ok(Chunk::NeedMore);
                    };
                    let size = chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 1);
                    self.state = if size == 0 {
                        ChunkState::Trailers
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Chunk::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                    return Ok(Chunk::Data(data));
                }
                ChunkState::DataEnd => match buf.first() {
                    None => return Ok(Chunk::NeedMore),
                    Some(b'\n') => {
                        buf.advance(1);
                        self.state = ChunkState::Size;
                    }
                    Some(b'\r') => match buf.get(1) {
                        None => return Ok(Chunk::NeedMore),
                        Some(b'\n') => {
                            buf.advance(2);
                            self.state = ChunkState::Size;
                        }
                        Some(_) => return Err(WireError::Chunked),
                    },
                    Some(_) => return Err(WireError::Chunked),
                },
                ChunkState::Trailers => return self.trailers(buf, max_trailer_bytes),
                ChunkState::Done => return Ok(Chunk::End(None)),
            }
        }
    }

    /// The trailer section: field lines up to an empty line, parsed only once complete.
    fn trailers(&mut self, buf: &mut BytesMut, max_bytes: usize) -> Result<Chunk, WireError> {
        if buf.starts_with(b"\r\n") || buf.starts_with(b"\n") {
            buf.advance(if buf[0] == b'\r' { 2 } else { 1 });
            self.state = ChunkState::Done;
            return Ok(Chunk::End(None));
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        match httparse::parse_headers(buf, &mut slots) {
            Ok(httparse::Status::Complete((len, fields))) => {
                if len > max_bytes {
                    return Err(WireError::TrailersTooLarge);
                }
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for field in fields {
                    let name = HeaderName::from_bytes(field.name.as_bytes())
                        .map_err(|_| WireError::Chunked)?;
                    let value =
                        HeaderValue::from_bytes(field.value).map_err(|_| WireError::Chunked)?;
                    trailers.append(name, value);
                }
                buf.advance(len);
                self.state = ChunkState::Done;
                Ok(Chunk::End(Some(trailers)))
            }
            Ok(httparse::Status::Partial) if buf.len() > max_bytes => {
                Err(WireError::TrailersTooLarge)
            }
            Ok(httparse::Status::Partial) => Ok(Chunk::NeedMore),
            Err(httparse::Error::TooManyHeaders) => Err(WireError::TrailersTooLarge),
            Err(_) => Err(WireError::Chunked),
        }
    }
}

/// The position of the first LF, refusing lines longer than `max`.
fn find_lf(buf: &[u8], max: usize) -> Result<Option<usize>, WireError> {
    match buf.iter().take(max + 1).position(|&b| b == b'\n') {
        Some(at) => Ok(Some(at)),
        None if buf.len() > max => Err(WireError::Chunked),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ] [CR]`: hex digits (at most 16), then optional whitespace and
/// extensions, which are ignored.
fn chunk_size(line: &[u8]) -> Result<u64, WireError> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > 16 {
        return Err(WireError::Chunked);
    }
    let rest = &line[digits..];
    let rest = rest.trim_ascii_start();
    if !rest.is_empty() && rest[0] != b';' {
        return Err(WireError::Chunked);
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| WireError::Chunked)?;
    u64::from_str_radix(text, 16).map_err(|_| WireError::Chunked)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
