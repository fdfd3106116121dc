//! Kernel data path at scale: 10,000 ClusterIP Services × 10 endpoints from the fake API server
//! to Capstan in a node namespace. Measures the first full sync, resident memory, and the
//! latency from one EndpointSlice change to a pod's new connection reaching the new endpoint
//! through the kernel. Ignored by default (it prints figures, it asserts no timing):
//! `benches/kernel_scale.sh` runs it on a release build, as root.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::capture::{READY, service, slice};
use crate::kube_scale::{ENDPOINTS, SERVICES, bulk};
use crate::support::cluster::Cluster;
use crate::support::kube_api::FakeApi;
use crate::support::netns::{self, greet_from, tcp_backend};
use crate::support::{Capstan, TempDir, http_get, path_str};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale benchmark: run by benches/kernel_scale.sh"]
async fn kernel_scale_ten_thousand_services() {
    if !netns::available() {
        eprintln!("skipped: needs root, ip and nft");
        return;
    }
    let cluster = Cluster::new(1, 3);
    let node = &cluster.nodes[0];
    let (client, a, b) = (&node.pods[0], &node.pods[1], &node.pods[2]);
    tcp_backend(&a.ns, SocketAddr::from((a.ip, 8080)), "a");
    tcp_backend(&b.ns, SocketAddr::from((b.ip, 8080)), "b");
    let api = FakeApi::start_on(node.gateway().into()).await;
    api.preload((0..SERVICES).flat_map(|i| {
        let vip = format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, i % 256);
        bulk(i, Some(vip))
    }));
    let http = "[{name: http, port: 80, targetPort: 8080}]";
    let ports = "[{name: http, port: 8080}]";
    api.apply_yaml(&service("probe", node.vip(1), http, ""));
    api.apply_yaml(&slice("probe", ports, &[(a.ip, "node-0", READY)]));
    let dir = TempDir::new("kernel-scale");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let started = Instant::now();
    let capstan = Capstan::spawn_in_netns(
        &node.ns,
        node.uplink.into(),
        &[
            "--kubeconfig",
            path_str(&kubeconfig),
            "--node-name",
            "node-0",
        ],
    );
    let vip = SocketAddr::from((node.vip(1), 80));
    loop {
        if greet_from(&client.ns, vip).is_ok_and(|name| name == "a") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "never served");
        std::thread::sleep(Duration::from_millis(20));
    }
    let serving = started.elapsed();
    let ready = http_get(capstan.admin, "/readyz").map(|(code, _)| code);
    let rss_ready = capstan.rss_kib();
    let mut latencies = Vec::new();
    for change in 0..20 {
        let (target, want) = if change % 2 == 0 { (b, "b") } else { (a, "a") };
        let changed = Instant::now();
        api.apply(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "probe-1", "namespace": "default",
                         "labels": {"kubernetes.io/service-name": "probe"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": [target.ip.to_string()], "conditions": {"ready": true}, "nodeName": "node-0"}],
        }));
        loop {
            if greet_from(&client.ns, vip).is_ok_and(|name| name == want) {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(30),
                "change never applied"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        latencies.push(changed.elapsed());
    }
    latencies.sort();
    let logs = capstan.logs();
    let syncs: Vec<&str> = logs
        .lines()
        .filter(|l| {
            l.contains("capstan_proxy::listen") && l.contains("kernel data path synced")
                || l.contains("snapshot published")
        })
        .collect();
    // The first (full) sync and the last three changes (published, then synced).
    for line in syncs.iter().take(2).chain(syncs.iter().rev().take(6).rev()) {
        println!("kernel scale sync: {line}");
    }
    let programmer = std::env::var("CAPSTAN_KERNEL_PROGRAMMER").unwrap_or("netlink".into());
    println!(
        "kernel scale ({programmer}): {SERVICES} Services x {ENDPOINTS} endpoints: first connection served through the kernel {:.2} s after start (readyz {ready:?}); \
         resident {:.1} MiB then, {:.1} MiB after 20 changes; EndpointSlice change -> kernel serving the new endpoint: median {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        serving.as_secs_f64(),
        rss_ready as f64 / 1024.0,
        capstan.rss_kib() as f64 / 1024.0,
        latencies[10].as_secs_f64() * 1000.0,
        latencies[18].as_secs_f64() * 1000.0,
        latencies[19].as_secs_f64() * 1000.0,
    );
}
