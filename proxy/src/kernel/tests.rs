use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{
    BalancePolicy, Endpoint, EndpointConditions, EndpointSet, Frontend, FrontendTarget, Protocol,
    ServiceKey, ServicePortKey, ServicePortTable, Timeouts, TrafficScope, WhenEmpty,
};

use super::diff::Changes;
use super::rules::{KernelSettings, MapKind, MapRef, PortRules, render_port};
use super::*;

fn endpoint(addr: &str) -> Arc<Endpoint> {
    Arc::new(Endpoint {
        addr: addr.parse().expect("addr"),
        conditions: EndpointConditions::READY,
        node_name: None,
        zone: None,
        hints: Default::default(),
        stats: Default::default(),
    })
}

fn set(endpoints: &[&str], when_empty: WhenEmpty) -> EndpointSet {
    EndpointSet {
        endpoints: endpoints.iter().map(|a| endpoint(a)).collect(),
        when_empty,
    }
}

fn frontend(addr: &str, scope: TrafficScope) -> (Frontend, TrafficScope) {
    let addr: SocketAddr = addr.parse().expect("addr");
    (
        Frontend {
            addr,
            protocol: Protocol::Tcp,
        },
        scope,
    )
}

/// A TCP port `default/web:http` with these frontends and sets.
fn port(
    frontends: Vec<(Frontend, TrafficScope)>,
    internal: EndpointSet,
    external: EndpointSet,
) -> ServicePortTable {
    ServicePortTable {
        key: ServicePortKey {
            service: ServiceKey::new("default", "web"),
            port_name: "http".into(),
            protocol: Protocol::Tcp,
        },
        frontends,
        policy: BalancePolicy::Random,
        affinity: None,
        timeouts: Timeouts::default(),
        health: None,
        outlier: Default::default(),
        max_requests_per_endpoint: None,
        max_connections_per_endpoint: None,
        endpoints: internal.endpoints.clone(),
        internal,
        external,
        external_local: false,
        state: Arc::default(),
        inputs: 0,
    }
}

fn pods() -> KernelSettings {
    KernelSettings {
        pod_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        cluster_dns: None,
        programmer: Default::default(),
    }
}

fn element(rules: &PortRules, kind: MapKind, key: &str) -> Option<String> {
    let map = MapRef {
        kind,
        family: rules::Family::V4,
    };
    rules
        .elements
        .iter()
        .find(|((m, k), _)| *m == map && k.to_string() == key)
        .map(|(_, verdict)| verdict.to_string())
}

/// The rules of the first chain named `prefix…`, as nft text.
fn chain(rules: &PortRules, prefix: &str) -> Vec<String> {
    rules
        .chains
        .iter()
        .find(|(name, _)| name.starts_with(prefix))
        .map(|(_, rules)| rules.iter().map(ToString::to_string).collect())
        .unwrap_or_else(|| panic!("no {prefix} chain in {:?}", rules.chains.keys()))
}

#[test]
fn a_cluster_ip_and_node_port_dispatch_to_one_random_choice_with_kube_proxy_masquerading() {
    let mut slots = super::pick::Slots::default();
    let both = set(&["10.244.1.5:8080", "10.244.2.5:8080"], WhenEmpty::Reject);
    let port = port(
        vec![
            frontend("10.96.0.10:80", TrafficScope::Internal),
            frontend("0.0.0.0:30080", TrafficScope::External),
        ],
        both.clone(),
        both,
    );
    let rules = render_port(&port, &HashMap::new(), &pods(), &mut slots);
    let service = element(&rules, MapKind::ServiceIps, "10.96.0.10 . tcp . 80").expect("VIP");
    assert!(service.starts_with("goto service-") && service.ends_with("-default/web/tcp/http"));
    let node_port = element(&rules, MapKind::NodePorts, "tcp . 30080").expect("NodePort");
    assert!(node_port.starts_with("goto external-"), "{node_port}");
    assert_eq!(
        chain(&rules, "service-"),
        [
            "ip daddr 10.96.0.10 th dport 80 jump mark-unless-pod4",
            // The choice is looked up in the chain's slot of the endpoint map.
            "meta l4proto tcp dnat ip to numgen random mod 65536 offset 0 map @endpoints-tcp4-0",
        ]
    );
    let ranges: Vec<String> = rules
        .endpoint_ranges
        .iter()
        .map(|((_, first), (last, to))| format!("{first}-{last} : {to}"))
        .collect();
    assert_eq!(
        ranges,
        ["0-32767 : 10.244.1.5:8080", "32768-65535 : 10.244.2.5:8080"]
    );
    // External traffic under a Cluster policy is always masqueraded (it may cross nodes).
    let external = chain(&rules, "external-");
    assert_eq!(external[0], "jump mark-for-masquerade");
    assert!(external[1].starts_with("goto service-"));
    assert!(rules.hairpin.len() == 2 && rules.sets.is_empty() && rules.udp.is_none());
}

#[test]
fn no_endpoints_rejects_and_no_local_endpoints_drops_what_is_not_short_circuited() {
    let mut slots = super::pick::Slots::default();
    let none = port(
        vec![
            frontend("10.96.0.11:80", TrafficScope::Internal),
            frontend("0.0.0.0:30081", TrafficScope::External),
        ],
        set(&[], WhenEmpty::Reject),
        set(&[], WhenEmpty::Reject),
    );
    let rules = render_port(&none, &HashMap::new(), &pods(), &mut slots);
    assert!(rules.chains.is_empty(), "{:?}", rules.chains);
    let reject = Some("goto reject-chain".to_owned());
    assert_eq!(
        element(&rules, MapKind::NoEndpointServices, "10.96.0.11 . tcp . 80"),
        reject
    );
    assert_eq!(
        element(&rules, MapKind::NoEndpointNodePorts, "tcp . 30081"),
        reject
    );
    assert_eq!(element(&rules, MapKind::NodePorts, "tcp . 30081"), None);

    // externalTrafficPolicy: Local with the only endpoint on another node.
    let mut local = port(
        vec![
            frontend("10.96.0.12:80", TrafficScope::Internal),
            frontend("0.0.0.0:30082", TrafficScope::External),
        ],
        set(&["10.244.2.5:8080"], WhenEmpty::Reject),
        set(&[], WhenEmpty::Drop),
    );
    local.external_local = true;
    let rules = render_port(&local, &HashMap::new(), &pods(), &mut slots);
    let drop = Some("drop".to_owned());
    assert_eq!(
        element(&rules, MapKind::NoEndpointNodePorts, "tcp . 30082"),
        drop
    );
    assert!(element(&rules, MapKind::NodePorts, "tcp . 30082").is_some());
    let external = chain(&rules, "external-");
    assert_eq!(external.len(), 3, "{external:?}");
    assert!(external[0].starts_with("ip saddr 10.244.0.0/16 goto service-"));
    assert_eq!(external[1], "fib saddr type local jump mark-for-masquerade");
    assert!(external[2].starts_with("fib saddr type local goto service-"));
}

#[test]
fn client_ip_affinity_takes_kube_proxy_endpoint_chains_and_timeout_sets() {
    let mut slots = super::pick::Slots::default();
    let both = set(&["10.244.1.5:8080", "10.244.2.5:8080"], WhenEmpty::Reject);
    let mut sticky = port(
        vec![frontend("10.96.0.13:80", TrafficScope::Internal)],
        both.clone(),
        both,
    );
    sticky.affinity = Some(Duration::from_secs(10800));
    let rules = render_port(
        &sticky,
        &HashMap::new(),
        &KernelSettings::default(),
        &mut slots,
    );
    assert_eq!(rules.sets.len(), 2);
    assert!(
        rules
            .sets
            .values()
            .all(|d| d.to_string() == "type ipv4_addr; flags dynamic,timeout; timeout 10800s;")
    );
    let service = chain(&rules, "service-");
    // No pod CIDRs: no masquerade rule; then one affinity check per endpoint, then the
    // random cascade to the endpoint chains.
    assert_eq!(service.len(), 4, "{service:?}");
    assert!(
        service[0].starts_with("ip saddr @affinity-") && service[0].contains(" goto endpoint-")
    );
    assert!(service[2].starts_with("numgen random mod 2 == 0 goto endpoint-"));
    assert!(service[3].starts_with("goto endpoint-"));
    let endpoint = chain(&rules, "endpoint-");
    assert!(endpoint[0].starts_with("update @affinity-") && endpoint[0].ends_with("{ ip saddr }"));
    assert!(endpoint[1].starts_with("meta l4proto tcp dnat ip to 10.244."));
}

#[test]
fn load_balancer_source_ranges_filter_load_balancer_ips_of_their_family_only() {
    let mut slots = super::pick::Slots::default();
    let one = set(&["[fd00::5]:8080"], WhenEmpty::Reject);
    let lb = frontend("[2001:db8::1]:443", TrafficScope::External);
    let port = port(vec![lb], one.clone(), one);
    let targets = HashMap::from([(
        lb.0,
        FrontendTarget {
            port: Arc::new(super::tests::port(
                vec![],
                set(&[], WhenEmpty::Reject),
                set(&[], WhenEmpty::Reject),
            )),
            scope: TrafficScope::External,
            source_ranges: Some(
                vec![
                    "10.0.0.0/8".parse().expect("net"),
                    "2001:db8:1::/48".parse().expect("net"),
                ]
                .into(),
            ),
        },
    )]);
    let rules = render_port(&port, &targets, &KernelSettings::default(), &mut slots);
    let firewall = chain(&rules, "firewall-");
    assert_eq!(firewall, ["ip6 saddr 2001:db8:1::/48 return", "drop"]);
    let map = MapRef {
        kind: MapKind::FirewallIps,
        family: rules::Family::V6,
    };
    assert!(
        rules
            .elements
            .keys()
            .any(|(m, k)| *m == map && k.to_string() == "2001:db8::1 . tcp . 443")
    );
    // IPv6 chains are named apart from the IPv4 ones of the same port.
    assert!(
        chain(&rules, "service-").len() == 1 && rules.chains.keys().all(|n| n.contains("/ipv6"))
    );
}

#[test]
fn an_endpoint_change_is_endpoint_map_elements_and_rewrites_no_rule() {
    let mut slots = super::pick::Slots::default();
    let vip = frontend("10.96.0.10:80", TrafficScope::Internal);
    let before = set(&["10.244.1.5:8080", "10.244.2.5:8080"], WhenEmpty::Reject);
    let after = set(&["10.244.1.5:8080", "10.244.3.5:8080"], WhenEmpty::Reject);
    let settings = KernelSettings::default();
    let old = render_port(
        &port(vec![vip], before.clone(), before),
        &HashMap::new(),
        &settings,
        &mut slots,
    );
    let new = render_port(
        &port(vec![vip], after.clone(), after),
        &HashMap::new(),
        &settings,
        &mut slots,
    );
    let mut changes = Changes::default();
    changes.port(&old, &new);
    let mut script = String::new();
    changes.render(&mut script);
    assert!(changes.filled_chains().is_empty(), "{script}");
    assert_eq!(
        script,
        "delete element inet capstan-services endpoints-tcp4-0 { 32768-65535 }\n\
         add element inet capstan-services endpoints-tcp4-0 { 32768-65535 : 10.244.3.5 . 8080 }\n"
    );

    // The port removed: its elements go, and its chain is emptied (deleted a second later).
    let mut changes = Changes::default();
    changes.port(&new, &PortRules::default());
    let mut script = String::new();
    changes.render(&mut script);
    assert_eq!(
        script.lines().next(),
        Some("delete element inet capstan-services service-ips4 { 10.96.0.10 . tcp . 80 }")
    );
    assert_eq!(changes.stale_chains.len(), 1);
    let lines: Vec<&str> = script.lines().skip(1).collect();
    assert_eq!(
        lines[..2],
        [
            "delete element inet capstan-services endpoints-tcp4-0 { 0-32767, 32768-65535 }",
            "flush chain inet capstan-services service-UARQTUAX-default/web/tcp/http",
        ]
    );

    // Unchanged rules change nothing.
    let mut changes = Changes::default();
    changes.port(&new, &new);
    assert!(changes.is_empty());
}

#[test]
fn chain_names_are_kube_proxy_shaped_stable_and_within_nftables_limits() {
    let mut slots = super::pick::Slots::default();
    let long = "n".repeat(63);
    let key = ServicePortKey {
        service: ServiceKey::new(&long, &long),
        port_name: long.as_str().into(),
        protocol: Protocol::Udp,
    };
    let mut table = port(
        vec![frontend("10.96.0.10:53", TrafficScope::Internal)],
        set(&["10.244.1.5:53"], WhenEmpty::Reject),
        set(&["10.244.1.5:53"], WhenEmpty::Reject),
    );
    table.key = key;
    let first = render_port(
        &table,
        &HashMap::new(),
        &KernelSettings::default(),
        &mut slots,
    );
    let again = render_port(
        &table,
        &HashMap::new(),
        &KernelSettings::default(),
        &mut slots,
    );
    assert_eq!(first, again);
    for name in first.chains.keys() {
        assert!(name.len() <= 255, "{name}");
        let hash = &name["service-".len()..][..8];
        assert!(
            hash.chars()
                .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
        );
    }
    let udp = first.udp.expect("udp translation");
    assert_eq!(udp.endpoints.len(), 1);
}

#[test]
fn only_ports_the_kernel_can_balance_take_the_kernel_path() {
    let one = set(&["10.244.1.5:8080"], WhenEmpty::Reject);
    let vip = frontend("10.96.0.10:80", TrafficScope::Internal);
    let mut table = port(vec![vip], one.clone(), one);
    assert!(kernel_capable(&table));
    table.policy = BalancePolicy::LeastConnections;
    assert!(!kernel_capable(&table));
    table.policy = BalancePolicy::Random;
    table.frontends = vec![frontend("127.0.0.1:8080", TrafficScope::Internal)];
    assert!(
        !kernel_capable(&table),
        "loopback listen addresses stay in user space"
    );
    table.frontends = vec![frontend("0.0.0.0:8080", TrafficScope::Internal)];
    assert!(
        !kernel_capable(&table),
        "standalone wildcard listeners stay in user space"
    );
}

/// The cluster DNS Service's ClusterIP on port 53 is answered locally (NodeLocal DNSCache's
/// arrangement): not dispatched, not rejected without endpoints, listed in `local_dns`; its
/// other ports (CoreDNS's metrics on 9153) stay ordinary Service ports.
#[test]
fn the_cluster_dns_service_port_53_is_answered_locally_and_its_other_ports_are_not() {
    let mut slots = super::pick::Slots::default();
    let settings = KernelSettings {
        cluster_dns: Some(ServiceKey::new("default", "web")),
        ..pods()
    };
    let none = set(&[], WhenEmpty::Reject);
    let dns = port(
        vec![frontend("10.96.0.10:53", TrafficScope::Internal)],
        none.clone(),
        none.clone(),
    );
    let rules = render_port(&dns, &HashMap::new(), &settings, &mut slots);
    assert!(
        rules.elements.is_empty() && rules.chains.is_empty(),
        "{rules:?}"
    );
    assert_eq!(
        rules
            .local_dns
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.96.0.10"]
    );
    let metrics = port(
        vec![frontend("10.96.0.10:9153", TrafficScope::Internal)],
        none.clone(),
        none,
    );
    let rules = render_port(&metrics, &HashMap::new(), &settings, &mut slots);
    assert!(rules.local_dns.is_empty());
    assert_eq!(
        element(
            &rules,
            MapKind::NoEndpointServices,
            "10.96.0.10 . tcp . 9153"
        )
        .as_deref(),
        Some("goto reject-chain")
    );
    // Another Service on port 53 is an ordinary Service.
    let rules = render_port(&dns, &HashMap::new(), &pods(), &mut slots);
    assert!(rules.local_dns.is_empty() && !rules.elements.is_empty());

    let mut changes = Changes::default();
    changes.local_dns(
        ["10.96.0.10".parse().expect("ip")].into(),
        Default::default(),
    );
    let mut script = String::new();
    changes.render(&mut script);
    assert_eq!(
        script,
        "add element inet capstan-services cluster-dns4 { 10.96.0.10 }\n"
    );
    let skeleton = super::skeleton::skeleton(&KernelSettings::default()).render();
    for protocol in ["tcp", "udp"] {
        assert!(skeleton.contains(&format!(
            "ip daddr @cluster-dns4 meta l4proto {protocol} th dport 53 notrack"
        )));
    }
}

/// The cascade (affinity, or every endpoint-map slot taken) is uniform: rule `j` of `N` fires
/// with probability 1/(N-j) among the packets that reach it, so every endpoint gets 1/N
/// (kube-proxy's iptables-mode probabilities).
#[test]
fn the_random_cascade_gives_every_endpoint_an_equal_share() {
    let mut slots = super::pick::Slots::exhausted();
    let addrs: Vec<String> = (1..=7).map(|i| format!("10.244.1.{i}:80")).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let all = set(&refs, WhenEmpty::Reject);
    let vip = frontend("10.96.0.10:80", TrafficScope::Internal);
    let rules = render_port(
        &port(vec![vip], all.clone(), all),
        &HashMap::new(),
        &KernelSettings::default(),
        &mut slots,
    );
    let chain = chain(&rules, "service-");
    assert_eq!(chain.len(), 7);
    let mut reaching = 1.0_f64;
    for rule in &chain {
        let fires = match rule.strip_prefix("numgen random mod ") {
            Some(rest) => {
                let modulus: f64 = rest
                    .split(' ')
                    .next()
                    .and_then(|m| m.parse().ok())
                    .expect("modulus");
                1.0 / modulus
            }
            None => 1.0,
        };
        let share = reaching * fires;
        assert!((share - 1.0 / 7.0).abs() < 1e-12, "{rule}: {share}");
        reaching -= share;
    }
    assert!(reaching.abs() < 1e-12);
}

mod netlink;
