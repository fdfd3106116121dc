//! Bidirectional byte relay with half-close, byte counters and an idle timeout.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::now_ms;

/// Per-direction buffer size: large enough that bulk transfers are not syscall-bound.
const BUFFER: usize = 64 * 1024;

/// How a relay ended.
#[derive(Debug)]
pub(crate) enum RelayEnd {
    /// Both directions finished (each side half-closed in turn).
    Closed,
    /// No byte moved in either direction for the idle timeout.
    Idle,
    Error(io::Error),
}

/// Copies bytes both ways until both directions are closed, an error occurs, or nothing moves for
/// `idle`. An EOF from one side is forwarded as a write shutdown (FIN) to the other, which may keep
/// sending: TCP half-close is preserved.
pub(crate) async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    from_client: &AtomicU64,
    to_client: &AtomicU64,
) -> RelayEnd {
    let activity = AtomicU64::new(now_ms());
    let mut client = Counted {
        inner: client,
        read_bytes: from_client,
        activity: &activity,
    };
    let mut upstream = Counted {
        inner: upstream,
        read_bytes: to_client,
        activity: &activity,
    };
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut upstream, BUFFER, BUFFER);
    tokio::select! {
        result = copy => match result {
            Ok(_) => RelayEnd::Closed,
            Err(error) => RelayEnd::Error(error),
        },
        () = idle_expired(&activity, idle) => RelayEnd::Idle,
    }
}

async fn idle_expired(activity: &AtomicU64, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let deadline = activity.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// A stream that counts the bytes read from it and records the time of the last read.
struct Counted<'a> {
    inner: TcpStream,
    read_bytes: &'a AtomicU64,
    activity: &'a AtomicU64,
}

impl AsyncRead for Counted<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read_bytes.fetch_add(read as u64, Ordering::Relaxed);
            self.activity.store(now_ms(), Ordering::Relaxed);
        }
        poll
    }
}

impl AsyncWrite for Counted<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
