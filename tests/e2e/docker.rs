//! The Docker provider (`--docker SOCKET`) against a wire-level fake Docker Engine API on a unix
//! socket: containers routed by their `capstan.*` labels (Traefik's Docker provider's model),
//! following start, stop and health events, surviving an engine restart, and reporting a bad
//! container without dropping the others.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use crate::http_support::{HttpBackend, curl};
use crate::support::docker_api::{FakeContainer, FakeDocker};
use crate::support::{Capstan, TempDir, eventually, path_str};

fn container(name: &str, backend: SocketAddr, labels: &[(&str, &str)]) -> FakeContainer {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // Every backend listens on loopback, each on its own port: the port comes from the label.
    labels.push(("capstan.port".into(), backend.port().to_string()));
    FakeContainer {
        name: name.into(),
        ip: backend.ip().to_string(),
        labels,
        exposed: vec![80],
        health: None,
    }
}

/// The backend names that answered `host` + `path` over `rounds` requests.
fn answered(http: SocketAddr, host: &str, path: &str, rounds: usize) -> BTreeSet<String> {
    let url = format!("http://{http}{path}");
    (0..rounds)
        .filter_map(|_| {
            let (status, body, _) = curl(&["-H", &format!("Host: {host}"), &url]);
            (status == 200).then(|| {
                body.lines()
                    .find_map(|l| l.strip_prefix("backend="))
                    .unwrap_or_default()
                    .to_owned()
            })
        })
        .collect()
}

fn wait_answered(http: SocketAddr, host: &str, path: &str, want: &[&str], capstan: &Capstan) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(Duration::from_secs(15), || {
        (answered(http, host, path, 12) == want).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{host}{path}: wanted answers from {want:?}, got {:?}\n{}",
            answered(http, host, path, 12),
            capstan.logs()
        )
    });
}

#[test]
fn compose_containers_are_routed_by_their_labels_and_follow_engine_events() {
    let dir = TempDir::new("docker-provider");
    let docker = FakeDocker::start(&dir.path("docker.sock"));
    let (web1, web2, api) = (
        HttpBackend::start("web-1"),
        HttpBackend::start("web-2"),
        HttpBackend::start("api-1"),
    );
    let web_labels = [
        ("com.docker.compose.service", "web"),
        ("capstan.http.host", "web.localhost"),
    ];
    docker.run(container("app-web-1", web1.addr, &web_labels));
    docker.run(container("app-web-2", web2.addr, &web_labels));
    // A container that opted in but cannot be served: reported, the others serve.
    let mut ambiguous = container("app-admin-1", api.addr, &[("capstan.http.path", "/admin")]);
    ambiguous.labels.retain(|(k, _)| k != "capstan.port");
    ambiguous.exposed = vec![80, 443];
    docker.run(ambiguous);
    // No capstan.* label: not Capstan's business.
    docker.run(FakeContainer {
        labels: vec![("com.docker.compose.service".into(), "db".into())],
        ..container("app-db-1", api.addr, &[])
    });

    let capstan = Capstan::start(&[
        "--docker",
        path_str(&docker.socket),
        "--http",
        "127.0.0.1:0",
    ]);
    let (http, _) = capstan.ingress_addrs();
    let http = http.expect("http listener");
    wait_answered(http, "web.localhost", "/", &["web-1", "web-2"], &capstan);

    let snapshot = capstan.snapshot();
    let source = &snapshot["sources"][format!("docker:{}", docker.socket.display())];
    let errors = source["errors"].to_string();
    assert!(
        errors.contains("container app-admin-1: several exposed TCP ports: set capstan.port"),
        "{source}"
    );
    assert_eq!(
        source["files"], 4,
        "every running container was inspected: {source}"
    );

    // `docker compose up api`: a new route, no listen address anywhere.
    docker.run(container(
        "app-api-1",
        api.addr,
        &[
            ("capstan.http.path", "/api"),
            ("capstan.policy.retries", "2"),
        ],
    ));
    wait_answered(http, "any.example", "/api/v1", &["api-1"], &capstan);

    // One replica stops: traffic goes to the other within the debounce and a resync.
    docker.stop_container("app-web-2");
    wait_answered(http, "web.localhost", "/", &["web-1"], &capstan);

    // A failing health check takes the last replica out (503, no endpoint), a passing one
    // brings it back.
    docker.set_health("app-web-1", "unhealthy");
    eventually(Duration::from_secs(15), || {
        let (status, _, _) = curl(&["-H", "Host: web.localhost", &format!("http://{http}/")]);
        (status == 503).then_some(())
    })
    .unwrap_or_else(|| panic!("an unhealthy container kept serving\n{}", capstan.logs()));
    docker.set_health("app-web-1", "healthy");
    wait_answered(http, "web.localhost", "/", &["web-1"], &capstan);

    // The engine restarts; meanwhile web-2 comes back without any event anyone can replay.
    let web2_again = container("app-web-2", web2.addr, &web_labels);
    docker.while_down(|containers| {
        containers.insert("app-web-2".into(), web2_again);
    });
    wait_answered(http, "web.localhost", "/", &["web-1", "web-2"], &capstan);
    let requests = docker.requests();
    let watches = requests.iter().filter(|r| r.starts_with("events")).count();
    assert!(
        watches >= 2,
        "the event stream was followed again: {requests:?}"
    );
    let metrics = capstan.metrics();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("capstan_source_reloads_total")
                && l.contains("docker:")
                && l.contains("result=\"failure\"")),
        "{metrics}"
    );
}

#[test]
fn an_engine_that_is_not_there_yet_is_reported_and_picked_up_when_it_starts() {
    let dir = TempDir::new("docker-late");
    let socket = dir.path("docker.sock");
    let backend = HttpBackend::start("late-1");
    let capstan = Capstan::start(&["--docker", path_str(&socket), "--http", "127.0.0.1:0"]);
    let (http, _) = capstan.ingress_addrs();
    let http = http.expect("http listener");
    let key = format!("docker:{}", socket.display());
    let snapshot = capstan.snapshot();
    assert!(
        snapshot["sources"][&key]["errors"]
            .to_string()
            .contains("docker engine"),
        "the unreachable engine is shown: {}",
        snapshot["sources"]
    );

    let docker = FakeDocker::start(&socket);
    docker.run(container(
        "late-1",
        backend.addr,
        &[("capstan.http.host", "late.localhost")],
    ));
    wait_answered(http, "late.localhost", "/", &["late-1"], &capstan);
    capstan.wait_snapshot("the engine error cleared", |s| {
        s["sources"][&key]["errors"]
            .as_array()
            .is_some_and(Vec::is_empty)
    });
}
