//! Bytes ↔ messages at the edge of the server: what to do with a packet that does not parse, EDNS(0)
//! payload sizes, the OPT record of a response, and truncation. Pure functions.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};

/// The UDP payload size Capstan advertises and answers within (the DNS Flag Day 2020 value, which
/// avoids IP fragmentation).
pub const UDP_PAYLOAD: u16 = 1232;
/// Plain DNS over UDP without EDNS(0).
pub const CLASSIC_UDP_PAYLOAD: u16 = 512;
/// EDNS option (local/experimental range) that marks queries Capstan forwards, so a query that
/// comes back is recognised as a resolver loop.
pub const LOOP_OPTION: u16 = 65_432;

/// What a received packet is.
#[derive(Debug)]
pub enum Packet {
    /// A query to answer.
    Query(Box<Message>),
    /// Not a parsable query but has a header: answer this (FORMERR) right away.
    Malformed(Vec<u8>),
    /// Too short to have a header, or a response: never answered (no reflection, no loops).
    Ignore,
}

/// Classifies a received packet.
pub fn parse(raw: &[u8]) -> Packet {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return Packet::Ignore;
    }
    match Message::from_vec(raw) {
        // RFC 9619: a query (opcode QUERY) with more than one question is answered FORMERR, as
        // BIND and Knot do (CoreDNS's dns library refuses it too); answering it would echo every
        // question, which need not fit the client's payload size.
        Ok(message)
            if message.metadata.message_type == MessageType::Query
                && message.metadata.op_code == OpCode::Query
                && message.queries.len() > 1 =>
        {
            Packet::Malformed(formerr(raw))
        }
        Ok(message) if message.metadata.message_type == MessageType::Query => {
            Packet::Query(Box::new(message))
        }
        Ok(_) => Packet::Ignore,
        Err(_) => Packet::Malformed(formerr(raw)),
    }
}

/// FORMERR for an unparsable packet: its ID, opcode and RD flag, no question.
fn formerr(raw: &[u8]) -> Vec<u8> {
    let opcode = (raw[2] >> 3) & 0x0f;
    let rd = raw[2] & 0x01;
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&raw[0..2]);
    // QR=1, opcode echoed, RD echoed; RA=1; RCODE=1 (FORMERR); all counts 0.
    out.push(0x80 | (opcode << 3) | rd);
    out.push(0x80 | 0x01);
    out.extend_from_slice(&[0; 8]);
    out
}

/// The largest response a client can take: its EDNS payload size (at least 512, at most ours)
/// over UDP; 65535 over TCP.
pub fn response_limit(request: &Message, tcp: bool) -> usize {
    if tcp {
        return usize::from(u16::MAX);
    }
    let payload = request.edns.as_ref().map_or(CLASSIC_UDP_PAYLOAD, |edns| {
        edns.max_payload().clamp(CLASSIC_UDP_PAYLOAD, UDP_PAYLOAD)
    });
    usize::from(payload)
}

/// BADVERS for a query with an EDNS version Capstan does not speak (anything but 0).
pub fn unsupported_edns_version(request: &Message) -> Option<Message> {
    let edns = request.edns.as_ref()?;
    if edns.version() == 0 {
        return None;
    }
    let mut response = Message::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    response.metadata.response_code = ResponseCode::BADVERS;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    Some(response)
}

/// Encodes `response` for `request`: adds an OPT record when the request had one and truncates
/// (TC, no records) when it does not fit in `limit` bytes.
pub fn encode(mut response: Message, request: &Message, limit: usize) -> Vec<u8> {
    response.edns = request.edns.as_ref().map(|theirs| {
        let mut ours = Edns::new();
        ours.set_max_payload(UDP_PAYLOAD);
        ours.set_version(0);
        ours.set_dnssec_ok(theirs.flags().dnssec_ok);
        ours
    });
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => bytes,
        // Truncated to the header, question and OPT record; if even that does not fit, SERVFAIL
        // (a header alone always does).
        Ok(_) => match response.truncate().to_vec() {
            Ok(bytes) if bytes.len() <= limit => bytes,
            _ => server_failure(request.metadata.id, request.metadata.op_code),
        },
        Err(_) => server_failure(request.metadata.id, request.metadata.op_code),
    }
}

/// A bare SERVFAIL header, for when a response cannot be encoded at all.
fn server_failure(id: u16, op_code: OpCode) -> Vec<u8> {
    let opcode = u8::from(op_code) & 0x0f;
    let [hi, lo] = id.to_be_bytes();
    vec![
        hi,
        lo,
        0x80 | (opcode << 3),
        0x80 | 0x02,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// The loop marker of a query Capstan forwarded itself: `(token, upstream index)`.
pub fn loop_marker(request: &Message) -> Option<([u8; 8], u16)> {
    let option = request
        .edns
        .as_ref()?
        .option(EdnsCode::Unknown(LOOP_OPTION))?;
    match option {
        EdnsOption::Unknown(_, data) if data.len() == 10 => {
            let mut token = [0; 8];
            token.copy_from_slice(&data[..8]);
            Some((token, u16::from_be_bytes([data[8], data[9]])))
        }
        _ => None,
    }
}

/// Adds the loop marker to a query about to be forwarded.
pub fn mark(query: &mut Message, token: [u8; 8], upstream: u16) {
    let mut data = token.to_vec();
    data.extend_from_slice(&upstream.to_be_bytes());
    query
        .edns
        .get_or_insert_with(Edns::new)
        .options_mut()
        .insert(EdnsOption::Unknown(LOOP_OPTION, data));
}

#[cfg(test)]
mod tests {
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn query(edns: Option<u16>) -> Message {
        let mut message = Message::new(7, MessageType::Query, OpCode::Query);
        message.add_query(Query::query(
            Name::from_ascii("big.example.").expect("name"),
            RecordType::A,
        ));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            message.set_edns(e);
        }
        message
    }

    fn big_response(request: &Message, records: u8) -> Message {
        let mut response = Message::new(7, MessageType::Response, OpCode::Query);
        response.add_queries(request.queries.clone());
        for i in 0..records {
            response.add_answer(Record::from_rdata(
                Name::from_ascii("big.example.").expect("name"),
                5,
                RData::A(A::new(10, 0, 0, i)),
            ));
        }
        response
    }

    #[test]
    fn short_packets_and_responses_are_ignored() {
        assert!(matches!(parse(&[0; 11]), Packet::Ignore));
        let mut response = query(None).to_vec().expect("encode");
        response[2] |= 0x80;
        assert!(matches!(parse(&response), Packet::Ignore));
    }

    #[test]
    fn garbage_after_a_header_is_formerr_with_the_same_id() {
        let mut raw = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
        raw.extend_from_slice(&[63, b'x']);
        let Packet::Malformed(reply) = parse(&raw) else {
            panic!("expected FORMERR");
        };
        let reply = Message::from_vec(&reply).expect("valid reply");
        assert_eq!(reply.metadata.id, 0xabcd);
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert!(reply.metadata.recursion_desired);
    }

    /// RFC 9619: QDCOUNT > 1 in a QUERY is FORMERR. Found by the `dns_query` fuzz target: five
    /// long questions echoed in a truncated reply exceeded the client's 512 bytes.
    #[test]
    fn rfc9619_more_than_one_question_is_formerr() {
        let mut request = query(None);
        request.add_query(Query::query(
            Name::from_ascii("second.example.").expect("name"),
            RecordType::A,
        ));
        let raw = request.to_vec().expect("encode");
        let Packet::Malformed(reply) = parse(&raw) else {
            panic!("expected FORMERR");
        };
        let reply = Message::from_vec(&reply).expect("valid reply");
        assert_eq!(reply.metadata.response_code, ResponseCode::FormErr);
        assert_eq!(reply.metadata.id, 7);
    }

    #[test]
    fn a_reply_whose_question_alone_exceeds_the_limit_is_servfail_that_fits() {
        let request = query(None);
        let bytes = encode(big_response(&request, 60), &request, 20);
        assert!(bytes.len() <= 20);
        let reply = Message::from_vec(&bytes).expect("decode");
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }

    #[test]
    fn payload_limits_follow_edns() {
        assert_eq!(response_limit(&query(None), false), 512);
        assert_eq!(response_limit(&query(Some(100)), false), 512);
        assert_eq!(response_limit(&query(Some(4096)), false), 1232);
        assert_eq!(response_limit(&query(Some(1000)), false), 1000);
        assert_eq!(response_limit(&query(None), true), 65535);
    }

    #[test]
    fn oversized_answers_are_truncated_and_fit() {
        let request = query(None);
        let bytes = encode(big_response(&request, 60), &request, 512);
        assert!(bytes.len() <= 512);
        let reply = Message::from_vec(&bytes).expect("decode");
        assert!(reply.metadata.truncation);
        assert!(reply.answers.is_empty());
        assert_eq!(reply.queries, request.queries);

        let fits = encode(big_response(&request, 3), &request, 512);
        let reply = Message::from_vec(&fits).expect("decode");
        assert!(!reply.metadata.truncation);
        assert_eq!(reply.answers.len(), 3);
    }

    #[test]
    fn edns_queries_get_an_opt_record_and_version_1_gets_badvers() {
        let request = query(Some(4096));
        let bytes = encode(big_response(&request, 1), &request, 1232);
        let reply = Message::from_vec(&bytes).expect("decode");
        assert_eq!(reply.edns.map(|e| e.max_payload()), Some(UDP_PAYLOAD));

        let mut v1 = query(Some(4096));
        v1.edns.as_mut().map(|e| e.set_version(1));
        let badvers = unsupported_edns_version(&v1).expect("BADVERS");
        let bytes = encode(badvers, &v1, 512);
        let reply = Message::from_vec(&bytes).expect("decode");
        // BADVERS and BADSIG share code 16; hickory decodes it as BADSIG.
        assert_eq!(u16::from(reply.metadata.response_code), 16);
        assert!(unsupported_edns_version(&request).is_none());
    }

    #[test]
    fn loop_markers_round_trip() {
        let mut request = query(Some(1232));
        assert_eq!(loop_marker(&request), None);
        mark(&mut request, [1, 2, 3, 4, 5, 6, 7, 8], 3);
        let decoded = Message::from_vec(&request.to_vec().expect("encode")).expect("decode");
        assert_eq!(loop_marker(&decoded), Some(([1, 2, 3, 4, 5, 6, 7, 8], 3)));
    }
}
