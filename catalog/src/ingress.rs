//! Ingress catalog entries: `networking.k8s.io/v1` Ingress and IngressClass, validated.

use std::sync::Arc;

use capstan_table::{BackendPort, PathType, RoutePolicy, ServiceKey, TlsCertificate};

use crate::{CatalogError, Origin};

/// An Ingress: host/path rules to Service backends.
#[derive(Clone, Debug, PartialEq)]
pub struct Ingress {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    /// `spec.ingressClassName`, or the legacy `kubernetes.io/ingress.class` annotation.
    pub class_name: Option<String>,
    pub default_backend: Option<IngressBackend>,
    pub rules: Vec<IngressRule>,
    /// `spec.tls`: hosts served over TLS with a Secret's certificate.
    pub tls: Vec<IngressTls>,
    /// `capstan.yaml` routes are always Capstan's, whatever the IngressClasses say.
    pub origin: Origin,
    /// Retries, rate limits and request limits of every route of this Ingress.
    pub policy: Arc<RoutePolicy>,
}

/// One `spec.tls[]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressTls {
    /// Lowercase hosts, `*.example.com` allowed.
    pub hosts: Vec<String>,
    /// A `kubernetes.io/tls` Secret in the Ingress's namespace; `None` uses the default
    /// certificate.
    pub secret_name: Option<Arc<str>>,
}

/// A `kubernetes.io/tls` Secret (or a PEM pair from `capstan.yaml`), already parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSecret {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub certificate: TlsCertificate,
    /// `ca.crt` when present (cert-manager writes it): what endpoints are checked against when a
    /// route names this Secret in `backend-tls-secret`.
    pub ca: Option<Arc<[rustls_pki_types::CertificateDer<'static>]>>,
}

/// A basic-auth Secret (labelled `capstan.dev/basic-auth: "true"`), its users already parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthSecret {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    pub users: capstan_table::Htpasswd,
}

/// One `spec.rules[]` entry.
#[derive(Clone, Debug, PartialEq)]
pub struct IngressRule {
    /// `None` matches every host; `*.example.com` one label of `example.com`.
    pub host: Option<String>,
    pub paths: Vec<IngressPath>,
}

/// One `http.paths[]` entry. ImplementationSpecific is read as Prefix.
#[derive(Clone, Debug, PartialEq)]
pub struct IngressPath {
    pub path: String,
    pub path_type: PathType,
    pub backend: IngressBackend,
    /// This path's own policy (`capstan.yaml` routes); `None`: the Ingress's.
    pub policy: Option<Arc<RoutePolicy>>,
}

/// A Service port in the Ingress's namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressBackend {
    pub service: ServiceKey,
    pub port: BackendPort,
}

/// An IngressClass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IngressClass {
    pub name: Arc<str>,
    /// `spec.controller`: Capstan serves classes whose controller is its own.
    pub controller: String,
    /// The `ingressclass.kubernetes.io/is-default-class: "true"` annotation.
    pub is_default: bool,
}

// === impl Ingress ===

impl Ingress {
    pub fn validate(&self) -> Result<(), CatalogError> {
        let invalid = |reason: String| CatalogError::InvalidIngress {
            namespace: self.namespace.to_string(),
            name: self.name.to_string(),
            reason,
        };
        if self.default_backend.is_none() && self.rules.is_empty() {
            return Err(invalid(
                "either spec.defaultBackend or spec.rules is required".into(),
            ));
        }
        for rule in &self.rules {
            if let Some(host) = &rule.host {
                let name = host.strip_prefix("*.").unwrap_or(host);
                if name.is_empty() || name.contains('*') || name.contains(':') {
                    return Err(invalid(format!(
                        "host {host:?}: a DNS name, optionally with one leading \"*.\" label"
                    )));
                }
            }
            for path in &rule.paths {
                if !path.path.starts_with('/') {
                    return Err(invalid(format!("path {:?} must start with /", path.path)));
                }
            }
        }
        Ok(())
    }
}
