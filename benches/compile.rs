//! Compile time of the catalog → snapshot step at 1k and 10k Services × 10 endpoints, from
//! scratch and with a previous snapshot to carry state over from (the steady-state case).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};

use capstan_catalog::{
    Catalog, CompileOptions, EndpointSlice, Object, Service, ServiceKind, ServicePort,
    SliceEndpoint, SlicePort, SourceId, TargetPort, Update, compile,
};
use capstan_table::{EndpointConditions, Generation, Protocol, ServiceKey};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn catalog(services: u32, endpoints: u32) -> Catalog {
    let mut objects = Vec::new();
    for i in 0..services {
        let key = ServiceKey::new("bench", &format!("svc-{i}"));
        objects.push(Object::Service(Service {
            cluster_ips: vec![IpAddr::V4(Ipv4Addr::from(0x0a60_0000 + i))],
            ports: vec![ServicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: 80,
                target_port: TargetPort::Number(8080),
                node_port: None,
                app_protocol: None,
                listen: vec![],
            }],
            ..Service::new(key.clone(), ServiceKind::ClusterIp)
        }));
        objects.push(Object::EndpointSlice(EndpointSlice {
            namespace: "bench".into(),
            name: format!("svc-{i}-abcde").into(),
            service: key,
            ports: vec![SlicePort {
                name: "http".into(),
                protocol: Protocol::Tcp,
                port: Some(8080),
            }],
            endpoints: (0..endpoints)
                .map(|e| SliceEndpoint {
                    addresses: vec![IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i * 16 + e))],
                    conditions: EndpointConditions::READY,
                    hostname: None,
                    node_name: Some("node-a".into()),
                    zone: None,
                    zone_hints: vec![],
                    node_hints: vec![],
                })
                .collect(),
        }));
    }
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("bench"),
        objects,
    });
    catalog
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    let options = CompileOptions::default();
    for services in [1_000u32, 10_000] {
        let catalog = catalog(services, 10);
        group.bench_with_input(
            BenchmarkId::new("scratch", services),
            &catalog,
            |b, catalog| {
                b.iter(|| black_box(compile(catalog, None, &options, Generation(1))));
            },
        );
        let previous = compile(&catalog, None, &options, Generation(1));
        group.bench_with_input(
            BenchmarkId::new("carry_over", services),
            &catalog,
            |b, catalog| {
                b.iter(|| black_box(compile(catalog, Some(&previous), &options, Generation(2))));
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_compile);
criterion_main!(benches);
