use std::io;
use std::net::SocketAddr;

/// Why a proxied connection could not be served. Each variant says whose fault it was.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bind {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("connect to {addr}: timed out")]
    ConnectTimeout { addr: SocketAddr },
    #[error(transparent)]
    Socket(#[from] capstan_sockets::SocketError),
    /// The node's traffic capture (nftables) could not be programmed.
    #[error("traffic capture: {reason}")]
    Capture { reason: String },
}

// === impl ProxyError ===

impl ProxyError {
    /// Metric label: whose fault it was.
    pub fn blame(&self) -> &'static str {
        match self {
            ProxyError::Bind { .. } | ProxyError::Socket(_) | ProxyError::Capture { .. } => {
                "internal"
            }
            ProxyError::Connect { .. } | ProxyError::ConnectTimeout { .. } => "upstream",
        }
    }
}
