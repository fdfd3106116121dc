//! `--capture nftables` on a real node topology: a node namespace running Capstan, pods on a
//! bridge, traffic to ClusterIPs and NodePorts by TCP and UDP from pods and from the node itself.
//! Needs root (network namespaces, nftables); skipped, with a message, without it.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::netns::{
    self, Node, greet_from, tcp_backend, tcp_peer_backend, udp_ask, udp_backend, udp_client,
    udp_client6, udp_peer_backend,
};
use crate::support::{Capstan, TempDir, path_str};

/// A Service with `ports` (a YAML flow list) and extra `spec` lines.
pub(crate) fn service(name: &str, vip: Ipv4Addr, ports: &str, spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: default}}\n\
         spec:\n  clusterIP: {vip}\n  ports: {ports}\n{spec}---\n"
    )
}

/// An EndpointSlice of `service` with `ports` and `endpoints` as (address, node, conditions).
pub(crate) fn slice(service: &str, ports: &str, endpoints: &[(Ipv4Addr, &str, &str)]) -> String {
    let endpoints: String = endpoints
        .iter()
        .map(|(ip, node, conditions)| {
            format!(
                "  - {{addresses: [\"{ip}\"], nodeName: {node}, conditions: {{{conditions}}}}}\n"
            )
        })
        .collect();
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {service}-1\n  \
         namespace: default\n  labels: {{kubernetes.io/service-name: {service}}}\naddressType: IPv4\n\
         ports: {ports}\nendpoints:\n{endpoints}---\n"
    )
}

pub(crate) const READY: &str = "ready: true";

fn start(node: &Node, dir: &TempDir, extra: &[&str]) -> Capstan {
    let mut args = vec![
        "--manifests",
        path_str(&dir.0),
        "--capture",
        "nftables",
        // These cases are the user-space path's; `kernel.rs` has the kernel path's.
        "--l4-datapath",
        "userspace",
        "--node-name",
        "node-1",
    ];
    args.extend_from_slice(extra);
    Capstan::start_in_netns(&node.ns, node.uplink.into(), &args)
}

/// A node with `pods` pods, or `None` (with a message) where namespaces cannot be made.
fn topology(pods: usize) -> Option<Node> {
    if !netns::available() {
        eprintln!("skipped: network namespace tests need root, ip and nft");
        return None;
    }
    Some(Node::new(pods))
}

/// Needs no root: without `nft` nothing is programmed, and the failure is reported.
#[test]
fn a_capture_that_cannot_be_programmed_is_reported_and_not_ready() {
    let dir = TempDir::new("capture-fails");
    let vip = SocketAddr::from(([10, 255, 0, 1], 80));
    let config = dir.write(
        "capstan.yaml",
        &crate::support::config_one("web", vip, &["127.0.0.1:9".parse().expect("addr")], ""),
    );
    let capstan = Capstan::spawn_with_path(
        "/nonexistent",
        // The user-space capture runs `nft`, which is not on this PATH (the kernel path needs no
        // process: it speaks netlink).
        &[
            "--config",
            path_str(&config),
            "--capture",
            "nftables",
            "--l4-datapath",
            "userspace",
        ],
    );
    let snapshot = capstan.wait_snapshot("the capture failure", |s| {
        s["services"].as_array().into_iter().flatten().any(|svc| {
            svc["frontends"].as_array().into_iter().flatten().any(|f| {
                f["listener"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("capture failed: traffic capture: run nft"))
            })
        })
    });
    assert!(snapshot["generation"].as_u64() >= Some(1));
    // Every frontend holds sockets: the open-files limit is raised to the hard limit.
    let (soft, hard) = capstan.open_files_limits();
    assert_eq!(soft, hard);
    let (code, body) = crate::support::http_get(capstan.admin, "/readyz").expect("readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("traffic capture failing"), "{body}");
    assert!(
        capstan
            .metrics()
            .contains("capstan_proxy_listeners{state=\"capture_failed\"} 1"),
        "{}",
        capstan.metrics()
    );
}

#[test]
fn pods_reach_cluster_ips_and_node_ports_with_kube_proxy_semantics() {
    let Some(node) = topology(3) else {
        return;
    };
    let (client, a, b) = (&node.pods[0].ns, &node.pods[1], &node.pods[2]);
    tcp_backend(&a.ns, SocketAddr::from((a.ip, 8080)), "a");
    tcp_backend(&b.ns, SocketAddr::from((b.ip, 8080)), "b");
    let http = "[{name: http, port: 80, targetPort: 8080}]";
    let slice_ports = "[{name: http, port: 8080}]";
    let both = [(a.ip, "node-1", READY), (b.ip, "node-2", READY)];
    let dir = TempDir::new("capture-tcp");
    let manifests = [
        service(
            "web",
            node.vip(1),
            "[{name: http, port: 80, targetPort: 8080, nodePort: 30080}]",
            "  type: NodePort\n",
        ),
        slice("web", slice_ports, &both),
        service(
            "local",
            node.vip(2),
            http,
            "  internalTrafficPolicy: Local\n",
        ),
        slice("local", slice_ports, &both),
        service("sticky", node.vip(3), http, "  sessionAffinity: ClientIP\n"),
        slice("sticky", slice_ports, &both),
        service("draining", node.vip(4), http, ""),
        slice(
            "draining",
            slice_ports,
            &[(
                b.ip,
                "node-2",
                "ready: false, serving: true, terminating: true",
            )],
        ),
        service("empty", node.vip(5), http, ""),
        service(
            "fenced",
            node.vip(6),
            "[{name: http, port: 80, targetPort: 8080, nodePort: 30081}]",
            &format!(
                "  type: LoadBalancer\n  loadBalancerSourceRanges: ['{}/32']\n\
                 status: {{loadBalancer: {{ingress: [{{ip: {}}}]}}}}\n",
                node.pods[0].ip,
                node.lb_ip(1)
            ),
        ),
        slice("fenced", slice_ports, &[(a.ip, "node-1", READY)]),
        service(
            "remote-only",
            node.vip(7),
            http,
            "  internalTrafficPolicy: Local\n",
        ),
        slice("remote-only", slice_ports, &[(b.ip, "node-2", READY)]),
    ];
    dir.write("services.yaml", &manifests.concat());
    let capstan = start(&node, &dir, &[]);
    let vip = |n: u8| SocketAddr::from((node.vip(n), 80));
    for n in 1..=4 {
        capstan.wait_listening(vip(n));
    }
    capstan.wait_listener(vip(5), "refusing: no endpoints");

    // A ClusterIP from a pod is balanced over both endpoints; so is the NodePort.
    let names: Vec<String> = (0..20)
        .map(|_| greet_from(client, vip(1)).expect("web from a pod"))
        .collect();
    assert!(
        names.contains(&"a".to_owned()) && names.contains(&"b".to_owned()),
        "{names:?}"
    );
    let node_port = SocketAddr::from((node.ip, 30080));
    let name = greet_from(client, node_port).expect("NodePort from a pod");
    assert!(name == "a" || name == "b", "{name}");
    // The node's own traffic to a ClusterIP is captured too (the output hook).
    let name = greet_from(&node.ns, vip(1)).expect("web from the node");
    assert!(name == "a" || name == "b", "{name}");

    // internalTrafficPolicy: Local keeps to this node's endpoint.
    for _ in 0..10 {
        assert_eq!(greet_from(client, vip(2)).expect("local"), "a");
    }
    // sessionAffinity: ClientIP sticks to the first choice.
    let first = greet_from(client, vip(3)).expect("sticky");
    for _ in 0..10 {
        assert_eq!(greet_from(client, vip(3)).expect("sticky"), first);
    }
    // Serving but terminating endpoints are used when no endpoint is ready.
    assert_eq!(greet_from(client, vip(4)).expect("draining"), "b");
    // No endpoints: the table refuses the SYN (kube-proxy's reject), from a pod and from the
    // node itself: the connection is never accepted.
    for ns in [client, node.ns.as_str()] {
        let started = Instant::now();
        let error = greet_from(ns, vip(5)).expect_err("no endpoints");
        assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error:?}");
        assert!(started.elapsed() < Duration::from_millis(100));
    }
    // Endpoints only on other nodes under a Local policy: dropped, as kube-proxy does (the
    // client times out instead of being refused).
    capstan.wait_listening(vip(7));
    let error = greet_from(client, vip(7)).expect_err("no local endpoint");
    assert_eq!(error.kind(), ErrorKind::TimedOut, "{error:?}");
    assert!(
        node.capstan_table()
            .is_some_and(|t| t.contains(&format!("{} . 80", node.vip(7)))),
        "{:?}",
        node.capstan_table()
    );

    // loadBalancerSourceRanges fence the LoadBalancer IP, not the ClusterIP.
    let lb = SocketAddr::from((node.lb_ip(1), 80));
    capstan.wait_listening(lb);
    assert_eq!(
        greet_from(client, lb).expect("client inside the range"),
        "a"
    );
    let outside = greet_from(&b.ns, lb);
    assert!(
        !matches!(&outside, Ok(name) if !name.is_empty()),
        "a pod outside the range is not served: {outside:?}"
    );
    assert_eq!(greet_from(&b.ns, vip(6)).expect("ClusterIP is open"), "a");
    assert!(
        capstan
            .metrics()
            .contains("reason=\"source_range\",blame=\"client\"} 1"),
        "{}",
        capstan.metrics()
    );

    // Only the snapshot's VIP:port pairs are captured: another port of a VIP and another
    // address in the range go nowhere.
    assert!(greet_from(client, SocketAddr::from((node.vip(1), 81))).is_err());
    assert!(greet_from(client, SocketAddr::from((node.vip(99), 80))).is_err());
    let table = node.capstan_table().expect("capstan's table");
    for n in 1..=4 {
        assert!(
            table.contains(&format!("{} . 80 : ", node.vip(n))),
            "{table}"
        );
    }
    // The Service without endpoints is in the reject set, not redirected.
    assert!(
        table.contains(&format!("elements = {{ {} . 80 }}", node.vip(5))),
        "{table}"
    );
    assert!(
        !table.contains(&format!("{} . 80 : ", node.vip(5))),
        "{table}"
    );
    assert!(!table.contains(&node.vip(99).to_string()), "{table}");
    // Every TCP VIP shares one redirect listener (its original destination names the Service),
    // and that port is not reachable directly.
    let snapshot = capstan.snapshot();
    let redirect_port = |vip: SocketAddr| {
        snapshot["services"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["frontends"].as_array().into_iter().flatten())
            .find(|f| f["address"] == vip.to_string().as_str())
            .and_then(|f| f["redirect"]["port"].as_u64())
            .expect("redirect port")
    };
    let port = redirect_port(vip(1));
    assert!(
        [2, 3, 4, 6, 7]
            .iter()
            .all(|n| redirect_port(vip(*n)) == port)
    );
    let direct = SocketAddr::from((node.ip, u16::try_from(port).expect("port")));
    assert!(
        greet_from(client, direct).is_err(),
        "{direct} is not open to pods"
    );
}

#[test]
fn udp_and_dns_through_cluster_ips_flush_conntrack_and_a_clean_exit_removes_the_table() {
    let Some(node) = topology(2) else {
        return;
    };
    let (client, a) = (&node.pods[0].ns, &node.pods[1]);
    udp_backend(&a.ns, SocketAddr::from((a.ip, 5300)), "a");
    let echo = "[{name: echo, port: 5300, protocol: UDP}]";
    let dns_port = 5353;
    let dir = TempDir::new("capture-udp");
    let manifests = [
        service("echo", node.vip(6), echo, ""),
        slice("echo", echo, &[(a.ip, "node-1", READY)]),
        // The cluster DNS Service, served by this node's Capstan.
        service(
            "kube-dns",
            node.vip(10),
            "[{name: dns, port: 53, targetPort: 5353, protocol: UDP}, \
             {name: dns-tcp, port: 53, targetPort: 5353, protocol: TCP}]",
            "",
        ),
        slice(
            "kube-dns",
            &format!(
                "[{{name: dns, port: {dns_port}, protocol: UDP}}, \
                 {{name: dns-tcp, port: {dns_port}, protocol: TCP}}]"
            ),
            &[(node.ip, "node-1", READY)],
        ),
    ];
    dir.write("services.yaml", &manifests.concat());
    let dns_listen = SocketAddr::from((node.ip, dns_port)).to_string();
    let capstan = start(&node, &dir, &["--dns", &dns_listen]);
    let echo_vip = SocketAddr::from((node.vip(6), 5300));
    capstan.wait_listening(echo_vip);
    capstan.wait_listening(SocketAddr::from((node.vip(10), 53)));

    // UDP from a pod and from the node itself; the reply comes from the ClusterIP.
    let socket = udp_client(client);
    assert_eq!(
        udp_ask(&socket, echo_vip, "ping").as_deref(),
        Some("a:ping")
    );
    let from_node = udp_client(&node.ns);
    assert_eq!(udp_ask(&from_node, echo_vip, "hi").as_deref(), Some("a:hi"));

    // Cluster DNS through the DNS Service's ClusterIP, over UDP and TCP.
    for transport in ["+notcp", "+tcp"] {
        let output = Command::new("ip")
            .args([
                "netns", "exec", client, "dig", "+short", "+time=2", "+tries=2", transport,
            ])
            .arg(format!("@{}", node.vip(10)))
            .arg("echo.default.svc.cluster.local")
            .output()
            .expect("dig");
        let answer = String::from_utf8_lossy(&output.stdout);
        assert_eq!(
            answer.trim(),
            node.vip(6).to_string(),
            "dig {transport}: {answer}"
        );
    }

    // A client that sent to a VIP before its Service existed holds an untranslated conntrack
    // entry; adding the Service flushes it, so the same socket is answered at once.
    let late = SocketAddr::from((node.vip(7), 5300));
    let early = udp_client(client);
    assert_eq!(udp_ask(&early, late, "early"), None);
    dir.write(
        "late.yaml",
        &[
            service("late", node.vip(7), echo, ""),
            slice("late", echo, &[(a.ip, "node-1", READY)]),
        ]
        .concat(),
    );
    capstan.wait_listening(late);
    let answered = (0..5).find_map(|_| udp_ask(&early, late, "again"));
    assert_eq!(answered.as_deref(), Some("a:again"));

    // A clean exit removes the table; traffic to the VIPs is no longer captured.
    assert!(node.capstan_table().is_some());
    let mut capstan = capstan;
    capstan.signal(15);
    assert!(
        capstan.wait_exit(Duration::from_secs(20)).is_some(),
        "exited"
    );
    assert_eq!(node.capstan_table(), None, "table removed on exit");
    assert_eq!(udp_ask(&socket, echo_vip, "gone"), None);
}

/// Needs no root: keeping source addresses needs the nftables capture, and says so at once.
#[test]
fn preserve_source_ip_without_the_nftables_capture_is_refused() {
    let dir = TempDir::new("capture-source-bind");
    let vip = SocketAddr::from(([127, 0, 0, 1], 1));
    let config = dir.write(
        "capstan.yaml",
        &crate::support::config_one("web", vip, &["127.0.0.1:9".parse().expect("addr")], ""),
    );
    let (status, output) = crate::support::run_to_exit(&[
        "run",
        "--config",
        path_str(&config),
        "--capture",
        "bind",
        "--preserve-source-ip",
        "10.244.0.0/16",
        "--admin",
        "127.0.0.1:0",
        "--dns",
        "off",
    ]);
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("--preserve-source-ip") && output.contains("needs --capture nftables"),
        "{output}"
    );
}

/// TCP and UDP to an IPv6 ClusterIP, from a pod and from the node itself: each family and
/// protocol has its own map, and the node's own traffic its own (output hook) rules.
#[test]
fn an_ipv6_cluster_ip_is_captured_through_its_own_family() {
    let Some(node) = topology(2) else {
        return;
    };
    let (client, a) = (&node.pods[0].ns, &node.pods[1]);
    tcp_backend(&a.ns, SocketAddr::from((a.ip6, 8080)), "a6");
    udp_backend(&a.ns, SocketAddr::from((a.ip6, 5353)), "a6");
    let dir = TempDir::new("capture-v6");
    let ports = "[{name: http, port: 80, targetPort: 8080}, {name: dns, port: 53, protocol: UDP, targetPort: 5353}]";
    let slice_ports = "[{name: http, port: 8080}, {name: dns, port: 5353, protocol: UDP}]";
    dir.write(
        "v6.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: web6, namespace: default}}\n\
             spec:\n  ipFamilies: [IPv6]\n  clusterIP: '{vip}'\n  ports: {ports}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web6-1\n  namespace: default\n  \
             labels: {{kubernetes.io/service-name: web6}}\naddressType: IPv6\nports: {slice_ports}\n\
             endpoints:\n- {{addresses: ['{ip}'], conditions: {{ready: true}}}}\n",
            vip = node.vip6(1),
            ip = a.ip6,
        ),
    );
    let capstan = start(&node, &dir, &[]);
    let (vip, dns_vip) = (
        SocketAddr::from((node.vip6(1), 80)),
        SocketAddr::from((node.vip6(1), 53)),
    );
    capstan.wait_listening(vip);
    // The redirect goes through the IPv6 map to the IPv6 listener, which reads
    // IP6T_SO_ORIGINAL_DST.
    assert_eq!(
        greet_from(client, vip).expect("IPv6 ClusterIP from a pod"),
        "a6"
    );
    assert_eq!(
        greet_from(&node.ns, vip).expect("IPv6 ClusterIP from the node"),
        "a6"
    );
    // UDP: the reply must come back from the VIP (the socket asserts it), from a pod and from
    // the node (whose replies go out through the loopback socket of the VIP's port).
    for (from, ns) in [("a pod", client.as_str()), ("the node", node.ns.as_str())] {
        let socket = udp_client6(ns);
        let answered = (0..5).find_map(|_| udp_ask(&socket, dns_vip, "q6"));
        assert_eq!(
            answered.as_deref(),
            Some("a6:q6"),
            "UDP over IPv6 from {from}"
        );
    }
    let table = node.capstan_table().expect("table");
    for entry in [
        format!("{} . 80 : ", node.vip6(1)),
        format!("{} . 53 : ", node.vip6(1)),
    ] {
        assert!(table.contains(&entry), "{entry} in {table}");
    }
}

/// `--preserve-source-ip PODS`: an endpoint whose replies come back through the node sees the
/// client's address, as with kube-proxy: one elsewhere (here a pod on a routed link, with another
/// node's name) for clients in the pod ranges, one on this node for any client. One on the client's
/// own bridge would answer the client directly, so it sees the node's, as without the flag.
#[test]
fn preserve_source_ip_shows_endpoints_the_client_where_replies_return_through_the_node() {
    let Some(mut node) = topology(2) else {
        return;
    };
    let routed = node.add_routed_pod();
    let (client, bridged, routed) = (&node.pods[0], &node.pods[1], &node.pods[routed]);
    tcp_peer_backend(&routed.ns, SocketAddr::from((routed.ip, 8080)));
    tcp_peer_backend(&routed.ns, SocketAddr::from((routed.ip6, 8080)));
    udp_peer_backend(&routed.ns, SocketAddr::from((routed.ip, 5353)));
    tcp_peer_backend(&bridged.ns, SocketAddr::from((bridged.ip, 8080)));
    let dir = TempDir::new("capture-source");
    let http = "[{name: http, port: 80, targetPort: 8080}]";
    let slice_ports = "[{name: http, port: 8080}]";
    let dns = "[{name: dns, port: 53, protocol: UDP, targetPort: 5353}]";
    let dns_slice = "[{name: dns, port: 5353, protocol: UDP}]";
    dir.write(
        "services.yaml",
        &[
            service("far", node.vip(1), http, ""),
            // As if on another node: only pod clients can keep their address to it.
            slice("far", slice_ports, &[(routed.ip, "node-2", READY)]),
            service("far-udp", node.vip(3), dns, ""),
            slice("far-udp", dns_slice, &[(routed.ip, "node-2", READY)]),
            service("near", node.vip(2), http, ""),
            slice("near", slice_ports, &[(bridged.ip, "node-1", READY)]),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: far6, namespace: default}}\n\
                 spec:\n  ipFamilies: [IPv6]\n  clusterIP: '{vip}'\n  ports: {http}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: far6-1\n  \
                 namespace: default\n  labels: {{kubernetes.io/service-name: far6}}\naddressType: IPv6\n\
                 ports: {slice_ports}\nendpoints:\n- {{addresses: ['{ip}'], conditions: {{ready: true}}}}\n",
                vip = node.vip6(1),
                ip = routed.ip6,
            ),
        ]
        .concat(),
    );
    let far6 = SocketAddr::from((node.vip6(1), 80));
    let (far, near) = (
        SocketAddr::from((node.vip(1), 80)),
        SocketAddr::from((node.vip(2), 80)),
    );
    let routed_gateway = Ipv4Addr::new(10, 246, node.ip.octets()[2], 1).to_string();

    // Without the flag, every endpoint sees the node.
    let mut capstan = start(&node, &dir, &[]);
    capstan.wait_listening(far);
    assert_eq!(greet_from(&client.ns, far).expect("far"), routed_gateway);
    capstan.signal(15);
    assert!(
        capstan.wait_exit(Duration::from_secs(20)).is_some(),
        "exited"
    );

    let pods = "10.244.0.0/16,fd00:244::/32";
    let mut capstan = start(&node, &dir, &["--preserve-source-ip", pods]);
    capstan.wait_listening(far);
    let rules = node.ip_rules();
    assert!(
        rules.contains("fwmark 0x400000/0x400000 lookup 4341"),
        "{rules}"
    );
    let table = node.capstan_table().expect("table");
    assert!(table.contains("socket transparent 1"), "{table}");
    assert_eq!(
        greet_from(&client.ns, far).expect("far, from a pod"),
        client.ip.to_string(),
        "the routed endpoint sees the client pod"
    );
    let far_udp = SocketAddr::from((node.vip(3), 53));
    let socket = udp_client(&client.ns);
    let answered = (0..5).find_map(|_| udp_ask(&socket, far_udp, "who"));
    assert_eq!(
        answered,
        Some(client.ip.to_string()),
        "a UDP flow keeps it too"
    );
    assert_eq!(
        greet_from(&client.ns, far6).expect("far over IPv6, from a pod"),
        client.ip6.to_string(),
        "the routed endpoint sees the client pod's IPv6 address"
    );
    assert_eq!(
        greet_from(&client.ns, near).expect("near, from a pod"),
        node.ip.to_string(),
        "an endpoint on the client's bridge sees the node"
    );
    // An endpoint on this node answers through it whoever asks: a client outside the pod ranges
    // (the routed pod's address is not in them) keeps its address too, as with an
    // `externalTrafficPolicy: Local` Service under kube-proxy.
    assert_eq!(
        greet_from(&routed.ns, near).expect("near, from outside the pod ranges"),
        routed.ip.to_string(),
    );
    // The node's own traffic is not a pod's, and far is elsewhere: the node's address.
    assert_eq!(
        greet_from(&node.ns, far).expect("far, from the node"),
        routed_gateway
    );
    // Four connections or flows kept the client's address; two came from the node's.
    let metrics = capstan.metrics();
    for sample in [
        "capstan_proxy_upstream_sources_total{source=\"client\"} 4",
        "capstan_proxy_upstream_sources_total{source=\"node\"} 2",
        "capstan_proxy_upstream_sources_total{source=\"node_bind_failed\"} 0",
    ] {
        assert!(metrics.contains(sample), "{sample} in {metrics}");
    }
    // A clean exit removes the policy routing with the table.
    capstan.signal(15);
    assert!(
        capstan.wait_exit(Duration::from_secs(20)).is_some(),
        "exited"
    );
    let rules = node.ip_rules();
    assert!(!rules.contains("lookup 4341"), "{rules}");
    assert_eq!(node.capstan_table(), None);
}
