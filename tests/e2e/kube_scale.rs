//! Scale: 10,000 Services × 10 endpoints listed from the fake API server. Measures time to first
//! ready, resident memory, and the latency from one EndpointSlice change to the new endpoint
//! receiving connections. Ignored by default (it prints figures, it asserts no timing):
//! `benches/kube_scale.sh` runs it on a release build.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::kube_api::FakeApi;
use crate::support::*;

pub(crate) const SERVICES: usize = 10_000;
pub(crate) const ENDPOINTS: usize = 10;
/// EndpointSlice changes measured; `KUBE_SCALE_CHANGES` raises it (memory flatness under churn).
const CHANGES: usize = 10;

/// Service `i` (headless unless `cluster_ip`) and its slice of [`ENDPOINTS`] endpoints.
pub(crate) fn bulk(i: usize, cluster_ip: Option<String>) -> [Value; 2] {
    let name = format!("svc-{i:05}");
    let namespace = format!("ns-{:03}", i % 100);
    let endpoints: Vec<Value> = (0..ENDPOINTS)
        .map(|e| {
            json!({
                "addresses": [format!("10.{}.{}.{}", 100 + i / 65_536, (i / 256) % 256, (i % 256) ^ e)],
                "conditions": {"ready": true},
                "nodeName": format!("node-{}", e % 3),
                "zone": format!("zone-{}", e % 3),
            })
        })
        .collect();
    [
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{i}"),
                         "labels": {"app": name}, "annotations": {"owner": "scale-test"}},
            "spec": {"clusterIP": cluster_ip.unwrap_or_else(|| "None".to_owned()), "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
                     "selector": {"app": name}},
        }),
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{name}-abcde"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints,
        }),
    ]
}

fn probe_slice(backend: SocketAddr) -> Value {
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "probe-1", "namespace": "default",
                     "labels": {"kubernetes.io/service-name": "probe"}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": backend.port()}],
        "endpoints": [{"addresses": [backend.ip().to_string()], "conditions": {"ready": true}}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "scale benchmark: run by benches/kube_scale.sh"]
async fn kube_scale_ten_thousand_services() {
    let api = FakeApi::start().await;
    api.preload((0..SERVICES).flat_map(|i| bulk(i, None)));
    let vip = frontend();
    let backends = [Backend::start("a").await, Backend::start("b").await];
    api.apply(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "probe", "namespace": "default"},
        "spec": {"clusterIP": vip.ip().to_string(), "ports": [{"name": "tcp", "port": vip.port(), "targetPort": 9}]},
    }));
    api.apply(probe_slice(backends[0].addr));
    let dir = TempDir::new("kube-scale");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());

    let started = Instant::now();
    let capstan = Capstan::spawn(&["--kubeconfig", path_str(&kubeconfig), "--capture", "bind"]);
    eventually(Duration::from_secs(120), || {
        http_get(capstan.admin, "/readyz").and_then(|(code, _)| (code == 200).then_some(()))
    })
    .expect("ready");
    let ready = started.elapsed();
    capstan.wait_listening(vip);
    let rss_ready = capstan.rss_kib();

    let mut latencies = Vec::new();
    let changes: usize = std::env::var("KUBE_SCALE_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CHANGES)
        .max(2);
    for change in 0..changes {
        let target = &backends[(change + 1) % 2];
        let want = if (change + 1) % 2 == 0 { "a" } else { "b" };
        let changed = Instant::now();
        api.apply(probe_slice(target.addr));
        loop {
            if let Ok((_, name)) = greet(vip, None).await
                && name == want
            {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(30),
                "change never applied"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(changed.elapsed());
    }
    latencies.sort();
    for line in capstan
        .logs()
        .lines()
        .filter(|l| l.contains("snapshot published"))
        .take(12)
    {
        println!("kube scale compile: {line}");
    }
    let rss_after = capstan.rss_kib();
    println!(
        "kube scale: {SERVICES} Services x {ENDPOINTS} endpoints: ready in {:.2} s; resident {:.1} MiB at ready, {:.1} MiB after {changes} changes; \
         EndpointSlice change -> new endpoint serving: median {:.1} ms, max {:.1} ms",
        ready.as_secs_f64(),
        rss_ready as f64 / 1024.0,
        rss_after as f64 / 1024.0,
        latencies[changes / 2].as_secs_f64() * 1000.0,
        latencies[changes - 1].as_secs_f64() * 1000.0,
    );
}
