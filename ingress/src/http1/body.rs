//! The body of a response read by the inline client, streamed as it arrives: `Content-Length`
//! bytes, the chunked coding decoded (trailers passed on), or everything until the upstream
//! closes. Once the body is read to its end on a reusable connection, the connection goes back
//! to the worker's pool; a body abandoned midway closes it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;

use super::codec::{Chunk, ChunkedDecoder, Framing};
use super::pool;
use crate::IngressError;

/// Bytes asked of the socket per read.
const READ_SIZE: usize = 16 * 1024;

/// An upstream response body, read on the request's own task.
#[derive(Debug)]
pub(crate) struct InlineBody {
    conn: Option<TcpStream>,
    addr: SocketAddr,
    /// Body bytes that arrived with the head, passed on as they are (no copy).
    pending: Bytes,
    /// Bytes read since, not yet passed on.
    buf: BytesMut,
    state: State,
    reusable: bool,
    max_trailer_bytes: usize,
}

#[derive(Debug)]
enum State {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

impl InlineBody {
    pub(super) fn new(
        conn: TcpStream,
        addr: SocketAddr,
        mut pending: Bytes,
        framing: Framing,
        reusable: bool,
        max_trailer_bytes: usize,
    ) -> Self {
        let state = match framing {
            Framing::Empty | Framing::Length(0) => State::Done,
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => State::UntilClose,
        };
        // The chunked decoder works on a mutable buffer.
        let buf = match framing {
            Framing::Chunked => BytesMut::from(&std::mem::take(&mut pending)[..]),
            _ => BytesMut::new(),
        };
        let mut body = Self {
            conn: Some(conn),
            addr,
            pending,
            buf,
            state,
            reusable,
            max_trailer_bytes,
        };
        if matches!(body.state, State::Done) {
            body.finish();
        }
        body
    }

    /// The message is read to its end: a reusable connection with nothing left over goes back
    /// to the pool, any other is closed.
    fn finish(&mut self) {
        self.state = State::Done;
        let conn = self.conn.take();
        if let Some(conn) = conn
            && self.reusable
            && self.pending.is_empty()
            && self.buf.is_empty()
        {
            pool::checkin(self.addr, conn);
        }
    }

    fn fail(&mut self, error: IngressError) -> Poll<Option<Result<Frame<Bytes>, IngressError>>> {
        self.state = State::Done;
        self.conn = None;
        Poll::Ready(Some(Err(error)))
    }
}

impl Body for InlineBody {
    type Data = Bytes;
    type Error = IngressError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, IngressError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !this.pending.is_empty() || !this.buf.is_empty() => {
                    let take = usize::try_from(*left).unwrap_or(usize::MAX);
                    let data = if this.pending.is_empty() {
                        let take = take.min(this.buf.len());
                        this.buf.split_to(take).freeze()
                    } else {
                        let take = take.min(this.pending.len());
                        this.pending.split_to(take)
                    };
                    *left -= data.len() as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !this.pending.is_empty() => {
                    let data = std::mem::take(&mut this.pending);
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !this.buf.is_empty() => {
                    let data = this.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => {
                    match decoder.decode(&mut this.buf, this.max_trailer_bytes) {
                        Err(error) => return this.fail(IngressError::Upstream(error)),
                        Ok(Chunk::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(Chunk::End(trailers)) => {
                            this.finish();
                            return Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))));
                        }
                        Ok(Chunk::NeedMore) => {}
                    }
                }
                State::Length(_) | State::UntilClose => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return this.fail(IngressError::UpstreamClosed);
            };
            this.buf.reserve(READ_SIZE);
            match ready!(poll_read_buf(Pin::new(conn), cx, &mut this.buf)) {
                Err(error) => return this.fail(IngressError::UpstreamIo(error)),
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(IngressError::UpstreamClosed),
                Ok(_) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Done => SizeHint::with_exact(0),
            State::Length(left) => SizeHint::with_exact(left),
            State::Chunked(_) | State::UntilClose => SizeHint::default(),
        }
    }
}
