//! The UDP receive loop, batched like Knot's and NSD's: `recvmmsg` takes up to [`BATCH`] queries
//! in one system call, the answers go back with one `sendmmsg`. Queries that need an upstream are
//! finished by their own task and sent alone.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tracing::debug;

use crate::packet_cache::PacketCache;
use crate::server::{Handler, Step};

/// Datagrams taken per system call.
const BATCH: usize = 32;
/// Room per datagram: queries are far smaller; a longer one is cut and answered FORMERR.
const DATAGRAM: usize = 4096;

/// Serves `socket` until the task is dropped.
pub(crate) async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let fd = socket.as_raw_fd();
    let mut buffers = vec![[0u8; DATAGRAM]; BATCH];
    let mut cache = PacketCache::default();
    let mut replies: Vec<(Vec<u8>, SockaddrStorage)> = Vec::with_capacity(BATCH);
    loop {
        if socket.readable().await.is_err() {
            continue;
        }
        let received = socket.try_io(Interest::READABLE, || {
            // Headers hold raw pointers (not Send), so they never live across an await.
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
            let mut slices: Vec<[IoSliceMut<'_>; 1]> = buffers
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let results = recvmmsg(
                fd,
                &mut headers,
                slices.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            )
            .map_err(io::Error::from)?;
            Ok(results
                .map(|m| (m.bytes, m.address))
                .collect::<Vec<(usize, Option<SockaddrStorage>)>>())
        });
        let received = match received {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => {
                debug!(%error, "dns: UDP receive");
                continue;
            }
        };
        let started = Instant::now();
        let snapshot = handler.snapshot();
        for (index, (bytes, peer)) in received.into_iter().enumerate() {
            let Some(peer) = peer else { continue };
            let query = &buffers[index][..bytes.min(DATAGRAM)];
            match handler.start_cached(query, &mut cache, &snapshot, started) {
                Step::Reply(reply) => replies.push((reply, peer)),
                Step::Ignore => {}
                Step::Pending(pending) => {
                    let Some(peer) = std_addr(&peer) else {
                        continue;
                    };
                    let socket = socket.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let reply = handler.complete(pending).await;
                        let _ = socket.send_to(&reply, peer).await;
                    });
                }
            }
        }
        send_all(&socket, &mut replies).await;
    }
}

/// Sends every reply, with `sendmmsg` while the socket takes them and one by one otherwise.
async fn send_all(socket: &UdpSocket, replies: &mut Vec<(Vec<u8>, SockaddrStorage)>) {
    if replies.is_empty() {
        return;
    }
    let sent = {
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(replies.len(), None);
        let slices: Vec<[IoSlice<'_>; 1]> =
            replies.iter().map(|(r, _)| [IoSlice::new(r)]).collect();
        let addresses: Vec<Option<SockaddrStorage>> =
            replies.iter().map(|(_, a)| Some(*a)).collect();
        let no_control: [ControlMessage<'_>; 0] = [];
        sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter(),
            addresses,
            no_control,
            MsgFlags::MSG_DONTWAIT,
        )
        .map(|results| results.count())
        .unwrap_or(0)
    };
    for (reply, peer) in replies.drain(..).skip(sent) {
        if let Some(peer) = std_addr(&peer)
            && let Err(error) = socket.send_to(&reply, peer).await
        {
            debug!(%error, %peer, "dns: UDP send");
        }
    }
}

fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}
