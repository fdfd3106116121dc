use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Everything that can go wrong in the agent outside the data planes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A source file that could not be read, parsed or validated.
    #[error("{}{}: {reason}", path.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
    File {
        path: PathBuf,
        line: Option<u64>,
        reason: String,
    },
    /// A Kubernetes object that cannot be turned into a catalog entry.
    #[error("{kind} {name}: {reason}")]
    Convert {
        kind: &'static str,
        name: String,
        reason: String,
    },
    #[error("invalid input:\n{0}")]
    Invalid(Errors),
    #[error(transparent)]
    Catalog(#[from] capstan_catalog::CatalogError),
    #[error(transparent)]
    Dns(#[from] capstan_dns::DnsError),
    #[error(transparent)]
    Ingress(#[from] capstan_ingress::IngressError),
    #[error(transparent)]
    Proxy(#[from] capstan_proxy::ProxyError),
    #[error("watch {}: {source}", path.display())]
    Watch {
        path: PathBuf,
        source: notify::Error,
    },
    /// The Kubernetes client could not be configured.
    #[error("{what}: {reason}")]
    Kube { what: String, reason: String },
    #[error("{what} listener {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
}

/// Several errors at once (every invalid file at startup).
#[derive(Debug, thiserror::Error)]
#[error("{}", join(.0))]
pub struct Errors(pub Vec<Error>);

fn join(errors: &[Error]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}
