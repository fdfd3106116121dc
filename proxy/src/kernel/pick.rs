//! How the kernel path picks an endpoint without rewriting rules when endpoints change.
//!
//! Every balancing chain without session affinity owns a *slot*: [`BUCKETS`] consecutive keys
//! of an `endpoints-tcp4-N` interval map (one per family, protocol and [`SLOTS_PER_MAP`]
//! slots), starting at `slot * BUCKETS`. Its one rule is `dnat ip to numgen random mod 65536
//! offset START map @endpoints-tcp4-0`, and the map gives each endpoint an equal range of the
//! slot's keys (`START+0-32767 : 10.0.0.1 . 8080, …`).
//!
//! Why: nf_tables validates the whole jump graph of a table (every chain reachable from a
//! base chain, through every verdict map) whenever a transaction adds a rule with a NAT or
//! verdict expression, or a verdict-map element that jumps; at ten thousand Services that
//! walk was ~70 ms of every endpoint change. Elements of a data map (address . port) are not
//! validated: an endpoint added, removed or replaced is a handful of map elements and the
//! commit costs well under a millisecond. The rule only changes when the chain itself does.
//!
//! kube-proxy's nftables mode (pkg/proxy/nftables/proxier.go) uses an anonymous
//! `numgen random mod N vmap { … }` per Service, rewritten with its rule on every endpoint
//! change; the choice is the same uniform one (ranges differ by at most one key in 65,536).

use std::collections::HashMap;

use capstan_table::Protocol;

use super::rules::{Family, SetKind};
use super::stmt::protocol_name;

/// Keys per slot: the `numgen random mod` of every pick rule.
pub const BUCKETS: u32 = 1 << 16;

/// Slots per endpoint map. Adding an element with data costs the kernel a check against
/// every rule bound to the map, and every commit of an interval map rebuilds its lookup
/// array: both grow with the map, so maps stay small and are created as slots need them.
pub const SLOTS_PER_MAP: u32 = 128;

/// One endpoint map: `endpoints-tcp4-0` holds the keys of slots 0 to 127 of TCP over IPv4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EndpointMap {
    pub family: Family,
    pub protocol: Protocol,
    pub block: u32,
}

impl EndpointMap {
    /// The map holding `key`.
    pub fn of(family: Family, protocol: Protocol, key: u32) -> Self {
        Self {
            family,
            protocol,
            block: key / BUCKETS / SLOTS_PER_MAP,
        }
    }

    pub fn name(self) -> String {
        format!(
            "endpoints-{}{}-{}",
            protocol_name(self.protocol),
            self.family.suffix(),
            self.block
        )
    }

    pub fn kind(self) -> SetKind {
        SetKind::Endpoints(self.family, self.protocol)
    }
}

/// Slots available: the last one would end at 2^32, one past the key space.
const SLOT_COUNT: u32 = u32::MAX / BUCKETS;

/// The slot of every balancing chain, kept across syncs so a chain's rule never changes while
/// the chain lives. A slot is released when its chain is deleted from the kernel.
#[derive(Debug, Default)]
pub struct Slots {
    by_chain: HashMap<String, u32>,
    released: Vec<u32>,
    next: u32,
}

impl Slots {
    /// The slot of `chain`, assigned on first use; `None` once every slot is taken (the chain
    /// then picks with a rule cascade, as before slots).
    pub fn of(&mut self, chain: &str) -> Option<u32> {
        if let Some(&slot) = self.by_chain.get(chain) {
            return Some(slot);
        }
        let slot = match self.released.pop() {
            Some(slot) => slot,
            None if self.next < SLOT_COUNT => {
                self.next += 1;
                self.next - 1
            }
            None => return None,
        };
        self.by_chain.insert(chain.to_owned(), slot);
        Some(slot)
    }

    /// `chain` was deleted from the kernel: its slot may serve another chain.
    pub fn release(&mut self, chain: &str) {
        if let Some(slot) = self.by_chain.remove(chain) {
            self.released.push(slot);
        }
    }

    /// Every slot free again (the table is being rebuilt whole).
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    #[cfg(test)]
    pub(super) fn with_next(next: u32) -> Self {
        Self {
            next,
            ..Self::default()
        }
    }

    /// Slots with none left (chains pick by rule cascade).
    #[cfg(test)]
    pub(super) fn exhausted() -> Self {
        Self::with_next(SLOT_COUNT)
    }
}

/// The key range (inclusive) of each of `count` endpoints within a slot starting at
/// `offset`: equal shares of [`BUCKETS`], differing by at most one key. At most [`BUCKETS`]
/// endpoints get a range.
pub fn ranges(offset: u32, count: usize) -> impl Iterator<Item = (u32, u32)> {
    let count = count.min(BUCKETS as usize) as u64;
    let bound = move |k: u64| (k * u64::from(BUCKETS) / count.max(1)) as u32;
    (0..count).map(move |k| (offset + bound(k), offset + bound(k + 1) - 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_the_slot_exactly_with_shares_differing_by_at_most_one_key() {
        for count in [1usize, 2, 3, 7, 10, 1000, 65_535, 65_536, 70_000] {
            let offset = 5 * BUCKETS;
            let ranges: Vec<(u32, u32)> = ranges(offset, count).collect();
            assert_eq!(ranges.len(), count.min(BUCKETS as usize));
            assert_eq!(ranges[0].0, offset);
            assert_eq!(ranges.last().expect("one").1, offset + BUCKETS - 1);
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].1 + 1, pair[1].0, "{count}: adjacent");
            }
            let sizes: Vec<u32> = ranges.iter().map(|(a, b)| b - a + 1).collect();
            let (min, max) = (sizes.iter().min(), sizes.iter().max());
            assert!(
                max.zip(min).is_some_and(|(max, min)| max - min <= 1),
                "{count}"
            );
        }
    }

    #[test]
    fn a_chain_keeps_its_slot_and_released_slots_are_reused_before_new_ones() {
        let mut slots = Slots::default();
        assert_eq!(slots.of("a"), Some(0));
        assert_eq!(slots.of("b"), Some(1));
        assert_eq!(slots.of("a"), Some(0));
        slots.release("a");
        assert_eq!(slots.of("c"), Some(0));
        assert_eq!(slots.of("d"), Some(2));
        // The last slot's end element (its last key + 1) still fits in 32 bits; then none.
        let mut full = Slots::with_next(SLOT_COUNT - 1);
        let last = full.of("x").expect("last slot");
        assert!(u64::from(last) * u64::from(BUCKETS) + u64::from(BUCKETS) <= u64::from(u32::MAX));
        assert_eq!(full.of("y"), None);
    }
}
