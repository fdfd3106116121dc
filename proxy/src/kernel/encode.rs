//! The kernel data path's rules as nf_tables netlink messages: the same transactions the `nft`
//! process would send for the text of [`super::stmt`], written directly, so a sync costs no
//! parsing and no read-back of the table into a cache (nft reads the whole table before every
//! incremental change, which at ten thousand Services was most of a change's latency).
//!
//! Each expression is laid out as `nft --debug=netlink` shows nft 1.0 encoding the same rule;
//! the namespace test `netlink_and_nft_write_the_same_table` lists both tables with `nft` and
//! compares them.

use std::net::{IpAddr, SocketAddr};

use capstan_sockets::netlink::{Batch, Messages, NLM_F_APPEND, NLM_F_CREATE};

use super::diff::Changes;
use super::pick::BUCKETS;
use super::pick::EndpointMap;
use super::rules::{Family, KernelSettings, MapKey, MapKind, MapRef, SetKind, TABLE};
use super::skeleton::{Skeleton, skeleton};
use super::stmt::{Action, Field, Match, Net, Rule, Verdict, protocol_number};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

// Message types (nf_tables.h, `enum nf_tables_msg_types`).
const NEWTABLE: u16 = 0;
const DELTABLE: u16 = 2;
const NEWCHAIN: u16 = 3;
const DELCHAIN: u16 = 5;
const NEWRULE: u16 = 6;
const DELRULE: u16 = 8;
const NEWSET: u16 = 9;
const DELSET: u16 = 11;
const NEWSETELEM: u16 = 12;
const DELSETELEM: u16 = 14;

// Registers: the first 16-byte register, and the 32-bit ones (`NFT_REG32_00` = 8).
const REG_VERDICT: u32 = 0;
const REG_1: u32 = 1;
const REG32_00: u32 = 8;
const REG_2: u32 = 2;

// Verdict codes.
const NF_DROP: i32 = 0;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;
const NF_ACCEPT: u32 = 1;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

// Set flags, and the flag of an element closing an interval.
const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const ELEMENT_INTERVAL_END: u32 = 0x1;
const SET_TIMEOUT: u32 = 0x10;
const SET_EVAL: u32 = 0x20;

// nft's datatype numbers (nftables, include/datatype.h), as `nft list` reads set types back.
const TYPE_INTEGER: u32 = 4;
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;
const TYPE_INET_PROTOCOL: u32 = 12;
const TYPE_INET_SERVICE: u32 = 13;
const TYPE_BITS: u32 = 6;

/// A message's element list is one nested attribute, at most 64 KiB: a new message starts
/// once the list passes this many bytes (an element is under 400: a key and a chain name).
const ELEMENT_BYTES_PER_MESSAGE: usize = 48 * 1024;

/// An nf_tables transaction on Capstan's table.
pub(super) struct Transaction {
    batch: Batch,
    /// Sets created so far (`NFTA_SET_ID`, which the kernel requires of every new set).
    sets: u32,
}

impl Transaction {
    pub(super) fn new() -> Self {
        Self {
            batch: Batch::new(NFNL_SUBSYS_NFTABLES),
            sets: 0,
        }
    }

    /// The transaction of `changes`: for a full sync, the table replaced and its skeleton
    /// first (what [`Changes::script`] writes as text).
    pub(super) fn of(changes: &Changes, settings: &KernelSettings) -> Self {
        let mut transaction = Self::new();
        if changes.fresh {
            transaction.replace_table();
            transaction.skeleton(&skeleton(settings));
        }
        transaction.changes(changes);
        transaction
    }

    /// Messages so far.
    pub(super) fn len(&self) -> usize {
        self.batch.len()
    }

    pub(super) fn into_batch(self) -> Batch {
        self.batch
    }

    fn begin(&mut self, msg: u16, flags: u16) -> &mut Messages {
        self.batch.begin(msg, flags, NFPROTO_INET);
        let m = self.batch.messages();
        m.attr_str(1, TABLE);
        m
    }

    fn end(&mut self) {
        self.batch.messages().end();
    }

    /// `add table`, `delete table`: gone, whether or not it existed.
    pub(super) fn delete_table(&mut self) {
        self.begin(NEWTABLE, NLM_F_CREATE);
        self.end();
        self.begin(DELTABLE, 0);
        self.end();
    }

    /// The table replaced by an empty one, whether or not it existed.
    pub(super) fn replace_table(&mut self) {
        self.delete_table();
        self.begin(NEWTABLE, NLM_F_CREATE);
        self.end();
    }

    /// `add set` (a map, an address set or an affinity set).
    pub(super) fn add_set(&mut self, name: &str, kind: SetKind) {
        self.sets += 1;
        let id = self.sets;
        let m = self.begin(NEWSET, NLM_F_CREATE);
        m.attr_str(2, name);
        let (fields, flags, timeout): (Vec<(u32, usize)>, u32, Option<u64>) = match kind {
            SetKind::Map(map) => (map_key_fields(map), SET_MAP, None),
            SetKind::Endpoints(..) => (vec![(TYPE_INTEGER, 4)], SET_MAP | SET_INTERVAL, None),
            SetKind::Addresses(family) => (vec![addr_field(family)], 0, None),
            SetKind::AddressPairs(family) => (vec![addr_field(family); 2], 0, None),
            SetKind::Affinity(family, secs) => (
                vec![addr_field(family)],
                SET_TIMEOUT | SET_EVAL,
                Some(secs * 1000),
            ),
        };
        let key_type = fields
            .iter()
            .fold(0, |acc, (datatype, _)| acc << TYPE_BITS | datatype);
        let key_len: usize = fields.iter().map(|(_, len)| len.div_ceil(4) * 4).sum();
        m.attr_u32(3, flags);
        m.attr_u32(4, key_type);
        m.attr_u32(5, key_len as u32);
        if let SetKind::Endpoints(family, _) = kind {
            let (addr_type, addr_len) = addr_field(family);
            m.attr_u32(6, addr_type << TYPE_BITS | TYPE_INET_SERVICE);
            m.attr_u32(7, addr_len as u32 + 4);
        } else if flags & SET_MAP != 0 {
            m.attr_u32(6, NFT_DATA_VERDICT);
            m.attr_u32(7, 0);
        }
        m.attr_u32(10, id);
        if let Some(ms) = timeout {
            m.attr_u64(11, ms);
        }
        if let SetKind::Endpoints(family, protocol) = kind {
            m.attr(13, &endpoints_user_data(family, protocol));
        }
        self.end();
    }

    pub(super) fn delete_set(&mut self, name: &str) {
        self.begin(DELSET, 0).attr_str(2, name);
        self.end();
    }

    /// `add chain` (a no-op if it exists).
    pub(super) fn add_chain(&mut self, name: &str) {
        self.begin(NEWCHAIN, NLM_F_CREATE).attr_str(3, name);
        self.end();
    }

    /// A base chain, on its hook with its priority, accepting by default.
    pub(super) fn add_base_chain(&mut self, name: &str, kind: &str, hook: &str, priority: i32) {
        let hook_number: u32 = match hook {
            "prerouting" => 0,
            "input" => 1,
            "forward" => 2,
            "output" => 3,
            _ => 4,
        };
        let m = self.begin(NEWCHAIN, NLM_F_CREATE);
        m.attr_str(3, name);
        let nest = m.nest_begin(4);
        m.attr_u32(1, hook_number);
        m.attr_u32(2, priority as u32);
        m.nest_end(nest);
        m.attr_u32(5, NF_ACCEPT);
        m.attr_str(7, kind);
        self.end();
    }

    /// `flush chain`: every rule of the chain deleted.
    pub(super) fn flush_chain(&mut self, name: &str) {
        self.begin(DELRULE, 0).attr_str(2, name);
        self.end();
    }

    /// `flush table`: every rule of every chain deleted.
    pub(super) fn flush_rules(&mut self) {
        self.begin(DELRULE, 0);
        self.end();
    }

    pub(super) fn delete_chain(&mut self, name: &str) {
        self.begin(DELCHAIN, 0).attr_str(3, name);
        self.end();
    }

    /// `add rule` at the end of `chain`.
    pub(super) fn add_rule(&mut self, chain: &str, rule: &Rule) {
        let m = self.begin(NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
        m.attr_str(2, chain);
        let list = m.nest_begin(4);
        encode_rule(m, rule);
        m.nest_end(list);
        self.end();
    }

    /// `add element` to a verdict map.
    pub(super) fn add_map_elements(&mut self, map: MapRef, elements: &[(MapKey, Verdict)]) {
        self.elements(
            NEWSETELEM,
            NLM_F_CREATE,
            &map.name(),
            elements,
            |m, (key, verdict)| {
                data_attr(m, 1, &map_key_bytes(*key));
                let data = m.nest_begin(2);
                verdict_data(m, verdict);
                m.nest_end(data);
            },
        );
    }

    /// `add element` / `delete element` of plain keys (`delete` when not `add`).
    pub(super) fn set_elements(&mut self, set: &str, keys: &[Vec<u8>], add: bool) {
        let (msg, flags) = if add {
            (NEWSETELEM, NLM_F_CREATE)
        } else {
            (DELSETELEM, 0)
        };
        self.elements(msg, flags, set, keys, |m, key| data_attr(m, 1, key));
    }

    /// `add element` / `delete element` of endpoint-map ranges: each range is a start element
    /// (with the endpoint, when added) and an end element one past its last key, as nft sends
    /// intervals.
    pub(super) fn endpoint_ranges(
        &mut self,
        map: EndpointMap,
        ranges: &[(u32, u32, Option<SocketAddr>)],
    ) {
        let add = ranges.first().is_some_and(|r| r.2.is_some());
        let (msg, flags) = if add {
            (NEWSETELEM, NLM_F_CREATE)
        } else {
            (DELSETELEM, 0)
        };
        let elements: Vec<(u32, Option<Option<SocketAddr>>)> = ranges
            .iter()
            .flat_map(|&(first, last, to)| [(first, Some(to)), (last + 1, None)])
            .collect();
        let map = map.name();
        self.elements(msg, flags, &map, &elements, |m, &(key, start)| {
            data_attr(m, 1, &key.to_be_bytes());
            match start {
                Some(to) => {
                    if let Some(to) = to {
                        let mut data = ip_bytes(to.ip());
                        data.extend(to.port().to_be_bytes());
                        data.extend([0, 0]);
                        data_attr(m, 2, &data);
                    }
                }
                None => m.attr_u32(3, ELEMENT_INTERVAL_END),
            }
        });
    }

    /// Element messages for `set`, as many as the elements' bytes need; `write` writes one
    /// element's attributes.
    fn elements<T>(
        &mut self,
        msg: u16,
        flags: u16,
        set: &str,
        items: &[T],
        write: impl Fn(&mut Messages, &T),
    ) {
        let mut rest = items;
        while !rest.is_empty() {
            let m = self.begin(msg, flags);
            m.attr_str(2, set);
            let list = m.nest_begin(3);
            let mut written = 0;
            while written < rest.len() && m.len() - list < ELEMENT_BYTES_PER_MESSAGE {
                let element = m.nest_begin(1);
                write(m, &rest[written]);
                m.nest_end(element);
                written += 1;
            }
            m.nest_end(list);
            self.end();
            rest = &rest[written..];
        }
    }

    /// `flush set` / `flush map`.
    pub(super) fn flush_set(&mut self, set: &str) {
        self.begin(DELSETELEM, 0).attr_str(2, set);
        self.end();
    }

    /// The skeleton's sets, chains and rules.
    pub(super) fn skeleton(&mut self, skeleton: &Skeleton) {
        for (name, kind) in &skeleton.sets {
            self.add_set(name, *kind);
        }
        for chain in &skeleton.base_chains {
            self.add_base_chain(chain.name, chain.kind, chain.hook, chain.priority);
        }
        for (name, _) in &skeleton.chains {
            self.add_chain(name);
        }
        for chain in &skeleton.base_chains {
            for rule in &chain.rules {
                self.add_rule(chain.name, rule);
            }
        }
        for (name, rules) in &skeleton.chains {
            for rule in rules {
                self.add_rule(name, rule);
            }
        }
    }

    /// The commands of `changes`, in the order [`Changes::render`] writes them.
    pub(super) fn changes(&mut self, changes: &Changes) {
        for (name, kind) in &changes.add_sets {
            self.add_set(name, *kind);
        }
        for (name, _) in &changes.fill_chains {
            self.add_chain(name);
            if !changes.fresh {
                self.flush_chain(name);
            }
        }
        for (name, rules) in &changes.fill_chains {
            for rule in rules {
                self.add_rule(name, rule);
            }
        }
        for (map, keys) in &changes.delete_elements {
            let keys: Vec<Vec<u8>> = keys.iter().map(|k| map_key_bytes(*k)).collect();
            self.set_elements(&map.name(), &keys, false);
        }
        for (map, elements) in &changes.add_elements {
            self.add_map_elements(*map, elements);
        }
        for (map, ranges) in &changes.delete_ranges {
            let ranges: Vec<_> = ranges.iter().map(|&(a, b)| (a, b, None)).collect();
            self.endpoint_ranges(*map, &ranges);
        }
        for (map, ranges) in &changes.add_ranges {
            let ranges: Vec<_> = ranges.iter().map(|&(a, b, to)| (a, b, Some(to))).collect();
            self.endpoint_ranges(*map, &ranges);
        }
        for change in changes.address_sets() {
            let keys: Vec<Vec<u8>> = change
                .ips
                .iter()
                .map(|ip| match change.pairs {
                    true => [ip_bytes(*ip), ip_bytes(*ip)].concat(),
                    false => ip_bytes(*ip),
                })
                .collect();
            self.set_elements(&change.set, &keys, change.add);
        }
        for name in &changes.stale_chains {
            self.flush_chain(name);
        }
        for (name, _) in &changes.delete_sets {
            self.delete_set(name);
        }
    }
}

// === set keys ===

fn addr_field(family: Family) -> (u32, usize) {
    match family {
        Family::V4 => (TYPE_IPADDR, 4),
        Family::V6 => (TYPE_IP6ADDR, 16),
    }
}

fn map_key_fields(map: MapRef) -> Vec<(u32, usize)> {
    let mut fields = Vec::new();
    if map.by_address() {
        fields.push(addr_field(map.family));
    }
    fields.extend([(TYPE_INET_PROTOCOL, 1), (TYPE_INET_SERVICE, 2)]);
    debug_assert!(!matches!(map.kind, MapKind::NodePorts) || fields.len() == 2);
    fields
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// A concatenated key: each field padded to four bytes.
fn map_key_bytes(key: MapKey) -> Vec<u8> {
    let mut out = key.ip.map(ip_bytes).unwrap_or_default();
    out.extend([protocol_number(key.protocol), 0, 0, 0]);
    out.extend(key.port.to_be_bytes());
    out.extend([0, 0]);
    out
}

// === data ===

/// `attr { NFTA_DATA_VALUE bytes }`.
fn data_attr(m: &mut Messages, attr: u16, bytes: &[u8]) {
    let nest = m.nest_begin(attr);
    m.attr(1, bytes);
    m.nest_end(nest);
}

/// `NFTA_DATA_VERDICT { code, chain }`.
fn verdict_data(m: &mut Messages, verdict: &Verdict) {
    let nest = m.nest_begin(2);
    let (code, chain) = match verdict {
        Verdict::Drop => (NF_DROP, None),
        Verdict::Return => (NFT_RETURN, None),
        Verdict::Jump(chain) => (NFT_JUMP, Some(chain)),
        Verdict::Goto(chain) => (NFT_GOTO, Some(chain)),
    };
    m.attr(1, &code.to_be_bytes());
    if let Some(chain) = chain {
        m.attr_str(2, chain);
    }
    m.nest_end(nest);
}

// === expressions ===

/// One expression: `NFTA_LIST_ELEM { name, data { attributes } }`.
fn expr(m: &mut Messages, name: &str, body: impl FnOnce(&mut Messages)) {
    let element = m.nest_begin(1);
    m.attr_str(1, name);
    let data = m.nest_begin(2);
    body(m);
    m.nest_end(data);
    m.nest_end(element);
}

fn payload(m: &mut Messages, dreg: u32, base: u32, offset: u32, len: u32) {
    expr(m, "payload", |m| {
        m.attr_u32(1, dreg);
        m.attr_u32(2, base);
        m.attr_u32(3, offset);
        m.attr_u32(4, len);
    });
}

fn cmp(m: &mut Messages, equal: bool, value: &[u8]) {
    expr(m, "cmp", |m| {
        m.attr_u32(1, REG_1);
        m.attr_u32(2, if equal { 0 } else { 1 });
        data_attr(m, 3, value);
    });
}

fn meta_load(m: &mut Messages, key: u32, dreg: u32) {
    expr(m, "meta", |m| {
        m.attr_u32(1, dreg);
        m.attr_u32(2, key);
    });
}

/// `reg 1 = (reg 1 & mask) ^ xor`.
fn bitwise(m: &mut Messages, mask: &[u8], xor: &[u8]) {
    expr(m, "bitwise", |m| {
        m.attr_u32(1, REG_1);
        m.attr_u32(2, REG_1);
        m.attr_u32(3, mask.len() as u32);
        data_attr(m, 4, mask);
        data_attr(m, 5, xor);
    });
}

fn lookup(m: &mut Messages, set: &str, dreg: Option<u32>) {
    expr(m, "lookup", |m| {
        m.attr_str(1, set);
        m.attr_u32(2, REG_1);
        if let Some(dreg) = dreg {
            m.attr_u32(3, dreg);
        }
    });
}

const META_MARK: u32 = 3;
const META_NFPROTO: u32 = 15;
const META_L4PROTO: u32 = 16;
const PAYLOAD_NETWORK: u32 = 1;
const PAYLOAD_TRANSPORT: u32 = 2;

fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// Where an address sits in the network header, and its length.
fn addr_offset(family: Family, field: Field) -> (u32, u32) {
    match (family, field) {
        (Family::V4, Field::Source) => (12, 4),
        (Family::V4, Field::Destination) => (16, 4),
        (Family::V6, Field::Source) => (8, 16),
        (Family::V6, Field::Destination) => (24, 16),
    }
}

/// The 32-bit register after `bytes` of a concatenation (`NFT_REG32_00` + words).
fn reg_after(bytes: u32) -> u32 {
    REG32_00 + bytes.div_ceil(4)
}

/// Writes the expressions of `rule`; the `meta nfproto` check nft adds before the first
/// address of a family is added the same way.
fn encode_rule(m: &mut Messages, rule: &Rule) {
    let mut family_checked = false;
    let mut family_check = |m: &mut Messages, family: Family| {
        if !family_checked {
            family_checked = true;
            meta_load(m, META_NFPROTO, REG_1);
            cmp(m, true, &[nfproto(family)]);
        }
    };
    for item in &rule.matches {
        match item {
            Match::Addr { field, net, negate } => {
                family_check(m, net.family());
                prefix_match(m, *field, *net, !negate);
            }
            Match::AddrInSet { family, field, set } => {
                family_check(m, *family);
                let (offset, len) = addr_offset(*family, *field);
                payload(m, REG_1, PAYLOAD_NETWORK, offset, len);
                lookup(m, set, None);
            }
            Match::AddrPairInSet { family, set } => {
                family_check(m, *family);
                let (source, len) = addr_offset(*family, Field::Source);
                let (destination, _) = addr_offset(*family, Field::Destination);
                payload(m, REG_1, PAYLOAD_NETWORK, source, len);
                payload(m, reg_after(len), PAYLOAD_NETWORK, destination, len);
                lookup(m, set, None);
            }
            Match::L4Proto(protocol) => {
                meta_load(m, META_L4PROTO, REG_1);
                cmp(m, true, &[protocol_number(*protocol)]);
            }
            Match::Port { field, port } => {
                let offset = if *field == Field::Source { 0 } else { 2 };
                payload(m, REG_1, PAYLOAD_TRANSPORT, offset, 2);
                cmp(m, true, &port.to_be_bytes());
            }
            Match::OneIn(modulus) => {
                expr(m, "numgen", |m| {
                    m.attr_u32(1, REG_1);
                    m.attr_u32(2, *modulus);
                    m.attr_u32(3, 1);
                    m.attr_u32(4, 0);
                });
                cmp(m, true, &0u32.to_ne_bytes());
            }
            Match::FibLocal(field) => {
                let flags = if *field == Field::Source { 1 } else { 2 };
                expr(m, "fib", |m| {
                    m.attr_u32(1, REG_1);
                    m.attr_u32(2, 3);
                    m.attr_u32(3, flags);
                });
                // RTN_LOCAL
                cmp(m, true, &2u32.to_ne_bytes());
            }
            Match::CtNew | Match::CtDnat => {
                let (key, bit): (u32, u32) = match item {
                    Match::CtNew => (0, 0x8),
                    _ => (2, 0x20),
                };
                expr(m, "ct", |m| {
                    m.attr_u32(1, REG_1);
                    m.attr_u32(2, key);
                });
                bitwise(m, &bit.to_ne_bytes(), &0u32.to_ne_bytes());
                cmp(m, false, &0u32.to_ne_bytes());
            }
            Match::MarkClear(mark) => {
                meta_load(m, META_MARK, REG_1);
                bitwise(m, &mark.to_ne_bytes(), &0u32.to_ne_bytes());
                cmp(m, true, &0u32.to_ne_bytes());
            }
        }
    }
    encode_action(m, &rule.action, &mut family_check);
}

/// `ip saddr 10.0.0.0/8`: as nft, a prefix ending on a byte boundary loads and compares only
/// its whole bytes; any other loads the whole address and masks it.
fn prefix_match(m: &mut Messages, field: Field, net: Net, equal: bool) {
    let (offset, address_len) = addr_offset(net.family(), field);
    let address = ip_bytes(net.ip);
    if net.len.is_multiple_of(8) {
        let bytes = u32::from(net.len) / 8;
        if bytes == 0 {
            return;
        }
        payload(m, REG_1, PAYLOAD_NETWORK, offset, bytes);
        cmp(m, equal, &address[..bytes as usize]);
        return;
    }
    payload(m, REG_1, PAYLOAD_NETWORK, offset, address_len);
    let mask: Vec<u8> = (0..address_len as usize)
        .map(|i| {
            let bits = u32::from(net.len).saturating_sub(8 * i as u32).min(8);
            (0xff00u16 >> bits) as u8
        })
        .collect();
    bitwise(m, &mask, &vec![0; address.len()]);
    cmp(m, equal, &address);
}

fn encode_action(
    m: &mut Messages,
    action: &Action,
    family_check: &mut impl FnMut(&mut Messages, Family),
) {
    match action {
        Action::Verdict(verdict) => immediate_verdict(m, verdict),
        Action::Dispatch { family, map } => {
            let mut used = 0;
            if let Some(family) = family {
                family_check(m, *family);
                let (offset, len) = addr_offset(*family, Field::Destination);
                payload(m, REG_1, PAYLOAD_NETWORK, offset, len);
                used = len;
            }
            let proto_reg = if used == 0 { REG_1 } else { reg_after(used) };
            meta_load(m, META_L4PROTO, proto_reg);
            payload(m, reg_after(used + 4), PAYLOAD_TRANSPORT, 2, 2);
            lookup(m, map, Some(REG_VERDICT));
        }
        Action::Dnat(to) => {
            let family = Family::of(to.ip());
            expr(m, "immediate", |m| {
                m.attr_u32(1, REG_1);
                data_attr(m, 2, &ip_bytes(to.ip()));
            });
            expr(m, "immediate", |m| {
                m.attr_u32(1, REG_2);
                data_attr(m, 2, &to.port().to_be_bytes());
            });
            expr(m, "nat", |m| {
                m.attr_u32(1, 1);
                m.attr_u32(2, u32::from(nfproto(family)));
                m.attr_u32(3, REG_1);
                m.attr_u32(5, REG_2);
                // NF_NAT_RANGE_PROTO_SPECIFIED
                m.attr_u32(7, 0x2);
            });
        }
        Action::DnatPick { map, offset } => {
            let family = &map.family;
            expr(m, "numgen", |m| {
                m.attr_u32(1, REG_1);
                m.attr_u32(2, BUCKETS);
                m.attr_u32(3, 1);
                m.attr_u32(4, *offset);
            });
            // Interval keys compare as bytes: numgen's host-order number to network order.
            expr(m, "byteorder", |m| {
                m.attr_u32(1, REG_1);
                m.attr_u32(2, REG_1);
                m.attr_u32(3, 1);
                m.attr_u32(4, 4);
                m.attr_u32(5, 4);
            });
            lookup(m, &map.name(), Some(REG_1));
            let port_reg = match family {
                Family::V4 => reg_after(4),
                Family::V6 => REG_2,
            };
            expr(m, "nat", |m| {
                m.attr_u32(1, 1);
                m.attr_u32(2, u32::from(nfproto(*family)));
                m.attr_u32(3, REG_1);
                m.attr_u32(4, REG_1);
                m.attr_u32(5, port_reg);
                m.attr_u32(6, port_reg);
                // NF_NAT_RANGE_MAP_IPS | NF_NAT_RANGE_PROTO_SPECIFIED
                m.attr_u32(7, 0x3);
            });
        }
        Action::RememberSource { family, set } => {
            family_check(m, *family);
            let (offset, len) = addr_offset(*family, Field::Source);
            payload(m, REG_1, PAYLOAD_NETWORK, offset, len);
            expr(m, "dynset", |m| {
                m.attr_str(1, set);
                m.attr_u32(3, 1);
                m.attr_u32(4, REG_1);
            });
        }
        Action::MarkSet(mark) | Action::MarkToggle(mark) => {
            let keep = if matches!(action, Action::MarkSet(_)) {
                !mark
            } else {
                u32::MAX
            };
            meta_load(m, META_MARK, REG_1);
            bitwise(m, &keep.to_ne_bytes(), &mark.to_ne_bytes());
            expr(m, "meta", |m| {
                m.attr_u32(2, META_MARK);
                m.attr_u32(3, REG_1);
            });
        }
        Action::Masquerade => expr(m, "masq", |m| {
            // NF_NAT_RANGE_PROTO_RANDOM_FULLY
            m.attr_u32(1, 0x10);
        }),
        Action::Reject => expr(m, "reject", |m| {
            // ICMPx port unreachable: TCP clients see connection refused.
            m.attr_u32(1, 2);
            m.attr(2, &[1]);
        }),
        Action::Notrack => {
            let element = m.nest_begin(1);
            m.attr_str(1, "notrack");
            m.nest_end(element);
        }
    }
}

fn immediate_verdict(m: &mut Messages, verdict: &Verdict) {
    expr(m, "immediate", |m| {
        m.attr_u32(1, REG_VERDICT);
        let data = m.nest_begin(2);
        verdict_data(m, verdict);
        m.nest_end(data);
    });
}

#[cfg(test)]
mod tests;
mod user_data;

use user_data::endpoints_user_data;
