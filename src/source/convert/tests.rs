use std::time::Duration;

use capstan_catalog::{ServiceKind, TargetPort, TrafficPolicy};
use capstan_table::{BalancePolicy, Protocol};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::discovery::v1 as discovery;
use k8s_openapi::api::networking::v1 as networking;

use super::*;

fn svc(yaml: &str) -> core::Service {
    serde_saphyr::from_str(yaml).expect("valid yaml")
}

fn eps(yaml: &str) -> discovery::EndpointSlice {
    serde_saphyr::from_str(yaml).expect("valid yaml")
}

#[test]
fn service_fields_are_converted_with_api_defaults() {
    let s = service(&svc("metadata: {name: web, namespace: shop}\n\
         spec:\n  clusterIP: 10.0.0.1\n  ports:\n  - {port: 80}\n"))
    .expect("valid");
    assert_eq!(s.key.to_string(), "shop/web");
    assert_eq!(s.kind, ServiceKind::ClusterIp);
    assert_eq!(s.cluster_ips, ["10.0.0.1".parse::<IpAddr>().expect("ip")]);
    let port = &s.ports[0];
    assert_eq!(
        (&*port.name, port.protocol, port.port),
        ("", Protocol::Tcp, 80)
    );
    assert_eq!(
        port.target_port,
        TargetPort::Number(80),
        "targetPort defaults to port"
    );
    assert_eq!(s.session_affinity, None);
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Cluster);
    assert!(!s.publish_not_ready_addresses);
    assert_eq!(s.balance, None);
}

#[test]
fn load_balancer_source_ranges_are_trimmed_normalised_and_validated() {
    let s = service(&svc("metadata: {name: lb}\n\
         spec:\n  type: LoadBalancer\n  clusterIP: 10.0.0.1\n  ports: [{port: 80}]\n  \
         loadBalancerSourceRanges: [' 10.1.2.3/8 ', '2001:db8::/32']\n"))
    .expect("valid");
    let ranges: Vec<String> = s
        .load_balancer_source_ranges
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ranges, ["10.0.0.0/8", "2001:db8::/32"]);
    let error = service(&svc("metadata: {name: lb}\n\
         spec:\n  type: LoadBalancer\n  ports: [{port: 80}]\n  \
         loadBalancerSourceRanges: [10.0.0.0]\n"))
    .expect_err("not a CIDR");
    assert!(
        error.to_string().contains("loadBalancerSourceRanges"),
        "{error}"
    );
}

#[test]
fn every_service_type_and_policy() {
    let s = service(&svc(
        "metadata:\n  name: lb\n  annotations: {capstan.dev/load-balancer: round-robin}\n\
         spec:\n  type: LoadBalancer\n  clusterIPs: [10.0.0.2, 'fd00::2']\n  externalIPs: [192.0.2.1]\n\
         \x20 sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n\
         \x20 internalTrafficPolicy: Local\n  externalTrafficPolicy: Local\n  publishNotReadyAddresses: true\n\
         \x20 ports:\n  - {name: http, port: 80, targetPort: web, nodePort: 30080, protocol: TCP}\n\
         \x20 - {name: dns, port: 53, targetPort: 5353, protocol: UDP}\n\
         status: {loadBalancer: {ingress: [{ip: 198.51.100.1}, {hostname: lb.example.com}]}}\n",
    ))
    .expect("valid");
    assert_eq!(s.kind, ServiceKind::LoadBalancer);
    assert_eq!(s.cluster_ips.len(), 2, "dual-stack clusterIPs");
    assert_eq!(s.external_ips.len(), 1);
    assert_eq!(
        s.load_balancer_ips,
        ["198.51.100.1".parse::<IpAddr>().expect("ip")]
    );
    assert_eq!(s.session_affinity, Some(Duration::from_secs(60)));
    assert_eq!(s.internal_traffic_policy, TrafficPolicy::Local);
    assert_eq!(s.external_traffic_policy, TrafficPolicy::Local);
    assert!(s.publish_not_ready_addresses);
    assert_eq!(s.balance, Some(BalancePolicy::RoundRobin));
    assert_eq!(s.ports[0].target_port, TargetPort::Name("web".into()));
    assert_eq!(s.ports[0].node_port, Some(30080));
    assert_eq!(s.ports[1].protocol, Protocol::Udp);
    assert_eq!(s.ports[1].target_port, TargetPort::Number(5353));

    let affinity = service(&svc(
        "metadata: {name: a}\nspec: {sessionAffinity: ClientIP, clusterIP: None}\n",
    ))
    .expect("valid");
    assert_eq!(
        affinity.session_affinity,
        Some(Duration::from_secs(10_800)),
        "kube default 3h"
    );
    assert!(affinity.is_headless());

    let external = service(&svc(
        "metadata: {name: e}\nspec: {type: ExternalName, externalName: example.com}\n",
    ))
    .expect("valid");
    assert_eq!(
        external.kind,
        ServiceKind::ExternalName("example.com".into())
    );
    assert!(
        service(&svc(
            "metadata: {name: n}\nspec: {type: NodePort, ports: [{port: 80, nodePort: 30001}]}\n"
        ))
        .is_ok()
    );
}

#[test]
fn invalid_services_say_why() {
    let cases = [
        (
            "metadata: {name: a}\nspec: {type: Bogus}\n",
            "unknown spec.type",
        ),
        (
            "metadata: {name: a}\nspec: {clusterIP: 10.0.0.300}\n",
            "not an IP address",
        ),
        (
            "metadata: {name: a}\nspec: {ports: [{port: 70000}]}\n",
            "out of range",
        ),
        (
            "metadata: {name: a}\nspec: {ports: [{port: 80, protocol: ICMP}]}\n",
            "unknown protocol",
        ),
        (
            "metadata: {name: a}\nspec: {internalTrafficPolicy: Nearby}\n",
            "unknown traffic policy",
        ),
        (
            "metadata: {name: a, annotations: {capstan.dev/load-balancer: fastest}}\n",
            "unknown load-balancing policy",
        ),
        (
            "metadata: {name: a}\nspec: {ports: [{port: 80}, {port: 81, name: b}]}\n",
            "must be named",
        ),
        (
            "metadata: {name: a}\nspec: {type: ExternalName}\n",
            "needs spec.externalName",
        ),
        ("metadata: {namespace: x}\n", "metadata.name is required"),
    ];
    for (yaml, want) in cases {
        let error = service(&svc(yaml)).expect_err(yaml).to_string();
        assert!(error.contains(want), "{yaml}: {error}");
    }
}

#[test]
fn endpoint_slice_conditions_default_as_the_api_says() {
    let slice = endpoint_slice(&eps(
        "metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}, {name: dns, protocol: UDP}]\n\
         endpoints:\n\
         - {addresses: [10.1.0.1]}\n\
         - {addresses: [10.1.0.2], conditions: {ready: false}}\n\
         - addresses: [10.1.0.3]\n  conditions: {ready: false, serving: true, terminating: true}\n  \
           nodeName: n1\n  zone: z1\n  hostname: pod-3\n  hints: {forZones: [{name: z1}]}\n",
    ))
    .expect("valid")
    .expect("not FQDN");
    assert_eq!(slice.service.to_string(), "shop/web");
    assert_eq!(slice.ports[1].port, None);
    assert_eq!(slice.ports[1].protocol, Protocol::Udp);
    let c: Vec<_> = slice.endpoints.iter().map(|e| e.conditions).collect();
    assert_eq!(c[0], EndpointConditions::READY, "nil ready means ready");
    assert!(
        !c[1].ready && !c[1].serving && !c[1].terminating,
        "nil serving follows ready"
    );
    assert!(!c[2].ready && c[2].serving && c[2].terminating);
    let third = &slice.endpoints[2];
    assert_eq!(third.node_name.as_deref(), Some("n1"));
    assert_eq!(third.zone.as_deref(), Some("z1"));
    assert_eq!(third.hostname.as_deref(), Some("pod-3"));
    assert_eq!(third.zone_hints, ["z1"]);
}

#[test]
fn endpoint_slice_errors_and_fqdn() {
    let fqdn = eps(
        "metadata: {name: f, labels: {kubernetes.io/service-name: web}}\naddressType: FQDN\nendpoints: []\n",
    );
    assert!(endpoint_slice(&fqdn).expect("fine").is_none());
    let cases = [
        (
            "metadata: {name: s}\naddressType: IPv4\nendpoints: []\n",
            "kubernetes.io/service-name",
        ),
        (
            "metadata: {name: s, labels: {kubernetes.io/service-name: w}}\naddressType: IPv4\nendpoints: [{addresses: [nope]}]\n",
            "not an IP",
        ),
        (
            "metadata: {name: s, labels: {kubernetes.io/service-name: w}}\naddressType: IPv4\nendpoints: [{addresses: []}]\n",
            "at least one address",
        ),
        (
            "metadata: {name: s, labels: {kubernetes.io/service-name: w}}\naddressType: Bogus\nendpoints: []\n",
            "unknown addressType",
        ),
        (
            "metadata: {name: s, labels: {kubernetes.io/service-name: w}}\naddressType: IPv4\nports: [{port: 0}]\nendpoints: []\n",
            "out of range",
        ),
    ];
    for (yaml, want) in cases {
        let error = endpoint_slice(&eps(yaml)).expect_err(yaml).to_string();
        assert!(error.contains(want), "{yaml}: {error}");
    }
}

#[test]
fn capstan_annotations_become_policy_and_bad_ones_refuse_the_object() {
    let s = service(&svc(
        "metadata:\n  name: web\n  annotations:\n    capstan.dev/load-balancer: round-robin\n\
         \x20   capstan.dev/health-check-path: /ready\n    capstan.dev/outlier-consecutive-gateway-errors: '3'\n\
         \x20   other.example/ignored: x\n\
         spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
    ))
    .expect("valid");
    assert_eq!(&*s.policy.health.expect("health").path, "/ready");
    assert_eq!(s.policy.outlier.consecutive_gateway_errors, Some(3));
    let bad = service(&svc(
        "metadata:\n  name: web\n  annotations: {capstan.dev/health-check-interval: soon, capstan.dev/health-check-path: /}\n\
         spec: {clusterIP: 10.0.0.1, ports: [{port: 80}]}\n",
    ))
    .expect_err("bad interval");
    assert!(
        bad.to_string()
            .contains("annotations capstan.dev/*: health-check-interval: \"soon\""),
        "{bad}"
    );

    let ing = |annotations: &str| -> networking::Ingress {
        serde_saphyr::from_str(&format!(
            "metadata: {{name: shop, namespace: web, annotations: {{{annotations}}}}}\n\
             spec: {{defaultBackend: {{service: {{name: web, port: {{number: 80}}}}}}}}\n"
        ))
        .expect("valid yaml")
    };
    let converted = ingress(&ing(
        "capstan.dev/retries: '1', capstan.dev/retry-on: '503'",
    ))
    .expect("valid");
    assert_eq!(converted.policy.retry.retries, 1);
    assert_eq!(converted.policy.retry.on.statuses, [503]);
    let typo = ingress(&ing("capstan.dev/retires: '1'")).expect_err("typo");
    assert!(
        typo.to_string().contains("unknown policy key \"retires\""),
        "{typo}"
    );
}

fn secret_yaml(yaml: &str) -> core::Secret {
    serde_saphyr::from_str(yaml).expect("valid yaml")
}

#[test]
fn labelled_secrets_are_basic_auth_users_as_auth_file_or_auth_map() {
    let labels = "labels: {capstan.dev/basic-auth: \"true\"}";
    let file = secret_yaml(&format!(
        "metadata: {{name: users, namespace: shop, {labels}}}\nstringData:\n  auth: |\n    alice:{{PLAIN}}a\n    bob:{{PLAIN}}b\n"
    ));
    let users = auth_secret(&file).expect("valid").expect("ours").users;
    assert_eq!(users.users.len(), 2);
    assert_eq!(&*users.source, "shop/users");
    // auth-map: each key a user (`data` is base64: `{PLAIN}c`).
    let map = secret_yaml(&format!(
        "metadata: {{name: map, namespace: shop, {labels}}}\ndata: {{carol: e1BMQUlOfWM=}}\n"
    ));
    let users = auth_secret(&map).expect("valid").expect("ours").users;
    assert_eq!(users.users["carol"].scheme(), "plain");

    // Unlabelled, or TLS: not a basic-auth Secret.
    let unlabelled =
        secret_yaml("metadata: {name: x, namespace: shop}\nstringData: {auth: \"a:{PLAIN}b\"}\n");
    assert_eq!(auth_secret(&unlabelled).expect("ok"), None);
    assert!(secret(&unlabelled).expect("ok").is_none());
    let tls = secret_yaml(&format!(
        "metadata: {{name: t, namespace: shop, {labels}}}\ntype: kubernetes.io/tls\n"
    ));
    assert_eq!(auth_secret(&tls).expect("ok"), None);

    // A broken one is refused with the user and reason.
    let broken = secret_yaml(&format!(
        "metadata: {{name: b, namespace: shop, {labels}}}\nstringData: {{auth: \"dave:$1$abc$def\"}}\n"
    ));
    let error = auth_secret(&broken).unwrap_err().to_string();
    assert!(
        error.contains("user dave: unsupported hash scheme"),
        "{error}"
    );
}
