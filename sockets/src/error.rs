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
    /// A netlink socket could not be used.
    #[error("netfilter netlink: {step}: {source}")]
    Netlink {
        step: &'static str,
        source: io::Error,
    },
    /// The kernel refused a message (a batch is then applied not at all).
    #[error("netfilter netlink: message {message} refused: {source}")]
    Refused { message: u32, source: io::Error },
}
