//! Endpoint choice through the real binary: spreading, affinity, ejection.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_over_three_endpoints() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let listen = frontend();
    let dir = TempDir::new("spread");
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &addrs, "    balance: round-robin\n"),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);

    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..30 {
        let name = exchange(listen, b"hello").await.expect("exchange");
        *seen.entry(name).or_default() += 1;
    }
    assert_eq!(
        seen,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
    let metrics = capstan.metrics();
    assert!(
        metrics.contains("capstan_proxy_connections_total{service=\"standalone/web\",port=\"\",protocol=\"TCP\"} 30"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_least_connections_reach_every_endpoint() {
    for policy in ["random", "least-connections"] {
        let backends = [
            Backend::start("a").await,
            Backend::start("b").await,
            Backend::start("c").await,
        ];
        let listen = frontend();
        let dir = TempDir::new("policies");
        let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
        let config = dir.write(
            "capstan.yaml",
            &config_one("web", listen, &addrs, &format!("    balance: {policy}\n")),
        );
        let capstan = Capstan::start(&["--config", path_str(&config)]);
        capstan.wait_listening(listen);
        let mut seen = BTreeMap::<String, usize>::new();
        for _ in 0..60 {
            *seen
                .entry(exchange(listen, b"x").await.expect("exchange"))
                .or_default() += 1;
        }
        assert_eq!(seen.len(), 3, "{policy}: {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_steers_away_from_busy_endpoints() {
    let backends = [Backend::start("a").await, Backend::start("b").await];
    let listen = frontend();
    let dir = TempDir::new("p2c");
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &addrs, "    balance: least-connections\n"),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    // Hold 20 connections open; with two endpoints p2c keeps them within one of each other.
    let mut held = Vec::new();
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let (stream, name) = greet(listen, None).await.expect("greet");
        *seen.entry(name).or_default() += 1;
        held.push(stream);
    }
    let counts: Vec<usize> = seen.values().copied().collect();
    assert_eq!(counts, [10, 10], "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_pins_each_client() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let listen = frontend();
    let dir = TempDir::new("affinity");
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let config = dir.write(
        "capstan.yaml",
        &config_one("web", listen, &addrs, "    balance: round-robin\n    session_affinity: client-ip\n    session_affinity_timeout: 1h\n"),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);

    let mut pinned = BTreeMap::new();
    for client in 1..=6u8 {
        let source = std::net::IpAddr::from([127, 0, 0, 1 + client]);
        let mut names = Vec::new();
        for _ in 0..5 {
            let (_, name) = greet(listen, Some(source)).await.expect("greet");
            names.push(name);
        }
        names.dedup();
        assert_eq!(names.len(), 1, "client {source} moved: {names:?}");
        pinned.insert(source, names[0].clone());
    }
    let distinct: std::collections::BTreeSet<_> = pinned.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "round-robin spreads new clients: {pinned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_is_ejected_and_no_connection_fails() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let c = Backend::start("c").await;
    let listen = frontend();
    let dir = TempDir::new("eject");
    let config = dir.write(
        "capstan.yaml",
        &config_one(
            "web",
            listen,
            &[a.addr, b.addr, c.addr],
            "    balance: round-robin\n",
        ),
    );
    let capstan = Capstan::start(&["--config", path_str(&config), "--eject-backoff", "30s"]);
    capstan.wait_listening(listen);

    let dead = b.addr;
    b.kill();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut seen = BTreeMap::<String, usize>::new();
    for _ in 0..200 {
        let name = exchange(listen, b"ping")
            .await
            .expect("no client-visible failure");
        *seen.entry(name).or_default() += 1;
    }
    assert!(!seen.contains_key("b"));
    assert_eq!(seen.len(), 2);
    let snapshot = capstan.snapshot();
    let endpoint = snapshot["services"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .find(|e| e["address"] == dead.to_string().as_str())
        .expect("dead endpoint still listed")
        .clone();
    assert_eq!(endpoint["ejected"], true, "{endpoint}");
    assert_eq!(
        endpoint["connect_errors"], 1,
        "ejected after one failure, not retried 200 times: {endpoint}"
    );
    assert!(capstan.metrics().contains("capstan_proxy_endpoint_ejected{service=\"standalone/web\",port=\"\",protocol=\"TCP\",endpoint=\"".to_owned().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejected_endpoint_returns_after_its_backoff() {
    let a = Backend::start("a").await;
    let b_addr = std::net::SocketAddr::new(unique_ip(), 0);
    let b_probe = std::net::TcpListener::bind(b_addr).expect("reserve");
    let b_addr = b_probe.local_addr().expect("addr");
    drop(b_probe);
    let listen = frontend();
    let dir = TempDir::new("return");
    let config = dir.write(
        "capstan.yaml",
        &config_one(
            "web",
            listen,
            &[a.addr, b_addr],
            "    balance: round-robin\n",
        ),
    );
    let capstan = Capstan::start(&[
        "--config",
        path_str(&config),
        "--eject-backoff",
        "300ms",
        "--eject-backoff-max",
        "300ms",
    ]);
    capstan.wait_listening(listen);
    for _ in 0..4 {
        assert_eq!(exchange(listen, b"x").await.expect("served by a"), "a");
    }
    let _b = Backend::start_on("b", b_addr).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut names = Vec::new();
    for _ in 0..6 {
        names.push(exchange(listen, b"x").await.expect("exchange"));
    }
    assert!(
        names.iter().any(|n| n == "b"),
        "b is back after its backoff: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_given_by_name_are_resolved() {
    // A compose service name resolves to its containers; here `localhost` stands in for it.
    let backend = Backend::start_on("named", "127.0.0.1:0".parse().expect("addr")).await;
    let listen = frontend();
    let dir = TempDir::new("named");
    let config = dir.write(
        "capstan.yaml",
        &format!(
            "defaults:\n  resolve_interval: 200ms\nservices:\n  web:\n    listen: '{listen}'\n    backends: ['localhost:{}']\n",
            backend.addr.port()
        ),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    let snapshot = capstan.snapshot();
    let endpoints = snapshot["services"][0]["endpoints"].to_string();
    assert!(
        endpoints.contains(&format!("127.0.0.1:{}", backend.addr.port())),
        "{endpoints}"
    );
    for _ in 0..5 {
        assert_eq!(exchange(listen, b"x").await.expect("served"), "named");
    }
}

/// `max-connections-per-endpoint` (Envoy's `max_connections` circuit breaker, per endpoint): with
/// every endpoint at its limit a new connection is reset at once and counted; a slot freed by a
/// closed connection serves the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_at_their_connection_limit_take_no_more_and_new_connections_are_reset() {
    let backends = [Backend::start("a").await, Backend::start("b").await];
    let listen = frontend();
    let dir = TempDir::new("connection-limit");
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let policy = "    policy:\n      max-connections-per-endpoint: '1'\n";
    let config = dir.write("capstan.yaml", &config_one("web", listen, &addrs, policy));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    let (first, one) = greet(listen, None).await.expect("first connection");
    let (_second, other) = greet(listen, None).await.expect("second connection");
    assert_ne!(one, other, "one connection per endpoint");
    let refused = greet(listen, None).await;
    assert!(refused.is_err(), "every endpoint full: {refused:?}");
    let metrics = capstan.metrics();
    let overloaded = "capstan_proxy_rejected_connections_total{service=\"standalone/web\",port=\"\",protocol=\"TCP\",reason=\"overloaded\",blame=\"upstream\"} 1";
    assert!(metrics.contains(overloaded), "{metrics}");
    drop(first);
    let mut served = None;
    for _ in 0..100 {
        if let Ok((_, name)) = greet(listen, None).await {
            served = Some(name);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        served,
        Some(one),
        "the freed endpoint takes the next connection"
    );
}
