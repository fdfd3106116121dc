//! Any bytes as a DNS packet through the whole query path Capstan runs before any socket write:
//! classify, answer from a real compiled table, encode for UDP. Must never panic, and every reply
//! must parse and fit the client's payload size.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use capstan_catalog::{Catalog, CompileOptions, SourceId, Update, compile};
use capstan_dns::wire::{self, Packet};
use capstan_dns::{Resolution, answer};
use capstan_table::{DnsTable, Generation};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

const MANIFESTS: &str = include_str!("../../examples/manifests/web.yaml");
const HEADLESS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints: [{addresses: [10.0.0.1], hostname: db-0}, {addresses: [10.0.0.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: demo}
spec: {type: ExternalName, externalName: example.com}
"#;

fn table() -> &'static DnsTable {
    static TABLE: OnceLock<DnsTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut objects = capstan::source::parse_manifests(Path::new("web.yaml"), MANIFESTS)
            .expect("example manifests parse");
        objects.extend(
            capstan::source::parse_manifests(Path::new("db.yaml"), HEADLESS).expect("parse"),
        );
        let mut catalog = Catalog::default();
        catalog.apply(Update::Reset {
            source: SourceId::new("fuzz"),
            objects,
        });
        let snapshot = compile(&catalog, None, &CompileOptions::default(), Generation(1));
        std::sync::Arc::try_unwrap(snapshot.dns).expect("sole owner")
    })
}

fuzz_target!(|data: &[u8]| {
    let request = match wire::parse(data) {
        Packet::Query(request) => request,
        Packet::Malformed(reply) => {
            assert!(Message::from_vec(&reply).is_ok(), "FORMERR replies parse");
            return;
        }
        Packet::Ignore => return,
    };
    let response = match answer(table(), &request) {
        Resolution::Answer(response) => response,
        Resolution::Chase { partial, .. } => partial,
        Resolution::Forward => return,
    };
    let limit = wire::response_limit(&request, false);
    let bytes = wire::encode(response, &request, limit);
    assert!(bytes.len() <= limit, "reply fits the client's payload size");
    assert!(Message::from_vec(&bytes).is_ok(), "replies parse");
});
