//! One Capstan per port: sockets are bound with `SO_REUSEPORT` (one per worker), which would
//! also let a second Capstan on the node bind the same port without a word and have the kernel
//! split traffic between the two. Before binding, each process takes a lock named after the
//! address: an abstract Unix socket, which exists per network namespace (as ports do) and
//! vanishes with the process however it ends, so a crashed agent never leaves a stale lock.

use std::net::SocketAddr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

use crate::SocketError;

/// Held while a port is served; dropping it frees the port for another process.
#[derive(Debug)]
pub struct PortLock {
    _socket: UnixDatagram,
}

impl PortLock {
    /// Takes the lock of `protocol` (`tcp`, `udp`, `dns`, …) on `addr`. Port 0 (the kernel picks
    /// a free port) needs none: `Ok(None)`.
    pub fn acquire(protocol: &str, addr: SocketAddr) -> Result<Option<PortLock>, SocketError> {
        if addr.port() == 0 {
            return Ok(None);
        }
        let name = format!("capstan/{protocol}/{addr}");
        let taken = |source: std::io::Error| SocketError::PortTaken {
            protocol: protocol.to_owned(),
            addr,
            source,
        };
        let unix = UnixAddr::from_abstract_name(name.as_bytes()).map_err(taken)?;
        let socket = UnixDatagram::bind_addr(&unix).map_err(taken)?;
        Ok(Some(PortLock { _socket: socket }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_address_is_refused_until_the_first_is_dropped() {
        // A port number unlikely to be locked by anything else running these tests.
        let addr: SocketAddr = "127.3.2.1:6553".parse().expect("addr");
        let first = PortLock::acquire("tcp", addr)
            .expect("first")
            .expect("a lock");
        let error = PortLock::acquire("tcp", addr).expect_err("second");
        assert!(error.to_string().contains("127.3.2.1:6553"), "{error}");
        assert!(
            PortLock::acquire("udp", addr)
                .expect("other protocol")
                .is_some()
        );
        drop(first);
        assert!(PortLock::acquire("tcp", addr).expect("freed").is_some());
        assert!(
            PortLock::acquire("tcp", "127.0.0.1:0".parse().expect("addr"))
                .expect("port 0")
                .is_none()
        );
    }
}
