//! CoreDNS's endpoints on `--dns-metrics`: `/metrics` with CoreDNS's names, labels and buckets,
//! checked against every query of the CoreDNS dashboard that kube-prometheus-stack installs
//! (`k8s-coredns`, grafana.com 12539, "updated metrics for version 1.7.0+"), and `/health` and
//! `/ready` as CoreDNS's plugins answer them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::dns_support::*;
use crate::support::*;

/// The series the dashboard's panels read, with the labels each groups or filters by
/// (from its PromQL: `sum(rate(m[5m])) by (label)`, `histogram_quantile(…, … by (le, proto))`).
const DASHBOARD: &[(&str, &[&str])] = &[
    ("coredns_dns_requests_total", &["proto", "type", "zone"]),
    ("coredns_dns_do_requests_total", &[]),
    ("coredns_dns_request_size_bytes_bucket", &["le", "proto"]),
    ("coredns_dns_responses_total", &["rcode"]),
    ("coredns_dns_request_duration_seconds_bucket", &["le"]),
    ("coredns_dns_response_size_bytes_bucket", &["le", "proto"]),
    ("coredns_cache_entries", &["type"]),
    ("coredns_cache_hits_total", &["type"]),
    ("coredns_cache_misses_total", &[]),
];

pub(crate) type Series = Vec<(BTreeMap<String, String>, f64)>;

/// The samples of `name` in a Prometheus text exposition.
pub(crate) fn series(text: &str, name: &str) -> Series {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (head, value) = line.rsplit_once(' ')?;
            let (metric, labels) = match head.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (head, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().ok()?))
        })
        .collect()
}

/// Every series a dashboard reads is in the scrape `text`, with the labels it groups by.
pub(crate) fn assert_dashboard(text: &str, dashboard: &[(&str, &[&str])]) {
    for (name, labels) in dashboard {
        let found = series(text, name);
        assert!(!found.is_empty(), "{name} missing:\n{text}");
        for label in *labels {
            assert!(
                found.iter().all(|(l, _)| l.contains_key(*label)),
                "{name} lacks label {label}:\n{text}"
            );
        }
    }
}

pub(crate) fn sum(series: &Series, wanted: &[(&str, &str)]) -> f64 {
    series
        .iter()
        .filter(|(labels, _)| {
            wanted
                .iter()
                .all(|(k, v)| labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, v)| v)
        .sum()
}

#[test]
fn coredns_names_labels_and_buckets_answer_every_dashboard_query() {
    let dir = TempDir::new("dns-metrics");
    dir.write(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\n\
         spec: {clusterIP: 10.96.7.7, ports: [{name: http, port: 80}]}\n",
    );
    let upstream = Upstream::start();
    let dns = SocketAddr::new(unique_ip(), 0).to_string();
    let capstan = Capstan::start(&[
        "--manifests",
        path_str(&dir.0),
        "--dns",
        &dns,
        "--dns-metrics",
        "127.0.0.1:0",
        "--upstream",
        &upstream.addr.to_string(),
    ]);
    let dns = capstan.dns_addr();
    let endpoint = capstan.logged_addr("dns metrics");
    assert_eq!(http_get(endpoint, "/health"), Some((200, "OK".into())));
    assert_eq!(http_get(endpoint, "/ready"), Some((200, "OK".into())));

    assert_eq!(
        dig_short(dns, &["web.shop.svc.cluster.local"]),
        ["10.96.7.7"]
    );
    assert_eq!(
        dig_short(dns, &["+tcp", "web.shop.svc.cluster.local"]),
        ["10.96.7.7"]
    );
    assert_eq!(
        status(&dig(dns, &["nothere.shop.svc.cluster.local"])),
        "NXDOMAIN"
    );
    assert_eq!(
        dig_short(dns, &["+dnssec", "AAAA", "web.shop.svc.cluster.local"]),
        Vec::<String>::new()
    );
    // Forwarded once, then answered from the cache.
    assert_eq!(dig_short(dns, &["www.example.test"]), ["192.0.2.1"]);
    assert_eq!(dig_short(dns, &["www.example.test"]), ["192.0.2.1"]);

    let (code, text) = http_get(endpoint, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert_dashboard(&text, DASHBOARD);
    let requests = series(&text, "coredns_dns_requests_total");
    assert_eq!(
        sum(&requests, &[("proto", "udp"), ("type", "A")]),
        4.0,
        "{text}"
    );
    assert_eq!(sum(&requests, &[("proto", "tcp"), ("type", "A")]), 1.0);
    assert_eq!(sum(&requests, &[("zone", "."), ("family", "1")]), 6.0);
    let server = format!("dns://{dns}");
    assert_eq!(sum(&requests, &[("server", &server)]), 6.0, "{text}");
    let responses = series(&text, "coredns_dns_responses_total");
    assert_eq!(sum(&responses, &[("rcode", "NXDOMAIN")]), 1.0);
    assert_eq!(sum(&responses, &[("rcode", "NOERROR")]), 5.0);
    assert_eq!(
        sum(&series(&text, "coredns_dns_do_requests_total"), &[]),
        1.0
    );
    let hits = series(&text, "coredns_cache_hits_total");
    assert_eq!(sum(&hits, &[("type", "success")]), 1.0);
    assert_eq!(sum(&series(&text, "coredns_cache_misses_total"), &[]), 1.0);
    assert_eq!(
        sum(
            &series(&text, "coredns_cache_entries"),
            &[("type", "success")]
        ),
        1.0
    );
    // CoreDNS's buckets: 16 exponential from 0.25 ms, sizes from 0 to 64e3 bytes.
    let duration = series(&text, "coredns_dns_request_duration_seconds_bucket");
    let bounds: Vec<&str> = duration
        .iter()
        .filter(|(l, _)| l.get("type").map(String::as_str) == Some("A"))
        .map(|(l, _)| l["le"].as_str())
        .collect();
    assert_eq!(bounds.first(), Some(&"0.00025"));
    assert_eq!(bounds.len(), 17, "{bounds:?}");
    let sizes = series(&text, "coredns_dns_response_size_bytes_bucket");
    assert!(sizes.iter().any(|(l, _)| l["le"] == "8291.0"), "{sizes:?}");
    assert_eq!(sum(&sizes, &[("proto", "tcp"), ("le", "+Inf")]), 1.0);
    assert!(
        series(&text, "coredns_panics_total")
            .first()
            .is_some_and(|s| s.1 == 0.0)
    );
    assert!(!series(&text, "coredns_forward_requests_total").is_empty());
}
