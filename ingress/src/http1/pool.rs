//! Idle upstream connections of one worker thread, keyed by endpoint address. Each proxy worker
//! is a current-thread runtime, so the pool is a thread-local: checkout and checkin are a
//! `RefCell` borrow and a `Vec` push or pop, never a lock, and a connection is reused by the
//! same thread whose reactor owns it. The newest idle connection is used first (its peer is the
//! least likely to have timed it out); one idle longer than the idle timeout is closed.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::task::{Context, Poll};

use capstan_proxy::now_ms;
use tokio::net::TcpStream;

/// Idle connections kept per endpoint per worker at most; more are closed on checkin.
const MAX_IDLE_PER_ENDPOINT: usize = 1024;

thread_local! {
    static IDLE: RefCell<HashMap<SocketAddr, Vec<Idle>>> = RefCell::new(HashMap::new());
}

#[derive(Debug)]
struct Idle {
    stream: TcpStream,
    since_ms: u64,
}

/// The newest usable idle connection to `addr`, if any. Connections the peer closed (or wrote
/// to unasked) while idle, and those idle for `idle_timeout_ms` or more, are closed.
pub(crate) fn checkout(addr: SocketAddr, idle_timeout_ms: u64) -> Option<TcpStream> {
    let now = now_ms();
    IDLE.with_borrow_mut(|idle| {
        let list = idle.get_mut(&addr)?;
        while let Some(candidate) = list.pop() {
            if now.saturating_sub(candidate.since_ms) < idle_timeout_ms
                && still_idle(&candidate.stream)
            {
                return Some(candidate.stream);
            }
        }
        None
    })
}

/// Returns a connection whose last response was read to its end.
pub(crate) fn checkin(addr: SocketAddr, stream: TcpStream) {
    let since_ms = now_ms();
    IDLE.with_borrow_mut(|idle| {
        let list = idle.entry(addr).or_default();
        if list.len() < MAX_IDLE_PER_ENDPOINT {
            list.push(Idle { stream, since_ms });
        }
    });
}

/// Closes this thread's connections idle for `idle_timeout_ms` or more, and those their peer
/// closed. Run periodically by each worker.
pub(crate) fn sweep(idle_timeout_ms: u64) {
    let now = now_ms();
    IDLE.with_borrow_mut(|idle| {
        idle.retain(|_, list| {
            list.retain(|c| {
                now.saturating_sub(c.since_ms) < idle_timeout_ms && still_idle(&c.stream)
            });
            !list.is_empty()
        });
    });
}

/// Idle connections this thread holds (for tests).
#[cfg(test)]
pub(crate) fn idle_count(addr: SocketAddr) -> usize {
    IDLE.with_borrow(|idle| idle.get(&addr).map_or(0, Vec::len))
}

/// An idle connection has nothing to read: readability means the peer closed it or sent bytes
/// nobody asked for. The reactor's cached readiness answers without a syscall when it is not
/// readable; when it is (often stale, from the last response), one non-blocking read decides.
fn still_idle(stream: &TcpStream) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match stream.poll_read_ready(&mut cx) {
        Poll::Pending => true,
        Poll::Ready(Err(_)) => false,
        Poll::Ready(Ok(())) => {
            let mut probe = [0u8; 1];
            matches!(stream.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        }
    }
}
