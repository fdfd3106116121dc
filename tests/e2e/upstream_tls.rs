//! TLS to upstreams end to end: real rustls backends (one that requires a client certificate),
//! Ingress annotations `capstan.dev/backend-protocol` and `backend-tls-*`, and a `capstan.yaml`
//! route with `backend-tls-ca-file`, through the real binary and curl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_util::sync::CancellationToken;

use crate::http_support::{DEFAULT_CLASS, TestCert, answer, curl, endpoint_slice};
use crate::support::{Capstan, TempDir, frontend, path_str};

/// An HTTPS backend on 127.0.0.1:0 answering like [`crate::http_support::HttpBackend`], plus
/// what the TLS session told it: `x-sni`, `x-alpn`, `x-client-cert` (`yes`/`no`) and `x-conn`
/// (the connection's number, from 1). Stopped on drop.
struct TlsBackend {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    stop: CancellationToken,
}

impl TlsBackend {
    /// Serves `cert`; with `client_ca`, a client certificate signed by it is required.
    fn start(name: &'static str, cert: &TestCert, client_ca: Option<&str>) -> Self {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for ca in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                    roots.add(ca.expect("client ca")).expect("add client ca");
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    roots.into(),
                    provider,
                )
                .build()
                .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let connections = Arc::new(AtomicU64::new(0));
        let (token, count) = (stop.clone(), connections.clone());
        crate::support::on_own_thread(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => continue,
                    },
                    () = token.cancelled() => return,
                };
                let number = count.fetch_add(1, Ordering::Relaxed) + 1;
                let (acceptor, token) = (acceptor.clone(), token.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let facts = [
                        ("x-sni", session.server_name().unwrap_or("-").to_owned()),
                        (
                            "x-alpn",
                            session
                                .alpn_protocol()
                                .map_or("-".into(), |p| String::from_utf8_lossy(p).into_owned()),
                        ),
                        (
                            "x-client-cert",
                            if session.peer_certificates().is_some() {
                                "yes".into()
                            } else {
                                "no".into()
                            },
                        ),
                        ("x-conn", number.to_string()),
                    ];
                    let service = service_fn(move |req| {
                        let facts = facts.clone();
                        async move {
                            let mut response = answer(name, req).await?;
                            for (header, value) in facts {
                                let value = value.parse().expect("header value");
                                response.headers_mut().insert(header, value);
                            }
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection(TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        () = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            stop,
        }
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Service `name` in `demo` (port 80 → `backend`) and an Ingress sending host `name.example`
/// to it with `annotations` (without the `capstan.dev/` prefix).
fn route(name: &str, backend: SocketAddr, annotations: &[(&str, &str)]) -> String {
    let annotations = annotations
        .iter()
        .map(|(k, v)| format!("capstan.dev/{k}: \"{v}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\n\
         spec:\n  clusterIP: None\n  ports: [{{name: http, port: 80, targetPort: http}}]\n{}\
         ---\napiVersion: networking.k8s.io/v1\nkind: Ingress\n\
         metadata: {{name: {name}, namespace: demo, annotations: {{{annotations}}}}}\n\
         spec:\n  rules:\n  - host: {name}.example\n    http:\n      paths:\n      \
         - {{path: /, pathType: Prefix, backend: {{service: {{name: {name}, port: {{number: 80}}}}}}}}\n",
        endpoint_slice(name, &format!("{name}-0"), backend, None),
    )
}

/// A `kubernetes.io/tls` Secret holding `client` as its certificate and key and `ca_pem` as its
/// `ca.crt`.
fn secret_with_ca(name: &str, client: &TestCert, ca_pem: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\n{}  ca.crt: |\n{}",
        client.secret("demo", name),
        indent(ca_pem)
    )
}

fn get(http: SocketAddr, host: &str) -> (u16, String, String) {
    let url = format!("http://{host}:{}/hello", http.port());
    let resolve = format!("{host}:{}:127.0.0.1", http.port());
    curl(&["--resolve", &resolve, &url])
}

#[test]
fn https_and_grpcs_upstreams_verified_with_sni_client_certificates_and_pooled_connections() {
    // Endpoints' certificates name the Services' DNS names, as cert-manager issues them.
    let server = TestCert::new(&["good.demo.svc", "grpcs.demo.svc", "wrong.demo.svc"]);
    let client = TestCert::new(&["capstan-client"]);
    let stranger = TestCert::new(&["stranger"]);
    let mtls = TlsBackend::start("mtls", &server, Some(&client.ca_pem));
    let plain = TlsBackend::start("plain", &server, None);

    let dir = TempDir::new("upstream-tls");
    let manifests = [
        DEFAULT_CLASS.to_owned(),
        secret_with_ca("upstream", &client, &server.ca_pem),
        secret_with_ca("other-ca", &client, &stranger.ca_pem),
        route(
            "good",
            mtls.addr,
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-secret", "upstream"),
            ],
        ),
        route(
            "grpcs",
            plain.addr,
            &[
                ("backend-protocol", "GRPCS"),
                ("backend-tls-secret", "upstream"),
            ],
        ),
        route(
            "wrong",
            plain.addr,
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-secret", "other-ca"),
            ],
        ),
        route(
            "noverify",
            plain.addr,
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-secret", "other-ca"),
                ("backend-tls-verify", "false"),
            ],
        ),
        route(
            "missing",
            plain.addr,
            &[
                ("backend-protocol", "HTTPS"),
                ("backend-tls-secret", "absent"),
            ],
        ),
        route("cleartext", plain.addr, &[]),
    ];
    dir.write("all.yaml", &manifests.concat());
    let capstan = Capstan::start(&["--manifests", path_str(&dir.0), "--http", "127.0.0.1:0"]);
    let http = capstan.ingress_addrs().0.expect("http listener");

    // Verified against the Secret's ca.crt, SNI is the Service's DNS name, and the Secret's
    // certificate is presented to an endpoint that requires one.
    let (status, body, head) = get(http, "good.example");
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(body.contains("backend=mtls"), "{body}");
    assert!(body.contains("version=HTTP/1.1"), "{body}");
    assert!(head.contains("x-sni: good.demo.svc"), "{head}");
    assert!(head.contains("x-alpn: http/1.1"), "{head}");
    assert!(head.contains("x-client-cert: yes"), "{head}");

    // Connections are pooled: 30 requests reuse a few (one per ingress worker, and a second
    // where a request arrives before the last response's connection is back in the pool).
    for _ in 0..30 {
        assert_eq!(get(http, "good.example").0, 200);
    }
    let opened = mtls.connections.load(Ordering::Relaxed);
    assert!(opened <= 10, "31 requests opened {opened} TLS connections");

    // GRPCS: HTTP/2 negotiated by ALPN.
    let (status, body, head) = get(http, "grpcs.example");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("version=HTTP/2.0"), "{body}");
    assert!(head.contains("x-alpn: h2"), "{head}");
    assert!(head.contains("x-sni: grpcs.demo.svc"), "{head}");

    // A certificate the CA did not sign is refused: 502, counted; unchecked when told so.
    let (status, body, _) = get(http, "wrong.example");
    assert_eq!(status, 502, "{body}");
    let (status, body, head) = get(http, "noverify.example");
    assert_eq!(status, 200, "{body}");
    assert!(head.contains("x-sni: noverify.demo.svc"), "{head}");

    // A missing Secret fails closed, named on /debug/snapshot; the rest keeps serving.
    let (status, body, _) = get(http, "missing.example");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("route settings unusable"), "{body}");
    let problems = capstan.snapshot()["problems"].to_string();
    assert!(
        problems.contains("backend-tls-secret demo/absent not found"),
        "{problems}"
    );

    // Without the annotation the route speaks cleartext, which a TLS endpoint refuses: 502.
    assert_eq!(get(http, "cleartext.example").0, 502);

    let metrics = capstan.metrics();
    let errors = metrics
        .lines()
        .find(|l| l.contains("ingress_upstream_errors") && l.contains("wrong.example"))
        .unwrap_or_default()
        .to_owned();
    assert!(errors.ends_with(" 1"), "wrong.example errors: {errors:?}");
    let routes = capstan.snapshot()["ingress"]["routes"].to_string();
    assert!(
        routes.contains("\"server_name\":\"good.demo.svc\""),
        "{routes}"
    );
    assert!(routes.contains("h2 over TLS"), "{routes}");
}

#[test]
fn standalone_route_verifies_its_upstream_against_a_ca_file() {
    let server = TestCert::new(&["api.internal"]);
    let backend = TlsBackend::start("api", &server, None);
    let dir = TempDir::new("upstream-tls-file");
    dir.write("ca.pem", &server.ca_pem);
    let config = dir.write(
        "capstan.yaml",
        &format!(
            "services:\n  api:\n    listen: '{}'\n    backends: [\"{}\"]\n\
             routes:\n  - host: api.example\n    service: api\n    policy:\n      \
             backend-protocol: HTTPS\n      backend-tls-ca-file: ca.pem\n      \
             backend-tls-server-name: api.internal\n",
            frontend(),
            backend.addr
        ),
    );
    let capstan = Capstan::start(&["--config", path_str(&config), "--http", "127.0.0.1:0"]);
    let http = capstan.ingress_addrs().0.expect("http listener");
    let (status, body, head) = get(http, "api.example");
    assert_eq!(status, 200, "{body}\n{}", capstan.logs());
    assert!(body.contains("backend=api"), "{body}");
    assert!(head.contains("x-sni: api.internal"), "{head}");
    assert!(head.contains("x-client-cert: no"), "{head}");
}
