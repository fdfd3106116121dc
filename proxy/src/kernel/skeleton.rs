//! The fixed part of the kernel data path's table: its maps and sets, the base chains on the
//! netfilter hooks, and the chains every Service port jumps into (masquerading, rejecting,
//! dispatching), as kube-proxy's nftables mode lays them out. Pure.

use std::fmt::Write as _;

use capstan_table::Protocol;

use super::rules::{
    DNS_PORT, Family, KernelSettings, MASQUERADE_MARK, MapKind, MapRef, REJECT_CHAIN, SetKind,
    TABLE, jump, source_in, unless_pod_chain,
};
use super::stmt::{Action, Field, Match, Net, Rule, Verdict};

/// A base chain: where it hangs in the kernel's hooks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    /// `filter` or `nat`.
    pub kind: &'static str,
    /// `prerouting`, `input`, `forward`, `output` or `postrouting`.
    pub hook: &'static str,
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// The table without any Service: its maps, sets, base chains and fixed chains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skeleton {
    pub sets: Vec<(String, SetKind)>,
    pub base_chains: Vec<BaseChain>,
    pub chains: Vec<(String, Vec<Rule>)>,
}

// === impl Skeleton ===

impl Skeleton {
    /// The whole skeleton as one nft block (the first statement of a full sync).
    pub fn render(&self) -> String {
        let mut out = format!("table inet {TABLE} {{\n");
        for (name, kind) in &self.sets {
            let _ = writeln!(out, "  {} {name} {{ {kind} }}", kind.keyword());
        }
        for chain in &self.base_chains {
            let _ = writeln!(
                out,
                "  chain {} {{\n    type {} hook {} priority {}; policy accept;",
                chain.name, chain.kind, chain.hook, chain.priority
            );
            for rule in &chain.rules {
                let _ = writeln!(out, "    {rule}");
            }
            let _ = writeln!(out, "  }}");
        }
        for (name, rules) in &self.chains {
            let _ = writeln!(out, "  chain {name} {{");
            for rule in rules {
                let _ = writeln!(out, "    {rule}");
            }
            let _ = writeln!(out, "  }}");
        }
        out.push_str("}\n");
        out
    }
}

/// The table with its base chains, maps and fixed chains, and no Service in it.
pub fn skeleton(settings: &KernelSettings) -> Skeleton {
    let mut sets = Vec::new();
    for family in Family::ALL {
        for kind in MapKind::ALL {
            let map = MapRef { kind, family };
            sets.push((map.name(), SetKind::Map(map)));
        }
        let s = family.suffix();
        sets.push((format!("hairpin{s}"), SetKind::AddressPairs(family)));
        sets.push((format!("cluster-dns{s}"), SetKind::Addresses(family)));
    }
    // Cluster DNS is delivered to the node's own DNS server untracked, before conntrack
    // (priority raw = -300), as NodeLocal DNSCache does: no DNAT, no conntrack entry to race on.
    let (mut raw_prerouting, mut raw_output) = (Vec::new(), Vec::new());
    for family in Family::ALL {
        let set = format!("cluster-dns{}", family.suffix());
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let dns = |field: Field| {
                Rule::new(
                    vec![
                        Match::AddrInSet {
                            family,
                            field,
                            set: set.clone(),
                        },
                        Match::L4Proto(protocol),
                        Match::Port {
                            field,
                            port: DNS_PORT,
                        },
                    ],
                    Action::Notrack,
                )
            };
            raw_prerouting.push(dns(Field::Destination));
            raw_output.push(dns(Field::Destination));
            raw_output.push(dns(Field::Source));
        }
    }
    let new_jump = |chain: &str| Rule::verdict(vec![Match::CtNew], Verdict::Jump(chain.into()));
    // Filters run on the destination before DNAT (priority dstnat - 10 = -110); reject is only
    // allowed in input, forward and output, so the endpoint check hangs off those.
    let base = |name, kind, hook, priority, rules| BaseChain {
        name,
        kind,
        hook,
        priority,
        rules,
    };
    let base_chains = vec![
        base(
            "raw-prerouting",
            "filter",
            "prerouting",
            -300,
            raw_prerouting,
        ),
        base("raw-output", "filter", "output", -300, raw_output),
        base(
            "filter-prerouting",
            "filter",
            "prerouting",
            -110,
            vec![new_jump("firewall-check")],
        ),
        base(
            "filter-input",
            "filter",
            "input",
            -110,
            vec![new_jump("endpoints-check")],
        ),
        base(
            "filter-forward",
            "filter",
            "forward",
            -110,
            vec![new_jump("endpoints-check")],
        ),
        base(
            "filter-output",
            "filter",
            "output",
            -110,
            vec![new_jump("endpoints-check"), new_jump("firewall-check")],
        ),
        base(
            "nat-prerouting",
            "nat",
            "prerouting",
            -100,
            vec![Rule::always(jump("services"))],
        ),
        base(
            "nat-output",
            "nat",
            "output",
            -100,
            vec![Rule::always(jump("services"))],
        ),
        base(
            "nat-postrouting",
            "nat",
            "postrouting",
            100,
            vec![Rule::always(jump("masquerading"))],
        ),
    ];
    let mut chains: Vec<(String, Vec<Rule>)> = vec![
        (
            "mark-for-masquerade".to_owned(),
            vec![Rule::always(Action::MarkSet(MASQUERADE_MARK))],
        ),
        (REJECT_CHAIN.to_owned(), vec![Rule::always(Action::Reject)]),
    ];
    let mut masquerading = Vec::new();
    let mut endpoints_check = Vec::new();
    let mut firewall_check = Vec::new();
    let mut services = Vec::new();
    for family in Family::ALL {
        let s = family.suffix();
        let dispatch = |map: &str| {
            Rule::always(Action::Dispatch {
                family: Some(family),
                map: format!("{map}{s}"),
            })
        };
        let node_ports = |map: &str| {
            Rule::new(
                vec![Match::FibLocal(Field::Destination), family.not_loopback()],
                Action::Dispatch {
                    family: None,
                    map: format!("{map}{s}"),
                },
            )
        };
        masquerading.push(Rule::verdict(
            vec![
                Match::CtDnat,
                Match::AddrPairInSet {
                    family,
                    set: format!("hairpin{s}"),
                },
            ],
            Verdict::Jump("mark-for-masquerade".into()),
        ));
        endpoints_check.push(dispatch("no-endpoint-services"));
        endpoints_check.push(node_ports("no-endpoint-nodeports"));
        firewall_check.push(dispatch("firewall-ips"));
        services.push(dispatch("service-ips"));
        services.push(node_ports("service-nodeports"));
        let pods: Vec<Net> = settings
            .pod_cidrs
            .iter()
            .filter(|p| Family::of(p.address) == family)
            .map(|p| Net::new(p.address, p.len))
            .collect();
        if !pods.is_empty() {
            let mut unless_pod: Vec<Rule> = pods
                .into_iter()
                .map(|net| Rule::verdict(vec![source_in(net)], Verdict::Return))
                .collect();
            unless_pod.push(Rule::always(jump("mark-for-masquerade")));
            chains.push((unless_pod_chain(family), unless_pod));
        }
    }
    masquerading.extend([
        Rule::verdict(vec![Match::MarkClear(MASQUERADE_MARK)], Verdict::Return),
        Rule::always(Action::MarkToggle(MASQUERADE_MARK)),
        Rule::always(Action::Masquerade),
    ]);
    chains.extend([
        ("masquerading".to_owned(), masquerading),
        ("endpoints-check".to_owned(), endpoints_check),
        ("firewall-check".to_owned(), firewall_check),
        ("services".to_owned(), services),
    ]);
    Skeleton {
        sets,
        base_chains,
        chains,
    }
}

/// The script removing every rule of the table and every element of `sets`, leaving the
/// (empty) chains and sets in place.
pub fn emptying(sets: &[(String, SetKind)]) -> String {
    let mut out = format!("flush table inet {TABLE}\n");
    for (name, kind) in sets {
        let _ = writeln!(out, "flush {} inet {TABLE} {name}", kind.keyword());
    }
    out
}
