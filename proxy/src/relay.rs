//! Bidirectional byte relay with half-close, byte counters and an idle timeout.
//!
//! Each direction starts with a small userspace buffer, which suits request/response traffic and
//! costs no extra syscalls per connection. A direction that keeps filling its buffer (a bulk
//! transfer) switches to `splice(2)` through a pipe, so its bytes never cross into userspace.

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::now_ms;

/// Userspace buffer per direction.
const COPY_BUFFER: usize = 16 * 1024;
/// Consecutive full buffers after which a direction switches to splice.
const SPLICE_AFTER_FULL_READS: u32 = 4;
/// Requested pipe capacity for splicing (the kernel may grant less).
const PIPE_SIZE: usize = 256 * 1024;

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
    let finished = AtomicBool::new(false);
    // The client usually sent its first bytes while we connected: read them at once. A fresh
    // upstream has sent nothing yet: wait for readiness instead of a read that would block.
    let up = pump(&client, &upstream, from_client, &activity, &finished, true);
    let down = pump(&upstream, &client, to_client, &activity, &finished, false);
    tokio::select! {
        result = async { tokio::try_join!(up, down) } => match result {
            Ok(_) => RelayEnd::Closed,
            Err(error) => RelayEnd::Error(error),
        },
        () = idle_expired(&activity, idle) => RelayEnd::Idle,
    }
}

/// One direction: `from` → `to` until EOF, then a write shutdown of `to`.
///
/// `finished` is shared by both directions: the one that ends second skips its shutdown, since
/// closing both sockets right after sends the same FIN.
async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    finished: &AtomicBool,
    data_expected: bool,
) -> io::Result<()> {
    if !data_expected {
        from.readable().await?;
    }
    // Not zeroed: reads fill the spare capacity directly.
    let mut buffer = Vec::with_capacity(COPY_BUFFER);
    let mut full_reads = 0;
    loop {
        buffer.clear();
        let n = read(from, &mut buffer).await?;
        if n == 0 {
            return end_of_stream(to, finished);
        }
        moved(bytes, activity, n);
        write_all(to, &buffer).await?;
        full_reads = if n == COPY_BUFFER { full_reads + 1 } else { 0 };
        if full_reads == SPLICE_AFTER_FULL_READS {
            // A bulk transfer: hand it to the kernel. Without a pipe, keep copying.
            if let Ok(pipe) = Pipe::new() {
                drop(buffer);
                return splice_pump(from, to, &pipe, bytes, activity, finished).await;
            }
        }
    }
}

/// `from` → pipe → `to` with `splice(2)`, until EOF.
async fn splice_pump(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
    activity: &AtomicU64,
    finished: &AtomicBool,
) -> io::Result<()> {
    let flags = SpliceFlags::NONBLOCK | SpliceFlags::MOVE;
    loop {
        let n = loop {
            from.readable().await?;
            let spliced = from.try_io(Interest::READABLE, || {
                rustix::pipe::splice(from, None, &pipe.write, None, pipe.size, flags)
                    .map_err(io::Error::from)
            });
            match spliced {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return end_of_stream(to, finished);
        }
        moved(bytes, activity, n);
        // Drain the pipe completely before reading again, so it never fills.
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            let spliced = to.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(&pipe.read, None, to, None, left, flags)
                    .map_err(io::Error::from)
            });
            match spliced {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads into the spare capacity of `buffer` (which must be empty).
async fn read(stream: &TcpStream, buffer: &mut Vec<u8>) -> io::Result<usize> {
    loop {
        match stream.try_read_buf(buffer) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.readable().await?,
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(stream: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match stream.try_write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Forwards an EOF as a FIN, unless the other direction already ended (then both sockets are
/// about to be closed, which sends it).
fn end_of_stream(to: &TcpStream, finished: &AtomicBool) -> io::Result<()> {
    if finished.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    close_write(to)
}

/// Sends a FIN. The peer may already be gone, which is not an error here.
fn close_write(stream: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(stream).shutdown(Shutdown::Write) {
        Err(e) if e.kind() != io::ErrorKind::NotConnected => Err(e),
        _ => Ok(()),
    }
}

fn moved(bytes: &AtomicU64, activity: &AtomicU64, n: usize) {
    bytes.fetch_add(n as u64, Ordering::Relaxed);
    activity.store(now_ms(), Ordering::Relaxed);
}

async fn idle_expired(activity: &AtomicU64, idle: Duration) {
    let idle_ms = capstan_table::millis(idle);
    loop {
        let deadline = activity.load(Ordering::Relaxed).saturating_add(idle_ms);
        let now = now_ms();
        if now >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(deadline - now)).await;
    }
}

/// A non-blocking pipe used as the in-kernel buffer of a splicing direction.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
            .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
            .unwrap_or(64 * 1024);
        Ok(Self { read, write, size })
    }
}
