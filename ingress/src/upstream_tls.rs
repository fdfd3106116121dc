//! TLS to endpoints (`backend-protocol: HTTPS` or `GRPCS`): the rustls client a route's
//! [`UpstreamTls`] describes, and each worker's hyper clients for them, one per distinct setting,
//! each with its own connection pool.
//!
//! The snapshot carries an [`UpstreamTls`] over unchanged (the same `Arc`) while its inputs stay
//! equal, so a worker finds its client by pointer; a client whose setting left every snapshot is
//! dropped the next time one is added. Lookups are lock-free (one `ArcSwap` load).

use std::fmt;
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;
use capstan_table::{UpstreamProtocol, UpstreamTls, UpstreamVerify};
use hyper_rustls::{FixedServerNameResolver, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::client::ResolvesClientCert;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tracing::warn;

use crate::body::RequestBody;

/// A hyper client that speaks TLS to every endpoint it connects to.
pub(crate) type TlsClient = Client<HttpsConnector<HttpConnector>, RequestBody>;

/// One worker's TLS clients, by setting and HTTP version.
pub(crate) struct TlsClients {
    clients: ArcSwap<Vec<Entry>>,
    /// The plain connector every TLS connection starts from.
    connector: HttpConnector,
    idle_timeout: std::time::Duration,
}

struct Entry {
    tls: Arc<UpstreamTls>,
    protocol: UpstreamProtocol,
    client: TlsClient,
}

// === impl TlsClients ===

impl TlsClients {
    pub(crate) fn new(connector: HttpConnector, idle_timeout: std::time::Duration) -> Self {
        Self {
            clients: ArcSwap::default(),
            connector,
            idle_timeout,
        }
    }

    /// The client for `tls` spoken in `protocol`, built the first time it is asked for.
    pub(crate) fn get(
        &self,
        tls: &Arc<UpstreamTls>,
        protocol: UpstreamProtocol,
    ) -> Result<TlsClient, String> {
        let found = |entries: &[Entry]| {
            entries
                .iter()
                .find(|e| Arc::ptr_eq(&e.tls, tls) && e.protocol == protocol)
                .map(|e| e.client.clone())
        };
        if let Some(client) = found(&self.clients.load()) {
            return Ok(client);
        }
        let config = client_config(tls, protocol)?;
        let server_name = ServerName::try_from(tls.server_name.to_string())
            .map_err(|e| format!("server name {}: {e}", tls.server_name))?;
        let mut http = self.connector.clone();
        http.enforce_http(false);
        let resolver = Arc::new(FixedServerNameResolver::new(server_name));
        let https = HttpsConnector::new(http, config, true, resolver);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .http2_only(protocol == UpstreamProtocol::Http2)
            .build(https);
        // Only this worker adds entries; settings no snapshot holds any more (every reference
        // left is one of these entries) are dropped.
        let current = self.clients.load();
        let held_elsewhere: Vec<bool> = current
            .iter()
            .map(|e| {
                let ours = current
                    .iter()
                    .filter(|o| Arc::ptr_eq(&o.tls, &e.tls))
                    .count();
                Arc::strong_count(&e.tls) > ours
            })
            .collect();
        let mut entries: Vec<Entry> = current
            .iter()
            .zip(held_elsewhere)
            .filter(|(_, held)| *held)
            .map(|(e, _)| Entry {
                tls: e.tls.clone(),
                protocol: e.protocol,
                client: e.client.clone(),
            })
            .collect();
        entries.push(Entry {
            tls: tls.clone(),
            protocol,
            client: client.clone(),
        });
        self.clients.store(Arc::new(entries));
        Ok(client)
    }
}

impl fmt::Debug for TlsClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClients")
            .field("clients", &self.clients.load().len())
            .finish_non_exhaustive()
    }
}

/// The rustls client for `tls`: its trust roots (or none checked), its client certificate, and
/// ALPN for `protocol` (`http/1.1` or `h2`).
pub(crate) fn client_config(
    tls: &UpstreamTls,
    protocol: UpstreamProtocol,
) -> Result<ClientConfig, String> {
    let provider = crate::crypto::provider(&[]);
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.verify {
        UpstreamVerify::Roots(roots) => {
            let mut store = RootCertStore::empty();
            let (_, unusable) = store.add_parsable_certificates(roots.iter().cloned());
            if store.is_empty() {
                return Err(format!("no usable CA certificate ({unusable} unusable)"));
            }
            builder.with_root_certificates(store)
        }
        UpstreamVerify::System => {
            let store = system_roots()?;
            builder.with_root_certificates(store)
        }
        UpstreamVerify::Off => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider))),
    };
    let mut config = match &tls.client_certificate {
        Some(certificate) => builder
            .with_client_cert_resolver(Arc::new(ClientCertificate(certificate.certified.clone()))),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = match protocol {
        UpstreamProtocol::Http1 => vec![b"http/1.1".to_vec()],
        UpstreamProtocol::Http2 => vec![b"h2".to_vec()],
    };
    Ok(config)
}

/// The system's trust store (`/etc/ssl/certs` on Debian), read once per process.
/// The client of TLS health checks: HTTP/1.1, no client certificate, and no certificate check
/// (HAProxy's `check-ssl verify none`; a check reads a status and sends nothing secret). Built
/// once.
pub(crate) fn health_check_config() -> Arc<ClientConfig> {
    static CONFIG: std::sync::OnceLock<Arc<ClientConfig>> = std::sync::OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let provider = crate::crypto::provider(&[]);
            let mut config = ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .expect("the default provider supports the default versions")
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth();
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Arc::new(config)
        })
        .clone()
}

fn system_roots() -> Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            for error in &found.errors {
                warn!(%error, "reading the system's CA certificates");
            }
            let mut store = RootCertStore::empty();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err("the system has no CA certificates (install ca-certificates, or give backend-tls-secret / backend-tls-ca-file)".into());
            }
            Ok(Arc::new(store))
        })
        .clone()
}

/// Presents one certificate whenever an endpoint asks.
#[derive(Debug)]
struct ClientCertificate(Arc<rustls::sign::CertifiedKey>);

impl ResolvesClientCert for ClientCertificate {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// `backend-tls-verify: "false"`: any certificate is accepted, but the handshake's signatures
/// are still checked with it, so the session is at least bound to that certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.0.signature_verification_algorithms;
        rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(verify: UpstreamVerify) -> UpstreamTls {
        UpstreamTls {
            server_name: "cart.shop.svc".into(),
            verify,
            client_certificate: None,
            source: None,
        }
    }

    #[test]
    fn alpn_follows_the_http_version_and_unusable_roots_are_an_error() {
        let off = tls(UpstreamVerify::Off);
        let http1 = client_config(&off, UpstreamProtocol::Http1).expect("config");
        assert_eq!(http1.alpn_protocols, [b"http/1.1".to_vec()]);
        let http2 = client_config(&off, UpstreamProtocol::Http2).expect("config");
        assert_eq!(http2.alpn_protocols, [b"h2".to_vec()]);
        let garbage = tls(UpstreamVerify::Roots(
            vec![CertificateDer::from(vec![1, 2, 3])].into(),
        ));
        let error = client_config(&garbage, UpstreamProtocol::Http1).unwrap_err();
        assert!(error.contains("no usable CA certificate"), "{error}");
    }

    #[tokio::test]
    async fn each_setting_gets_one_client_and_settings_no_snapshot_holds_are_dropped() {
        let clients = TlsClients::new(HttpConnector::new(), std::time::Duration::from_secs(1));
        let first = Arc::new(tls(UpstreamVerify::Off));
        clients
            .get(&first, UpstreamProtocol::Http1)
            .expect("client");
        clients
            .get(&first, UpstreamProtocol::Http1)
            .expect("client");
        assert_eq!(clients.clients.load().len(), 1);
        clients
            .get(&first, UpstreamProtocol::Http2)
            .expect("client");
        assert_eq!(clients.clients.load().len(), 2);
        drop(first);
        let second = Arc::new(tls(UpstreamVerify::Off));
        clients
            .get(&second, UpstreamProtocol::Http1)
            .expect("client");
        assert_eq!(
            clients.clients.load().len(),
            1,
            "the dropped setting's clients went"
        );
    }
}
