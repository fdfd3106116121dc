//! The ingress crate's one error type.

/// Why the ingress plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// The listener could not be bound (the error names the address).
    #[error("ingress listener: {0}")]
    Bind(#[from] capstan_proxy::ProxyError),
    #[error("TLS: {0}")]
    Tls(String),
}
