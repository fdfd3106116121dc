use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong in the DNS plane.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("dns: bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("dns: upstream {0}: {1}")]
    Upstream(SocketAddr, #[source] io::Error),
    #[error("dns: upstream {0} timed out")]
    UpstreamTimeout(SocketAddr),
    #[error("dns: cannot encode message: {0}")]
    Encode(String),
}
