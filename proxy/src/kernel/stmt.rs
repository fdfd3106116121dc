//! The nftables vocabulary of the kernel data path as data: every rule Capstan writes is a few
//! matches and one action from this file. Each renders as the nft text `nft list` prints
//! (for the `nft` programmer, tests and debugging) and encodes as the netlink expressions nft
//! itself would send ([`super::encode`]), so both programmers write the same table.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use capstan_table::Protocol;

use super::rules::Family;

/// Which address or port of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Field {
    Source,
    Destination,
}

/// An address prefix; the host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Net {
    pub ip: IpAddr,
    pub len: u8,
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Match {
    /// `ip saddr 10.0.0.0/8`, `ip6 daddr != ::1`.
    Addr {
        field: Field,
        net: Net,
        negate: bool,
    },
    /// `ip saddr @set`.
    AddrInSet {
        family: Family,
        field: Field,
        set: String,
    },
    /// `ip saddr . ip daddr @set`.
    AddrPairInSet { family: Family, set: String },
    /// `meta l4proto tcp`.
    L4Proto(Protocol),
    /// `th dport 53`.
    Port { field: Field, port: u16 },
    /// `numgen random mod N == 0`.
    OneIn(u32),
    /// `fib saddr type local`.
    FibLocal(Field),
    /// `ct state new`.
    CtNew,
    /// `ct status dnat`.
    CtDnat,
    /// `meta mark & MARK == 0`.
    MarkClear(u32),
}

/// Where a rule sends a packet.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    Drop,
    Return,
    Jump(String),
    Goto(String),
}

/// What a rule does once its matches hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Verdict(Verdict),
    /// `ip daddr . meta l4proto . th dport vmap @map` (with an address family) or
    /// `meta l4proto . th dport vmap @map` (without).
    Dispatch {
        family: Option<Family>,
        map: String,
    },
    /// `dnat ip to 10.0.0.1:80`.
    Dnat(SocketAddr),
    /// `dnat ip to numgen random mod 65536 offset OFFSET map @endpoints4`: a uniform choice
    /// among the endpoints of one slot of the endpoint map ([`super::pick`]).
    DnatPick {
        map: super::pick::EndpointMap,
        offset: u32,
    },
    /// `update @set { ip saddr }`.
    RememberSource {
        family: Family,
        set: String,
    },
    /// `meta mark set meta mark | MARK`.
    MarkSet(u32),
    /// `meta mark set meta mark ^ MARK`.
    MarkToggle(u32),
    /// `masquerade fully-random`.
    Masquerade,
    /// `reject` (ICMP port unreachable; TCP clients see connection refused).
    Reject,
    /// `notrack`.
    Notrack,
}

/// One rule: all matches, then the action.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub action: Action,
}

// === impl Net ===

impl Net {
    /// The prefix of `ip` with `len` bits, host bits cleared.
    pub fn new(ip: IpAddr, len: u8) -> Self {
        let ip = match ip {
            IpAddr::V4(v4) => {
                let len = len.min(32);
                let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
                IpAddr::V4((u32::from(v4) & mask).into())
            }
            IpAddr::V6(v6) => {
                let len = len.min(128);
                let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                IpAddr::V6((u128::from(v6) & mask).into())
            }
        };
        Self { ip, len }
    }

    /// One address.
    pub fn host(ip: IpAddr) -> Self {
        Self::new(ip, Family::of(ip).bits())
    }

    pub fn family(self) -> Family {
        Family::of(self.ip)
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.len == self.family().bits() {
            write!(f, "{}", self.ip)
        } else {
            write!(f, "{}/{}", self.ip, self.len)
        }
    }
}

// === impl Rule ===

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Self {
        Self { matches, action }
    }

    /// A rule of one action and no match.
    pub fn always(action: Action) -> Self {
        Self::new(Vec::new(), action)
    }

    pub fn verdict(matches: Vec<Match>, verdict: Verdict) -> Self {
        Self::new(matches, Action::Verdict(verdict))
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for item in &self.matches {
            write!(f, "{item} ")?;
        }
        write!(f, "{}", self.action)
    }
}

/// `saddr` / `daddr`, `sport` / `dport`.
fn field_name(field: Field, what: &str) -> String {
    match field {
        Field::Source => format!("s{what}"),
        Field::Destination => format!("d{what}"),
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Addr { field, net, negate } => {
                let ip = net.family().selector();
                let op = if *negate { "!= " } else { "" };
                write!(f, "{ip} {} {op}{net}", field_name(*field, "addr"))
            }
            Match::AddrInSet { family, field, set } => {
                let ip = family.selector();
                write!(f, "{ip} {} @{set}", field_name(*field, "addr"))
            }
            Match::AddrPairInSet { family, set } => {
                let ip = family.selector();
                write!(f, "{ip} saddr . {ip} daddr @{set}")
            }
            Match::L4Proto(protocol) => write!(f, "meta l4proto {}", protocol_name(*protocol)),
            Match::Port { field, port } => write!(f, "th {} {port}", field_name(*field, "port")),
            Match::OneIn(n) => write!(f, "numgen random mod {n} == 0"),
            Match::FibLocal(field) => write!(f, "fib {} type local", field_name(*field, "addr")),
            Match::CtNew => write!(f, "ct state new"),
            Match::CtDnat => write!(f, "ct status dnat"),
            Match::MarkClear(mark) => write!(f, "meta mark & {mark:#x} == 0"),
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Drop => write!(f, "drop"),
            Verdict::Return => write!(f, "return"),
            Verdict::Jump(chain) => write!(f, "jump {chain}"),
            Verdict::Goto(chain) => write!(f, "goto {chain}"),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Verdict(verdict) => write!(f, "{verdict}"),
            Action::Dispatch {
                family: Some(family),
                map,
            } => {
                let ip = family.selector();
                write!(f, "{ip} daddr . meta l4proto . th dport vmap @{map}")
            }
            Action::Dispatch { family: None, map } => {
                write!(f, "meta l4proto . th dport vmap @{map}")
            }
            Action::Dnat(to) => write!(f, "dnat {} to {to}", Family::of(to.ip()).selector()),
            Action::DnatPick { map, offset } => write!(
                f,
                "dnat {} to numgen random mod {} offset {offset} map @{}",
                map.family.selector(),
                super::pick::BUCKETS,
                map.name()
            ),
            Action::RememberSource { family, set } => {
                write!(f, "update @{set} {{ {} saddr }}", family.selector())
            }
            Action::MarkSet(mark) => write!(f, "meta mark set meta mark | {mark:#x}"),
            Action::MarkToggle(mark) => write!(f, "meta mark set meta mark ^ {mark:#x}"),
            Action::Masquerade => write!(f, "masquerade fully-random"),
            Action::Reject => write!(f, "reject"),
            Action::Notrack => write!(f, "notrack"),
        }
    }
}

pub fn protocol_name(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// The IP protocol number.
pub fn protocol_number(protocol: Protocol) -> u8 {
    match protocol {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_render_as_nft_lists_them() {
        let rule = Rule::new(
            vec![Match::OneIn(3), Match::L4Proto(Protocol::Tcp)],
            Action::Dnat("10.244.1.5:8080".parse().unwrap()),
        );
        assert_eq!(
            rule.to_string(),
            "numgen random mod 3 == 0 meta l4proto tcp dnat ip to 10.244.1.5:8080"
        );
        let rule = Rule::new(
            vec![
                Match::FibLocal(Field::Destination),
                Match::Addr {
                    field: Field::Destination,
                    net: Net::host("::1".parse().unwrap()),
                    negate: true,
                },
            ],
            Action::Dispatch {
                family: None,
                map: "service-nodeports6".into(),
            },
        );
        assert_eq!(
            rule.to_string(),
            "fib daddr type local ip6 daddr != ::1 meta l4proto . th dport vmap @service-nodeports6"
        );
        assert_eq!(
            Net::new("10.244.7.9".parse().unwrap(), 16).to_string(),
            "10.244.0.0/16"
        );
        assert_eq!(
            Rule::always(Action::MarkSet(0x4000)).to_string(),
            "meta mark set meta mark | 0x4000"
        );
    }
}
