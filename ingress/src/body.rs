//! Streaming bodies in both directions: the request body as it goes upstream (counted per route;
//! buffered whole only when a retry or a size limit needs it), and the response body as it goes to the client, which carries the
//! request's [`Completion`] so counters, the endpoint's in-flight count and the access log are
//! settled exactly when the response ends or is abandoned.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use bytes::Bytes;
use capstan_table::RouteStats;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::completion::Completion;
use crate::http1::InlineBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body sent upstream.
#[derive(Debug)]
pub(crate) enum RequestBody {
    Empty,
    /// Buffered whole (so the request can be retried, or its size was checked).
    Full(Option<Bytes>),
    Stream {
        inner: Incoming,
        stats: Arc<RouteStats>,
    },
}

/// The body sent to the client: Capstan's own short answers, or the upstream's stream.
#[derive(Debug)]
pub(crate) struct ResponseBody {
    kind: Kind,
    completion: Option<Completion>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

/// An upstream's response body: from hyper's client, or read inline ([`crate::http1`]).
#[derive(Debug)]
pub(crate) enum UpstreamBody {
    Hyper(Incoming),
    Inline(InlineBody),
}

// === impl RequestBody ===

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream { inner, stats } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled
                    && let Some(data) = frame.data_ref()
                {
                    stats
                        .bytes_from_client
                        .fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(bytes) => bytes.is_none(),
            RequestBody::Stream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            RequestBody::Stream { inner, .. } => inner.size_hint(),
        }
    }
}

/// Reads a request body whole, up to `limit` bytes; `Ok(None)` when it is longer. Counts the
/// bytes on the route.
pub(crate) async fn buffer(
    mut body: Incoming,
    limit: u64,
    stats: &RouteStats,
) -> Result<Option<Bytes>, hyper::Error> {
    let mut buffered = bytes::BytesMut::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        if let Ok(data) = frame?.into_data() {
            stats
                .bytes_from_client
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            if (buffered.len() + data.len()) as u64 > limit {
                return Ok(None);
            }
            buffered.extend_from_slice(&data);
        }
    }
    Ok(Some(buffered.freeze()))
}

// === impl UpstreamBody ===

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(inner) => Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
            UpstreamBody::Inline(inner) => Pin::new(inner).poll_frame(cx).map_err(BoxError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(inner) => inner.is_end_stream(),
            UpstreamBody::Inline(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(inner) => inner.size_hint(),
            UpstreamBody::Inline(inner) => inner.size_hint(),
        }
    }
}

// === impl ResponseBody ===

impl ResponseBody {
    pub(crate) fn full(bytes: impl Into<Bytes>, completion: Option<Completion>) -> Self {
        let bytes = bytes.into();
        Self {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            completion,
        }
    }

    pub(crate) fn upstream(inner: UpstreamBody, completion: Completion) -> Self {
        Self {
            kind: Kind::Upstream(inner),
            completion: Some(completion),
        }
    }

    /// Empties a body of Capstan's own making and returns what it held; `None` for an upstream's.
    pub(crate) fn take_local(&mut self) -> Option<Bytes> {
        match &mut self.kind {
            Kind::Full(bytes) => Some(bytes.take().unwrap_or_default()),
            Kind::Upstream(_) => None,
        }
    }

    fn count(&mut self, bytes: usize) {
        if let Some(completion) = &mut self.completion {
            completion.bytes_sent += bytes as u64;
        }
    }

    /// The body ended as it should: settle now rather than when hyper drops it.
    fn finish(&mut self) {
        if let Some(mut completion) = self.completion.take() {
            completion.complete = true;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(inner) => Pin::new(inner).poll_frame(cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count(data.len());
                }
                // A body of known length is not polled again after its last frame.
                if this.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Err(_))) | Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(inner) => inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::IngressMetrics;

    #[test]
    fn a_known_length_body_settles_its_completion_after_its_last_frame() {
        let metrics = Arc::new(IngressMetrics::default());
        let mut completion = Completion::new(metrics.clone(), None);
        completion.status = 200;
        let mut body = std::pin::pin!(ResponseBody::full("hello", Some(completion)));
        let settled = |m: &IngressMetrics| m.unrouted().map(|(_, n)| n).sum::<u64>();
        assert_eq!(settled(&metrics), 0);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let frame = body.as_mut().poll_frame(&mut cx);
        assert!(matches!(frame, Poll::Ready(Some(Ok(_)))));
        assert!(body.is_end_stream());
        assert_eq!(settled(&metrics), 1, "settled without a further poll");
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        assert_eq!(settled(&metrics), 1, "and only once");
    }
}
