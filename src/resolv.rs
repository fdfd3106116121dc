//! The host's resolver settings: upstream nameservers from `/etc/resolv.conf`, and the host's
//! primary address (what standalone services on wildcard addresses resolve to).

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// `nameserver` lines of a resolv.conf text, port 53. Comments, other options and unparsable
/// addresses (such as link-local with a zone) are skipped.
pub fn nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next()? == "nameserver").then_some(())?;
            let ip: IpAddr = words.next()?.parse().ok()?;
            Some(SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The nameservers of `/etc/resolv.conf`; none if it cannot be read.
pub fn system_nameservers() -> Vec<SocketAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .map(|text| nameservers(&text))
        .unwrap_or_default()
}

/// The source address of the default route (found by connecting a UDP socket, which sends
/// nothing), or loopback when there is no route.
pub fn primary_address() -> IpAddr {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
        socket.connect((Ipv4Addr::new(192, 0, 2, 1), 53))?;
        Ok(socket.local_addr()?.ip())
    };
    probe().unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nameserver_lines_are_read_and_everything_else_skipped() {
        let text = "# generated\nsearch svc.cluster.local\nnameserver 10.0.0.10\n\
                    nameserver  fd00::53 \noptions ndots:5\nnameserver fe80::1%eth0\nnameserver\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.10:53".parse().unwrap(),
                "[fd00::53]:53".parse().unwrap()
            ]
        );
    }
}
