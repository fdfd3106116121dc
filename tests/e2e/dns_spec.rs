//! The Kubernetes DNS-Based Service Discovery specification 1.1.0, clause by clause: manifests go
//! through the real conversion and compile, queries through the pure `answer` function. Each row
//! is (clause, question, expected rcode, expected answer section).

use std::path::Path;

use capstan::source::parse_manifests;
use capstan_catalog::{Catalog, CompileOptions, DnsOptions, SourceId, Update, compile};
use capstan_dns::{Resolution, answer};
use capstan_table::{DnsTable, Generation};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

const MANIFESTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10, "fd00::10"]
  ipFamilies: [IPv4, IPv6]
  ports:
    - {name: http, port: 80, targetPort: 8080}
    - {name: dns, port: 53, protocol: UDP, targetPort: 53}
---
apiVersion: v1
kind: Service
metadata: {name: single, namespace: ns}
spec:
  clusterIP: 10.96.0.11
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v4, namespace: ns, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
  - {addresses: [10.1.0.5], hostname: db-0}
  - {addresses: [10.1.0.6]}
  - {addresses: [10.1.0.7], conditions: {ready: false}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-v6, namespace: ns, labels: {kubernetes.io/service-name: db}}
addressType: IPv6
ports: [{name: pg, port: 5433}]
endpoints:
  - {addresses: ["fd00:1::6"]}
---
apiVersion: v1
kind: Service
metadata: {name: eager, namespace: ns}
spec:
  clusterIP: None
  publishNotReadyAddresses: true
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: eager-1, namespace: ns, labels: {kubernetes.io/service-name: eager}}
addressType: IPv4
endpoints:
  - {addresses: [10.1.0.9], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: ns}
spec: {type: ExternalName, externalName: example.com.}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: ns}
spec: {type: ExternalName, externalName: web.ns.svc.cluster.local}
"#;

fn table() -> DnsTable {
    let objects = parse_manifests(Path::new("spec.yaml"), MANIFESTS).expect("manifests parse");
    let mut catalog = Catalog::default();
    catalog.apply(Update::Reset {
        source: SourceId::new("spec"),
        objects,
    });
    let options = CompileOptions {
        dns: DnsOptions::default(),
        ..CompileOptions::default()
    };
    let snapshot = compile(&catalog, None, &options, Generation(7));
    std::sync::Arc::try_unwrap(snapshot.dns).expect("sole owner")
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    message
}

fn lines(records: &[hickory_proto::rr::Record]) -> Vec<String> {
    let mut out: Vec<String> = records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data).replace('\t', " "))
        .collect();
    out.sort();
    out
}

fn answered(table: &DnsTable, name: &str, qtype: RecordType) -> Message {
    match answer(table, &query(name, qtype)) {
        Resolution::Answer(message) => message,
        other => panic!("{name} {qtype}: expected an answer, got {other:?}"),
    }
}

const APEX_SOA: &str =
    "cluster.local. 5 SOA ns.dns.cluster.local. hostmaster.cluster.local. 7 7200 1800 86400 5";

#[test]
fn every_clause_of_the_specification() {
    use RecordType::*;
    use ResponseCode::{NXDomain, NoError};
    let table = table();
    #[rustfmt::skip]
    let cases: &[(&str, &str, RecordType, ResponseCode, &[&str])] = &[
        // 2.1 Schema version.
        ("2.1", "dns-version.cluster.local.", TXT, NoError, &["dns-version.cluster.local. 5 TXT 1.1.0"]),
        // 2.2.1/2.2.2 A and AAAA for a ClusterIP Service, one per family.
        ("2.2.1", "web.ns.svc.cluster.local.", A, NoError, &["web.ns.svc.cluster.local. 5 A 10.96.0.10"]),
        ("2.2.2", "web.ns.svc.cluster.local.", AAAA, NoError, &["web.ns.svc.cluster.local. 5 AAAA fd00::10"]),
        ("2.2.2 single-stack", "single.ns.svc.cluster.local.", AAAA, NoError, &[]),
        // 2.2.3 SRV for named ports only.
        ("2.2.3", "_http._tcp.web.ns.svc.cluster.local.", SRV, NoError,
            &["_http._tcp.web.ns.svc.cluster.local. 5 SRV 0 100 80 web.ns.svc.cluster.local."]),
        ("2.2.3 udp", "_dns._udp.web.ns.svc.cluster.local.", SRV, NoError,
            &["_dns._udp.web.ns.svc.cluster.local. 5 SRV 0 100 53 web.ns.svc.cluster.local."]),
        ("2.2.3 wrong protocol", "_http._udp.web.ns.svc.cluster.local.", SRV, NXDomain, &[]),
        ("2.2.3 unnamed port", "single.ns.svc.cluster.local.", SRV, NoError, &[]),
        // 2.2.4 PTR for ClusterIPs, both families.
        ("2.2.4", "10.0.96.10.in-addr.arpa.", PTR, NoError,
            &["10.0.96.10.in-addr.arpa. 5 PTR web.ns.svc.cluster.local."]),
        ("2.2.4 v6", "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.", PTR, NoError,
            &["0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. 5 PTR web.ns.svc.cluster.local."]),
        // 2.3.1 Headless: the ready endpoints, and one name per endpoint.
        ("2.3.1", "db.ns.svc.cluster.local.", A, NoError,
            &["db.ns.svc.cluster.local. 5 A 10.1.0.5", "db.ns.svc.cluster.local. 5 A 10.1.0.6"]),
        ("2.3.1 v6", "db.ns.svc.cluster.local.", AAAA, NoError, &["db.ns.svc.cluster.local. 5 AAAA fd00:1::6"]),
        ("2.3.1 hostname", "db-0.db.ns.svc.cluster.local.", A, NoError, &["db-0.db.ns.svc.cluster.local. 5 A 10.1.0.5"]),
        ("2.3.1 dashed", "10-1-0-6.db.ns.svc.cluster.local.", A, NoError,
            &["10-1-0-6.db.ns.svc.cluster.local. 5 A 10.1.0.6"]),
        ("2.3.1 dashed v6", "fd00-1--6.db.ns.svc.cluster.local.", AAAA, NoError,
            &["fd00-1--6.db.ns.svc.cluster.local. 5 AAAA fd00:1::6"]),
        ("2.3.1 not ready", "10-1-0-7.db.ns.svc.cluster.local.", A, NXDomain, &[]),
        ("2.3.1 publishNotReadyAddresses", "eager.ns.svc.cluster.local.", A, NoError,
            &["eager.ns.svc.cluster.local. 5 A 10.1.0.9"]),
        // 2.3.2 SRV per ready endpoint × named port, with the endpoint's own port.
        ("2.3.2", "_pg._tcp.db.ns.svc.cluster.local.", SRV, NoError, &[
            "_pg._tcp.db.ns.svc.cluster.local. 5 SRV 0 33 5432 10-1-0-6.db.ns.svc.cluster.local.",
            "_pg._tcp.db.ns.svc.cluster.local. 5 SRV 0 33 5432 db-0.db.ns.svc.cluster.local.",
            "_pg._tcp.db.ns.svc.cluster.local. 5 SRV 0 33 5433 fd00-1--6.db.ns.svc.cluster.local.",
        ]),
        // 2.3.3 PTR for endpoint addresses.
        ("2.3.3", "5.0.1.10.in-addr.arpa.", PTR, NoError, &["5.0.1.10.in-addr.arpa. 5 PTR db-0.db.ns.svc.cluster.local."]),
        // 2.4 ExternalName: a CNAME; chased inside the cluster zone.
        ("2.4", "ext.ns.svc.cluster.local.", CNAME, NoError, &["ext.ns.svc.cluster.local. 5 CNAME example.com."]),
        ("2.4 in-zone chase", "alias.ns.svc.cluster.local.", A, NoError, &[
            "alias.ns.svc.cluster.local. 5 CNAME web.ns.svc.cluster.local.",
            "web.ns.svc.cluster.local. 5 A 10.96.0.10",
        ]),
        // Negative answers: NXDOMAIN for absent names, NODATA for names (and empty
        // non-terminals) without the type.
        ("absent", "nothing.ns.svc.cluster.local.", A, NXDomain, &[]),
        ("absent namespace", "web.other.svc.cluster.local.", A, NXDomain, &[]),
        ("below a service", "x.web.ns.svc.cluster.local.", A, NXDomain, &[]),
        ("namespace non-terminal", "ns.svc.cluster.local.", A, NoError, &[]),
        ("svc non-terminal", "svc.cluster.local.", A, NoError, &[]),
        ("srv non-terminal", "_tcp.web.ns.svc.cluster.local.", SRV, NoError, &[]),
        ("type absent", "web.ns.svc.cluster.local.", TXT, NoError, &[]),
        ("apex SOA", "cluster.local.", SOA, NoError, &[APEX_SOA]),
        ("apex NS", "cluster.local.", NS, NoError, &["cluster.local. 5 NS ns.dns.cluster.local."]),
        // Pods (CoreDNS `pods insecure`).
        ("pod", "10-1-0-5.ns.pod.cluster.local.", A, NoError, &["10-1-0-5.ns.pod.cluster.local. 5 A 10.1.0.5"]),
        ("pod v6", "fd00--1.ns.pod.cluster.local.", AAAA, NoError, &["fd00--1.ns.pod.cluster.local. 5 AAAA fd00::1"]),
        ("pod wrong family", "10-1-0-5.ns.pod.cluster.local.", AAAA, NoError, &[]),
        ("pod not an address", "web.ns.pod.cluster.local.", A, NXDomain, &[]),
        ("pod namespace", "ns.pod.cluster.local.", A, NoError, &[]),
        // Case-insensitive; answers echo the question's case.
        ("case", "WEB.Ns.SVC.cluster.LOCAL.", A, NoError, &["WEB.Ns.SVC.cluster.LOCAL. 5 A 10.96.0.10"]),
    ];
    let mut failures = Vec::new();
    for &(clause, name, qtype, rcode, expected) in cases {
        let response = answered(&table, name, qtype);
        let got = lines(&response.answers);
        let want: Vec<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        let mut problems = Vec::new();
        if response.metadata.response_code != rcode {
            problems.push(format!("rcode {:?}", response.metadata.response_code));
        }
        if got != want {
            problems.push(format!("answers {got:?}"));
        }
        if !response.metadata.authoritative {
            problems.push("not authoritative".into());
        }
        if response.metadata.id != 0x1234 || !response.metadata.recursion_desired {
            problems.push("header not echoed".into());
        }
        if response.queries != query(name, qtype).queries {
            problems.push("question not echoed".into());
        }
        let negative = got.is_empty() && qtype != PTR;
        if negative && lines(&response.authorities) != [APEX_SOA.to_owned()] {
            problems.push(format!("authority {:?}", lines(&response.authorities)));
        }
        if !problems.is_empty() {
            failures.push(format!(
                "{clause} ({name} {qtype}): {}",
                problems.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn srv_answers_carry_the_targets_addresses() {
    let table = table();
    let response = answered(
        &table,
        "_http._tcp.web.ns.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(
        lines(&response.additionals),
        [
            "web.ns.svc.cluster.local. 5 A 10.96.0.10",
            "web.ns.svc.cluster.local. 5 AAAA fd00::10",
        ]
    );
    let response = answered(&table, "_pg._tcp.db.ns.svc.cluster.local.", RecordType::SRV);
    assert_eq!(
        lines(&response.additionals),
        [
            "10-1-0-6.db.ns.svc.cluster.local. 5 A 10.1.0.6",
            "db-0.db.ns.svc.cluster.local. 5 A 10.1.0.5",
            "fd00-1--6.db.ns.svc.cluster.local. 5 AAAA fd00:1::6",
        ]
    );
}

#[test]
fn external_names_outside_the_zone_are_chased_upstream() {
    let table = table();
    let Resolution::Chase { partial, target } =
        answer(&table, &query("ext.ns.svc.cluster.local.", RecordType::A))
    else {
        panic!("expected a chase");
    };
    assert_eq!(target.to_ascii(), "example.com.");
    assert_eq!(
        lines(&partial.answers),
        ["ext.ns.svc.cluster.local. 5 CNAME example.com."]
    );
}

#[test]
fn names_outside_the_zones_and_unknown_addresses_are_forwarded() {
    let table = table();
    for (name, qtype) in [
        ("example.org.", RecordType::A),
        ("cluster.localx.", RecordType::A),
        ("9.9.9.9.in-addr.arpa.", RecordType::PTR),
        ("10.0.96.10.in-addr.arpa.", RecordType::A),
    ] {
        assert_eq!(
            answer(&table, &query(name, qtype)),
            Resolution::Forward,
            "{name}"
        );
    }
}

#[test]
fn unsupported_queries_get_the_right_error() {
    let table = table();
    let code = |message: &Message| match answer(&table, message) {
        Resolution::Answer(m) => m.metadata.response_code,
        other => panic!("{other:?}"),
    };
    let mut notify = query("web.ns.svc.cluster.local.", RecordType::A);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(code(&notify), ResponseCode::NotImp);
    let mut two = query("web.ns.svc.cluster.local.", RecordType::A);
    two.add_query(Query::query(
        Name::from_ascii("x.").expect("name"),
        RecordType::A,
    ));
    assert_eq!(code(&two), ResponseCode::FormErr);
    let mut chaos = query("web.ns.svc.cluster.local.", RecordType::TXT);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(code(&chaos), ResponseCode::Refused);
    let axfr = query("cluster.local.", RecordType::AXFR);
    assert_eq!(code(&axfr), ResponseCode::Refused);
    let empty = Message::new(1, MessageType::Query, OpCode::Query);
    assert_eq!(code(&empty), ResponseCode::FormErr);
}
