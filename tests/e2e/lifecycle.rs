//! Connection life cycle: refusal, half-close, idle timeout, graceful shutdown, and Kubernetes
//! manifest semantics (ClusterIP, NodePort, terminating fallback, Local policy).

use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// kube-proxy rejects connections to a Service without endpoints (the SYN is answered with a
/// reset: clients and the upstream e2e tests see "connection refused" at once). In bind mode
/// Capstan holds no socket while a Service has no endpoints, and opens it with the first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_without_endpoints_is_refused_by_the_kernel_until_one_appears() {
    let listen = frontend();
    let dir = TempDir::new("refused");
    let config = dir.write("capstan.yaml", &config_one("empty", listen, &[], ""));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    let refusing = |s: &serde_json::Value| {
        s["services"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|svc| svc["frontends"][0]["listener"] == "refusing: no endpoints")
    };
    capstan.wait_snapshot("the frontend refusing", refusing);
    let assert_refused = || async {
        for _ in 0..3 {
            let started = Instant::now();
            let error = greet(listen, None).await.expect_err("must be refused");
            assert_eq!(error.kind(), ErrorKind::ConnectionRefused, "{error:?}");
            let took = started.elapsed();
            assert!(
                took < Duration::from_millis(100),
                "refused at once: {took:?}"
            );
        }
    };
    assert_refused().await;

    // The first endpoint opens the listener; the last one gone closes it again.
    let backend = Backend::start("a").await;
    dir.write(
        "capstan.yaml",
        &config_one("empty", listen, &[backend.addr], ""),
    );
    capstan.wait_listening(listen);
    assert_eq!(exchange(listen, b"x").await.expect("served"), "a");
    dir.write("capstan.yaml", &config_one("empty", listen, &[], ""));
    capstan.wait_snapshot("the frontend refusing again", refusing);
    assert_refused().await;
    assert!(
        capstan
            .metrics()
            .contains("capstan_proxy_listeners{state=\"refusing\"} 1"),
        "{}",
        capstan.metrics()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_down_is_refused_with_rst() {
    let dead = frontend();
    let listen = frontend();
    let dir = TempDir::new("alldown");
    let config = dir.write("capstan.yaml", &config_one("web", listen, &[dead], ""));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    let error = greet(listen, None).await.expect_err("refused");
    assert_eq!(error.kind(), ErrorKind::ConnectionReset, "{error:?}");
    assert!(
        capstan
            .metrics()
            .contains("reason=\"connect_failed\",blame=\"upstream\"} 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_large_transfers_are_relayed_intact() {
    let backend = Backend::start("a").await;
    let listen = frontend();
    let dir = TempDir::new("halfclose");
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &[backend.addr], ""),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    // The backend echoes until our FIN and only then closes: the reply after our half-close must
    // arrive in full.
    let payload: Vec<u8> = (0..8 * 1024 * 1024).map(|i: u32| (i % 251) as u8).collect();
    assert_eq!(exchange(listen, &payload).await.expect("8 MiB echoed"), "a");
    let metrics = capstan.metrics();
    assert!(
        metrics.contains("direction=\"from_client\"} 8388608"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let backend = Backend::start("a").await;
    let listen = frontend();
    let dir = TempDir::new("idle");
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &[backend.addr], "    idle_timeout: 300ms\n"),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    let (mut busy, _) = greet(listen, None).await.expect("greet");
    let (mut idle, _) = greet(listen, None).await.expect("greet");
    // Keep one connection busy past the timeout; leave the other silent.
    for _ in 0..6 {
        busy.write_all(b"x").await.expect("write");
        let mut byte = [0u8; 1];
        busy.read_exact(&mut byte).await.expect("echo while busy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_secs(2), idle.read(&mut buf))
        .await
        .expect("closed, not hanging");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "idle connection closed: {read:?}"
    );
    assert!(capstan.metrics().contains(
        "capstan_proxy_idle_timeouts_total{service=\"standalone/web\",port=\"\",protocol=\"TCP\"} 1"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_drains_open_connections() {
    let backend = Backend::start("a").await;
    let listen = frontend();
    let dir = TempDir::new("drain");
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &[backend.addr], ""),
    );
    let mut capstan = Capstan::start(&["--config", path_str(&config), "--drain-timeout", "10s"]);
    capstan.wait_listening(listen);
    let (mut open, _) = greet(listen, None).await.expect("greet");
    capstan.signal(15);
    eventually(Duration::from_secs(5), || {
        capstan
            .logs()
            .contains("draining connections")
            .then_some(())
    })
    .expect("drain started");
    let refused = tokio::net::TcpStream::connect(listen).await;
    assert!(refused.is_err(), "no new connections while draining");
    // The open connection still works, and its close lets the process exit cleanly.
    open.write_all(b"still here").await.expect("write");
    let mut echo = [0u8; 10];
    open.read_exact(&mut echo).await.expect("echo during drain");
    assert_eq!(&echo, b"still here");
    assert!(
        capstan.wait_exit(Duration::from_millis(300)).is_none(),
        "waits for the open connection"
    );
    drop(open);
    let status = capstan
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success(), "{status:?}");
}

fn manifests(cluster_ip: SocketAddr, node_port: u16, endpoints: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: shop}}\n\
         spec:\n  type: NodePort\n  clusterIP: {}\n{extra_spec}  ports:\n  - {{name: http, port: {}, targetPort: http, nodePort: {node_port}}}\n\
         ---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: web-1, namespace: shop, labels: {{kubernetes.io/service-name: web}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: PORT}}]\nendpoints:\n{endpoints}",
        cluster_ip.ip(),
        cluster_ip.port(),
    )
}

/// Backends sharing one port on different loopback IPs, as pods do.
async fn pods(names: &[&str]) -> (Vec<Backend>, u16) {
    let first = Backend::start(names[0]).await;
    let port = first.addr.port();
    let mut all = vec![first];
    for name in &names[1..] {
        // Same port, another address: retry a few IPs in case the port is taken there.
        loop {
            let addr = SocketAddr::new(unique_ip(), port);
            if std::net::TcpListener::bind(addr).is_ok() {
                all.push(Backend::start_on(name, addr).await);
                break;
            }
        }
    }
    (all, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_serve_cluster_ip_and_node_port_with_terminating_fallback() {
    let (pods, port) = pods(&["ready", "terminating", "notready"]).await;
    let vip = frontend();
    let node_ip = unique_ip();
    let node_port = free_port(node_ip);
    let endpoints = |ready_one: bool| {
        format!(
            "- {{addresses: ['{}'], conditions: {{ready: {ready_one}, serving: {ready_one}}}}}\n\
             - {{addresses: ['{}'], conditions: {{ready: false, serving: true, terminating: true}}}}\n\
             - {{addresses: ['{}'], conditions: {{ready: false}}}}\n",
            pods[0].addr.ip(),
            pods[1].addr.ip(),
            pods[2].addr.ip(),
        )
    };
    let dir = TempDir::new("manifests");
    let text = manifests(vip, node_port, &endpoints(true), "").replace("PORT", &port.to_string());
    dir.write("web.yaml", &text);
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--nodeport-addresses",
        &node_ip.to_string(),
    ]);
    let node = SocketAddr::new(node_ip, node_port);
    capstan.wait_listening(vip);
    capstan.wait_listening(node);
    for target in [vip, node] {
        for _ in 0..5 {
            assert_eq!(
                exchange(target, b"x").await.expect("served"),
                "ready",
                "{target}"
            );
        }
    }
    // The ready pod goes away: only the terminating-but-serving pod may take traffic.
    let text = manifests(vip, node_port, &endpoints(false), "").replace("PORT", &port.to_string());
    dir.write("web.yaml", &text);
    capstan.wait_snapshot("fallback", |s| {
        s["services"][0]["endpoints"]
            .as_array()
            .is_some_and(|e| e.iter().all(|e| e["ready"] == false))
    });
    for _ in 0..5 {
        assert_eq!(exchange(vip, b"x").await.expect("served"), "terminating");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_traffic_policy_local_uses_only_this_nodes_endpoints() {
    let (pods, port) = pods(&["mine", "theirs"]).await;
    let vip = frontend();
    let node_port = free_port(vip.ip());
    let endpoints = format!(
        "- {{addresses: ['{}'], nodeName: node-a}}\n- {{addresses: ['{}'], nodeName: node-b}}\n",
        pods[0].addr.ip(),
        pods[1].addr.ip()
    );
    let dir = TempDir::new("local");
    let text = manifests(
        vip,
        node_port,
        &endpoints,
        "  internalTrafficPolicy: Local\n",
    )
    .replace("PORT", &port.to_string());
    dir.write("web.yaml", &text);
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--node-name",
        "node-a",
        "--nodeport-addresses",
        &vip.ip().to_string(),
    ]);
    capstan.wait_listening(vip);
    for _ in 0..10 {
        assert_eq!(exchange(vip, b"x").await.expect("served"), "mine");
    }
    // External traffic (NodePort) keeps the Cluster policy: both pods.
    let node = SocketAddr::new(vip.ip(), node_port);
    capstan.wait_listening(node);
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..40 {
        names.insert(exchange(node, b"x").await.expect("served"));
    }
    assert_eq!(names.len(), 2, "{names:?}");
}

/// `/readyz` answers 200 only once the first snapshot's listeners (and capture and kernel
/// rules) are in force, so a rollout that waits for readiness never sends a connection to a
/// port nobody listens on yet. Before, connections made right after readiness were sometimes
/// refused (issue 18: 40 of 60 in one run of ~35): this loops over fresh starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_right_after_readiness_are_never_refused() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    for round in 0..12 {
        let listen = frontend();
        let dir = TempDir::new("ready-race");
        let config = dir.write("capstan.yaml", &config_one("web", listen, &addrs, ""));
        // Returns as soon as /readyz answers 200.
        let _capstan = Capstan::start(&["--config", path_str(&config)]);
        let attempts = (0..60).map(|_| greet(listen, None));
        let failed: Vec<String> = futures_util::future::join_all(attempts)
            .await
            .into_iter()
            .filter_map(|r| r.err().map(|e| e.to_string()))
            .collect();
        assert!(failed.is_empty(), "round {round}: {failed:?}");
    }
}

/// With `SO_REUSEPORT` a second Capstan could bind the same ports and the kernel would split
/// traffic between the two; instead it refuses to start on the same ingress (or DNS) address,
/// and reports a Service address the first one serves as a failed bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_capstan_on_the_same_ports_refuses_instead_of_sharing_them() {
    let backend = Backend::start("a").await;
    let listen = frontend();
    let http = frontend();
    let dir = TempDir::new("second");
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &[backend.addr], ""),
    );
    let http_arg = http.to_string();
    let first = Capstan::start(&["--config", path_str(&config), "--http", &http_arg]);
    first.wait_listening(listen);

    let (status, output) = run_to_exit(&[
        "run",
        "--config",
        path_str(&config),
        "--http",
        &http_arg,
        "--https",
        "off",
        "--dns",
        "off",
        "--admin",
        "127.0.0.1:0",
        "--healthz",
        "off",
        "--metrics",
        "off",
    ]);
    assert!(!status.success());
    assert!(
        output.contains(&format!("tcp {http} is served by another process")),
        "{output}"
    );

    let second = Capstan::start(&["--config", path_str(&config)]);
    second.wait_snapshot("the Service frontend refused", |s| {
        s["services"][0]["frontends"][0]["listener"]
            .as_str()
            .is_some_and(|l| l.contains("served by another process"))
    });
    // Every connection still reaches the first agent's endpoint.
    assert_eq!(exchange(listen, b"x").await.expect("served"), "a");
    drop(first);
    second.wait_listening(listen);
}

/// A listener address another process holds stops Capstan with the error and the flag that
/// moves it.
#[test]
fn a_taken_listener_address_names_the_flag_to_change() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = TempDir::new("taken-address");
    dir.write("empty.yaml", "");
    let (status, output) = run_to_exit(&[
        "run",
        "--manifests",
        path_str(&dir.0),
        "--admin",
        "127.0.0.1:0",
        "--dns",
        "off",
        "--https",
        "off",
        "--healthz",
        "off",
        "--metrics",
        "off",
        "--http",
        &addr,
    ]);
    assert!(!status.success(), "{output}");
    assert!(output.contains(&format!("bind {addr}")), "{output}");
    assert!(
        output.contains("hint: another process serves that address; choose another with --http / --https ADDR:PORT, or turn it off with --http / --https off"),
        "{output}"
    );
}
