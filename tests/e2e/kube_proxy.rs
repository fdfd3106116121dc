//! kube-proxy's HTTP endpoints: `/healthz` and `/livez`, `/metrics` and `/proxyMode`, and the
//! per-Service `healthCheckNodePort` servers of LoadBalancer Services with
//! `externalTrafficPolicy: Local`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::support::*;

/// The whole HTTP/1.0 response (head and body) to `GET path`.
fn fetch(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: probe\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

fn manifest(health_port: u16, node_ip: std::net::IpAddr, ready_on_this_node: bool) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: lb, namespace: shop}}\nspec:\n  type: LoadBalancer\n  \
         clusterIP: {node_ip}\n  externalTrafficPolicy: Local\n  healthCheckNodePort: {health_port}\n  \
         ports: [{{name: http, port: 80, targetPort: 8080, nodePort: 30080}}]\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: lb-1\n  namespace: shop\n  \
         labels: {{kubernetes.io/service-name: lb}}\naddressType: IPv4\nports: [{{name: http, port: 8080}}]\n\
         endpoints:\n\
         - {{addresses: [10.9.0.1], nodeName: node-a, conditions: {{ready: {ready_on_this_node}}}}}\n\
         - {{addresses: [10.9.0.2], nodeName: node-a, conditions: {{ready: {ready_on_this_node}}}}}\n\
         - {{addresses: [10.9.0.3], nodeName: node-b}}\n"
    )
}

#[test]
fn healthz_metrics_and_health_check_node_ports_answer_as_kube_proxy_does() {
    let node_ip = unique_ip();
    let health_port = free_port(node_ip);
    let dir = TempDir::new("kube-proxy-endpoints");
    dir.write("lb.yaml", &manifest(health_port, node_ip, true));
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--node-name",
        "node-a",
        "--nodeport-addresses",
        &node_ip.to_string(),
        "--healthz",
        "127.0.0.1:0",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let healthz = capstan.logged_addr("healthz");
    let metrics = capstan.logged_addr("metrics");

    let (code, body) = http_get(healthz, "/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    let json: Value = serde_json::from_str(&body).expect("healthz JSON");
    assert_eq!(json["nodeEligible"], true);
    for field in ["lastUpdated", "currentTime"] {
        let time = json[field].as_str().unwrap_or_default();
        assert!(
            time.ends_with(" +0000 UTC") && time.len() >= 29,
            "{field}: {time}"
        );
    }
    let (code, body) = http_get(healthz, "/livez").expect("livez");
    assert_eq!(code, 200);
    let json: Value = serde_json::from_str(&body).expect("livez JSON");
    assert!(json.get("nodeEligible").is_none() && json["currentTime"].is_string());

    assert_eq!(
        http_get(metrics, "/proxyMode"),
        Some((200, "capstan".to_owned()))
    );
    let (code, body) = http_get(metrics, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(body.contains("capstan_snapshot_generation"), "{body}");

    // The health check node port: two ready endpoints on this node.
    let health = SocketAddr::new(node_ip, health_port);
    let response = eventually(Duration::from_secs(10), || fetch(health, "/"))
        .unwrap_or_else(|| panic!("no health check server on {health}\n{}", capstan.logs()));
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-load-balancing-endpoint-weight: 2"),
        "{response}"
    );
    let body = response.split_once("\r\n\r\n").expect("body").1;
    let json: Value = serde_json::from_str(body).expect("health JSON");
    assert_eq!(json["service"]["namespace"], "shop");
    assert_eq!(json["service"]["name"], "lb");
    assert_eq!(json["localEndpoints"], 2);
    assert_eq!(json["serviceProxyHealthy"], true);

    // No ready local endpoint left: 503, so the cloud load balancer skips this node.
    dir.write("lb.yaml", &manifest(health_port, node_ip, false));
    let response = eventually(Duration::from_secs(10), || {
        fetch(health, "/").filter(|r| r.starts_with("HTTP/1.0 503"))
    })
    .unwrap_or_else(|| panic!("never 503\n{}", capstan.logs()));
    assert!(response.contains("\"localEndpoints\": 0"), "{response}");

    // The Service gone: the port closes.
    dir.write("lb.yaml", "");
    eventually(Duration::from_secs(10), || {
        TcpStream::connect_timeout(&health, Duration::from_secs(1))
            .is_err()
            .then_some(())
    })
    .unwrap_or_else(|| panic!("health check port still open\n{}", capstan.logs()));

    // Each change after the first sync was timed from its arrival to its snapshot (observed just
    // after the snapshot is stored, so possibly a moment after the port closed).
    let programmed = || {
        let (_, body) = http_get(metrics, "/metrics")?;
        body.lines()
            .find_map(|l| l.strip_prefix("capstan_network_programming_duration_seconds_count "))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    eventually(Duration::from_secs(10), || programmed().filter(|&n| n >= 2))
        .unwrap_or_else(|| panic!("two changes, {:?} observed", programmed()));
}

/// The series kubernetes-mixin's "Kubernetes / Proxy" dashboard (as kube-prometheus-stack ships
/// it) reads, with the labels its panels group or filter by. Its "Post Request Latency" panel
/// filters `verb="POST"`: Capstan sends no POST (Ingress status is written with PATCH).
const KUBE_PROXY_DASHBOARD: &[(&str, &[&str])] = &[
    ("kubeproxy_sync_proxy_rules_duration_seconds_count", &[]),
    (
        "kubeproxy_sync_proxy_rules_duration_seconds_bucket",
        &["le"],
    ),
    ("kubeproxy_network_programming_duration_seconds_count", &[]),
    (
        "kubeproxy_network_programming_duration_seconds_bucket",
        &["le"],
    ),
    ("rest_client_requests_total", &["code"]),
    (
        "rest_client_request_duration_seconds_bucket",
        &["verb", "url", "le"],
    ),
    ("process_resident_memory_bytes", &[]),
    ("process_cpu_seconds_total", &[]),
    ("go_goroutines", &[]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_series_of_the_kube_proxy_dashboard_has_data() {
    use crate::dns_metrics::{assert_dashboard, series, sum};
    use crate::support::kube_api::FakeApi;
    let api = FakeApi::start().await;
    let vip = frontend();
    let slice = |port: u16| {
        format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: web-1\n  namespace: default\n  \
             labels: {{kubernetes.io/service-name: web}}\naddressType: IPv4\nports: [{{name: tcp, port: {port}}}]\n\
             endpoints:\n- addresses: [127.0.0.1]\n"
        )
    };
    api.apply_yaml(&format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default}}\n\
         spec: {{clusterIP: {}, ports: [{{name: tcp, port: {}}}]}}\n",
        vip.ip(),
        vip.port()
    ));
    api.apply_yaml(&slice(9));
    let dir = TempDir::new("kube-proxy-dashboard");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let capstan = Capstan::start(&[
        "--kubeconfig",
        path_str(&kubeconfig),
        "--capture",
        "bind",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let metrics = capstan.logged_addr("metrics");
    // A change after the first sync: counted, then programmed.
    api.apply_yaml(&slice(10));
    let text = eventually(Duration::from_secs(10), || {
        let (_, text) = http_get(metrics, "/metrics")?;
        let programmed = series(
            &text,
            "kubeproxy_network_programming_duration_seconds_count",
        );
        (sum(&programmed, &[]) >= 1.0).then_some(text)
    })
    .unwrap_or_else(|| panic!("no programming latency observed\n{}", capstan.logs()));
    assert_dashboard(&text, KUBE_PROXY_DASHBOARD);
    let changes = |name: &str| sum(&series(&text, name), &[]);
    assert!(
        changes("kubeproxy_sync_proxy_rules_endpoint_changes_total") >= 2.0,
        "{text}"
    );
    assert!(changes("kubeproxy_sync_proxy_rules_service_changes_total") >= 1.0);
    assert_eq!(
        changes("kubeproxy_sync_proxy_rules_endpoint_changes_pending"),
        0.0
    );
    assert!(changes("process_resident_memory_bytes") > 1e6);
    assert!(changes("go_goroutines") >= 1.0);
    let requests = series(&text, "rest_client_requests_total");
    assert!(
        sum(&requests, &[("code", "200"), ("method", "GET")]) >= 1.0,
        "{text}"
    );
    let durations = series(&text, "rest_client_request_duration_seconds_bucket");
    assert!(
        durations
            .iter()
            .any(|(l, _)| l["verb"] == "GET" && l["url"].contains("/api/v1/services")),
        "{text}"
    );
}
