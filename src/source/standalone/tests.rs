use std::path::Path;
use std::time::Duration;

use capstan_catalog::Object;
use capstan_table::{BalancePolicy, Protocol};
use proptest::prelude::*;

use super::*;

fn ok(text: &str) -> Parsed {
    parse(Path::new("capstan.yaml"), text).expect("valid")
}

fn err(text: &str) -> (Option<u64>, String) {
    match parse(Path::new("capstan.yaml"), text).expect_err(text) {
        Error::File { line, reason, .. } => (line, reason),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn full_example_is_understood() {
    let parsed = ok(
        "defaults:\n  balance: least-connections\n  connect_timeout: 250ms\n  resolve_interval: 2s\n\
                     services:\n  web:\n    listen: [127.0.0.1:8080, ':8081']\n    backends: [10.0.0.1:80, 'web:80', '[fd00::1]:80']\n\
                     \x20   session_affinity: client-ip\n    idle_timeout: 10m\n  dns:\n    listen: 127.0.0.1:53\n    protocol: udp\n    balance: random\n    backends: [10.0.0.9:53]\n",
    );
    assert_eq!(parsed.resolve_interval, Duration::from_secs(2));
    let (dns, _) = &parsed.services[0];
    assert_eq!(dns.key.to_string(), "standalone/dns");
    assert_eq!(dns.ports[0].protocol, Protocol::Udp);
    assert_eq!(dns.balance, Some(BalancePolicy::Random));
    let (web, backends) = &parsed.services[1];
    assert_eq!(
        web.balance,
        Some(BalancePolicy::LeastConnections),
        "defaults apply"
    );
    assert_eq!(web.connect_timeout, Some(Duration::from_millis(250)));
    assert_eq!(web.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(web.session_affinity, Some(Duration::from_secs(10_800)));
    assert_eq!(
        web.ports[0].listen,
        [
            "127.0.0.1:8080".parse().expect("addr"),
            "0.0.0.0:8081".parse().expect("addr")
        ]
    );
    assert_eq!(
        backends,
        &[
            Backend::Addr("10.0.0.1:80".parse().expect("addr")),
            Backend::Name {
                host: "web".into(),
                port: 80
            },
            Backend::Addr("[fd00::1]:80".parse().expect("addr")),
        ]
    );
}

#[test]
fn errors_point_at_the_line() {
    let cases: &[(&str, Option<u64>, &str)] = &[
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    backends: [nope]\n",
            Some(4),
            "expected HOST:PORT",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:99999\n",
            Some(3),
            "expected IP:PORT",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    balance: fastest\n",
            Some(4),
            "unknown load-balancing policy",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    idle_timeout: soon\n",
            Some(4),
            "not a duration",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    lisen: x\n",
            Some(4),
            "lisen",
        ),
        (
            "services:\n  Web_1:\n    listen: 127.0.0.1:80\n",
            Some(3),
            "DNS label",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    session_affinity: cookie\n",
            Some(4),
            "client-ip or none",
        ),
        (
            "services:\n  web:\n    listen: 127.0.0.1:80\n    protocol: icmp\n",
            Some(4),
            "tcp or udp",
        ),
        ("services:\n  web: [\n", Some(2), ""),
        (
            "services:\n  web:\n    backends: [10.0.0.1:80]\n",
            None,
            "listen",
        ),
    ];
    for (text, line, want) in cases {
        let (got_line, reason) = err(text);
        assert!(reason.contains(want), "{text:?}: {reason}");
        if line.is_some() {
            assert_eq!(got_line, *line, "{text:?}: {reason}");
        }
    }
}

#[tokio::test]
async fn backends_become_slices_per_port_and_names_resolve() {
    let dir = std::env::temp_dir().join(format!("capstan-standalone-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("capstan.yaml");
    std::fs::write(&path, "services:\n  web:\n    listen: 127.0.0.1:8080\n    backends: [10.0.0.1:80, 10.0.0.2:80, 10.0.0.3:81, 'localhost:82']\n").expect("write");
    let mut file = StandaloneFile::new(path.clone());
    assert!(file.load().errors.is_empty());
    assert!(
        file.resolve(Duration::from_secs(2)).await,
        "localhost resolves"
    );
    let objects = file.objects();
    let slices: Vec<(String, Vec<String>)> = objects
        .iter()
        .filter_map(|o| match o {
            Object::EndpointSlice(s) => Some((
                format!("{}:{:?}", s.name, s.ports[0].port),
                s.endpoints
                    .iter()
                    .map(|e| e.addresses[0].to_string())
                    .collect(),
            )),
            _ => None,
        })
        .collect();
    assert_eq!(
        slices[0],
        (
            "web-80:Some(80)".to_owned(),
            vec!["10.0.0.1".to_owned(), "10.0.0.2".to_owned()]
        )
    );
    assert_eq!(slices[1].1, ["10.0.0.3"]);
    assert!(slices[2].1.contains(&"127.0.0.1".to_owned()), "{slices:?}");
    assert!(
        !file.resolve(Duration::from_secs(2)).await,
        "unchanged on a second pass"
    );

    std::fs::write(&path, "services: [broken\n").expect("write");
    let loaded = file.load();
    assert_eq!(loaded.errors.len(), 1);
    assert_eq!(loaded.objects, objects, "previous content kept");
    let _ = std::fs::remove_dir_all(&dir);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = parse(Path::new("capstan.yaml"), &text);
    }

    #[test]
    fn arbitrary_addresses_never_panic(listen in "\\PC{0,40}", backend in "\\PC{0,40}") {
        let text = format!("services:\n  web:\n    listen: {listen:?}\n    backends: [{backend:?}]\n");
        let _ = parse(Path::new("capstan.yaml"), &text);
    }
}

#[test]
fn routes_become_one_standalone_ingress() {
    let parsed = ok(
        "services:\n  web:\n    listen: 127.0.0.1:8080\n    backends: [10.0.0.1:80]\n  api:\n    listen: 127.0.0.1:8081\n\
                     routes:\n  - {host: Web.Example, service: web}\n  - {host: web.example, path: /api, path_type: exact, service: api}\n  - {path: /, service: web}\n",
    );
    let ingress = parsed.ingress.expect("an ingress");
    assert_eq!(&*ingress.name, "capstan-yaml");
    assert_eq!(ingress.origin, Origin::Standalone);
    assert_eq!(ingress.rules.len(), 2, "paths grouped by host");
    assert_eq!(ingress.rules[0].host.as_deref(), Some("web.example"));
    assert_eq!(ingress.rules[0].paths.len(), 2);
    assert_eq!(
        ingress.rules[0].paths[1].path_type,
        capstan_table::PathType::Exact
    );
    assert_eq!(ingress.rules[1].host, None);
    assert!(parsed.tls.is_empty());
}

#[test]
fn bad_routes_are_errors_with_their_line() {
    let base = "services:\n  web:\n    listen: 127.0.0.1:8080\n  dns:\n    listen: 127.0.0.1:53\n    protocol: udp\nroutes:\n";
    let (line, reason) = err(&format!("{base}  - service: nope\n"));
    assert_eq!(line, Some(8));
    assert!(reason.contains("no TCP service"), "{reason}");
    let (_, reason) = err(&format!("{base}  - service: dns\n"));
    assert!(reason.contains("no TCP service"), "{reason}");
    let (_, reason) = err(&format!("{base}  - {{service: web, path_type: regex}}\n"));
    assert!(reason.contains("prefix or exact"), "{reason}");
    let (_, reason) = err(&format!("{base}  - {{service: web, path: nope}}\n"));
    assert!(reason.contains("must start with /"), "{reason}");
    let (_, reason) = err(&format!(
        "{base}  - {{service: web, tls: {{cert: a.pem, key: b.pem}}}}\n"
    ));
    assert!(reason.contains("needs a host"), "{reason}");
    let (_, reason) = err(&format!(
        "{base}  - {{host: a.example, service: web, tls: {{cert: /nonexistent.pem, key: b.pem}}}}\n"
    ));
    assert!(reason.contains("/nonexistent.pem"), "{reason}");
    let (_, reason) = err(&format!("{base}  - {{service: web, weight: 3}}\n"));
    assert!(reason.contains("weight"), "{reason}");
}

#[test]
fn policy_maps_use_the_annotation_keys() {
    let parsed = ok(
        "services:\n  web:\n    listen: 127.0.0.1:8080\n    backends: [10.0.0.1:80]\n    policy:\n      health-check-path: /healthz\n      health-check-interval: 2s\n      outlier-consecutive-5xx: 5\n\
         routes:\n  - host: a.example\n    service: web\n    policy:\n      retries: 3\n      retry-on: gateway-error\n      rate-limit: 100/s\n  - host: b.example\n    service: web\n",
    );
    let (web, _) = &parsed.services[0];
    let health = web.policy.health.as_ref().expect("health check");
    assert_eq!(health.interval, Duration::from_secs(2));
    assert_eq!(web.policy.outlier.consecutive_5xx, Some(5));
    let ingress = parsed.ingress.as_ref().expect("routes");
    let policy = |host: &str| {
        let rule = ingress
            .rules
            .iter()
            .find(|r| r.host.as_deref() == Some(host));
        rule.expect("rule").paths[0].policy.clone().expect("policy")
    };
    assert_eq!(policy("a.example").retry.retries, 3);
    assert_eq!(policy("a.example").retry.on.statuses, [502, 503, 504]);
    assert_eq!(policy("a.example").rate_limit.expect("limit").requests, 100);
    assert_eq!(*policy("b.example"), capstan_table::RoutePolicy::default());

    let (_, reason) =
        err("services:\n  web:\n    listen: 127.0.0.1:8080\n    policy: {retries: 2}\n");
    assert!(
        reason.contains("service web: policy: unknown policy key \"retries\""),
        "{reason}"
    );
    let (_, reason) = err(
        "services:\n  web:\n    listen: 127.0.0.1:8080\nroutes:\n  - service: web\n    policy: {rate-limit: fast}\n",
    );
    assert!(
        reason.contains("policy: rate-limit: \"fast\" is not a rate"),
        "{reason}"
    );
}
