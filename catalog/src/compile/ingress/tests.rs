//! Upstream TLS as compiled onto routes: the HTTP version chosen, trust roots and the name
//! checked, failing closed on a missing Secret or CA, and carrying the setting over unchanged.

use std::collections::BTreeMap;
use std::sync::Arc;

use capstan_table::{
    BackendPolicy, BackendPort, BackendProtocol, Generation, Protocol, RoutePolicy, ServiceKey,
    Snapshot, TlsCertificate, UpstreamProtocol, UpstreamVerify,
};

use super::{upstream_protocol, upstream_tls};
use crate::{
    Catalog, CompileOptions, Ingress, IngressBackend, Object, Origin, Service, ServiceKind,
    ServicePort, SourceId, TargetPort, TlsSecret, Update, compile,
};

fn certificate(name: &str) -> TlsCertificate {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    TlsCertificate::from_pem(name, cert.pem().as_bytes(), key.serialize_pem().as_bytes())
        .expect("parsed")
}

fn secret(name: &str, with_ca: bool) -> TlsSecret {
    let certificate = certificate("client");
    let ca = with_ca.then(|| Arc::from(vec![certificate.certified.cert[0].clone()]));
    TlsSecret {
        namespace: "shop".into(),
        name: name.into(),
        certificate,
        ca,
    }
}

fn https(secret: Option<&str>) -> BackendPolicy {
    BackendPolicy {
        protocol: Some(BackendProtocol::Https),
        tls_secret: secret.map(Into::into),
        ..BackendPolicy::default()
    }
}

#[test]
fn backend_protocol_overrides_the_ports_app_protocol() {
    let none = BackendPolicy::default();
    assert_eq!(
        upstream_protocol(&none, UpstreamProtocol::Http2),
        UpstreamProtocol::Http2
    );
    for (protocol, expected) in [
        (BackendProtocol::Http, UpstreamProtocol::Http1),
        (BackendProtocol::Https, UpstreamProtocol::Http1),
        (BackendProtocol::Grpc, UpstreamProtocol::Http2),
        (BackendProtocol::Grpcs, UpstreamProtocol::Http2),
    ] {
        let backend = BackendPolicy {
            protocol: Some(protocol),
            ..BackendPolicy::default()
        };
        assert_eq!(
            upstream_protocol(&backend, UpstreamProtocol::Http1),
            expected
        );
    }
}

#[test]
fn tls_checks_the_secrets_ca_and_the_services_dns_name_and_presents_its_certificate() {
    let service = ServiceKey::new("shop", "Cart");
    let with_ca = secret("upstream", true);
    let secrets = BTreeMap::from([(("shop", "upstream"), &with_ca)]);
    let tls = upstream_tls(&https(Some("upstream")), &service, &secrets)
        .expect("usable")
        .expect("tls");
    assert_eq!(&*tls.server_name, "cart.shop.svc");
    assert!(matches!(&tls.verify, UpstreamVerify::Roots(roots) if roots.len() == 1));
    assert_eq!(tls.client_certificate.as_ref(), Some(&with_ca.certificate));
    assert_eq!(tls.source.as_deref(), Some("shop/upstream"));

    // Cleartext protocols have no TLS; no Secret means the system's roots.
    let cleartext = BackendPolicy::default();
    assert_eq!(upstream_tls(&cleartext, &service, &secrets), Ok(None));
    let system = upstream_tls(&https(None), &service, &secrets)
        .expect("ok")
        .expect("tls");
    assert!(matches!(system.verify, UpstreamVerify::System));
    assert!(system.client_certificate.is_none());

    // An explicit name and verification off.
    let named = BackendPolicy {
        tls_server_name: Some("cart.internal".into()),
        tls_verify: false,
        ..https(Some("upstream"))
    };
    let tls = upstream_tls(&named, &service, &secrets)
        .expect("ok")
        .expect("tls");
    assert_eq!(&*tls.server_name, "cart.internal");
    assert!(matches!(tls.verify, UpstreamVerify::Off));
}

#[test]
fn a_missing_secret_or_ca_fails_closed_with_its_reason() {
    let service = ServiceKey::new("shop", "cart");
    let no_ca = secret("bare", false);
    let secrets = BTreeMap::from([(("shop", "bare"), &no_ca)]);
    let missing = upstream_tls(&https(Some("absent")), &service, &secrets).unwrap_err();
    assert!(missing.contains("shop/absent not found"), "{missing}");
    let without_ca = upstream_tls(&https(Some("bare")), &service, &secrets).unwrap_err();
    assert!(without_ca.contains("has no ca.crt"), "{without_ca}");
    // Unverified, a Secret without ca.crt still gives the client certificate.
    let unverified = BackendPolicy {
        tls_verify: false,
        ..https(Some("bare"))
    };
    let tls = upstream_tls(&unverified, &service, &secrets)
        .expect("ok")
        .expect("tls");
    assert!(tls.client_certificate.is_some());
}

/// A snapshot of Service `shop/cart` and a standalone Ingress sending everything to it over
/// HTTPS, with the Secret `upstream` (`ca` as its ca.crt).
fn snapshot(secret: &TlsSecret, previous: Option<&Snapshot>, generation: u64) -> Snapshot {
    let key = ServiceKey::new("shop", "cart");
    let service = Service {
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8443),
            node_port: None,
            app_protocol: None,
            listen: vec![],
        }],
        ..Service::new(key.clone(), ServiceKind::ClusterIp)
    };
    let ingress = Ingress {
        namespace: "shop".into(),
        name: "web".into(),
        class_name: None,
        default_backend: Some(IngressBackend {
            service: key,
            port: BackendPort::Number(80),
        }),
        rules: vec![],
        tls: vec![],
        origin: Origin::Standalone,
        policy: Arc::new(RoutePolicy {
            backend: https(Some("upstream")),
            ..RoutePolicy::default()
        }),
    };
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("test"),
        objects: vec![
            Object::Service(service),
            Object::Ingress(ingress),
            Object::TlsSecret(secret.clone()),
        ],
    });
    compile(
        &catalog,
        previous,
        &CompileOptions::default(),
        Generation(generation),
    )
}

#[test]
fn a_routes_tls_setting_is_carried_over_while_equal_and_replaced_when_its_secret_changes() {
    let first_secret = secret("upstream", true);
    let first = snapshot(&first_secret, None, 1);
    let route = |s: &Snapshot| s.ingress.default_backend.clone().expect("route");
    let tls = |s: &Snapshot| route(s).tls.clone().expect("tls");
    assert!(route(&first).upstream.is_some(), "{:?}", first.problems);

    let same = snapshot(&first_secret, Some(&first), 2);
    assert!(
        Arc::ptr_eq(&tls(&first), &tls(&same)),
        "an equal setting is the same Arc"
    );

    let renewed = snapshot(&secret("upstream", true), Some(&same), 3);
    assert!(
        !Arc::ptr_eq(&tls(&same), &tls(&renewed)),
        "a renewed Secret is a new setting"
    );
    assert_ne!(*tls(&same), *tls(&renewed));
}
