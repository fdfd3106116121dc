//! TLS termination: a rustls server configuration whose certificate resolver reads the current
//! snapshot on every handshake, so a renewed Secret is served on the next handshake with nothing
//! rebuilt or restarted.

use std::sync::Arc;

use capstan_table::{SnapshotHandle, TlsCertificate};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::version::{TLS12, TLS13};

use crate::IngressError;
use crate::crypto::{self, KeyExchange};

/// Chooses a certificate by SNI: the Ingress `spec.tls` host (exact, then `*.` wildcard), else
/// the default certificate (`--default-certificate`, else the self-signed fallback).
#[derive(Debug)]
pub struct SniResolver {
    snapshots: SnapshotHandle,
    fallback: Arc<CertifiedKey>,
}

// === impl SniResolver ===

impl SniResolver {
    pub fn new(snapshots: SnapshotHandle, fallback: &TlsCertificate) -> Self {
        Self {
            snapshots,
            fallback: fallback.certified.clone(),
        }
    }

    /// The certificate for `server_name` (any case) in the current snapshot.
    pub fn certificate_for(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(snapshot) = self.snapshots.load() else {
            return self.fallback.clone();
        };
        let table = &snapshot.ingress;
        let by_name = server_name.and_then(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            table.tls_for(&name).cloned().flatten()
        });
        by_name
            .or_else(|| table.default_certificate.clone())
            .map_or_else(|| self.fallback.clone(), |c| c.certified)
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certificate_for(client_hello.server_name()))
    }
}

/// The rustls configuration of the TLS listener: TLS 1.2 and 1.3 only, ALPN `h2` then
/// `http/1.1`, certificates from [`SniResolver`], the operator's key-exchange groups, and
/// `session_tickets` TLS 1.3 tickets per full handshake (rustls's in-memory session cache behind
/// them; none and no cache for 0).
pub(crate) fn server_config(
    resolver: impl ResolvesServerCert + 'static,
    key_exchange: &[KeyExchange],
    session_tickets: usize,
) -> Result<rustls::ServerConfig, IngressError> {
    let provider = crypto::provider(key_exchange);
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&TLS13, &TLS12])
        .map_err(|e| IngressError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.send_tls13_tickets = session_tickets;
    if session_tickets == 0 {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    }
    Ok(config)
}

/// A self-signed certificate for `capstan.invalid`, generated at startup and served when no
/// default certificate is configured (ingress-nginx's "fake certificate").
pub(crate) fn self_signed() -> Result<TlsCertificate, IngressError> {
    let generated = rcgen::generate_simple_self_signed(vec!["capstan.invalid".to_owned()])
        .map_err(|e| IngressError::Tls(format!("generate the default certificate: {e}")))?;
    TlsCertificate::from_pem(
        "self-signed default",
        generated.cert.pem().as_bytes(),
        generated.signing_key.serialize_pem().as_bytes(),
    )
    .map_err(IngressError::Tls)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use capstan_table::{Generation, IngressTable, Snapshot};

    use super::*;

    fn cert(name: &str) -> TlsCertificate {
        let generated =
            rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("generate");
        TlsCertificate::from_pem(
            name,
            generated.cert.pem().as_bytes(),
            generated.signing_key.serialize_pem().as_bytes(),
        )
        .expect("parse")
    }

    #[test]
    fn session_tickets_and_key_exchange_follow_the_flags() {
        let resolver = || SniResolver::new(SnapshotHandle::default(), &cert("fallback"));
        let on = server_config(resolver(), &[], 2).expect("config");
        assert_eq!(on.send_tls13_tickets, 2);
        assert!(on.session_storage.can_cache());
        assert_eq!(on.crypto_provider().kx_groups.len(), 4);
        let off = server_config(resolver(), &[KeyExchange::X25519], 0).expect("config");
        assert_eq!(off.send_tls13_tickets, 0);
        assert!(!off.session_storage.can_cache());
        let groups: Vec<_> = off
            .crypto_provider()
            .kx_groups
            .iter()
            .map(|g| g.name())
            .collect();
        assert_eq!(groups, [rustls::NamedGroup::X25519]);
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_default_then_fallback() {
        let snapshots = SnapshotHandle::default();
        let fallback = cert("fallback");
        let resolver = SniResolver::new(snapshots.clone(), &fallback);
        let is = |got: Arc<CertifiedKey>, want: &TlsCertificate| Arc::ptr_eq(&got, &want.certified);
        assert!(is(resolver.certificate_for(Some("a.example")), &fallback));

        let (exact, wild, default) = (cert("a.example"), cert("*.example"), cert("default"));
        let table = IngressTable {
            tls_hosts: HashMap::from([
                ("a.example".into(), Some(exact.clone())),
                ("broken.example".into(), None),
            ]),
            tls_wildcards: HashMap::from([("example".into(), Some(wild.clone()))]),
            ..IngressTable::default()
        };
        snapshots.store(Arc::new(Snapshot {
            generation: Generation(1),
            ingress: Arc::new(table),
            ..Snapshot::default()
        }));
        assert!(is(resolver.certificate_for(Some("A.Example.")), &exact));
        assert!(is(resolver.certificate_for(Some("b.example")), &wild));
        assert!(is(resolver.certificate_for(Some("x.b.example")), &fallback));
        assert!(is(
            resolver.certificate_for(Some("broken.example")),
            &fallback
        ));
        assert!(is(resolver.certificate_for(None), &fallback));

        snapshots.store(Arc::new(Snapshot {
            generation: Generation(2),
            ingress: Arc::new(IngressTable {
                default_certificate: Some(default.clone()),
                ..IngressTable::default()
            }),
            ..Snapshot::default()
        }));
        assert!(is(resolver.certificate_for(Some("a.example")), &default));
    }
}
