use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use capstan_table::{
    Endpoint, EndpointConditions, Frontend, Generation, Protocol, ServiceKey, TrafficScope,
    WhenEmpty,
};
use proptest::prelude::*;

use super::*;
use crate::{SliceEndpoint, SlicePort, Update};

const READY: EndpointConditions = EndpointConditions::READY;
const NOT_READY: EndpointConditions = EndpointConditions {
    ready: false,
    serving: false,
    terminating: false,
};
const TERMINATING: EndpointConditions = EndpointConditions {
    ready: false,
    serving: true,
    terminating: true,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn sock(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn service(name: &str, cluster_ip: &str) -> Service {
    Service {
        cluster_ips: vec![ip(cluster_ip)],
        ports: vec![ServicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port: 80,
            target_port: TargetPort::Number(8080),
            node_port: None,
            app_protocol: None,
            listen: vec![],
        }],
        ..Service::new(ServiceKey::new("default", name), ServiceKind::ClusterIp)
    }
}

fn slice(
    service: &str,
    name: &str,
    port: Option<u16>,
    eps: &[(&str, EndpointConditions, Option<&str>)],
) -> EndpointSlice {
    EndpointSlice {
        namespace: "default".into(),
        name: name.into(),
        service: ServiceKey::new("default", service),
        ports: vec![SlicePort {
            name: "http".into(),
            protocol: Protocol::Tcp,
            port,
        }],
        endpoints: eps
            .iter()
            .map(|&(addr, conditions, node)| SliceEndpoint {
                addresses: vec![ip(addr)],
                conditions,
                hostname: None,
                node_name: node.map(Into::into),
                zone: None,
                zone_hints: vec![],
                node_hints: vec![],
            })
            .collect(),
    }
}

fn catalog(objects: Vec<Object>) -> Catalog {
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("test"),
        objects,
    });
    catalog
}

fn build(objects: Vec<Object>) -> Snapshot {
    compile(
        &catalog(objects),
        None,
        &CompileOptions::default(),
        Generation(1),
    )
}

fn addrs(set: &EndpointSet) -> Vec<String> {
    set.endpoints.iter().map(|e| e.addr.to_string()).collect()
}

fn tcp(addr: &str) -> Frontend {
    Frontend {
        addr: sock(addr),
        protocol: Protocol::Tcp,
    }
}

#[test]
fn cluster_ip_service_gets_its_vip_and_slice_endpoints() {
    let snap = build(vec![
        Object::Service(service("web", "10.0.0.1")),
        Object::EndpointSlice(slice(
            "web",
            "web-a",
            Some(8080),
            &[("10.1.0.1", READY, None), ("10.1.0.2", READY, None)],
        )),
        Object::EndpointSlice(slice(
            "web",
            "web-b",
            Some(8080),
            &[("10.1.0.3", READY, None)],
        )),
        Object::EndpointSlice(slice(
            "other",
            "other",
            Some(9),
            &[("10.9.9.9", READY, None)],
        )),
    ]);
    let target = snap
        .proxy
        .target(&tcp("10.0.0.1:80"))
        .expect("vip frontend");
    assert_eq!(target.scope, TrafficScope::Internal);
    assert_eq!(
        addrs(&target.port.internal),
        ["10.1.0.1:8080", "10.1.0.2:8080", "10.1.0.3:8080"],
        "slices are merged per service, other services' slices ignored"
    );
    assert_eq!(snap.proxy.frontends.len(), 1);
    assert!(snap.problems.is_empty());
}

#[test]
fn slice_port_without_number_uses_numeric_target_port_and_name_must_match() {
    let mut svc = service("web", "10.0.0.1");
    svc.ports[0].target_port = TargetPort::Number(9000);
    let mut other_name = slice("web", "b", Some(7000), &[("10.1.0.9", READY, None)]);
    other_name.ports[0].name = "metrics".into();
    let snap = build(vec![
        Object::Service(svc),
        Object::EndpointSlice(slice("web", "a", None, &[("10.1.0.1", READY, None)])),
        Object::EndpointSlice(other_name),
    ]);
    let port = snap.proxy.ports.values().next().expect("port");
    assert_eq!(addrs(&port.internal), ["10.1.0.1:9000"]);
}

#[test]
fn named_target_port_without_slice_port_number_yields_no_endpoint() {
    let mut svc = service("web", "10.0.0.1");
    svc.ports[0].target_port = TargetPort::Name("http".into());
    let snap = build(vec![
        Object::Service(svc),
        Object::EndpointSlice(slice("web", "a", None, &[("10.1.0.1", READY, None)])),
    ]);
    let port = snap.proxy.ports.values().next().expect("port");
    assert!(port.endpoints.is_empty());
    assert_eq!(port.internal.when_empty, WhenEmpty::Reject);
}

#[test]
fn node_port_and_load_balancer_frontends_use_the_external_scope() {
    let mut svc = service("web", "10.0.0.1");
    svc.kind = ServiceKind::LoadBalancer;
    svc.ports[0].node_port = Some(30080);
    svc.external_ips = vec![ip("192.0.2.7")];
    svc.load_balancer_ips = vec![ip("198.51.100.1")];
    let options = CompileOptions {
        node_port_addresses: vec![ip("127.0.0.1")],
        ..CompileOptions::default()
    };
    let snap = compile(
        &catalog(vec![Object::Service(svc)]),
        None,
        &options,
        Generation(1),
    );
    let scope = |a: &str| snap.proxy.target(&tcp(a)).map(|t| t.scope);
    assert_eq!(scope("10.0.0.1:80"), Some(TrafficScope::Internal));
    assert_eq!(scope("192.0.2.7:80"), Some(TrafficScope::External));
    assert_eq!(scope("198.51.100.1:80"), Some(TrafficScope::External));
    assert_eq!(scope("127.0.0.1:30080"), Some(TrafficScope::External));
    assert_eq!(snap.proxy.frontends.len(), 4);
}

#[test]
fn load_balancer_source_ranges_fence_only_the_load_balancer_ips() {
    let mut svc = service("web", "10.0.0.1");
    svc.kind = ServiceKind::LoadBalancer;
    svc.ports[0].node_port = Some(30080);
    svc.external_ips = vec![ip("192.0.2.7")];
    svc.load_balancer_ips = vec![ip("198.51.100.1")];
    svc.load_balancer_source_ranges = vec!["203.0.113.0/24".parse().expect("cidr")];
    let snap = build(vec![Object::Service(svc.clone())]);
    let admits = |frontend: &str, client: &str| {
        snap.proxy
            .target(&tcp(frontend))
            .expect("frontend")
            .admits(ip(client))
    };
    assert!(admits("198.51.100.1:80", "203.0.113.9"));
    assert!(!admits("198.51.100.1:80", "192.0.2.1"));
    // As kube-proxy: the ClusterIP, external IPs and NodePorts are not fenced.
    for frontend in ["10.0.0.1:80", "192.0.2.7:80", "0.0.0.0:30080"] {
        assert!(admits(frontend, "192.0.2.1"), "{frontend}");
    }
    // Only type LoadBalancer honours the field.
    svc.kind = ServiceKind::NodePort;
    let snap = build(vec![Object::Service(svc)]);
    let target = snap.proxy.target(&tcp("198.51.100.1:80")).expect("lb ip");
    assert!(target.admits(ip("192.0.2.1")));
}

#[test]
fn node_port_on_a_cluster_ip_service_is_ignored_and_defaults_to_all_addresses() {
    let mut cluster_ip = service("a", "10.0.0.1");
    cluster_ip.ports[0].node_port = Some(30001);
    let mut node_port = service("b", "10.0.0.2");
    node_port.kind = ServiceKind::NodePort;
    node_port.ports[0].node_port = Some(30002);
    let snap = build(vec![
        Object::Service(cluster_ip),
        Object::Service(node_port),
    ]);
    assert!(snap.proxy.target(&tcp("0.0.0.0:30001")).is_none());
    assert!(snap.proxy.target(&tcp("0.0.0.0:30002")).is_some());
}

#[test]
fn headless_and_external_name_services_have_no_frontends() {
    let mut headless = service("headless", "10.0.0.1");
    headless.cluster_ips.clear();
    let mut external = service("ext", "10.0.0.2");
    external.kind = ServiceKind::ExternalName("example.com".into());
    let snap = build(vec![Object::Service(headless), Object::Service(external)]);
    assert!(snap.proxy.frontends.is_empty());
}

#[test]
fn services_of_another_proxy_get_no_frontends_but_keep_dns_and_endpoints() {
    let other = Service {
        proxy_name: Some("other-proxy".into()),
        ..service("other", "10.0.0.2")
    };
    let objects = || {
        vec![
            Object::Service(service("mine", "10.0.0.1")),
            Object::Service(other.clone()),
            Object::EndpointSlice(slice(
                "other",
                "other",
                Some(80),
                &[("10.1.0.1", READY, None)],
            )),
        ]
    };
    let snap = build(objects());
    assert!(snap.proxy.frontends.contains_key(&tcp("10.0.0.1:80")));
    assert!(!snap.proxy.frontends.contains_key(&tcp("10.0.0.2:80")));
    let port = snap
        .proxy
        .ports
        .values()
        .find(|p| &*p.key.service.name == "other");
    assert_eq!(
        port.map(|p| p.endpoints.len()),
        Some(1),
        "still an Ingress backend"
    );
    assert!(
        snap.dns.reverse.contains_key(&ip("10.0.0.2")),
        "still named in DNS"
    );

    let options = CompileOptions {
        proxy_name: Some("other-proxy".into()),
        ..CompileOptions::default()
    };
    let snap = compile(&catalog(objects()), None, &options, Generation(1));
    assert!(!snap.proxy.frontends.contains_key(&tcp("10.0.0.1:80")));
    assert!(snap.proxy.frontends.contains_key(&tcp("10.0.0.2:80")));
}

/// kube-proxy's informers exclude `service.kubernetes.io/headless` (cmd/kube-proxy/app/server.go).
#[test]
fn services_labelled_headless_are_not_proxied_but_keep_dns() {
    let labelled = Service {
        headless_label: true,
        ..service("labelled", "10.0.0.3")
    };
    let snap = build(vec![Object::Service(labelled)]);
    assert!(!snap.proxy.frontends.contains_key(&tcp("10.0.0.3:80")));
    assert!(snap.dns.reverse.contains_key(&ip("10.0.0.3")));
}

#[test]
fn health_check_node_ports_count_distinct_ready_local_addresses() {
    let lb = |policy| Service {
        kind: ServiceKind::LoadBalancer,
        external_traffic_policy: policy,
        health_check_node_port: Some(31000),
        ..service("lb", "10.0.0.9")
    };
    let eps = [
        ("10.1.0.1", READY, Some("n1")),
        ("10.1.0.2", READY, Some("n1")),
        ("10.1.0.3", NOT_READY, Some("n1")),
        ("10.1.0.4", READY, Some("n2")),
    ];
    let options = CompileOptions {
        node_name: Some("n1".into()),
        ..CompileOptions::default()
    };
    let build_with = |service: Service| {
        let objects = vec![
            Object::Service(service),
            // The same addresses under a second slice (another port) count once.
            Object::EndpointSlice(slice("lb", "lb-a", Some(80), &eps)),
            Object::EndpointSlice(slice("lb", "lb-b", Some(81), &eps)),
        ];
        compile(&catalog(objects), None, &options, Generation(1))
    };
    let snap = build_with(lb(TrafficPolicy::Local));
    let check = snap.proxy.health_checks.get(&31000).expect("health check");
    assert_eq!(check.local_endpoints, 2);
    assert_eq!(check.service, ServiceKey::new("default", "lb"));
    assert!(
        build_with(lb(TrafficPolicy::Cluster))
            .proxy
            .health_checks
            .is_empty()
    );
}

#[test]
fn conflicting_frontends_keep_the_first_and_report_the_second() {
    let snap = build(vec![
        Object::Service(service("a", "10.0.0.1")),
        Object::Service(service("b", "10.0.0.1")),
    ]);
    let owner = &snap.proxy.target(&tcp("10.0.0.1:80")).expect("owned").port;
    assert_eq!(&*owner.key.service.name, "a");
    assert_eq!(snap.problems.len(), 1);
    assert!(
        snap.problems[0]
            .message
            .contains("already served by default/a")
    );
    let loser = snap
        .proxy
        .ports
        .values()
        .find(|p| &*p.key.service.name == "b");
    assert!(loser.expect("b still compiled").frontends.is_empty());
}

#[test]
fn duplicate_addresses_keep_the_readiest_conditions() {
    let snap = build(vec![
        Object::Service(service("web", "10.0.0.1")),
        Object::EndpointSlice(slice(
            "web",
            "a",
            Some(80),
            &[("10.1.0.1", NOT_READY, None)],
        )),
        Object::EndpointSlice(slice("web", "b", Some(80), &[("10.1.0.1", READY, None)])),
    ]);
    let port = snap.proxy.ports.values().next().expect("port");
    assert_eq!(port.endpoints.len(), 1);
    assert!(port.endpoints[0].conditions.ready);
}

#[test]
fn publish_not_ready_addresses_makes_every_endpoint_ready() {
    let mut svc = service("web", "10.0.0.1");
    svc.publish_not_ready_addresses = true;
    let snap = build(vec![
        Object::Service(svc),
        Object::EndpointSlice(slice(
            "web",
            "a",
            Some(80),
            &[("10.1.0.1", NOT_READY, None)],
        )),
    ]);
    let port = snap.proxy.ports.values().next().expect("port");
    assert_eq!(addrs(&port.internal), ["10.1.0.1:80"]);
}

#[test]
fn live_state_is_carried_over_by_port_and_address() {
    let objects = vec![
        Object::Service(service("web", "10.0.0.1")),
        Object::EndpointSlice(slice("web", "a", Some(80), &[("10.1.0.1", READY, None)])),
    ];
    let first = build(objects.clone());
    let port = first.proxy.ports.values().next().expect("port");
    port.endpoints[0]
        .stats
        .in_flight
        .store(7, Ordering::Relaxed);
    port.state.counters.connections.store(42, Ordering::Relaxed);

    let mut objects = objects;
    objects.push(Object::EndpointSlice(slice(
        "web",
        "b",
        Some(80),
        &[("10.1.0.2", READY, None)],
    )));
    let second = compile(
        &catalog(objects),
        Some(&first),
        &CompileOptions::default(),
        Generation(2),
    );
    let port = second.proxy.ports.values().next().expect("port");
    assert_eq!(port.state.counters.connections.load(Ordering::Relaxed), 42);
    let in_flight: Vec<u64> = port
        .endpoints
        .iter()
        .map(|e| e.stats.in_flight.load(Ordering::Relaxed))
        .collect();
    assert_eq!(in_flight, [7, 0]);
}

#[test]
fn tables_whose_inputs_did_not_change_are_reused_as_they_are() {
    let mut catalog = catalog(vec![
        Object::Service(service("web", "10.0.0.1")),
        Object::EndpointSlice(slice(
            "web",
            "web-1",
            Some(80),
            &[("10.1.0.1", READY, None)],
        )),
        Object::Service(service("api", "10.0.0.2")),
        Object::EndpointSlice(slice(
            "api",
            "api-1",
            Some(80),
            &[("10.1.0.2", READY, None)],
        )),
    ]);
    let options = CompileOptions::default();
    let first = compile(&catalog, None, &options, Generation(1));
    let port = |snap: &Snapshot, name: &str| {
        snap.proxy
            .ports
            .iter()
            .find(|(k, _)| &*k.service.name == name)
            .map(|(_, t)| t.clone())
            .expect("port")
    };
    let second = compile(&catalog, Some(&first), &options, Generation(2));
    assert!(Arc::ptr_eq(&port(&first, "web"), &port(&second, "web")));
    assert!(
        Arc::ptr_eq(&first.dns, &second.dns),
        "the DNS table and its serial stand"
    );

    // One slice changes: only its Service's table is rebuilt, and DNS (a ClusterIP Service's
    // names do not depend on its endpoints) stands.
    catalog.apply(Update::Upsert {
        source: SourceId::new("test"),
        object: Box::new(Object::EndpointSlice(slice(
            "api",
            "api-1",
            Some(80),
            &[("10.1.0.3", READY, None)],
        ))),
    });
    let third = compile(&catalog, Some(&second), &options, Generation(3));
    assert!(Arc::ptr_eq(&port(&second, "web"), &port(&third, "web")));
    assert!(!Arc::ptr_eq(&port(&second, "api"), &port(&third, "api")));
    assert_eq!(addrs(&port(&third, "api").internal), ["10.1.0.3:80"]);
    assert!(Arc::ptr_eq(&second.dns, &third.dns));
    let target = third.proxy.target(&tcp("10.0.0.2:80")).expect("frontend");
    assert!(Arc::ptr_eq(&target.port, &port(&third, "api")));

    // A Service change rebuilds its table and DNS; other options rebuild everything.
    let mut moved = service("api", "10.0.0.9");
    moved.ports[0].port = 81;
    catalog.apply(Update::Upsert {
        source: SourceId::new("test"),
        object: Box::new(Object::Service(moved)),
    });
    let fourth = compile(&catalog, Some(&third), &options, Generation(4));
    assert!(!Arc::ptr_eq(&third.dns, &fourth.dns));
    assert!(fourth.proxy.target(&tcp("10.0.0.9:81")).is_some());
    let other = CompileOptions {
        node_name: Some("node-a".into()),
        ..CompileOptions::default()
    };
    let fifth = compile(&catalog, Some(&fourth), &other, Generation(5));
    assert!(!Arc::ptr_eq(&port(&fourth, "web"), &port(&fifth, "web")));
}

#[test]
fn a_headless_services_slices_feed_dns() {
    let mut headless = service("db", "10.0.0.1");
    headless.cluster_ips.clear();
    let mut catalog = catalog(vec![
        Object::Service(headless),
        Object::EndpointSlice(slice("db", "db-1", Some(80), &[("10.1.0.1", READY, None)])),
    ]);
    let options = CompileOptions::default();
    let first = compile(&catalog, None, &options, Generation(1));
    catalog.apply(Update::Upsert {
        source: SourceId::new("test"),
        object: Box::new(Object::EndpointSlice(slice(
            "db",
            "db-1",
            Some(80),
            &[("10.1.0.7", READY, None)],
        ))),
    });
    let second = compile(&catalog, Some(&first), &options, Generation(2));
    assert!(!Arc::ptr_eq(&first.dns, &second.dns));
    let node = second
        .dns
        .names
        .get("db.default.svc.cluster.local")
        .expect("name");
    assert_eq!(
        node.a,
        ["10.1.0.7".parse::<std::net::Ipv4Addr>().expect("ip")]
    );
}

/// CoreDNS answers NXDOMAIN for a headless Service without ready endpoints (plugin/kubernetes
/// findServices → errNoItems), not NOERROR with no data.
#[test]
fn a_headless_service_without_ready_endpoints_has_no_name() {
    let mut headless = service("db", "10.0.0.1");
    headless.cluster_ips.clear();
    let snap = build(vec![
        Object::Service(headless),
        Object::EndpointSlice(slice(
            "db",
            "db-1",
            Some(80),
            &[("10.1.0.1", NOT_READY, None)],
        )),
    ]);
    assert!(!snap.dns.names.contains_key("db.default.svc.cluster.local"));
    assert!(
        !snap
            .dns
            .names
            .contains_key("10-1-0-1.db.default.svc.cluster.local")
    );
}

#[test]
fn per_service_overrides_beat_defaults() {
    let mut svc = service("web", "10.0.0.1");
    svc.balance = Some(BalancePolicy::RoundRobin);
    svc.connect_timeout = Some(Duration::from_millis(250));
    svc.session_affinity = Some(Duration::from_secs(60));
    let snap = build(vec![Object::Service(svc)]);
    let port = snap.proxy.ports.values().next().expect("port");
    assert_eq!(port.policy, BalancePolicy::RoundRobin);
    assert_eq!(port.timeouts.connect, Duration::from_millis(250));
    assert_eq!(port.timeouts.idle, Timeouts::default().idle);
    assert_eq!(port.affinity, Some(Duration::from_secs(60)));
}

mod categorize;
