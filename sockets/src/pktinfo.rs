//! UDP answered from the address it was sent to. A socket bound to the wildcard address learns
//! each datagram's destination (`IP_PKTINFO` / `IPV6_RECVPKTINFO`) and sends the answer from it,
//! as CoreDNS, Knot and kube-proxy's kernel path (through conntrack) do: a resolver or any
//! connected UDP client discards an answer from another address, and the route back may well
//! prefer another address of the node (a ClusterIP held by the node, a NodePort address, a
//! secondary address).

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd};

use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Asks the kernel to tell each datagram's destination address (set before `bind`).
pub fn receive_destination(socket: &impl AsFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        // Also covers IPv4 on a dual-stack socket (as v4-mapped addresses).
        setsockopt(socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// Room for the packet-info control message of one received datagram.
pub fn control_space() -> Vec<u8> {
    nix::cmsg_space!(libc::in6_pktinfo)
}

/// The destination address of a received datagram, from its packet-info control message.
pub fn destination(message: ControlMessageOwned) -> Option<IpAddr> {
    match message {
        ControlMessageOwned::Ipv4PacketInfo(info) => {
            Some(IpAddr::V4(u32::from_be(info.ipi_addr.s_addr).into()))
        }
        ControlMessageOwned::Ipv6PacketInfo(info) => {
            Some(IpAddr::V6(info.ipi6_addr.s6_addr.into()))
        }
        _ => None,
    }
}

/// The packet-info control message that makes a datagram leave from one local address.
pub enum SourceInfo {
    V4(libc::in_pktinfo),
    V6(libc::in6_pktinfo),
}

impl SourceInfo {
    /// `peer_v6`: the family of the peer's socket address (a dual-stack socket answers IPv4
    /// clients as v4-mapped, so the source must be v4-mapped too).
    pub fn new(local: IpAddr, peer_v6: bool) -> Self {
        match (local, peer_v6) {
            (IpAddr::V4(v4), false) => SourceInfo::V4(libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(v4).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            }),
            (IpAddr::V4(v4), true) => Self::v6(v4.to_ipv6_mapped().octets()),
            (IpAddr::V6(v6), _) => Self::v6(v6.octets()),
        }
    }

    fn v6(octets: [u8; 16]) -> Self {
        SourceInfo::V6(libc::in6_pktinfo {
            ipi6_addr: libc::in6_addr { s6_addr: octets },
            ipi6_ifindex: 0,
        })
    }

    pub fn message(&self) -> ControlMessage<'_> {
        match self {
            SourceInfo::V4(info) => ControlMessage::Ipv4PacketInfo(info),
            SourceInfo::V6(info) => ControlMessage::Ipv6PacketInfo(info),
        }
    }
}

/// Receives one datagram: its length, sender, and destination address (`None` unless
/// [`receive_destination`] was set).
pub async fn recv_with_destination(
    socket: &UdpSocket,
    buffer: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>)> {
    loop {
        socket.readable().await?;
        let received = socket.try_io(Interest::READABLE, || {
            let mut space = control_space();
            let mut slices = [IoSliceMut::new(buffer)];
            let message = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut slices,
                Some(&mut space),
                MsgFlags::MSG_DONTWAIT,
            )
            .map_err(io::Error::from)?;
            let local = message
                .cmsgs()
                .ok()
                .and_then(|mut c| c.find_map(destination));
            let peer = message
                .address
                .as_ref()
                .and_then(std_addr)
                .ok_or_else(|| io::Error::other("datagram without a sender address"))?;
            Ok((message.bytes, peer, local))
        });
        match received {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// Sends one datagram to `peer` from `local` (if given), waiting for the socket to take it.
pub async fn send_from(
    socket: &UdpSocket,
    datagram: &[u8],
    peer: SocketAddr,
    local: Option<IpAddr>,
) -> io::Result<usize> {
    let storage = SockaddrStorage::from(peer);
    let info = local.map(|local| SourceInfo::new(local, peer.is_ipv6()));
    loop {
        socket.writable().await?;
        let sent = socket.try_io(Interest::WRITABLE, || {
            let control: Vec<ControlMessage<'_>> = info.iter().map(SourceInfo::message).collect();
            sendmsg(
                socket.as_raw_fd(),
                &[IoSlice::new(datagram)],
                &control,
                MsgFlags::MSG_DONTWAIT,
                Some(&storage),
            )
            .map_err(io::Error::from)
        });
        match sent {
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// A socket address from the kernel's form.
pub fn std_addr(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| SocketAddr::V6((*v6).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On loopback every 127/8 address is the node's: a wildcard socket asked on 127.0.0.2
    /// would answer from 127.0.0.1 by route, which a connected client never receives.
    #[tokio::test]
    async fn a_wildcard_socket_answers_from_the_address_asked() {
        let std = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        receive_destination(&std, false).expect("pktinfo");
        std.set_nonblocking(true).expect("nonblocking");
        let server = UdpSocket::from_std(std).expect("tokio");
        let port = server.local_addr().expect("addr").port();
        let asked: SocketAddr = ([127, 0, 0, 2], port).into();
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        client.connect(asked).await.expect("connect");
        client.send(b"ping").await.expect("send");
        let mut buffer = [0u8; 16];
        let (n, peer, local) = recv_with_destination(&server, &mut buffer)
            .await
            .expect("receive");
        assert_eq!((&buffer[..n], local), (&b"ping"[..], Some(asked.ip())));
        send_from(&server, b"pong", peer, local)
            .await
            .expect("send");
        let n = tokio::time::timeout(std::time::Duration::from_secs(2), client.recv(&mut buffer))
            .await
            .expect("answered from the address asked")
            .expect("receive");
        assert_eq!(&buffer[..n], b"pong");
    }
}
