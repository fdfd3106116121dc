//! The ingress crate's one error type.

use crate::http1::WireError;

/// Why the ingress plane could not start, or an upstream exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The listener could not be bound (the error names the address).
    #[error("ingress listener: {0}")]
    Bind(#[from] capstan_proxy::ProxyError),
    #[error("TLS: {0}")]
    Tls(String),
    /// The upstream sent something that is not a valid HTTP/1.1 response.
    #[error("upstream response: {0}")]
    Upstream(WireError),
    /// The upstream connection failed mid-exchange.
    #[error("upstream connection: {0}")]
    UpstreamIo(#[source] std::io::Error),
    /// The upstream closed the connection before the response was complete.
    #[error("upstream closed the connection before the response was complete")]
    UpstreamClosed,
}
