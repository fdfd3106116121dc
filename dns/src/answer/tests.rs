//! Edge cases of the pure answer function over hand-built tables (the specification clauses are
//! covered end to end in `tests/e2e/dns_spec.rs`, from manifests), and property tests over
//! arbitrary packets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capstan_table::{DnsTable, DnsZone};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use proptest::prelude::*;

use super::*;
use crate::wire::{self, Packet};

fn table() -> DnsTable {
    let mut table = DnsTable::new(
        vec![DnsZone {
            name: "cluster.local".into(),
            pods: true,
        }],
        5,
        1,
    );
    let node = table.node_mut("a.ns.svc.cluster.local").expect("zone");
    node.a.push(Ipv4Addr::new(10, 0, 0, 1));
    table
        .node_mut("loop1.ns.svc.cluster.local")
        .expect("zone")
        .cname = Some("loop2.ns.svc.cluster.local".into());
    table
        .node_mut("loop2.ns.svc.cluster.local")
        .expect("zone")
        .cname = Some("loop1.ns.svc.cluster.local".into());
    table
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut message = Message::new(9, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    message
}

#[test]
fn reverse_names_parse_only_when_complete_and_canonical() {
    assert_eq!(
        reverse_address("4.3.2.1.in-addr.arpa"),
        Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)))
    );
    assert_eq!(reverse_address("3.2.1.in-addr.arpa"), None);
    assert_eq!(reverse_address("5.4.3.2.1.in-addr.arpa"), None);
    assert_eq!(reverse_address("04.3.2.1.in-addr.arpa"), None);
    assert_eq!(reverse_address("256.3.2.1.in-addr.arpa"), None);
    let v6 = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa";
    assert_eq!(
        reverse_address(v6),
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)))
    );
    assert_eq!(reverse_address(&format!("0.{v6}")), None);
    assert_eq!(reverse_address("x.ip6.arpa"), None);
}

#[test]
fn pod_names_accept_both_families_and_nothing_else() {
    assert_eq!(
        pod_address("1-2-3-4"),
        Some(IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)))
    );
    assert_eq!(
        pod_address("fd00--1"),
        Some(IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)))
    );
    assert_eq!(pod_address("1-2-3"), None);
    assert_eq!(pod_address("web"), None);
    assert_eq!(pod_address("1-2-3-400"), None);
}

#[test]
fn a_cname_loop_inside_the_zone_is_servfail_not_a_hang() {
    let Resolution::Answer(response) = answer(
        &table(),
        &query("loop1.ns.svc.cluster.local.", RecordType::A),
    ) else {
        panic!("expected an answer");
    };
    assert_eq!(response.metadata.response_code, ResponseCode::ServFail);
}

#[test]
fn any_returns_every_type_at_the_name() {
    let Resolution::Answer(response) =
        answer(&table(), &query("a.ns.svc.cluster.local.", RecordType::ANY))
    else {
        panic!("expected an answer");
    };
    assert_eq!(response.answers.len(), 1);
    assert_eq!(response.answers[0].record_type(), RecordType::A);
}

proptest! {
    /// Any bytes: classified without panicking; whatever is answered encodes, parses back and fits.
    #[test]
    fn any_packet_gets_a_well_formed_reply_or_none(raw in proptest::collection::vec(any::<u8>(), 0..300)) {
        let table = table();
        match wire::parse(&raw) {
            Packet::Query(request) => {
                if let Resolution::Answer(response) = answer(&table, &request) {
                    let limit = wire::response_limit(&request, false);
                    let bytes = wire::encode(response, &request, limit);
                    prop_assert!(bytes.len() <= limit);
                    prop_assert!(Message::from_vec(&bytes).is_ok());
                }
            }
            Packet::Malformed(reply) => prop_assert!(Message::from_vec(&reply).is_ok()),
            Packet::Ignore => {}
        }
    }

    /// Any name in the zone, any case: never a panic, and the rcode is one a client expects.
    #[test]
    fn any_name_gets_a_sensible_rcode(labels in proptest::collection::vec("[a-zA-Z0-9_-]{1,12}", 0..6), qtype in 0u16..300) {
        let all = labels.iter().map(String::as_str).chain(["cluster", "local"]);
        let mut name = Name::from_labels(all.map(str::as_bytes)).expect("labels");
        name.set_fqdn(true);
        let mut request = Message::new(9, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(name, RecordType::from(qtype)));
        if let Resolution::Answer(response) = answer(&table(), &request) {
            prop_assert!(matches!(
                response.metadata.response_code,
                ResponseCode::NoError | ResponseCode::NXDomain | ResponseCode::ServFail | ResponseCode::Refused
            ));
        }
    }
}
