//! The pure authoritative core: one query message and the snapshot's [`DnsTable`] in, a response
//! (or "not ours, forward it") out. No I/O, no clock, no randomness.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use capstan_table::{DnsNode, DnsTable, DnsZone};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

/// CNAME chains inside Capstan's own zones are followed this far.
const MAX_CNAME_CHAIN: usize = 8;

/// What to do with a query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A complete answer from Capstan's own data (or an error such as FORMERR or NOTIMP).
    Answer(Message),
    /// The name is in none of Capstan's zones: forward the query upstream.
    Forward,
    /// The answer ends in a CNAME (an ExternalName Service) whose target lies outside Capstan's
    /// zones: append what upstream answers for `target` with the query's type.
    Chase { partial: Message, target: Name },
}

/// Answers `request` (a parsed query) from `table`.
pub fn answer(table: &DnsTable, request: &Message) -> Resolution {
    if request.metadata.op_code != OpCode::Query {
        return Resolution::Answer(error(request, ResponseCode::NotImp));
    }
    let [query] = request.queries.as_slice() else {
        return Resolution::Answer(error(request, ResponseCode::FormErr));
    };
    let key = lookup_key(query.name());
    let Some(zone) = table.zone_of(&key) else {
        return match (query.query_type(), reverse_address(&key)) {
            (RecordType::PTR, Some(ip)) => match table.reverse.get(&ip) {
                Some(names) => {
                    let mut response = response(request, ResponseCode::NoError);
                    for name in names {
                        if let Some(target) = to_name(name) {
                            response.add_answer(record(
                                query.name(),
                                table,
                                RData::PTR(PTR(target)),
                            ));
                        }
                    }
                    Resolution::Answer(response)
                }
                None => Resolution::Forward,
            },
            _ => Resolution::Forward,
        };
    };
    if !matches!(query.query_class(), DNSClass::IN | DNSClass::ANY) {
        return Resolution::Answer(error(request, ResponseCode::Refused));
    }
    if matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR) {
        // Zone transfers are not offered.
        return Resolution::Answer(error(request, ResponseCode::Refused));
    }

    let mut response = response(request, ResponseCode::NoError);
    let mut owner = query.name().clone();
    let mut key = key;
    let mut zone = zone;
    for _ in 0..MAX_CNAME_CHAIN {
        let Some(found) = lookup(table, zone, &key) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa(table, zone));
            return Resolution::Answer(response);
        };
        let cname = match &found {
            Found::Node(node) => node.cname.as_deref(),
            Found::Pod(_) => None,
        };
        if let (Some(target), false) = (cname, query.query_type() == RecordType::CNAME) {
            let Some(target_name) = to_name(target) else {
                return Resolution::Answer(error(request, ResponseCode::ServFail));
            };
            response.add_answer(record(
                &owner,
                table,
                RData::CNAME(CNAME(target_name.clone())),
            ));
            match table.zone_of(target) {
                Some(next_zone) => {
                    owner = target_name;
                    key = target.to_owned();
                    zone = next_zone;
                    continue;
                }
                None => {
                    return Resolution::Chase {
                        partial: response,
                        target: target_name,
                    };
                }
            }
        }
        let before = response.answers.len();
        add_records(
            &mut response,
            table,
            zone,
            &key,
            &owner,
            &found,
            query.query_type(),
        );
        if response.answers.len() == before {
            // The name exists without this type: NOERROR, no data.
            response.add_authority(soa(table, zone));
        }
        return Resolution::Answer(response);
    }
    // A CNAME loop among Capstan's own names.
    Resolution::Answer(error(request, ResponseCode::ServFail))
}

/// The table key for a query name: lowercase presentation format without the trailing dot.
pub fn lookup_key(name: &Name) -> String {
    let mut key = name.to_lowercase().to_ascii();
    if key.ends_with('.') {
        key.pop();
    }
    key
}

/// An empty response to `request` with `code`: same ID, opcode, RD flag and question.
pub(crate) fn response(request: &Message, code: ResponseCode) -> Message {
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.checking_disabled = request.metadata.checking_disabled;
    response.metadata.authoritative =
        code == ResponseCode::NoError || code == ResponseCode::NXDomain;
    response.metadata.response_code = code;
    response.add_queries(request.queries.iter().cloned());
    response
}

/// An error response with no records and no authority.
pub(crate) fn error(request: &Message, code: ResponseCode) -> Message {
    let mut response = response(request, code);
    response.metadata.authoritative = false;
    response
}

enum Found<'t> {
    Node(&'t DnsNode),
    /// A synthesised pod record (`a-b-c-d.<namespace>.pod.<zone>`).
    Pod(IpAddr),
}

fn lookup<'t>(table: &'t DnsTable, zone: &DnsZone, key: &str) -> Option<Found<'t>> {
    if let Some(node) = table.node(key) {
        return Some(Found::Node(node));
    }
    if !zone.pods {
        return None;
    }
    let relative = key.strip_suffix(&*zone.name)?.strip_suffix('.')?;
    let mut labels = relative.rsplit('.');
    if labels.next() != Some("pod") {
        return None;
    }
    const EMPTY: &DnsNode = &DnsNode {
        a: Vec::new(),
        aaaa: Vec::new(),
        srv: Vec::new(),
        txt: Vec::new(),
        cname: None,
    };
    match (labels.next(), labels.next(), labels.next()) {
        // `pod.<zone>` and `<namespace>.pod.<zone>` exist as empty non-terminals.
        (None, _, _) | (Some(_), None, _) => Some(Found::Node(EMPTY)),
        (Some(_namespace), Some(pod), None) => pod_address(pod).map(Found::Pod),
        _ => None,
    }
}

/// `1-2-3-4` → 1.2.3.4, `fd00--1` → fd00::1 (CoreDNS's pod names).
fn pod_address(label: &str) -> Option<IpAddr> {
    if label.split('-').count() == 4
        && let Ok(v4) = label.replace('-', ".").parse::<Ipv4Addr>()
    {
        return Some(IpAddr::V4(v4));
    }
    label
        .replace('-', ":")
        .parse::<Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[allow(clippy::too_many_arguments)]
fn add_records(
    response: &mut Message,
    table: &DnsTable,
    zone: &DnsZone,
    key: &str,
    owner: &Name,
    found: &Found<'_>,
    qtype: RecordType,
) {
    let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
    let node = match found {
        Found::Pod(IpAddr::V4(ip)) if wants(RecordType::A) => {
            response.add_answer(record(owner, table, RData::A(A(*ip))));
            return;
        }
        Found::Pod(IpAddr::V6(ip)) if wants(RecordType::AAAA) => {
            response.add_answer(record(owner, table, RData::AAAA(AAAA(*ip))));
            return;
        }
        Found::Pod(_) => return,
        Found::Node(node) => node,
    };
    if key == &*zone.name {
        if wants(RecordType::SOA) {
            response.add_answer(soa(table, zone));
        }
        if wants(RecordType::NS)
            && let Some(ns) = to_name(&format!("ns.dns.{}", zone.name))
        {
            response.add_answer(record(owner, table, RData::NS(NS(ns))));
        }
    }
    if let Some(target) = node.cname.as_deref().and_then(to_name)
        && wants(RecordType::CNAME)
    {
        response.add_answer(record(owner, table, RData::CNAME(CNAME(target))));
    }
    if wants(RecordType::A) {
        for ip in &node.a {
            response.add_answer(record(owner, table, RData::A(A(*ip))));
        }
    }
    if wants(RecordType::AAAA) {
        for ip in &node.aaaa {
            response.add_answer(record(owner, table, RData::AAAA(AAAA(*ip))));
        }
    }
    if wants(RecordType::TXT) {
        for text in &node.txt {
            let data = TXT::new(vec![text.to_string()]);
            response.add_answer(record(owner, table, RData::TXT(data)));
        }
    }
    if wants(RecordType::SRV) {
        for srv in &node.srv {
            let Some(target) = to_name(&srv.target) else {
                continue;
            };
            let data = SRV::new(srv.priority, srv.weight, srv.port, target.clone());
            response.add_answer(record(owner, table, RData::SRV(data)));
            // The target's addresses, so the client needs no second query.
            if let Some(target_node) = table.node(&srv.target) {
                for ip in &target_node.a {
                    response.add_additional(record(&target, table, RData::A(A(*ip))));
                }
                for ip in &target_node.aaaa {
                    response.add_additional(record(&target, table, RData::AAAA(AAAA(*ip))));
                }
            }
        }
        dedup_additionals(response);
    }
}

/// A ClusterIP Service's SRV records all point at the same name: its addresses once.
fn dedup_additionals(response: &mut Message) {
    let mut seen: Vec<Record> = Vec::with_capacity(response.additionals.len());
    for record in response.additionals.drain(..) {
        if !seen.contains(&record) {
            seen.push(record);
        }
    }
    response.additionals = seen;
}

fn record(owner: &Name, table: &DnsTable, data: RData) -> Record {
    Record::from_rdata(owner.clone(), table.ttl, data)
}

fn soa(table: &DnsTable, zone: &DnsZone) -> Record {
    let apex = to_name(&zone.name).unwrap_or_else(Name::root);
    let mname = to_name(&format!("ns.dns.{}", zone.name)).unwrap_or_else(Name::root);
    let rname = to_name(&format!("hostmaster.{}", zone.name)).unwrap_or_else(Name::root);
    // Refresh, retry and expire as CoreDNS publishes them; the minimum is the negative TTL.
    let data = SOA::new(mname, rname, table.serial, 7200, 1800, 86400, table.ttl);
    Record::from_rdata(apex, table.ttl, RData::SOA(data))
}

/// A table name (lowercase, no trailing dot) as a fully qualified wire name. Labels are taken as
/// they are (no IDNA rules), as the table holds them.
fn to_name(text: &str) -> Option<Name> {
    let mut name = Name::from_labels(text.split('.').map(str::as_bytes)).ok()?;
    name.set_fqdn(true);
    Some(name)
}

/// The address a reverse-lookup key (`4.3.2.1.in-addr.arpa`, 32 nibbles `.ip6.arpa`) names.
pub fn reverse_address(key: &str) -> Option<IpAddr> {
    if let Some(rest) = key.strip_suffix(".in-addr.arpa") {
        let mut octets = [0u8; 4];
        let mut labels = rest.split('.');
        for octet in octets.iter_mut().rev() {
            let label = labels.next()?;
            if label.len() > 1 && label.starts_with('0') {
                return None;
            }
            *octet = label.parse().ok()?;
        }
        return labels.next().is_none().then(|| IpAddr::from(octets));
    }
    let rest = key.strip_suffix(".ip6.arpa")?;
    let mut value: u128 = 0;
    let mut count = 0;
    for (index, label) in rest.split('.').enumerate() {
        if index >= 32 {
            return None;
        }
        let nibble = match label.as_bytes() {
            [c] => char::from(*c).to_digit(16)?,
            _ => return None,
        };
        value |= u128::from(nibble) << (4 * index);
        count += 1;
    }
    (count == 32).then(|| IpAddr::V6(Ipv6Addr::from(value)))
}

#[cfg(test)]
mod tests;
