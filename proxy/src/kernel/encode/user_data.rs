//! The user data nft writes with an endpoint map's declaration.

use capstan_table::Protocol;

use super::super::pick::BUCKETS;
use super::super::rules::Family;

/// The user data nft 1.0 attaches to `typeof numgen random mod 65536 : ip daddr . tcp dport`
/// (libnftnl's `NFTNL_UDATA_SET_*` type-length-value records), from which `nft list` prints
/// the declaration back: key and data byte order, the key's expression (numgen), the data's
/// (a concatenation of two payload fields) and the data-interval flag.
pub(super) fn endpoints_user_data(family: Family, protocol: Protocol) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
        out.push(kind);
        out.push(value.len() as u8);
        out.extend(value);
    }
    fn number(kind: u8, value: u32) -> Vec<u8> {
        let mut out = Vec::new();
        record(&mut out, kind, &value.to_ne_bytes());
        out
    }
    // An expression: its nft type number, then its own records.
    fn expression(kind: u8, expr_type: u32, body: &[Vec<u8>]) -> Vec<u8> {
        let mut out = number(0, expr_type);
        record(&mut out, 1, &body.concat());
        let mut wrapped = Vec::new();
        record(&mut wrapped, kind, &out);
        wrapped
    }
    const NUMGEN: u32 = 23;
    const CONCAT: u32 = 13;
    const PAYLOAD: u32 = 7;
    // nft's protocol descriptions and header fields: ip/ip6 daddr, tcp/udp/sctp dport.
    let (address_desc, address_field) = match family {
        Family::V4 => (12, 12),
        Family::V6 => (13, 9),
    };
    let payload =
        |kind, desc, field| expression(kind, PAYLOAD, &[number(0, desc), number(1, field)]);
    let numgen = [number(0, 1), number(1, BUCKETS), number(2, 0)];
    let transport_desc = match protocol {
        Protocol::Tcp => 8,
        Protocol::Udp => 6,
        Protocol::Sctp => 10,
    };
    let concat = [
        payload(0, address_desc, address_field),
        payload(1, transport_desc, 2),
    ];
    [
        number(0, 1),
        number(1, 0),
        expression(3, NUMGEN, &numgen),
        expression(4, CONCAT, &concat),
        number(6, 0),
    ]
    .concat()
}
