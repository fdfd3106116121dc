//! The ingress's pure per-request steps (issue 15): routing a request by host and path in a
//! table of 1,000 hosts, and building the upstream request head (forwarding headers decided,
//! hop-by-hop headers dropped, head encoded) for a browser-like request. A regression here shows
//! without a load test; `benches/peers.sh` measures the whole request path against nginx and
//! HAProxy.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use bytes::BytesMut;
use capstan_ingress::bench::UpstreamHead;
use capstan_ingress::route;
use capstan_table::{
    Backend, BackendPort, IngressTable, PathType, Route, ServiceKey, UpstreamProtocol,
};
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};

fn route_to(service: &str) -> Arc<Route> {
    Arc::new(Route {
        ingress: format!("bench/{service}").into(),
        host: "*".into(),
        path: "/".into(),
        backend: Backend::Service {
            service: ServiceKey::new("bench", service),
            port: BackendPort::Number(80),
        },
        upstream: None,
        protocol: UpstreamProtocol::Http1,
        tls: None,
        basic_auth: None,
        unusable: false,
        policy: Arc::default(),
        stats: Arc::default(),
        state: Arc::default(),
    })
}

/// 1,000 hosts of 4 paths each (a Prefix `/`, `/api`, `/static/`, an Exact `/healthz`), and a
/// wildcard.
fn table() -> IngressTable {
    let mut table = IngressTable::default();
    for i in 0..1_000 {
        let host = format!("app{i}.example.com");
        let rules = [
            ("/", PathType::Prefix),
            ("/api", PathType::Prefix),
            ("/static/", PathType::Prefix),
            ("/healthz", PathType::Exact),
        ];
        for (path, kind) in rules {
            table
                .host_mut(Some(&host))
                .add(path, kind, route_to(&format!("svc{i}")))
                .expect("no conflicts");
        }
    }
    table
        .host_mut(Some("*.example.org"))
        .add("/", PathType::Prefix, route_to("wild"))
        .expect("no conflicts");
    table.finish();
    table
}

fn bench_route(c: &mut Criterion) {
    let table = table();
    let mut group = c.benchmark_group("ingress_route");
    group.bench_function("exact_host_prefix_path", |b| {
        b.iter(|| {
            route(
                &table,
                black_box("app512.example.com"),
                black_box("/api/v1/users"),
            )
        });
    });
    group.bench_function("host_with_port_and_case", |b| {
        b.iter(|| route(&table, black_box("App512.Example.com:8080"), black_box("/")));
    });
    group.bench_function("wildcard_host", |b| {
        b.iter(|| route(&table, black_box("x.example.org"), black_box("/index.html")));
    });
    group.bench_function("no_route", |b| {
        b.iter(|| route(&table, black_box("unknown.example.net"), black_box("/")));
    });
    group.finish();
}

/// The headers curl or a browser sends, plus one hop-by-hop header the proxy must drop.
fn browser_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    let pairs = [
        ("host", "bench.local"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/133.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-US,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br, zstd"),
        ("cookie", "session=0123456789abcdef; theme=dark"),
        ("connection", "keep-alive"),
        ("upgrade-insecure-requests", "1"),
    ];
    for (name, value) in pairs {
        headers.append(name, HeaderValue::from_static(value));
    }
    headers
}

fn bench_upstream_head(c: &mut Criterion) {
    let headers = browser_headers();
    let client = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
    let mut group = c.benchmark_group("ingress_upstream_head");
    for (name, trusted) in [("untrusted_client", false), ("trusted_proxy", true)] {
        let connection = UpstreamHead::new(client, 80, trusted);
        group.bench_function(name, |b| {
            let mut out = BytesMut::with_capacity(1024);
            b.iter(|| {
                out.clear();
                connection.encode(
                    &Method::GET,
                    black_box("/api/v1/users?page=2"),
                    black_box(&headers),
                    "bench.local",
                    &mut out,
                );
                black_box(out.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_route, bench_upstream_head);
criterion_main!(benches);
