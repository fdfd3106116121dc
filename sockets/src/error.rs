use std::io;
use std::net::SocketAddr;

/// Why a socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    /// Another process (a second Capstan) serves this address.
    #[error(
        "{protocol} {addr} is served by another process in this network namespace (another Capstan?): {source}"
    )]
    PortTaken {
        protocol: String,
        addr: SocketAddr,
        source: io::Error,
    },
}
