//! The key blocks of the `endpoints` maps ([`super::rules::ChoiceKeys`]): each chain choosing
//! among several endpoints owns `len` consecutive keys, kept while its endpoint count stays
//! the same (so a changed endpoint is an element update, not a rule change). Freed blocks are
//! reused by chains of the same length; the rest come from a counter that a full sync resets.

use std::collections::{HashMap, HashSet};

use super::rules::ChoiceKeys;

#[derive(Debug, Default)]
pub(super) struct KeyBlocks {
    /// Chain → (first key, length).
    by_chain: HashMap<String, (u32, u32)>,
    /// Free blocks by length.
    free: HashMap<u32, Vec<u32>>,
    next: u32,
    /// Chains that asked for a block since [`KeyBlocks::begin`].
    asked: HashSet<String>,
}

impl ChoiceKeys for KeyBlocks {
    fn block(&mut self, chain: &str, len: u32) -> u32 {
        self.asked.insert(chain.to_owned());
        match self.by_chain.get(chain) {
            Some(&(first, held)) if held == len => return first,
            Some(&(first, held)) => self.free.entry(held).or_default().push(first),
            None => {}
        }
        let first = match self.free.get_mut(&len).and_then(Vec::pop) {
            Some(first) => first,
            None => {
                let first = self.next;
                self.next = self.next.saturating_add(len);
                first
            }
        };
        self.by_chain.insert(chain.to_owned(), (first, len));
        first
    }
}

impl KeyBlocks {
    /// Before rendering one port again.
    pub(super) fn begin(&mut self) {
        self.asked.clear();
    }

    /// After rendering it: frees the blocks of its previous `chains` that no longer asked
    /// (removed chains, or chains down to one endpoint).
    pub(super) fn release_unasked<'a>(&mut self, chains: impl IntoIterator<Item = &'a String>) {
        for chain in chains {
            if !self.asked.contains(chain) {
                self.release(chain);
            }
        }
    }

    /// Frees `chain`'s block, if it has one.
    pub(super) fn release(&mut self, chain: &str) {
        if let Some((first, len)) = self.by_chain.remove(chain) {
            self.free.entry(len).or_default().push(first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_kept_while_the_length_stays_and_reused_once_freed() {
        let mut keys = KeyBlocks::default();
        assert_eq!(keys.block("a", 3), 0);
        assert_eq!(keys.block("b", 2), 3);
        assert_eq!(keys.block("a", 3), 0, "same length, same block");
        assert_eq!(keys.block("a", 4), 5, "a new length moves the chain");
        assert_eq!(keys.block("c", 3), 0, "the freed block of three is reused");
        keys.begin();
        keys.release_unasked([&"b".to_owned()]);
        assert_eq!(keys.block("d", 2), 3);
    }
}
