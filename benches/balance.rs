//! Endpoint choice per connection: each policy over 10 endpoints, and ClientIP affinity.

use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use capstan_proxy::balance::choose;
use capstan_table::{
    BalancePolicy, Endpoint, Protocol, ServiceKey, ServicePortKey, ServicePortTable,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn port(policy: BalancePolicy, affinity: Option<Duration>) -> ServicePortTable {
    let endpoints: Arc<[Arc<Endpoint>]> = (0..10u8)
        .map(|i| Arc::new(Endpoint::ready(SocketAddr::from(([10, 0, 0, i + 1], 8080)))))
        .collect();
    let key = ServicePortKey {
        service: ServiceKey::new("bench", "web"),
        port_name: "http".into(),
        protocol: Protocol::Tcp,
    };
    ServicePortTable {
        policy,
        affinity,
        ..ServicePortTable::with_endpoints(key, endpoints)
    }
}

fn bench_choose(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose");
    let cases = [
        ("random", BalancePolicy::Random, None),
        ("round_robin", BalancePolicy::RoundRobin, None),
        ("least_connections", BalancePolicy::LeastConnections, None),
        (
            "random_client_ip_affinity",
            BalancePolicy::Random,
            Some(Duration::from_secs(10_800)),
        ),
    ];
    for (name, policy, affinity) in cases {
        let port = port(policy, affinity);
        let mut rng = fastrand::Rng::with_seed(1);
        let mut client = 0u32;
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                client = client.wrapping_add(1) % 1024;
                let ip = IpAddr::from(client.to_be_bytes());
                black_box(choose(
                    &port,
                    &port.internal.endpoints,
                    ip,
                    &[],
                    1_000,
                    &mut rng,
                ))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench_choose);
criterion_main!(benches);
