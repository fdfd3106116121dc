//! A per-socket cache of encoded authoritative answers (PowerDNS's packet cache): a repeated
//! question about Capstan's own names is answered by copying bytes, without parsing or encoding.
//!
//! Only plain queries qualify: opcode QUERY, one question, no answer or authority records, and
//! either no additional record or a bare EDNS(0) OPT without options. The key is the question
//! (name lowercased) plus the EDNS presence and DO bit; a hit copies the cached response, puts
//! the request's ID, RD and CD flags and question bytes (so the answer echoes its case) in, and
//! checks it still fits the client's payload size. Entries belong to one snapshot generation and
//! are dropped when it changes. Owned by one socket task: no sharing, no locks.

use std::collections::HashMap;

use capstan_table::Generation;

use crate::wire::{CLASSIC_UDP_PAYLOAD, UDP_PAYLOAD};

/// Entries kept per socket before the cache starts over.
const CAPACITY: usize = 20_000;

/// The parts of a plain query the cache needs.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainQuery {
    /// Where the question ends (header + QNAME + QTYPE + QCLASS).
    question_end: usize,
    /// The client's payload size limit.
    limit: usize,
    qtype: u16,
    /// Lowercased question bytes, EDNS presence and DO bit.
    key: Vec<u8>,
}

/// Encoded answers for one snapshot generation.
#[derive(Debug, Default)]
pub struct PacketCache {
    generation: Generation,
    entries: HashMap<Vec<u8>, Vec<u8>>,
}

// === impl PlainQuery ===

impl PlainQuery {
    /// The QTYPE asked for.
    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    /// Whether the query's EDNS DO bit is set (the key ends `[1, 0x80]` then).
    pub fn dnssec_ok(&self) -> bool {
        matches!(self.key.as_slice(), [.., 1, 0x80])
    }

    /// Recognises a plain query; `None` sends it down the full path.
    pub fn parse(raw: &[u8]) -> Option<Self> {
        let header = raw.get(..12)?;
        // QR=0, opcode 0 (QUERY), no TC; QDCOUNT 1, ANCOUNT 0, NSCOUNT 0, ARCOUNT 0 or 1.
        if header[2] & 0xfa != 0 || header[4..10] != [0, 1, 0, 0, 0, 0] || header[10] != 0 {
            return None;
        }
        let additionals = header[11];
        let mut at = 12;
        loop {
            let len = usize::from(*raw.get(at)?);
            if len == 0 {
                at += 1;
                break;
            }
            // Compression pointers and extended label types never appear in a plain question.
            if len > 63 {
                return None;
            }
            at += 1 + len;
        }
        let question_end = at + 4;
        let mut key = raw.get(12..question_end)?.to_vec();
        let qtype = u16::from_be_bytes([raw[at], raw[at + 1]]);
        key.iter_mut().for_each(|b| b.make_ascii_lowercase());
        let limit = match (additionals, raw.get(question_end..)?) {
            (0, []) => {
                key.push(0);
                usize::from(CLASSIC_UDP_PAYLOAD)
            }
            // Root name, type OPT, payload, extended rcode 0, version 0, flags, RDLENGTH 0.
            (1, [0, 0, 41, p1, p0, 0, 0, flags, _, 0, 0]) => {
                key.extend_from_slice(&[1, *flags & 0x80]);
                usize::from(u16::from_be_bytes([*p1, *p0]).clamp(CLASSIC_UDP_PAYLOAD, UDP_PAYLOAD))
            }
            _ => return None,
        };
        Some(Self {
            question_end,
            limit,
            qtype,
            key,
        })
    }
}

// === impl PacketCache ===

impl PacketCache {
    /// The cached answer to `query` (the packet `raw`) under `generation`, made the request's own.
    pub fn answer(
        &mut self,
        generation: Generation,
        raw: &[u8],
        query: &PlainQuery,
    ) -> Option<Vec<u8>> {
        if generation != self.generation {
            self.generation = generation;
            self.entries.clear();
            return None;
        }
        let cached = self.entries.get(&query.key)?;
        if cached.len() > query.limit {
            return None;
        }
        let mut reply = cached.clone();
        reply[..2].copy_from_slice(&raw[..2]);
        // RD (byte 2, bit 0) and CD (byte 3, bit 4) come from the request.
        reply[2] = (reply[2] & !0x01) | (raw[2] & 0x01);
        reply[3] = (reply[3] & !0x10) | (raw[3] & 0x10);
        reply[12..query.question_end].copy_from_slice(&raw[12..query.question_end]);
        Some(reply)
    }

    /// Remembers `reply`, the full-path answer to `query` under `generation`.
    pub fn store(&mut self, generation: Generation, query: PlainQuery, reply: &[u8]) {
        if generation != self.generation {
            self.generation = generation;
            self.entries.clear();
        }
        // Only answers that carry the question unchanged at the same place can be patched.
        if reply.len() < query.question_end || reply[4..6] != [0, 1] || reply[2] & 0x02 != 0 {
            return;
        }
        if self.entries.len() >= CAPACITY {
            self.entries.clear();
        }
        self.entries.insert(query.key, reply.to_vec());
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RecordType};

    use super::*;

    fn raw(name: &str, id: u16, edns: Option<(u16, bool)>) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).expect("name"),
            RecordType::A,
        ));
        if let Some((payload, dnssec_ok)) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            e.set_dnssec_ok(dnssec_ok);
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn plain_queries_are_recognised_and_keyed_case_insensitively() {
        let a = PlainQuery::parse(&raw("Web.NS.svc.cluster.local.", 1, None)).expect("plain");
        let b = PlainQuery::parse(&raw("web.ns.svc.cluster.local.", 2, None)).expect("plain");
        assert_eq!(a.key, b.key);
        assert_eq!(a.limit, 512);
        let edns = PlainQuery::parse(&raw("web.ns.svc.cluster.local.", 2, Some((4096, false))))
            .expect("plain with OPT");
        assert_ne!(edns.key, b.key);
        assert_eq!(edns.limit, 1232);
        let dnssec = PlainQuery::parse(&raw("web.ns.svc.cluster.local.", 2, Some((4096, true))))
            .expect("plain with DO");
        assert_ne!(dnssec.key, edns.key);
    }

    #[test]
    fn anything_unusual_takes_the_full_path() {
        let plain = raw("web.ns.svc.cluster.local.", 1, None);
        let mut response = plain.clone();
        response[2] |= 0x80;
        let mut notify = plain.clone();
        notify[2] |= 4 << 3;
        let mut two_questions = plain.clone();
        two_questions[5] = 2;
        let mut trailing = plain.clone();
        trailing.push(0);
        let mut with_option = raw("web.ns.svc.cluster.local.", 1, Some((1232, false)));
        with_option.truncate(with_option.len() - 2);
        with_option.extend_from_slice(&[0, 4, 0, 10, 0, 0]);
        for packet in [
            &response,
            &notify,
            &two_questions,
            &trailing,
            &with_option,
            &plain[..20],
        ] {
            assert_eq!(PlainQuery::parse(packet), None);
        }
    }

    #[test]
    fn a_hit_is_the_requests_own_and_a_new_generation_starts_over() {
        let mut cache = PacketCache::default();
        let first = raw("web.ns.svc.cluster.local.", 1, None);
        let query = PlainQuery::parse(&first).expect("plain");
        let mut reply = first.clone();
        reply[2] |= 0x80 | 0x04; // QR, AA
        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 5, 0, 4, 10, 0, 0, 1]);
        reply[7] = 1;
        cache.store(Generation(1), query, &reply);

        let mut second = raw("WEB.ns.svc.cluster.local.", 0xbeef, None);
        second[2] &= !0x01; // RD off
        let query = PlainQuery::parse(&second).expect("plain");
        let hit = cache.answer(Generation(1), &second, &query).expect("hit");
        let decoded = Message::from_vec(&hit).expect("decode");
        assert_eq!(decoded.metadata.id, 0xbeef);
        assert!(!decoded.metadata.recursion_desired);
        assert_eq!(
            decoded.queries[0].name().to_ascii(),
            "WEB.ns.svc.cluster.local."
        );
        assert_eq!(
            decoded.answers[0].name.to_ascii(),
            "WEB.ns.svc.cluster.local."
        );
        assert!(cache.answer(Generation(2), &second, &query).is_none());
        assert!(
            cache.answer(Generation(2), &second, &query).is_none(),
            "cleared"
        );
    }
}
