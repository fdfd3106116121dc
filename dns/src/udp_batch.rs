//! The UDP receive loop, batched like Knot's and NSD's: `recvmmsg` takes up to [`BATCH`] queries
//! in one system call, the answers go back with one `sendmmsg`. Queries that need an upstream are
//! finished by their own task and sent alone.
//!
//! On a socket bound to the wildcard address each query's destination address is received with
//! it (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and its answer is sent from that address, as CoreDNS's
//! and Knot's are: a resolver discards an answer from any other address, and the route back to
//! a pod may well prefer another address of the node (a cluster DNS ClusterIP held by the node,
//! a NodePort address, a secondary address).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Instant;

use capstan_sockets::pktinfo::{self, SourceInfo, std_addr};
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

/// One answer to send: bytes, client, and the address the query was sent to (`None`: the
/// socket's own, on a socket bound to one address).
type Reply = (Vec<u8>, SockaddrStorage, Option<IpAddr>);

/// Serves `socket` until the task is dropped.
pub(crate) async fn serve_udp(socket: Arc<UdpSocket>, handler: Arc<Handler>) {
    let fd = socket.as_raw_fd();
    let wildcard = socket.local_addr().is_ok_and(|a| a.ip().is_unspecified());
    let mut buffers = vec![[0u8; DATAGRAM]; BATCH];
    let mut cache = PacketCache::default();
    let mut replies: Vec<Reply> = Vec::with_capacity(BATCH);
    loop {
        if socket.readable().await.is_err() {
            continue;
        }
        let received = socket.try_io(Interest::READABLE, || {
            // Headers hold raw pointers (not Send), so they never live across an await.
            let control = wildcard.then(pktinfo::control_space);
            let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, control);
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
                .map(|m| {
                    let local = m
                        .cmsgs()
                        .ok()
                        .and_then(|mut c| c.find_map(pktinfo::destination));
                    (m.bytes, m.address, local)
                })
                .collect::<Vec<(usize, Option<SockaddrStorage>, Option<IpAddr>)>>())
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
        for (index, (bytes, peer, local)) in received.into_iter().enumerate() {
            let Some(peer) = peer else { continue };
            let query = &buffers[index][..bytes.min(DATAGRAM)];
            match handler.start_cached(query, &mut cache, &snapshot, started) {
                Step::Reply(reply) => replies.push((reply, peer, local)),
                Step::Ignore => {}
                Step::Pending(pending) => {
                    let socket = socket.clone();
                    let handler = handler.clone();
                    tokio::spawn(async move {
                        let reply = handler.complete(pending).await;
                        if let Err(error) = send_one(&socket, &reply, peer, local).await {
                            debug!(%error, "dns: UDP send");
                        }
                    });
                }
            }
        }
        send_all(&socket, &mut replies).await;
    }
}

/// Sends one answer from `local` (if known), waiting for the socket to take it.
async fn send_one(
    socket: &UdpSocket,
    reply: &[u8],
    peer: SockaddrStorage,
    local: Option<IpAddr>,
) -> io::Result<()> {
    let peer = std_addr(&peer).ok_or_else(|| io::Error::other("no peer address"))?;
    pktinfo::send_from(socket, reply, peer, local)
        .await
        .map(drop)
}

/// Sends every reply: `sendmmsg` per source address (the control message is shared by a
/// batch) while the socket takes them, and one by one otherwise.
async fn send_all(socket: &UdpSocket, replies: &mut Vec<Reply>) {
    while let Some(&(_, _, local)) = replies.first() {
        let batch: Vec<Reply>;
        (batch, *replies) = replies.drain(..).partition(|(_, _, l)| *l == local);
        let sent = send_batch(socket, &batch, local);
        for (reply, peer, local) in batch.into_iter().skip(sent) {
            if let Err(error) = send_one(socket, &reply, peer, local).await {
                debug!(%error, peer = ?std_addr(&peer), "dns: UDP send");
            }
        }
    }
}

/// One `sendmmsg` of replies sharing their source; returns how many the socket took.
fn send_batch(socket: &UdpSocket, batch: &[Reply], local: Option<IpAddr>) -> usize {
    let Some((_, first_peer, _)) = batch.first() else {
        return 0;
    };
    let peer_v6 = first_peer.as_sockaddr_in6().is_some();
    let info = local.map(|local| SourceInfo::new(local, peer_v6));
    let control: Vec<ControlMessage<'_>> = info.iter().map(SourceInfo::message).collect();
    let space = local.map(|_| pktinfo::control_space());
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), space);
    let slices: Vec<[IoSlice<'_>; 1]> = batch.iter().map(|(r, _, _)| [IoSlice::new(r)]).collect();
    let addresses: Vec<Option<SockaddrStorage>> = batch.iter().map(|(_, a, _)| Some(*a)).collect();
    sendmmsg(
        socket.as_raw_fd(),
        &mut headers,
        slices.iter(),
        addresses,
        control,
        MsgFlags::MSG_DONTWAIT,
    )
    .map(|results| results.count())
    .unwrap_or(0)
}
