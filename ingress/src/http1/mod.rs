//! The inline HTTP/1.1 upstream client: the hot path for requests without a body (GET, HEAD,
//! and any bodiless request) to HTTP/1.1 upstreams. It runs on the request's own task, the way
//! nginx and Pingora drive upstreams: the request head is written, the response head read and
//! parsed, and the response body streamed from the socket by [`InlineBody`] as the downstream
//! connection polls it. No connection task, channel or lock sits between the two sides, and the
//! keep-alive pool is the worker thread's own ([`pool`]).
//!
//! Requests with bodies, protocol upgrades and h2c upstreams go through hyper's client instead
//! (full-duplex body streaming and HTTP/2 are its strengths).

mod body;
mod codec;
mod pool;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub(crate) use body::InlineBody;
use codec::parse_response_head_shared;
pub use codec::{
    Chunk, ChunkedDecoder, Framing, Parsed, ResponseHead, WireError, encode_request_head,
    encode_request_line, parse_response_head,
};
pub(crate) use pool::sweep;

use crate::IngressError;
use crate::headers::is_idempotent;

/// How the inline client connects and reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ClientSettings {
    pub connect_timeout: Duration,
    pub idle_timeout_ms: u64,
    /// The largest response head (and trailer section) accepted.
    pub max_head_bytes: usize,
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made: the request never left, another endpoint may be tried.
    Connect(std::io::Error),
    /// The exchange started and failed.
    Exchange(IngressError),
}

/// A bodiless request to send.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bodiless<'a> {
    pub method: &'a Method,
    /// The whole request head as it goes on the wire (see [`encode_request_head`]).
    pub head: &'a [u8],
}

/// Sends `request` to `addr` over a pooled connection or a new one, and returns the response
/// with its body still on the socket. A pooled connection that turns out dead before any
/// response byte arrives (the upstream closed it while idle) is replaced by a new one, once,
/// for methods safe to repeat.
pub(crate) async fn send(
    addr: SocketAddr,
    request: Bodiless<'_>,
    settings: ClientSettings,
) -> Result<Response<InlineBody>, SendError> {
    let head = request.head;
    let head_request = *request.method == Method::HEAD;
    if let Some(pooled) = pool::checkout(addr, settings.idle_timeout_ms) {
        match exchange(pooled, addr, head, head_request, settings).await {
            Ok(response) => return Ok(response),
            Err(Failure {
                error,
                answered: false,
            }) if is_idempotent(request.method) => {
                tracing::debug!(%addr, %error, "pooled upstream connection was closed; reconnecting");
            }
            Err(failure) => return Err(SendError::Exchange(failure.error)),
        }
    }
    let stream = connect(addr, settings.connect_timeout)
        .await
        .map_err(SendError::Connect)?;
    exchange(stream, addr, head, head_request, settings)
        .await
        .map_err(|failure| SendError::Exchange(failure.error))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A failed exchange; `answered` is whether any response byte had arrived.
struct Failure {
    error: IngressError,
    answered: bool,
}

async fn exchange(
    mut stream: TcpStream,
    addr: SocketAddr,
    head: &[u8],
    head_request: bool,
    settings: ClientSettings,
) -> Result<Response<InlineBody>, Failure> {
    let unanswered = |error| Failure {
        error,
        answered: false,
    };
    stream
        .write_all(head)
        .await
        .map_err(|e| unanswered(IngressError::UpstreamIo(e)))?;
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut answered = false;
    loop {
        buf.reserve(4 * 1024);
        match stream.read_buf(&mut buf).await {
            Err(error) => {
                let error = IngressError::UpstreamIo(error);
                return Err(Failure { error, answered });
            }
            Ok(0) => {
                let error = IngressError::UpstreamClosed;
                return Err(Failure { error, answered });
            }
            Ok(_) => answered = true,
        }
        let failed = |error| Failure {
            error,
            answered: true,
        };
        // Interim (1xx) responses are skipped: hyper's server cannot relay them.
        loop {
            // Frozen so the header values can share the buffer instead of copying it.
            let bytes = buf.split().freeze();
            let parsed = parse_response_head_shared(&bytes, head_request, settings.max_head_bytes)
                .map_err(|e| failed(IngressError::Upstream(e)))?;
            let Parsed::Complete { head, len } = parsed else {
                buf = BytesMut::from(bytes); // nothing shares it yet: no copy
                break;
            };
            let rest = bytes.slice(len..);
            if head.status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(failed(IngressError::Upstream(WireError::Head)));
            }
            if head.status.is_informational() {
                buf = BytesMut::from(&rest[..]);
                if buf.is_empty() {
                    break;
                }
                continue;
            }
            let mut response = Response::new(InlineBody::new(
                stream,
                addr,
                rest,
                head.framing,
                head.reusable,
                settings.max_head_bytes,
            ));
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            *response.headers_mut() = head.headers;
            return Ok(response);
        }
    }
}

#[cfg(test)]
#[path = "client_tests.rs"]
mod tests;
