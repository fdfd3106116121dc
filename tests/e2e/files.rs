//! Bad input: invalid files at startup exit non-zero with file and line; at runtime they keep
//! the previous state, are logged, counted and shown on the admin endpoint. And the cap on
//! per-endpoint metric series, which keeps many Services from flooding the metrics.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::*;

#[test]
fn invalid_files_at_startup_exit_non_zero_with_file_and_line() {
    let dir = TempDir::new("startup");
    let config = dir.write(
        "capstan.yaml",
        "services:\n  web:\n    listen: 127.0.0.1:80\n    backends: ['no-port-here']\n",
    );
    let (status, output) = run_to_exit(&[
        "run",
        "--config",
        path_str(&config),
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(
        output.contains("capstan.yaml:4: backend \"no-port-here\": expected HOST:PORT"),
        "{output}"
    );

    let manifests = TempDir::new("startup-manifests");
    manifests.write("a.yaml", "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec:\n  ports:\n  - port: 80\n    protocol: ICMP\n");
    let (status, output) = run_to_exit(&[
        "run",
        "--manifests",
        path_str(&manifests.0),
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(
        output.contains("a.yaml:1: Service default/a: unknown protocol \"ICMP\""),
        "{output}"
    );

    let (status, output) = run_to_exit(&[
        "run",
        "--config",
        "/nonexistent/capstan.yaml",
        "--admin",
        "127.0.0.1:0",
    ]);
    assert!(!status.success());
    assert!(
        output.contains("/nonexistent/capstan.yaml: No such file"),
        "{output}"
    );
}

#[test]
fn check_prints_what_would_be_served() {
    let dir = TempDir::new("check");
    let config = dir.write(
        "capstan.yaml",
        "services:\n  web:\n    listen: 127.0.0.1:8080\n    backends: [10.0.0.1:80, 10.0.0.2:80]\n",
    );
    let (status, output) = run_to_exit(&["check", "--config", path_str(&config)]);
    assert!(status.success(), "{output}");
    assert!(
        output.contains("standalone/web/TCP: 2 endpoint(s), 2 eligible, on 127.0.0.1:8080/TCP"),
        "{output}"
    );
    dir.write("capstan.yaml", "services:\n  web:\n    listen: nowhere\n");
    let (status, output) = run_to_exit(&["check", "--config", path_str(&config)]);
    assert!(!status.success());
    assert!(output.contains("capstan.yaml:3:"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_reload_keeps_serving_the_previous_state() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = frontend();
    let dir = TempDir::new("badreload");
    let good = config_one("web", listen, &[a.addr], "");
    let config = dir.write("capstan.yaml", &good);
    let manifests = TempDir::new("badreload-manifests");
    manifests.write(
        "ok.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n",
    );
    let capstan = Capstan::start(&[
        "--config",
        path_str(&config),
        "--manifests",
        path_str(&manifests.0),
    ]);
    capstan.wait_listening(listen);
    let generation = capstan.generation();

    // A broken edit: a typo'd key on line 5, and a backend change in the same edit.
    let broken = config_one("web", listen, &[b.addr], "    balanse: random\n");
    dir.write("capstan.yaml", &broken);
    manifests.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIP: not-an-ip}\n",
    );
    let snapshot = capstan.wait_snapshot("both errors", |s| {
        s["sources"].as_object().is_some_and(|sources| {
            sources
                .values()
                .filter(|r| r["errors"].as_array().is_some_and(|e| !e.is_empty()))
                .count()
                == 2
        })
    });
    let errors = snapshot["sources"].to_string();
    assert!(errors.contains("capstan.yaml:5: unknown field"), "{errors}");
    assert!(
        errors.contains("bad.yaml:1: Service default/x: clusterIP"),
        "{errors}"
    );
    assert!(capstan.logs().contains("rejected; previous content kept"));
    let metrics = capstan.metrics();
    assert!(metrics.contains("result=\"failure\"} 1"), "{metrics}");
    assert!(
        metrics.contains("capstan_source_invalid_files{source=\"config:"),
        "{metrics}"
    );
    // Still the old snapshot, still served by a.
    assert_eq!(capstan.generation(), generation);
    for _ in 0..5 {
        assert_eq!(exchange(listen, b"x").await.expect("served"), "a");
    }

    // Fixed: applied within a second.
    dir.write("capstan.yaml", &config_one("web", listen, &[b.addr], ""));
    manifests.write("bad.yaml", "");
    let started = std::time::Instant::now();
    eventually(Duration::from_secs(5), || {
        (capstan.generation() > generation).then_some(())
    })
    .expect("fixed config applied");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "applied in {:?}",
        started.elapsed()
    );
    crate::support::eventually(Duration::from_secs(5), || {
        capstan.snapshot()["sources"]
            .as_object()
            .is_some_and(|s| {
                s.values()
                    .all(|r| r["errors"].as_array().is_some_and(Vec::is_empty))
            })
            .then_some(())
    })
    .expect("errors cleared");
    assert_eq!(exchange(listen, b"x").await.expect("served"), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = frontend();
    let dir = TempDir::new("sighup");
    let config = dir.write("capstan.yaml", &config_one("web", listen, &[a.addr], ""));
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    // Write in place (no rename) and signal: SIGHUP must pick it up even if the watch missed it.
    std::fs::write(&config, config_one("web", listen, &[b.addr], "")).expect("write");
    capstan.signal(1);
    eventually(Duration::from_secs(5), || {
        capstan.snapshot()["services"][0]["endpoints"][0]["address"]
            .as_str()
            .is_some_and(|e| e == b.addr.to_string())
            .then_some(())
    })
    .expect("reloaded");
    assert_eq!(exchange(listen, b"x").await.expect("served"), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_frontends_keep_the_first_and_are_reported() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let listen = frontend();
    let dir = TempDir::new("conflict");
    let config = dir.write(
        "capstan.yaml",
        &format!(
            "services:\n  first:\n    listen: '{listen}'\n    backends: ['{}']\n  second:\n    listen: '{listen}'\n    backends: ['{}']\n",
            a.addr, b.addr
        ),
    );
    let capstan = Capstan::start(&["--config", path_str(&config)]);
    capstan.wait_listening(listen);
    let problems = capstan.snapshot()["problems"].to_string();
    assert!(
        problems.contains("is already served by standalone/first"),
        "{problems}"
    );
    assert!(capstan.metrics().contains("capstan_catalog_problems 1"));
    assert_eq!(exchange(listen, b"x").await.expect("served"), "a");
    assert_eq!(http_get(capstan.admin, "/nope").map(|r| r.0), Some(404));
}

/// `--endpoint-metrics N` caps the per-endpoint series (10,000 Services of 10 endpoints would
/// be half a million), and says how many endpoints it left out.
#[test]
fn per_endpoint_series_are_capped_and_the_rest_counted() {
    let dir = TempDir::new("endpoint-metrics");
    let backends: Vec<SocketAddr> = (1..=3)
        .map(|i| SocketAddr::from(([127, 0, 0, i], 9)))
        .collect();
    let config = dir.write(
        "capstan.yaml",
        &config_one("capped", crate::support::frontend(), &backends, ""),
    );
    let series = |metrics: &str, name: &str| {
        metrics
            .lines()
            .filter(|l| l.starts_with(name) && l.contains("endpoint=\""))
            .count()
    };
    let capped = Capstan::start(&["--config", path_str(&config), "--endpoint-metrics", "2"]);
    let metrics = capped.metrics();
    assert_eq!(
        series(&metrics, "capstan_proxy_endpoint_choices"),
        2,
        "{metrics}"
    );
    assert!(
        metrics.contains("capstan_proxy_endpoint_series_omitted 1"),
        "{metrics}"
    );
    drop(capped);

    let all = Capstan::start(&["--config", path_str(&config)]);
    let metrics = all.metrics();
    assert_eq!(
        series(&metrics, "capstan_proxy_endpoint_choices"),
        3,
        "{metrics}"
    );
    assert!(
        metrics.contains("capstan_proxy_endpoint_series_omitted 0"),
        "{metrics}"
    );
}
