//! Client source addresses kept to endpoints (`--preserve-source-ip CIDR,...`), as kube-proxy's
//! DNAT keeps them, for TCP connections and UDP flows captured by nftables.
//!
//! The upstream socket is made with `IP_TRANSPARENT` and bound to the client's address before it
//! connects, so the endpoint sees the client (NetworkPolicies and logs keyed on pod addresses keep
//! working). The endpoint's replies are addressed to the client, so the node must hand them to
//! Capstan instead of forwarding them to the pod: Capstan's nftables table marks packets that
//! belong to a transparent socket (`socket transparent 1`, [`MARK`]), and a policy route sends
//! marked packets to the local stack ([`ROUTE_TABLE`]), the way Istio's TPROXY capture returns
//! traffic to its sidecar.
//!
//! That works only where the replies pass through this node's IP layer:
//! - An endpoint on this node (`--node-name`) sends its replies through this node, its gateway,
//!   whoever the client is: so `externalTrafficPolicy: Local` keeps the address of clients from
//!   outside the cluster, as it does with kube-proxy.
//! - An endpoint on another node answers through this node only clients that live here: pods,
//!   told by the given ranges (the cluster's pod CIDRs, as kube-proxy's `--cluster-cidr` tells
//!   local traffic). Any other client (a host on the node's network reaching an external IP, say)
//!   would be answered directly, which is why kube-proxy masquerades it too.
//! - An endpoint on the client's own link (one bridge, one subnet) answers the client directly.
//!
//! Where the address cannot be kept, [`source_for`] falls back to the node's own, as it does for a
//! loopback client, a pod reaching itself through its Service (the pod would drop a packet from
//! its own address) and mixed address families.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use capstan_table::Endpoint;
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpSocket, TcpStream, UdpSocket};
use tracing::warn;

/// The packet mark bit of replies to transparent sockets (kube-proxy uses 0x4000 and 0x8000,
/// Calico the top 16 bits).
pub const MARK: u32 = 0x0040_0000;
/// The routing table marked packets are looked up in: one `local` default route per family.
pub const ROUTE_TABLE: u32 = 4341;

/// An address range, `address/len`: a connected subnet of a node interface, or a pod CIDR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl std::str::FromStr for Prefix {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not a CIDR such as 10.244.0.0/16");
        let (address, len) = text.split_once('/').ok_or_else(invalid)?;
        let address: IpAddr = address.parse().map_err(|_| invalid())?;
        let len: u8 = len.parse().map_err(|_| invalid())?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(invalid());
        }
        Ok(Self { address, len })
    }
}

impl Prefix {
    fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Where an endpoint runs, for [`source_for`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    ThisNode,
    /// Another node, or unknown (no `nodeName`, or no `--node-name`).
    Elsewhere,
}

/// The address to connect to `endpoint` from for `client`, or `None` for the node's own: the
/// client's when the endpoint's replies come back through this node (it runs here, or the client
/// is in one of the `pods` ranges), the two are not on one of the node's `links`, the client is
/// neither loopback nor the endpoint itself, and both are of one family.
pub fn source_for(
    client: IpAddr,
    endpoint: IpAddr,
    placement: Placement,
    pods: &[Prefix],
    links: &[Prefix],
) -> Option<IpAddr> {
    let client = client.to_canonical();
    let same_family = client.is_ipv4() == endpoint.is_ipv4();
    let replies_return =
        placement == Placement::ThisNode || pods.iter().any(|range| range.contains(client));
    let on_one_link = links
        .iter()
        .any(|link| link.contains(client) && link.contains(endpoint));
    let keep = same_family
        && replies_return
        && !client.is_loopback()
        && client != endpoint
        && !on_one_link;
    keep.then_some(client)
}

/// This node's name, the pod ranges whose clients keep their address, and the node's connected
/// subnets, shared with the accept loops. The subnets are refreshed by the listener set
/// (interfaces come and go with pods; reading them is a netlink dump, never done per connection).
#[derive(Debug)]
pub struct Links {
    node: Option<String>,
    pods: Vec<Prefix>,
    prefixes: ArcSwap<Vec<Prefix>>,
}

impl Links {
    pub(crate) fn new(node: Option<String>, pods: Vec<Prefix>) -> Self {
        Self {
            node,
            pods,
            prefixes: ArcSwap::default(),
        }
    }

    /// [`source_for`] with this node, these ranges and the last subnets read; a `None` is counted
    /// as an attempt from the node's address.
    pub(crate) fn source_for(&self, client: IpAddr, endpoint: &Endpoint) -> Option<IpAddr> {
        let here =
            matches!((&self.node, &endpoint.node_name), (Some(node), Some(on)) if **on == **node);
        let placement = if here {
            Placement::ThisNode
        } else {
            Placement::Elsewhere
        };
        let source = source_for(
            client,
            endpoint.addr.ip(),
            placement,
            &self.pods,
            &self.prefixes.load(),
        );
        if source.is_none() {
            ATTEMPTS[NODE].fetch_add(1, Ordering::Relaxed);
        }
        source
    }

    pub(crate) fn refresh(&self) {
        match connected_prefixes() {
            Ok(prefixes) => {
                if **self.prefixes.load() != prefixes {
                    self.prefixes.store(Arc::new(prefixes));
                }
            }
            Err(error) => warn!(%error, "interface addresses not read; keeping the last ones"),
        }
    }
}

fn connected_prefixes() -> io::Result<Vec<Prefix>> {
    let addresses = nix::ifaddrs::getifaddrs().map_err(io::Error::from)?;
    let mut prefixes = Vec::new();
    for interface in addresses {
        let (Some(address), Some(netmask)) = (interface.address, interface.netmask) else {
            continue;
        };
        let prefix = if let (Some(a), Some(m)) =
            (address.as_sockaddr_in(), netmask.as_sockaddr_in())
        {
            Prefix {
                address: IpAddr::V4(a.ip()),
                len: u32::from(m.ip()).count_ones() as u8,
            }
        } else if let (Some(a), Some(m)) = (address.as_sockaddr_in6(), netmask.as_sockaddr_in6()) {
            Prefix {
                address: IpAddr::V6(a.ip()),
                len: u128::from(m.ip()).count_ones() as u8,
            }
        } else {
            continue;
        };
        // A host route (/32, /128) is a point-to-point address: nothing else is on its link.
        let host = prefix.len == if prefix.address.is_ipv4() { 32 } else { 128 };
        if !host && !prefix.address.is_loopback() {
            prefixes.push(prefix);
        }
    }
    prefixes.sort_by_key(|p| (p.address, p.len));
    prefixes.dedup();
    Ok(prefixes)
}

/// Upstream connect attempts with source addresses kept, by the address used: the client's, the
/// node's by [`source_for`], the node's because the transparent bind failed.
static ATTEMPTS: [AtomicU64; 3] = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
const CLIENT: usize = 0;
const NODE: usize = 1;
const BIND_FAILED: usize = 2;

/// The `source` label and count of each kind of upstream connect attempt made with
/// `--preserve-source-ip` (all zero without it), for `/metrics`.
pub fn attempts() -> [(&'static str, u64); 3] {
    let count = |i: usize| ATTEMPTS[i].load(Ordering::Relaxed);
    [
        ("client", count(CLIENT)),
        ("node", count(NODE)),
        ("node_bind_failed", count(BIND_FAILED)),
    ]
}

/// Whether a transparent bind failure was already reported (once per process: it means a missing
/// `CAP_NET_ADMIN`, which every connection would hit).
static BIND_FAILURE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Connects to `endpoint` from `source` with `IP_TRANSPARENT`. If the socket cannot take the
/// client's address (no `CAP_NET_ADMIN`), it connects from the node's address instead and says so
/// once.
pub(crate) async fn connect_from(source: IpAddr, endpoint: SocketAddr) -> io::Result<TcpStream> {
    let transparent = (|| {
        let socket = if endpoint.is_ipv6() {
            TcpSocket::new_v6()?
        } else {
            TcpSocket::new_v4()?
        };
        set_transparent(&socket, endpoint)?;
        socket.bind(SocketAddr::new(source, 0))?;
        Ok(socket)
    })();
    match counted(transparent, source) {
        Some(socket) => socket.connect(endpoint).await,
        None => TcpStream::connect(endpoint).await,
    }
}

/// A UDP socket for a flow to `endpoint`, bound to `source` with `IP_TRANSPARENT` (or, failing
/// that, to the node's address, said once), not yet connected.
pub(crate) async fn udp_from(source: IpAddr, endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let transparent = (|| {
        let socket = Socket::new(Domain::for_address(endpoint), Type::DGRAM, None)?;
        set_transparent(&socket, endpoint)?;
        socket.set_nonblocking(true)?;
        socket.bind(&SocketAddr::new(source, 0).into())?;
        UdpSocket::from_std(socket.into())
    })();
    match counted(transparent, source) {
        Some(socket) => Ok(socket),
        None => UdpSocket::bind(SocketAddr::new(unspecified(endpoint), 0)).await,
    }
}

fn set_transparent(socket: &impl std::os::fd::AsFd, endpoint: SocketAddr) -> io::Result<()> {
    let raw = socket2::SockRef::from(socket);
    if endpoint.is_ipv6() {
        raw.set_ip_transparent_v6(true)
    } else {
        raw.set_ip_transparent_v4(true)
    }
}

/// Counts a transparent socket made, or one that could not be (reported once: it means a missing
/// `CAP_NET_ADMIN`, which every later attempt would hit too).
fn counted<T>(transparent: io::Result<T>, source: IpAddr) -> Option<T> {
    match transparent {
        Ok(socket) => {
            ATTEMPTS[CLIENT].fetch_add(1, Ordering::Relaxed);
            Some(socket)
        }
        Err(error) => {
            ATTEMPTS[BIND_FAILED].fetch_add(1, Ordering::Relaxed);
            if !BIND_FAILURE_REPORTED.swap(true, Ordering::Relaxed) {
                warn!(%error, %source, "client address not kept (a transparent bind needs CAP_NET_ADMIN); using the node's");
            }
            None
        }
    }
}

/// The unspecified address of `addr`'s family.
pub(crate) fn unspecified(addr: SocketAddr) -> IpAddr {
    if addr.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    fn prefix(text: &str) -> Prefix {
        let (address, len) = text.split_once('/').expect("prefix");
        Prefix {
            address: ip(address),
            len: len.parse().expect("len"),
        }
    }

    #[test]
    fn the_client_address_is_kept_only_for_pods_whose_replies_come_back_through_the_node() {
        let pods = [prefix("10.244.0.0/16"), prefix("fd00:244::/32")];
        let links = [
            prefix("10.244.1.1/24"),
            prefix("fd00:244:1::1/64"),
            prefix("192.168.1.5/24"),
        ];
        use Placement::{Elsewhere, ThisNode};
        let cases = [
            // (client, endpoint, kept)
            ("10.244.1.10", "10.244.2.7", true), // a pod: replies to it are routed back here
            ("10.244.1.10", "10.244.1.11", false), // one bridge: the endpoint answers directly
            ("10.244.1.10", "10.244.1.10", false), // a pod reaching itself
            ("127.0.0.1", "10.244.2.7", false),  // loopback: not a pod
            ("192.168.1.50", "10.244.2.7", false), // a host on the node's network: not a pod
            ("192.168.1.5", "10.244.2.7", false), // the node itself
            ("10.244.1.10", "fd00:244:2::7", false), // mixed families
            ("fd00:244:1::10", "fd00:244:2::7", true),
            ("fd00:244:1::10", "fd00:244:1::11", false),
            ("::ffff:10.244.1.10", "10.244.2.7", true), // a v4-mapped peer is the v4 client
            ("::1", "fd00:244:2::7", false),
        ];
        for (client, endpoint, kept) in cases {
            let got = source_for(ip(client), ip(endpoint), Elsewhere, &pods, &links);
            let want = kept.then(|| ip(client).to_canonical());
            assert_eq!(got, want, "{client} -> {endpoint}");
        }
        // An endpoint on this node answers through it whoever the client is (Local policy).
        let local = [
            // (client, endpoint, kept)
            ("192.168.1.50", "10.244.2.7", true), // a host outside the cluster
            ("203.0.113.9", "10.244.1.11", true), // from afar, to an endpoint on the bridge
            ("192.168.1.50", "192.168.1.60", false), // both on the node's network
            ("127.0.0.1", "10.244.1.11", false),  // loopback cannot leave the node
            ("::1", "fd00:244:1::11", false),
            ("10.244.1.10", "10.244.1.11", false), // one bridge, still
        ];
        for (client, endpoint, kept) in local {
            let got = source_for(ip(client), ip(endpoint), ThisNode, &pods, &links);
            let want = kept.then(|| ip(client).to_canonical());
            assert_eq!(got, want, "{client} -> {endpoint} on this node");
        }
    }

    #[test]
    fn prefixes_parse_as_cidrs() {
        assert_eq!("10.244.0.0/16".parse(), Ok(prefix("10.244.0.0/16")));
        assert_eq!("fd00::/8".parse(), Ok(prefix("fd00::/8")));
        for bad in [
            "10.244.0.0",
            "10.244.0.0/33",
            "fd00::/129",
            "pods/16",
            "10.0.0.0/x",
        ] {
            assert!(bad.parse::<Prefix>().is_err(), "{bad}");
        }
    }

    #[test]
    fn prefixes_match_by_their_length_and_family() {
        assert!(prefix("10.0.0.0/8").contains(ip("10.255.0.1")));
        assert!(!prefix("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(prefix("0.0.0.0/0").contains(ip("192.0.2.1")));
        assert!(prefix("10.1.2.3/32").contains(ip("10.1.2.3")));
        assert!(!prefix("10.1.2.3/32").contains(ip("10.1.2.4")));
        assert!(prefix("fd00::/8").contains(ip("fd12::1")));
        assert!(!prefix("fd00::/8").contains(ip("10.0.0.1")));
        assert!(prefix("::/0").contains(ip("2001:db8::1")));
    }
}
