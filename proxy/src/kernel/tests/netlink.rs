//! The netlink programmer against the `nft` one, in throwaway network namespaces (root only):
//! the same transactions written both ways must leave tables that `nft list` prints the same.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use capstan_table::{FrontendTarget, Protocol, TrafficScope, WhenEmpty};
use nix::sched::{CloneFlags, unshare};

use super::super::diff::Changes;
use super::super::encode::Transaction;
use super::super::rules::{self, KernelSettings, PortRules, render_port};
use super::{frontend, port, set};

fn can_run() -> bool {
    nix::unistd::geteuid().is_root()
        && Command::new("nft")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
}

/// Runs `f` on a thread of its own in a new, empty network namespace.
fn in_new_namespace<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                unshare(CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
                f()
            })
            .join()
            .expect("namespace thread")
    })
}

fn nft_run(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nft");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("write");
    let output = child.wait_with_output().expect("nft");
    assert!(
        output.status.success(),
        "nft: {}\n{script}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn nft_list() -> String {
    let output = Command::new("nft")
        .args(["list", "table", "inet", rules::TABLE])
        .output()
        .expect("nft list");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).expect("utf-8")
}

fn settings() -> KernelSettings {
    KernelSettings {
        pod_cidrs: vec![
            "10.244.0.0/16".parse().expect("cidr"),
            "10.245.0.0/20".parse().expect("cidr"),
            "fd00:10:244::/56".parse().expect("cidr"),
        ],
        cluster_dns: None,
        programmer: Default::default(),
    }
}

fn target(ranges: Vec<ipnet::IpNet>) -> FrontendTarget {
    let none = || set(&[], WhenEmpty::Reject);
    FrontendTarget {
        port: Arc::new(port(vec![], none(), none())),
        scope: TrafficScope::External,
        source_ranges: Some(ranges.into()),
    }
}

/// Every shape of rule the data path writes: ClusterIP and NodePort, affinity, a `Local`
/// policy, LoadBalancer source ranges on both families, UDP, no endpoints, IPv6.
fn ports(generation: u8) -> Vec<PortRules> {
    let mut slots = super::super::pick::Slots::default();
    let settings = settings();
    let mut out = Vec::new();
    let web_endpoints: Vec<String> = (1..=3 + generation)
        .map(|i| format!("10.244.1.{i}:8080"))
        .collect();
    let refs: Vec<&str> = web_endpoints.iter().map(String::as_str).collect();
    let web = port(
        vec![
            frontend("10.96.0.10:80", TrafficScope::Internal),
            frontend("0.0.0.0:30080", TrafficScope::External),
            frontend("192.0.2.10:80", TrafficScope::External),
        ],
        set(&refs, WhenEmpty::Reject),
        set(&refs, WhenEmpty::Reject),
    );
    let mut targets = HashMap::new();
    let lb = frontend("192.0.2.10:80", TrafficScope::External).0;
    targets.insert(lb, target(vec!["198.51.100.0/24".parse().expect("range")]));
    out.push(render_port(&web, &targets, &settings, &mut slots));
    let mut sticky = port(
        vec![frontend("10.96.0.11:443", TrafficScope::Internal)],
        set(&["10.244.2.1:8443", "10.244.2.2:8443"], WhenEmpty::Reject),
        set(&["10.244.2.1:8443", "10.244.2.2:8443"], WhenEmpty::Reject),
    );
    sticky.key.service.name = "sticky".into();
    sticky.affinity = Some(Duration::from_secs(10800));
    out.push(render_port(&sticky, &HashMap::new(), &settings, &mut slots));
    let mut local = port(
        vec![
            frontend("10.96.0.12:80", TrafficScope::Internal),
            frontend("0.0.0.0:30082", TrafficScope::External),
        ],
        set(&["10.244.2.5:8080", "10.244.1.9:8080"], WhenEmpty::Reject),
        set(&["10.244.1.9:8080"], WhenEmpty::Drop),
    );
    local.key.service.name = "local".into();
    local.external_local = true;
    out.push(render_port(&local, &HashMap::new(), &settings, &mut slots));
    let mut dns = port(
        vec![frontend("[fd00:96::a]:53", TrafficScope::Internal)],
        set(&["[fd00:10:244::5]:53"], WhenEmpty::Reject),
        set(&["[fd00:10:244::5]:53"], WhenEmpty::Reject),
    );
    dns.key.service.name = "dns6".into();
    dns.key.protocol = Protocol::Udp;
    dns.frontends[0].0.protocol = Protocol::Udp;
    if generation == 0 {
        out.push(render_port(&dns, &HashMap::new(), &settings, &mut slots));
    }
    let mut empty = port(
        vec![
            frontend("10.96.0.13:80", TrafficScope::Internal),
            frontend("[fd00:96::d]:80", TrafficScope::Internal),
        ],
        set(&[], WhenEmpty::Reject),
        set(&[], WhenEmpty::Reject),
    );
    empty.key.service.name = "empty".into();
    out.push(render_port(&empty, &HashMap::new(), &settings, &mut slots));
    let mut lb6 = port(
        vec![frontend("[2001:db8::1]:443", TrafficScope::External)],
        set(&["[fd00:10:244::7]:443"], WhenEmpty::Reject),
        set(&["[fd00:10:244::7]:443"], WhenEmpty::Reject),
    );
    lb6.key.service.name = "lb6".into();
    let mut targets = HashMap::new();
    targets.insert(
        lb6.frontends[0].0,
        target(vec!["2001:db8:1::/48".parse().expect("range")]),
    );
    out.push(render_port(&lb6, &targets, &settings, &mut slots));
    out
}

/// The changes turning `old` ports into `new` (matched by position; missing ones removed).
fn changes(old: &[PortRules], new: &[PortRules], fresh: bool) -> Changes {
    let mut changes = if fresh {
        Changes::fresh()
    } else {
        Changes::default()
    };
    let empty = PortRules::default();
    for i in 0..old.len().max(new.len()) {
        let (from, to) = (old.get(i).unwrap_or(&empty), new.get(i).unwrap_or(&empty));
        if from != to {
            changes.port(from, to);
        }
    }
    let hairpin = |ports: &[PortRules]| -> std::collections::BTreeSet<_> {
        ports
            .iter()
            .flat_map(|p| p.hairpin.iter().copied())
            .collect()
    };
    let (before, after) = (hairpin(old), hairpin(new));
    changes.hairpin(
        after.difference(&before).copied().collect(),
        before.difference(&after).copied().collect(),
    );
    changes.local_dns(
        ["10.96.0.10".parse().expect("ip")].into(),
        Default::default(),
    );
    let mut maps = std::collections::BTreeSet::new();
    if !fresh {
        maps.extend(
            old.iter()
                .flat_map(|p| p.endpoint_ranges.keys().map(|(m, _)| *m)),
        );
    }
    changes.create_endpoint_maps(&mut maps);
    changes
}

fn by_nft(steps: &[&Changes]) -> Vec<String> {
    steps
        .iter()
        .map(|changes| {
            nft_run(&changes.script(&settings()));
            nft_list()
        })
        .collect()
}

fn by_netlink(steps: &[&Changes]) -> Vec<String> {
    steps
        .iter()
        .map(|changes| {
            let transaction = Transaction::of(changes, &settings());
            transaction.into_batch().commit().expect("netlink batch");
            nft_list()
        })
        .collect()
}

#[test]
fn netlink_and_nft_write_the_same_table() {
    if !can_run() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let (first, second) = (ports(0), ports(1));
    let full = changes(&[], &first, true);
    let step = changes(&first, &second, false);
    let steps = [&full, &step];
    let expected = in_new_namespace(|| by_nft(&steps));
    let written = in_new_namespace(|| by_netlink(&steps));
    for (round, (want, got)) in expected.iter().zip(&written).enumerate() {
        if want != got {
            let diff: Vec<String> = want
                .lines()
                .zip(got.lines())
                .filter(|(a, b)| a != b)
                .take(10)
                .map(|(a, b)| format!("nft:     {a}\nnetlink: {b}"))
                .collect();
            panic!(
                "round {round} differs:\n{}\n\nnetlink wrote:\n{got}",
                diff.join("\n")
            );
        }
    }
    // Three endpoints, then four: each a third, then a quarter of a slot's 65,536 keys.
    assert!(
        expected[0].contains("0-21844 : 10.244.1.1 . 8080"),
        "{}",
        expected[0]
    );
    assert!(
        expected[1].contains("49152-65535 : 10.244.1.4 . 8080"),
        "{}",
        expected[1]
    );
    assert!(expected[0].contains("dnat ip to numgen random mod 65536 map @endpoints-tcp4-0"));
}

#[test]
fn a_refused_batch_changes_nothing_and_says_which_message() {
    if !can_run() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    in_new_namespace(|| {
        let first = ports(0);
        let full = changes(&[], &first, true);
        by_netlink(&[&full]);
        let before = nft_list();
        let mut transaction = Transaction::new();
        transaction.flush_chain("services");
        // A rule jumping to a chain that does not exist: the kernel refuses the batch.
        transaction.add_rule(
            "services",
            &super::super::stmt::Rule::verdict(
                Vec::new(),
                super::super::stmt::Verdict::Jump("no-such-chain".into()),
            ),
        );
        let error = transaction.into_batch().commit().expect_err("refused");
        assert!(error.to_string().contains("message 3 refused"), "{error}");
        assert_eq!(
            nft_list(),
            before,
            "a refused batch must leave the table as it was"
        );
    });
}

/// A UDP flow tracked by conntrack is found by the ctnetlink dump and deleted by its filter;
/// a flow to another port stays.
#[test]
fn stale_udp_conntrack_entries_are_deleted_over_netlink() {
    use crate::conntrack::{Filter, delete_matching};
    if !can_run() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    in_new_namespace(|| {
        assert!(
            Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip")
                .success()
        );
        // Any conntrack expression makes the namespace track connections.
        nft_run(
            "table inet track {\n  chain out {\n    type filter hook output priority 0;\n    ct state new accept\n  }\n}\n",
        );
        let server = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let other = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        for target in [&server, &other] {
            client
                .send_to(b"ping", target.local_addr().expect("addr"))
                .expect("send");
        }
        let stale = Filter {
            frontend: server.local_addr().expect("addr"),
            endpoint: None,
        };
        assert_eq!(delete_matching(&[stale]).expect("first delete"), 1);
        assert_eq!(delete_matching(&[stale]).expect("second delete"), 0);
        let kept = Filter {
            frontend: other.local_addr().expect("addr"),
            endpoint: None,
        };
        assert_eq!(delete_matching(&[kept]).expect("other flow"), 1);
    });
}

/// Where an incremental transaction's time goes on a table of 10,000 Services × 10 endpoints:
/// an address-set element, one endpoint replaced (endpoint-map elements) and one Service
/// chain rewritten (which makes the kernel validate every chain reachable from a base chain).
/// Run: `PORTS=10000 ROUNDS=3 cargo test --release -p capstan-proxy kernel_transaction_costs --
/// --ignored --nocapture` (the defaults).
#[test]
#[ignore = "measurement"]
fn kernel_transaction_costs() {
    use std::time::Instant;
    if !can_run() {
        return;
    }
    in_new_namespace(|| {
        let settings = settings();
        let count: u32 = std::env::var("PORTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(10_000);
        let mut slots = super::super::pick::Slots::default();
        let mut render = |i: u32, first_endpoint: u32| {
            let eps: Vec<String> = (first_endpoint..first_endpoint + 10)
                .map(|e| format!("10.244.{}.{e}:8080", i % 250))
                .collect();
            let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
            let mut p = port(
                vec![frontend(
                    &format!("10.{}.{}.{}:80", 100 + i / 65_536, (i / 256) % 256, i % 256),
                    TrafficScope::Internal,
                )],
                set(&refs, WhenEmpty::Reject),
                set(&refs, WhenEmpty::Reject),
            );
            p.key.service.name = format!("svc-{i}").into();
            render_port(&p, &HashMap::new(), &settings, &mut slots)
        };
        let port_rules: Vec<PortRules> = (0..count).map(|i| render(i, 1)).collect();
        let socket = capstan_sockets::netlink::NetfilterSocket::open(0).expect("socket");
        let full = changes(&[], &port_rules, true);
        let started = Instant::now();
        let transaction = Transaction::of(&full, &settings);
        let messages = transaction.len();
        transaction.into_batch().commit_on(&socket).expect("full");
        println!("full: {messages} messages in {:?}", started.elapsed());
        let rounds = std::env::var("ROUNDS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(3);
        for (round, port) in port_rules.iter().enumerate().take(rounds) {
            let started = Instant::now();
            let mut transaction = Transaction::new();
            let ip = format!("10.96.9.{round}").parse().expect("ip");
            let key = match ip {
                std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
                _ => unreachable!(),
            };
            transaction.set_elements("cluster-dns4", &[key], true);
            transaction
                .into_batch()
                .commit_on(&socket)
                .expect("element");
            let element = started.elapsed();
            // One endpoint of the port replaced: map elements only.
            let replaced = render(round as u32, 2);
            let mut step = Changes::default();
            step.port(port, &replaced);
            assert!(step.filled_chains().is_empty(), "no rule rewritten");
            let started = Instant::now();
            Transaction::of(&step, &settings)
                .into_batch()
                .commit_on(&socket)
                .expect("endpoint");
            let endpoint = started.elapsed();
            let (name, rules) = port.chains.iter().next().expect("chain");
            let started = Instant::now();
            let mut transaction = Transaction::new();
            transaction.flush_chain(name);
            for rule in rules {
                transaction.add_rule(name, rule);
            }
            transaction.into_batch().commit_on(&socket).expect("chain");
            println!(
                "address-set element: {element:?}; endpoint replaced: {endpoint:?}; one chain rewritten: {:?}",
                started.elapsed()
            );
        }
    });
}
