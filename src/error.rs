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

impl Error {
    /// For a listener that could not be bound (a privileged port, an address in use): which flag
    /// moves or turns it off, as a line to print under the error.
    pub fn listener_hint(&self) -> Option<String> {
        let flag = match self {
            Error::Dns(_) => "--dns",
            Error::Ingress(_) => "--http / --https",
            Error::Bind { what, .. } => match *what {
                "admin" => "--admin",
                "healthz" => "--healthz",
                "metrics" => "--metrics",
                "dns metrics" => "--dns-metrics",
                _ => return None,
            },
            _ => return None,
        };
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(error) = source {
            if let Some(io) = error.downcast_ref::<io::Error>() {
                return match io.kind() {
                    io::ErrorKind::PermissionDenied => Some(format!(
                        "hint: ports below 1024 need root or CAP_NET_BIND_SERVICE \
                         (sudo setcap cap_net_bind_service=+ep \"$(command -v capstan)\"); \
                         or choose another address with {flag} ADDR:PORT, or turn it off with {flag} off"
                    )),
                    io::ErrorKind::AddrInUse => Some(format!(
                        "hint: another process serves that address; choose another with {flag} \
                         ADDR:PORT, or turn it off with {flag} off"
                    )),
                    _ => None,
                };
            }
            source = error.source();
        }
        None
    }
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
