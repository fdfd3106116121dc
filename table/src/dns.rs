//! The compiled DNS table: every name Capstan answers for authoritatively, with its records.
//!
//! Names are stored lowercase, without the trailing dot, as presentation-format text: the lookup
//! key is what the `dns` plane makes of a query name with the same rule. Every ancestor of a name
//! up to its zone is present too (empty non-terminals), so "exists without this type" (NOERROR with
//! no data) and "does not exist" (NXDOMAIN) are one map lookup apart.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// The `dns-version` the cluster zone advertises (Kubernetes DNS-Based Service Discovery).
pub const DNS_SCHEMA_VERSION: &str = "1.1.0";

/// All authoritative DNS data of one snapshot.
#[derive(Debug, Default)]
pub struct DnsTable {
    /// Zones answered authoritatively, longest name first so the first suffix match is the most
    /// specific.
    pub zones: Vec<DnsZone>,
    /// Every existing name (with records, or an empty non-terminal), lowercase, no trailing dot.
    pub names: HashMap<Box<str>, DnsNode>,
    /// PTR data: address → names, for ClusterIPs and endpoint addresses.
    pub reverse: HashMap<IpAddr, Vec<Arc<str>>>,
    /// TTL of every record, and the SOA minimum (negative-caching TTL).
    pub ttl: u32,
    /// SOA serial: changes whenever the table's data does.
    pub serial: u32,
    /// The compile step's fingerprint of what this table was built from: equal inputs let the
    /// next compile reuse the table (and its serial) as it is.
    pub inputs: u64,
}

/// One zone Capstan is authoritative for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnsZone {
    /// Lowercase, no trailing dot, e.g. `cluster.local`.
    pub name: Arc<str>,
    /// Synthesise `a-b-c-d.<namespace>.pod.<zone>` records (CoreDNS's `pods insecure`).
    pub pods: bool,
}

/// The records at one name. All empty: an empty non-terminal.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsNode {
    pub a: Vec<Ipv4Addr>,
    pub aaaa: Vec<Ipv6Addr>,
    pub srv: Vec<SrvData>,
    pub txt: Vec<Arc<str>>,
    /// An alias (ExternalName Service): when set, no other data lives at this name.
    pub cname: Option<Arc<str>>,
}

/// One SRV record's data.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SrvData {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Lowercase, no trailing dot.
    pub target: Arc<str>,
}

// === impl DnsTable ===

impl DnsTable {
    /// An empty table for `zones`, with `ttl` and `serial`; the zone apexes exist.
    pub fn new(mut zones: Vec<DnsZone>, ttl: u32, serial: u32) -> Self {
        zones.sort_by_key(|z| std::cmp::Reverse(z.name.len()));
        let names = zones
            .iter()
            .map(|z| (Box::<str>::from(&*z.name), DnsNode::default()))
            .collect();
        Self {
            zones,
            names,
            reverse: HashMap::new(),
            ttl,
            serial,
            inputs: 0,
        }
    }

    /// The most specific zone `name` (lowercase, no trailing dot) falls in.
    pub fn zone_of(&self, name: &str) -> Option<&DnsZone> {
        self.zones.iter().find(|zone| in_zone(name, &zone.name))
    }

    /// The node at `name`, if the name exists.
    pub fn node(&self, name: &str) -> Option<&DnsNode> {
        self.names.get(name)
    }

    /// The node at `name` for adding records, creating it and every missing ancestor up to its
    /// zone. `None` when `name` is in none of the table's zones.
    pub fn node_mut(&mut self, name: &str) -> Option<&mut DnsNode> {
        let zone = self.zone_of(name)?.name.clone();
        // Every existing name already has all its ancestors: stop at the first one found.
        let mut ancestor = name;
        while ancestor.len() > zone.len() && !self.names.contains_key(ancestor) {
            self.names.insert(ancestor.into(), DnsNode::default());
            match ancestor.split_once('.') {
                Some((_, parent)) => ancestor = parent,
                None => break,
            }
        }
        self.names.get_mut(name)
    }

    /// Records `name` as a PTR target for `addr`.
    pub fn add_reverse(&mut self, addr: IpAddr, name: Arc<str>) {
        let names = self.reverse.entry(addr).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
    }
}

/// Whether `name` is `zone` or below it (both lowercase, no trailing dot).
pub fn in_zone(name: &str, zone: &str) -> bool {
    match name.strip_suffix(zone) {
        Some("") => true,
        Some(rest) => rest.ends_with('.'),
        None => false,
    }
}

// === impl DnsNode ===

impl DnsNode {
    pub fn is_empty_non_terminal(&self) -> bool {
        self == &DnsNode::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> DnsTable {
        DnsTable::new(
            vec![
                DnsZone {
                    name: "cluster.local".into(),
                    pods: true,
                },
                DnsZone {
                    name: "local".into(),
                    pods: false,
                },
            ],
            5,
            1,
        )
    }

    #[test]
    fn zone_matching_is_on_label_boundaries_and_most_specific_first() {
        let table = table();
        assert_eq!(
            table.zone_of("a.cluster.local").map(|z| &*z.name),
            Some("cluster.local")
        );
        assert_eq!(
            table.zone_of("cluster.local").map(|z| &*z.name),
            Some("cluster.local")
        );
        assert_eq!(
            table.zone_of("xcluster.local").map(|z| &*z.name),
            Some("local")
        );
        assert_eq!(table.zone_of("example.com"), None);
        assert_eq!(table.zone_of("notlocal"), None);
    }

    #[test]
    fn adding_a_name_creates_its_empty_non_terminals() {
        let mut table = table();
        let node = table
            .node_mut("_http._tcp.web.default.svc.cluster.local")
            .expect("in zone");
        node.txt.push("x".into());
        for ent in [
            "_tcp.web.default.svc.cluster.local",
            "web.default.svc.cluster.local",
            "default.svc.cluster.local",
            "svc.cluster.local",
            "cluster.local",
        ] {
            assert!(table.node(ent).expect(ent).is_empty_non_terminal(), "{ent}");
        }
        assert!(table.node("other.svc.cluster.local").is_none());
        assert!(table.node_mut("example.com").is_none());
    }
}
