//! TLS certificates as the snapshot carries them: parsed and checked once when a Secret or PEM
//! file is read, then served by the ingress SNI resolver on every handshake without further work.

use std::fmt;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate chain with its private key, ready for rustls.
#[derive(Clone)]
pub struct TlsCertificate {
    /// Where it came from (`namespace/name` of a Secret, or a file path), for logs and dumps.
    pub source: Arc<str>,
    pub certified: Arc<CertifiedKey>,
    /// The chain and key as DER, so two loads of the same material compare equal and a renewed
    /// certificate compares different.
    der: Arc<[u8]>,
}

// === impl TlsCertificate ===

impl TlsCertificate {
    /// Parses a PEM certificate chain (leaf first) and a PEM private key (PKCS#8, PKCS#1 or
    /// SEC1), and checks that the key is usable and belongs to the leaf certificate.
    pub fn from_pem(source: &str, chain_pem: &[u8], key_pem: &[u8]) -> Result<Self, String> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate PEM: {e}"))?;
        if chain.is_empty() {
            return Err("certificate PEM: no CERTIFICATE block".into());
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| format!("key PEM: {e}"))?;
        let mut der = Vec::new();
        for cert in &chain {
            der.extend_from_slice(cert.as_ref());
        }
        der.extend_from_slice(key.secret_der());
        let certified = CertifiedKey::from_der(chain, key, &aws_lc_rs::default_provider())
            .map_err(|e| format!("certificate and key: {e}"))?;
        Ok(Self {
            source: source.into(),
            certified: Arc::new(certified),
            der: der.into(),
        })
    }
}

impl PartialEq for TlsCertificate {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source && self.der == other.der
    }
}

impl Eq for TlsCertificate {}

impl fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsCertificate")
            .field("source", &self.source)
            .field("chain", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

/// How Capstan speaks TLS to a route's endpoints (`backend-protocol: HTTPS` or `GRPCS`): the
/// name it sends as SNI and checks the certificate against, what it trusts, and the client
/// certificate it presents when asked. Plain data: the ingress plane builds its rustls client
/// from it once per worker.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and the name the endpoint's certificate must be valid for: a DNS name or an IP address.
    pub server_name: Arc<str>,
    pub verify: UpstreamVerify,
    /// Presented when an endpoint asks for a client certificate (mutual TLS).
    pub client_certificate: Option<TlsCertificate>,
    /// The Secret or file the trust roots came from, for `/debug/snapshot`.
    pub source: Option<Arc<str>>,
}

/// What an endpoint's certificate is checked against.
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamVerify {
    /// These CA certificates (a Secret's `ca.crt`, a PEM file).
    Roots(Arc<[CertificateDer<'static>]>),
    /// The system's trust store.
    System,
    /// Not checked (`backend-tls-verify: "false"`, ingress-nginx's `proxy-ssl-verify: off`); the
    /// handshake's signatures still are.
    Off,
}

/// Parses a PEM bundle of CA certificates: at least one, every block well formed.
pub fn ca_bundle_from_pem(pem: &[u8]) -> Result<Arc<[CertificateDer<'static>]>, String> {
    let roots = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("CA PEM: {e}"))?;
    if roots.is_empty() {
        return Err("CA PEM: no CERTIFICATE block".into());
    }
    let mut store = rustls::RootCertStore::empty();
    let (_, unusable) = store.add_parsable_certificates(roots.iter().cloned());
    if unusable > 0 {
        return Err(format!(
            "CA PEM: {unusable} certificate(s) cannot be parsed"
        ));
    }
    Ok(roots.into())
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .field("verify", &self.verify)
            .field("client_certificate", &self.client_certificate)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Debug for UpstreamVerify {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamVerify::Roots(roots) => write!(f, "Roots({} certificates)", roots.len()),
            UpstreamVerify::System => f.write_str("System"),
            UpstreamVerify::Off => f.write_str("Off"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_and_empty_input_are_errors_not_panics() {
        for (chain, key) in [
            (&b""[..], &b""[..]),
            (b"not pem", b"not pem"),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            ),
        ] {
            assert!(TlsCertificate::from_pem("t", chain, key).is_err());
        }
    }
}
