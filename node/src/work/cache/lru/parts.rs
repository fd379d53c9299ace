//! Each scope's part of the content cache's index: its bytes, its entries and its own
//! recency order, with the scopes ordered by size, so that eviction can find the largest
//! scope and its least recently used entry in logarithmic time.
//!
//! Pure bookkeeping for [`super::Lru`], which decides when to use it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Key;

/// One scope's share.
#[derive(Debug, Default)]
struct Part {
    /// What its entries count against the cache's byte bound.
    bytes: u64,
    entries: usize,
    /// Its unpinned entries by recency: `used` -> key.
    order: BTreeMap<u64, Key>,
}

/// Every scope holding entries.
#[derive(Debug, Default)]
pub(super) struct Parts {
    parts: HashMap<[u8; 32], Part>,
    by_bytes: BTreeSet<(u64, [u8; 32])>,
    by_entries: BTreeSet<(usize, [u8; 32])>,
}

impl Parts {
    /// Applies `change` to `scope`'s part, keeping the size orders.
    fn update(&mut self, scope: [u8; 32], change: impl FnOnce(&mut Part)) {
        let part = self.parts.entry(scope).or_default();
        self.by_bytes.remove(&(part.bytes, scope));
        self.by_entries.remove(&(part.entries, scope));
        change(part);
        if part.entries == 0 {
            self.parts.remove(&scope);
            return;
        }
        self.by_bytes.insert((part.bytes, scope));
        self.by_entries.insert((part.entries, scope));
    }

    /// `key` was indexed, counting `charge` bytes.
    pub(super) fn added(&mut self, key: &Key, charge: u64) {
        self.update(key.scope, |part| {
            part.bytes += charge;
            part.entries += 1;
        });
    }

    /// `key` was forgotten (and is out of the recency order).
    pub(super) fn removed(&mut self, key: &Key, charge: u64) {
        self.update(key.scope, |part| {
            part.bytes = part.bytes.saturating_sub(charge);
            part.entries = part.entries.saturating_sub(1);
        });
    }

    /// `key`, last used at `used`, can be evicted.
    pub(super) fn enlist(&mut self, used: u64, key: Key) {
        if let Some(part) = self.parts.get_mut(&key.scope) {
            part.order.insert(used, key);
        }
    }

    /// `key`, last used at `used`, can no longer be evicted (pinned or forgotten).
    pub(super) fn delist(&mut self, used: u64, key: &Key) {
        if let Some(part) = self.parts.get_mut(&key.scope) {
            part.order.remove(&used);
        }
    }

    /// The least recently used unpinned entry of the largest scope, if that scope holds
    /// more than `bytes` or the scope with most entries more than `entries`.
    pub(super) fn oldest_over(&self, bytes: u64, entries: usize) -> Option<Key> {
        let largest = self.by_bytes.last().filter(|(held, _)| *held > bytes);
        let most = self.by_entries.last().filter(|(held, _)| *held > entries);
        let scopes = largest.map(|(_, s)| s).into_iter();
        scopes
            .chain(most.map(|(_, s)| s))
            .find_map(|scope| self.parts.get(scope)?.order.values().next().copied())
    }
}
