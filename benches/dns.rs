//! Answering one query: the full path (parse, answer from a 10k-Service table, encode) for an A,
//! an SRV and an NXDOMAIN question, and a packet-cache hit for the same A question.

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use capstan_catalog::{Catalog, CompileOptions, SourceId, Update, compile};
use capstan_dns::wire::{self, Packet};
use capstan_dns::{PacketCache, PlainQuery, Resolution, answer};
use capstan_table::{DnsTable, Generation};
use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

fn table(services: usize) -> DnsTable {
    let mut yaml = String::new();
    for i in 0..services {
        yaml.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: svc-{i}, namespace: bench}}\n\
             spec: {{clusterIP: 10.{}.{}.{}, ports: [{{name: http, port: 80}}]}}\n---\n",
            96 + i / 62_500,
            (i / 250) % 250,
            i % 250 + 1
        ));
    }
    let objects = capstan::source::parse_manifests(Path::new("bench.yaml"), &yaml).expect("parse");
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("bench"),
        objects,
    });
    let snapshot = compile(&catalog, None, &CompileOptions::default(), Generation(1));
    std::sync::Arc::try_unwrap(snapshot.dns).expect("sole owner")
}

fn packet(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut message = Message::query();
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    message.to_vec().expect("encode")
}

fn full_path(table: &DnsTable, raw: &[u8]) -> Vec<u8> {
    let Packet::Query(request) = wire::parse(raw) else {
        panic!("a query");
    };
    let Resolution::Answer(response) = answer(table, &request) else {
        panic!("an answer");
    };
    wire::encode(response, &request, wire::response_limit(&request, false))
}

fn bench(c: &mut Criterion) {
    let started = Instant::now();
    let table = table(10_000);
    eprintln!("10k-Service DNS table compiled in {:?}", started.elapsed());
    let a = packet("svc-4242.bench.svc.cluster.local.", RecordType::A);
    let srv = packet(
        "_http._tcp.svc-4242.bench.svc.cluster.local.",
        RecordType::SRV,
    );
    let nx = packet("nothing.bench.svc.cluster.local.", RecordType::A);
    let mut group = c.benchmark_group("dns_answer");
    group.bench_function("A", |b| b.iter(|| full_path(&table, black_box(&a))));
    group.bench_function("SRV", |b| b.iter(|| full_path(&table, black_box(&srv))));
    group.bench_function("NXDOMAIN", |b| b.iter(|| full_path(&table, black_box(&nx))));

    let mut cache = PacketCache::default();
    let query = PlainQuery::parse(&a).expect("plain");
    cache.store(Generation(1), query, &full_path(&table, &a));
    group.bench_function("A, packet cache hit", |b| {
        b.iter(|| {
            let query = PlainQuery::parse(black_box(&a)).expect("plain");
            cache.answer(Generation(1), &a, &query).expect("hit")
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
