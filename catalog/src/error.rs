use capstan_table::ServiceKey;

/// Why a catalog entry is invalid.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CatalogError {
    #[error("service {service}: {reason}")]
    InvalidService { service: ServiceKey, reason: String },
    #[error("endpointslice {namespace}/{name}: {reason}")]
    InvalidSlice {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("ingress {namespace}/{name}: {reason}")]
    InvalidIngress {
        namespace: String,
        name: String,
        reason: String,
    },
}
