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

fn endpoint(addr: &str, conditions: EndpointConditions, node: Option<&str>) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        addr: sock(addr),
        conditions,
        node_name: node.map(Into::into),
        zone: None,
        hints: Default::default(),
        stats: Arc::default(),
    })
}

type Case<'a> = (
    &'a str,
    &'a [Arc<Endpoint>],
    TrafficPolicy,
    Option<&'a str>,
    &'a [&'a str],
    WhenEmpty,
);

#[test]
fn categorize_follows_kube_proxy() {
    let eps = [
        endpoint("10.0.0.1:80", READY, Some("n1")),
        endpoint("10.0.0.2:80", TERMINATING, Some("n2")),
        endpoint("10.0.0.3:80", NOT_READY, Some("n2")),
    ];
    let cases: &[Case<'_>] = &[
        (
            "ready wins",
            &eps,
            TrafficPolicy::Cluster,
            None,
            &["10.0.0.1:80"],
            WhenEmpty::Reject,
        ),
        (
            "terminating fallback",
            &eps[1..],
            TrafficPolicy::Cluster,
            None,
            &["10.0.0.2:80"],
            WhenEmpty::Reject,
        ),
        (
            "nothing usable",
            &eps[2..],
            TrafficPolicy::Cluster,
            None,
            &[],
            WhenEmpty::Reject,
        ),
        (
            "local ready",
            &eps,
            TrafficPolicy::Local,
            Some("n1"),
            &["10.0.0.1:80"],
            WhenEmpty::Drop,
        ),
        (
            "local terminating fallback",
            &eps,
            TrafficPolicy::Local,
            Some("n2"),
            &["10.0.0.2:80"],
            WhenEmpty::Drop,
        ),
        (
            "no local endpoint drops",
            &eps,
            TrafficPolicy::Local,
            Some("n3"),
            &[],
            WhenEmpty::Drop,
        ),
        (
            "no node name: nothing local",
            &eps,
            TrafficPolicy::Local,
            None,
            &[],
            WhenEmpty::Drop,
        ),
        (
            "local with nothing anywhere rejects",
            &eps[2..],
            TrafficPolicy::Local,
            Some("n2"),
            &[],
            WhenEmpty::Reject,
        ),
    ];
    for (name, endpoints, policy, node, want, when_empty) in cases {
        let node = NodeTopology {
            name: *node,
            zone: None,
        };
        let set = categorize(&Arc::from(endpoints.to_vec()), *policy, node);
        assert_eq!(addrs(&set), *want, "{name}");
        assert_eq!(set.when_empty, *when_empty, "{name}");
    }
}

fn hinted(
    addr: &str,
    conditions: EndpointConditions,
    zones: &[&str],
    nodes: &[&str],
) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        addr: sock(addr),
        conditions,
        node_name: nodes.first().map(|&n| n.into()),
        zone: None,
        hints: TopologyHints {
            zones: zones.iter().map(|&z| z.into()).collect(),
            nodes: nodes.iter().map(|&n| n.into()).collect(),
        },
        stats: Arc::default(),
    })
}

#[test]
fn topology_hints_follow_kube_proxy() {
    let node = |name, zone| NodeTopology {
        name: Some(name),
        zone: Some(zone),
    };
    let a = hinted("10.0.0.1:80", READY, &["z1"], &["n1"]);
    let b = hinted("10.0.0.2:80", READY, &["z1"], &["n2"]);
    let c = hinted("10.0.0.3:80", READY, &["z2"], &["n3"]);
    let zone_only = hinted("10.0.0.4:80", READY, &["z2"], &[]);
    let unhinted = hinted("10.0.0.5:80", READY, &[], &[]);
    let not_ready_unhinted = hinted("10.0.0.6:80", NOT_READY, &[], &[]);
    let terminating_z1 = hinted("10.0.0.7:80", TERMINATING, &["z1"], &[]);
    let terminating_z2 = hinted("10.0.0.8:80", TERMINATING, &["z2"], &[]);
    type TopologyCase<'a> = (&'a str, Vec<Arc<Endpoint>>, NodeTopology<'a>, &'a [&'a str]);
    let cases: &[TopologyCase<'_>] = &[
        (
            "node hints first",
            vec![a.clone(), b.clone(), c.clone()],
            node("n1", "z1"),
            &["10.0.0.1:80"],
        ),
        (
            "no hint for this node: zone hints",
            vec![a.clone(), b.clone(), c.clone()],
            node("n9", "z1"),
            &["10.0.0.1:80", "10.0.0.2:80"],
        ),
        (
            "not every endpoint has node hints: zone hints",
            vec![a.clone(), b.clone(), zone_only.clone()],
            node("n1", "z1"),
            &["10.0.0.1:80", "10.0.0.2:80"],
        ),
        (
            "no hint for this zone: everywhere",
            vec![a.clone(), c.clone()],
            node("n9", "z9"),
            &["10.0.0.1:80", "10.0.0.3:80"],
        ),
        (
            "one endpoint without hints: everywhere",
            vec![a.clone(), c.clone(), unhinted.clone()],
            node("n9", "z2"),
            &["10.0.0.1:80", "10.0.0.3:80", "10.0.0.5:80"],
        ),
        (
            "not-ready endpoints do not count",
            vec![a.clone(), c.clone(), not_ready_unhinted],
            node("n9", "z2"),
            &["10.0.0.3:80"],
        ),
        (
            "node without a zone label: everywhere",
            vec![a.clone(), c.clone()],
            NodeTopology {
                name: Some("n9"),
                zone: None,
            },
            &["10.0.0.1:80", "10.0.0.3:80"],
        ),
        (
            "no ready endpoint: hints unused (kube-proxy looks at ready ones)",
            vec![terminating_z1, terminating_z2],
            node("n9", "z2"),
            &["10.0.0.7:80", "10.0.0.8:80"],
        ),
    ];
    for (name, endpoints, node, want) in cases {
        let set = categorize(&Arc::from(endpoints.clone()), TrafficPolicy::Cluster, *node);
        assert_eq!(addrs(&set), *want, "{name}");
    }
    // Local ignores hints.
    let local = categorize(
        &Arc::from(vec![a, b, c]),
        TrafficPolicy::Local,
        node("n2", "z2"),
    );
    assert_eq!(addrs(&local), ["10.0.0.2:80"]);
}

#[test]
fn traffic_distribution_derives_hints_only_when_slices_have_none() {
    let zoned = |slice_name: &str, eps: &[(&str, &str, &str)], hints: bool| {
        let mut s = slice("web", slice_name, Some(8080), &[]);
        s.endpoints = eps
            .iter()
            .map(|&(addr, node, zone)| SliceEndpoint {
                addresses: vec![ip(addr)],
                conditions: READY,
                hostname: None,
                node_name: Some(node.into()),
                zone: Some(zone.into()),
                zone_hints: if hints { vec!["z1".into()] } else { vec![] },
                node_hints: vec![],
            })
            .collect();
        Object::EndpointSlice(s)
    };
    let options = CompileOptions {
        node_name: Some("n1".into()),
        node_zone: Some("z1".into()),
        ..CompileOptions::default()
    };
    let eligible = |distribution, hints| {
        let service = Service {
            traffic_distribution: distribution,
            ..service("web", "10.0.0.1")
        };
        let eps = [
            ("10.1.0.1", "n1", "z1"),
            ("10.1.0.2", "n2", "z1"),
            ("10.1.0.3", "n3", "z2"),
        ];
        let snap = compile(
            &catalog(vec![Object::Service(service), zoned("web-a", &eps, hints)]),
            None,
            &options,
            Generation(1),
        );
        let port = snap.proxy.ports.values().next().expect("port").clone();
        addrs(&port.internal)
    };
    assert_eq!(eligible(None, false).len(), 3, "no distribution, no hints");
    assert_eq!(
        eligible(Some(TrafficDistribution::PreferSameZone), false),
        ["10.1.0.1:8080", "10.1.0.2:8080"]
    );
    assert_eq!(
        eligible(Some(TrafficDistribution::PreferSameNode), false),
        ["10.1.0.1:8080"]
    );
    // Hints written by a controller win: here every endpoint is hinted for z1.
    assert_eq!(
        eligible(Some(TrafficDistribution::PreferSameNode), true).len(),
        3
    );
}

fn arb_conditions() -> impl Strategy<Value = EndpointConditions> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(ready, serving, terminating)| {
        EndpointConditions {
            ready,
            serving: serving || ready,
            terminating,
        }
    })
}

proptest! {
    #[test]
    fn categorize_invariants(
        conds in proptest::collection::vec((arb_conditions(), 0u8..3), 0..12),
        local in any::<bool>(),
    ) {
        let endpoints: Vec<_> = conds.iter().enumerate().map(|(i, (c, node))| {
            endpoint(&format!("10.0.0.{i}:80"), *c, Some(["n0", "n1", "n2"][*node as usize]))
        }).collect();
        let policy = if local { TrafficPolicy::Local } else { TrafficPolicy::Cluster };
        let node = NodeTopology { name: Some("n0"), zone: None };
        let set = categorize(&Arc::from(endpoints.clone()), policy, node);
        let any_ready = set.endpoints.iter().any(|e| e.conditions.ready);
        for e in set.endpoints.iter() {
            // Never a not-serving endpoint; terminating ones only when no ready one was eligible.
            prop_assert!(e.conditions.ready || (e.conditions.serving && e.conditions.terminating));
            prop_assert!(!any_ready || e.conditions.ready, "ready and fallback never mixed");
            if local {
                prop_assert_eq!(e.node_name.as_deref(), Some("n0"));
            }
        }
        let usable_anywhere = endpoints.iter().any(|e| e.conditions.ready || (e.conditions.serving && e.conditions.terminating));
        if !usable_anywhere {
            prop_assert!(set.endpoints.is_empty());
            prop_assert_eq!(set.when_empty, WhenEmpty::Reject);
        }
        if !local {
            prop_assert_eq!(set.endpoints.is_empty(), !usable_anywhere, "cluster scope uses every usable endpoint");
        }
    }
}
