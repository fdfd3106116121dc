//! The pure incremental step of the kernel data path: the nft commands that turn one Service
//! port's applied rules into its wanted ones, gathered over every changed port into one
//! transaction in an order the kernel accepts (sets and chains before the rules and map
//! elements that name them; chains emptied before the sets they used are deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use super::pick::EndpointMap;
use super::rules::{Family, KernelSettings, MapKey, MapRef, PortRules, SetKind, TABLE};
use super::skeleton::skeleton;
use super::stmt::{Rule, Verdict};

/// Everything one sync changes, in commands grouped by the order they must run in.
#[derive(Debug, Default)]
pub struct Changes {
    pub(super) add_sets: Vec<(String, SetKind)>,
    /// Chains to (re)write: created if missing, emptied, then given these rules.
    pub(super) fill_chains: Vec<(String, Vec<Rule>)>,
    pub(super) delete_elements: BTreeMap<MapRef, Vec<MapKey>>,
    pub(super) add_elements: BTreeMap<MapRef, Vec<(MapKey, Verdict)>>,
    /// Endpoint-map ranges (first, last key) to delete, then to add with their endpoint.
    pub(super) delete_ranges: BTreeMap<EndpointMap, Vec<(u32, u32)>>,
    pub(super) add_ranges: BTreeMap<EndpointMap, Vec<(u32, u32, SocketAddr)>>,
    pub(super) hairpin_add: BTreeSet<IpAddr>,
    pub(super) hairpin_delete: BTreeSet<IpAddr>,
    pub(super) local_dns_add: BTreeSet<IpAddr>,
    pub(super) local_dns_delete: BTreeSet<IpAddr>,
    /// Chains no longer used: emptied now, deleted by a later transaction.
    pub stale_chains: Vec<String>,
    pub(super) delete_sets: Vec<(String, SetKind)>,
    /// A full sync: the table is created afresh, so nothing needs emptying first.
    pub(super) fresh: bool,
}

/// Elements added to or deleted from one address set.
#[derive(Debug)]
pub(super) struct AddressSetChange {
    pub(super) add: bool,
    /// `hairpin4`, `cluster-dns6`, …
    pub(super) set: String,
    /// Keys are `ip . ip` pairs (hairpin), not single addresses.
    pub(super) pairs: bool,
    pub(super) ips: Vec<IpAddr>,
}

impl Changes {
    /// Changes applied on top of [`super::rules::skeleton`] in the same transaction.
    pub fn fresh() -> Self {
        Self {
            fresh: true,
            ..Self::default()
        }
    }

    /// Adds what turns `old` into `new` (either may be empty: a port added or removed).
    pub fn port(&mut self, old: &PortRules, new: &PortRules) {
        for (name, kind) in &new.sets {
            if !old.sets.contains_key(name) {
                self.add_sets.push((name.clone(), *kind));
            }
        }
        for (name, chain) in &new.chains {
            if old.chains.get(name) != Some(chain) {
                self.fill_chains.push((name.clone(), chain.clone()));
            }
        }
        for (key, verdict) in &old.elements {
            if new.elements.get(key) != Some(verdict) {
                let (map, element) = key;
                self.delete_elements.entry(*map).or_default().push(*element);
            }
        }
        for (key, verdict) in &new.elements {
            if old.elements.get(key) != Some(verdict) {
                let (map, element) = key;
                self.add_elements
                    .entry(*map)
                    .or_default()
                    .push((*element, verdict.clone()));
            }
        }
        for (&(map, first), value) in &old.endpoint_ranges {
            if new.endpoint_ranges.get(&(map, first)) != Some(value) {
                let ranges = self.delete_ranges.entry(map).or_default();
                ranges.push((first, value.0));
            }
        }
        for (&(map, first), &(last, to)) in &new.endpoint_ranges {
            if old.endpoint_ranges.get(&(map, first)) != Some(&(last, to)) {
                self.add_ranges
                    .entry(map)
                    .or_default()
                    .push((first, last, to));
            }
        }
        for name in old.chains.keys() {
            if !new.chains.contains_key(name) {
                self.stale_chains.push(name.clone());
            }
        }
        for (name, kind) in &old.sets {
            if !new.sets.contains_key(name) {
                self.delete_sets.push((name.clone(), *kind));
            }
        }
    }

    /// Creates the endpoint maps ranges are added to that are not in `existing` yet (and
    /// records them there): endpoint maps appear as slots need them.
    pub fn create_endpoint_maps(&mut self, existing: &mut BTreeSet<EndpointMap>) {
        for map in self.add_ranges.keys() {
            if existing.insert(*map) {
                self.add_sets.push((map.name(), map.kind()));
            }
        }
    }

    /// Hairpin pairs to add and remove (reference-counted over ports by the caller).
    pub fn hairpin(&mut self, added: BTreeSet<IpAddr>, removed: BTreeSet<IpAddr>) {
        self.hairpin_add = added;
        self.hairpin_delete = removed;
    }

    /// Cluster DNS addresses to add and remove (reference-counted over ports by the caller).
    pub fn local_dns(&mut self, added: BTreeSet<IpAddr>, removed: BTreeSet<IpAddr>) {
        self.local_dns_add = added;
        self.local_dns_delete = removed;
    }

    /// The chains this transaction writes rules into.
    pub fn filled_chains(&self) -> BTreeSet<&str> {
        self.fill_chains
            .iter()
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// The hairpin (`ip . ip` pairs) and cluster DNS (addresses) element changes, per set of
    /// each family, in the order they are applied: adds before deletes, hairpin first.
    pub(super) fn address_sets(&self) -> Vec<AddressSetChange> {
        let changes = [
            (true, "hairpin", true, &self.hairpin_add),
            (false, "hairpin", true, &self.hairpin_delete),
            (true, "cluster-dns", false, &self.local_dns_add),
            (false, "cluster-dns", false, &self.local_dns_delete),
        ];
        let mut out = Vec::new();
        for (add, set, pairs, ips) in changes {
            for family in Family::ALL {
                let ips: Vec<IpAddr> = ips
                    .iter()
                    .copied()
                    .filter(|ip| Family::of(*ip) == family)
                    .collect();
                if !ips.is_empty() {
                    let set = format!("{set}{}", family.suffix());
                    out.push(AddressSetChange {
                        add,
                        set,
                        pairs,
                        ips,
                    });
                }
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.add_sets.is_empty()
            && self.fill_chains.is_empty()
            && self.delete_elements.is_empty()
            && self.add_elements.is_empty()
            && self.delete_ranges.is_empty()
            && self.add_ranges.is_empty()
            && self.hairpin_add.is_empty()
            && self.hairpin_delete.is_empty()
            && self.local_dns_add.is_empty()
            && self.local_dns_delete.is_empty()
            && self.stale_chains.is_empty()
            && self.delete_sets.is_empty()
    }

    /// The whole `nft -f` script of this transaction: for a full sync, the table replaced and
    /// its skeleton first.
    pub fn script(&self, settings: &KernelSettings) -> String {
        let mut script = String::new();
        if self.fresh {
            let _ = writeln!(script, "add table inet {TABLE}\ndelete table inet {TABLE}");
            script.push_str(&skeleton(settings).render());
        }
        self.render(&mut script);
        script
    }

    /// The nft commands, appended to `out`.
    pub fn render(&self, out: &mut String) {
        let table = format!("inet {TABLE}");
        for (name, kind) in &self.add_sets {
            let _ = writeln!(out, "add {} {table} {name} {{ {kind} }}", kind.keyword());
        }
        if self.fresh {
            // One block: nft resolves each `add rule` line against its cache, which at ten
            // thousand chains costs far more than parsing the same rules in place.
            let _ = writeln!(out, "table {table} {{");
            for (name, rules) in &self.fill_chains {
                let _ = writeln!(out, "  chain {name} {{");
                for rule in rules {
                    let _ = writeln!(out, "    {rule}");
                }
                let _ = writeln!(out, "  }}");
            }
            let _ = writeln!(out, "}}");
        } else {
            for (name, _) in &self.fill_chains {
                let _ = writeln!(out, "add chain {table} {name}");
                let _ = writeln!(out, "flush chain {table} {name}");
            }
            for (name, rules) in &self.fill_chains {
                for rule in rules {
                    let _ = writeln!(out, "add rule {table} {name} {rule}");
                }
            }
        }
        for (map, keys) in &self.delete_elements {
            let keys: Vec<String> = keys.iter().map(ToString::to_string).collect();
            let _ = writeln!(
                out,
                "delete element {table} {} {{ {} }}",
                map.name(),
                keys.join(", ")
            );
        }
        for (map, elements) in &self.add_elements {
            let elements: Vec<String> = elements
                .iter()
                .map(|(key, verdict)| format!("{key} : {verdict}"))
                .collect();
            let _ = writeln!(
                out,
                "add element {table} {} {{ {} }}",
                map.name(),
                elements.join(", ")
            );
        }
        for (map, ranges) in &self.delete_ranges {
            let keys: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
            let map = map.name();
            let _ = writeln!(
                out,
                "delete element {table} {map} {{ {} }}",
                keys.join(", ")
            );
        }
        for (map, ranges) in &self.add_ranges {
            let elements: Vec<String> = ranges
                .iter()
                .map(|(a, b, to)| format!("{a}-{b} : {} . {}", to.ip(), to.port()))
                .collect();
            let map = map.name();
            let _ = writeln!(
                out,
                "add element {table} {map} {{ {} }}",
                elements.join(", ")
            );
        }
        for change in self.address_sets() {
            let verb = if change.add { "add" } else { "delete" };
            let keys: Vec<String> = change
                .ips
                .iter()
                .map(|ip| match change.pairs {
                    true => format!("{ip} . {ip}"),
                    false => ip.to_string(),
                })
                .collect();
            let _ = writeln!(
                out,
                "{verb} element {table} {} {{ {} }}",
                change.set,
                keys.join(", ")
            );
        }
        for name in &self.stale_chains {
            let _ = writeln!(out, "flush chain {table} {name}");
        }
        for (name, kind) in &self.delete_sets {
            let _ = writeln!(out, "delete {} {table} {name}", kind.keyword());
        }
    }
}
