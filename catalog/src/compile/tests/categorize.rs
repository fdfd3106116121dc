//! kube-proxy's endpoint categorisation (pkg/proxy/topology.go): traffic policies, serving and
//! terminating fallback, topology hints and `trafficDistribution`.

use super::*;

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
