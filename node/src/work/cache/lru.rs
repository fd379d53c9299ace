//! The content cache's index: which contents each scope holds, their sizes, how recently
//! each was used, and which are pinned by a submission being assembled. Decides what to
//! evict to stay under the bounds; pinned entries are never evicted.
//!
//! Per-scope quota: a scope may hold more than its share while there is room, but once
//! the index is over its bounds, a scope holding more than half of the bytes or half of
//! the entries (the largest such) loses its own least recently used entries first, and
//! only then does the least recently used entry of all go. So one submitter sending the
//! cache's size in new contents evicts its own older ones, not everyone else's: a scope
//! within half of both bounds keeps its entries as long as no scope under it goes over.
//!
//! Pure: no IO, no clock (recency is a counter).

mod parts;

use std::collections::{BTreeMap, HashMap};

use parts::Parts;

/// A cached content: the scope (whose submissions may use it) and its SHA-256.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Key {
    /// Derived from the submitter's proven identity.
    pub(crate) scope: [u8; 32],
    /// The content's SHA-256.
    pub(crate) hash: [u8; 32],
}

/// What a cached file looked like on disk when it was last found to hold its content:
/// while `fstat` still shows exactly this, it has not been written since (a write moves
/// the change time, which no one can set back).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Device and inode: the same file, not another put in its place.
    pub(crate) file: (u64, u64),
    /// Its length.
    pub(crate) size: u64,
    /// Modification and change times, seconds and nanoseconds.
    pub(crate) times: [(i64, i64); 2],
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    size: u64,
    /// What it counts against the byte bound: its size, at least the index's least
    /// charge.
    charge: u64,
    /// How its file looked when last verified.
    stamp: Option<Stamp>,
    /// When it was last used (higher: more recent).
    used: u64,
    /// Submissions holding it.
    pins: u32,
}

/// The index, bounded by total bytes and entry count.
#[derive(Debug)]
pub(crate) struct Lru {
    max_bytes: u64,
    max_entries: usize,
    /// What an entry of a size counts against `max_bytes`.
    charge: fn(u64) -> u64,
    /// What the entries count against `max_bytes`.
    bytes: u64,
    slots: HashMap<Key, Slot>,
    /// Recency order of the unpinned entries: `used` -> key.
    order: BTreeMap<u64, Key>,
    /// The same per scope, with each scope's size.
    parts: Parts,
    clock: u64,
}

impl Lru {
    /// An empty index holding at most `max_bytes` in at most `max_entries` entries (once
    /// nothing is pinned).
    pub(crate) fn new(max_bytes: u64, max_entries: usize) -> Self {
        Self {
            max_bytes,
            max_entries,
            charge: std::convert::identity,
            bytes: 0,
            slots: HashMap::new(),
            order: BTreeMap::new(),
            parts: Parts::default(),
            clock: 0,
        }
    }

    /// The same, each entry of `size` bytes counting `charge(size)` against the bound
    /// (the cache's [`super::charge_of`], so that entries are at most `max_bytes /
    /// MIN_CHARGE`).
    pub(crate) fn charging_with(mut self, charge: fn(u64) -> u64) -> Self {
        self.charge = charge;
        self
    }

    /// Bytes the entries count against the bound.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries indexed.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Whether `key` is indexed.
    pub(crate) fn contains(&self, key: &Key) -> bool {
        self.slots.contains_key(key)
    }

    /// Pins `key` if it is indexed (and marks it used); returns its size.
    pub(crate) fn pin(&mut self, key: &Key) -> Option<u64> {
        let now = self.tick();
        let slot = self.slots.get_mut(key)?;
        if slot.pins == 0 {
            self.order.remove(&slot.used);
            self.parts.delist(slot.used, key);
        }
        slot.used = now;
        slot.pins += 1;
        Some(slot.size)
    }

    /// Releases one pin of `key`; once none is left it can be evicted again.
    pub(crate) fn unpin(&mut self, key: &Key) {
        if let Some(slot) = self.slots.get_mut(key)
            && slot.pins > 0
        {
            slot.pins -= 1;
            if slot.pins == 0 {
                self.order.insert(slot.used, *key);
                self.parts.enlist(slot.used, *key);
            }
        }
    }

    /// Indexes `key` of `size` bytes as the most recently used, pinned once if `pinned`. A
    /// key already indexed is pinned (if asked) rather than added twice.
    pub(crate) fn insert(&mut self, key: Key, size: u64, pinned: bool) {
        if self.contains(&key) {
            if pinned {
                self.pin(&key);
            }
            return;
        }
        let used = self.tick();
        let pins = u32::from(pinned);
        let stamp = None;
        let charge = (self.charge)(size);
        self.slots.insert(
            key,
            Slot {
                size,
                charge,
                stamp,
                used,
                pins,
            },
        );
        self.parts.added(&key, charge);
        if !pinned {
            self.order.insert(used, key);
            self.parts.enlist(used, key);
        }
        self.bytes += charge;
    }

    /// How `key`'s file looked when last verified.
    pub(crate) fn stamp(&self, key: &Key) -> Option<Stamp> {
        self.slots.get(key)?.stamp
    }

    /// Records how `key`'s file looked when it was verified.
    pub(crate) fn set_stamp(&mut self, key: &Key, stamp: Stamp) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.stamp = Some(stamp);
        }
    }

    /// Releases one pin of `key` and forgets it if that was the last one; whether it did
    /// (a key that others still pin stays: forgetting it would let their unpins release
    /// a later insert's pin).
    pub(crate) fn forget_if_last(&mut self, key: &Key) -> bool {
        match self.slots.get(key) {
            Some(slot) if slot.pins > 1 => {
                self.unpin(key);
                false
            }
            Some(_) => {
                self.remove(key);
                true
            }
            None => false,
        }
    }

    /// Forgets `key` whatever its pins (its file is gone or wrong): it is no longer a hit.
    pub(crate) fn remove(&mut self, key: &Key) {
        if let Some(slot) = self.slots.remove(key) {
            self.order.remove(&slot.used);
            self.parts.delist(slot.used, key);
            self.parts.removed(key, slot.charge);
            self.bytes -= slot.charge;
        }
    }

    /// Removes unpinned entries until the index is within its bounds (or only pinned
    /// entries are left): a scope over half the bytes or entries loses its own least
    /// recently used first, then the least recently used of all go. Returns them, for
    /// their files to be deleted. Only unpinned entries are in the recency orders, so
    /// pinned ones cost nothing here.
    pub(crate) fn evict(&mut self) -> Vec<Key> {
        let mut gone = Vec::new();
        while self.bytes > self.max_bytes || self.slots.len() > self.max_entries {
            let over = self
                .parts
                .oldest_over(self.max_bytes / 2, self.max_entries / 2);
            let Some(key) = over.or_else(|| self.order.values().next().copied()) else {
                break;
            };
            self.remove(&key);
            gone.push(key);
        }
        gone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> Key {
        Key {
            scope: [1; 32],
            hash: [n; 32],
        }
    }

    #[test]
    fn eviction_keeps_the_cache_under_its_bound_oldest_first() {
        let mut lru = Lru::new(100, 1_000);
        for n in 0..10 {
            lru.insert(key(n), 30, false);
            lru.evict();
            assert!(lru.bytes() <= 100, "{} bytes after {n}", lru.bytes());
        }
        // The three most recent stay.
        assert_eq!(lru.len(), 3);
        assert!(lru.contains(&key(9)) && lru.contains(&key(8)) && lru.contains(&key(7)));
        // A use makes an entry the most recent: it outlives newer ones.
        assert_eq!(lru.pin(&key(7)), Some(30));
        lru.unpin(&key(7));
        lru.insert(key(10), 30, false);
        assert_eq!(lru.evict(), vec![key(8)]);
        assert!(lru.contains(&key(7)));
    }

    #[test]
    fn pinned_entries_survive_eviction_and_go_once_released() {
        let mut lru = Lru::new(50, 1_000);
        lru.insert(key(1), 40, true);
        lru.insert(key(2), 40, true);
        assert!(lru.evict().is_empty(), "both are pinned");
        assert_eq!(lru.bytes(), 80);
        lru.unpin(&key(1));
        assert_eq!(lru.evict(), vec![key(1)]);
        assert!(lru.contains(&key(2)));
        lru.unpin(&key(2));
        assert!(lru.evict().is_empty(), "40 bytes fit");
    }

    #[test]
    fn each_entry_counts_at_least_the_least_charge_but_keeps_its_size() {
        let mut lru = Lru::new(4096 * 3, 1_000).charging_with(super::super::charge_of);
        for n in 0..10 {
            lru.insert(key(n), 1, false);
        }
        assert_eq!(lru.evict().len(), 7);
        assert_eq!((lru.len(), lru.bytes()), (3, 4096 * 3));
        assert_eq!(lru.pin(&key(9)), Some(1), "its real size");
        lru.insert(key(20), 5000, false);
        assert_eq!(lru.evict().len(), 2, "5000 bytes count as they are");
        assert_eq!(lru.bytes(), 4096 + 5000);
    }

    fn scoped(scope: u8, n: u8) -> Key {
        Key {
            scope: [scope; 32],
            hash: [n; 32],
        }
    }

    #[test]
    fn a_scope_over_half_the_bytes_loses_its_own_oldest_before_an_older_entry_of_another() {
        let mut lru = Lru::new(100, 1_000);
        lru.insert(scoped(2, 0), 10, false);
        for n in 0..10 {
            lru.insert(scoped(1, n), 20, false);
            lru.evict();
            assert!(lru.bytes() <= 100);
        }
        assert!(
            lru.contains(&scoped(2, 0)),
            "the other scope's oldest stays"
        );
        assert_eq!(lru.len(), 5, "10 + 4 x 20");
        assert!(lru.contains(&scoped(1, 9)) && !lru.contains(&scoped(1, 5)));
        // Within half, a scope's entries go by recency of all.
        let mut lru = Lru::new(100, 1_000);
        lru.insert(scoped(2, 0), 50, false);
        lru.insert(scoped(1, 0), 50, false);
        lru.insert(scoped(3, 0), 10, false);
        assert_eq!(lru.evict(), vec![scoped(2, 0)]);
    }

    #[test]
    fn a_scope_over_half_the_entries_loses_its_own_oldest_first() {
        let mut lru = Lru::new(u64::MAX, 10);
        lru.insert(scoped(2, 0), 1, false);
        for n in 0..20 {
            lru.insert(scoped(1, n), 1, false);
        }
        assert_eq!(lru.evict().len(), 11);
        assert!(lru.contains(&scoped(2, 0)));
        assert!(lru.contains(&scoped(1, 19)) && !lru.contains(&scoped(1, 10)));
        // A pinned scope over its share cannot give: the oldest of all goes instead.
        let mut lru = Lru::new(u64::MAX, 3);
        lru.insert(scoped(2, 0), 1, false);
        for n in 0..3 {
            lru.insert(scoped(1, n), 1, true);
        }
        assert_eq!(lru.evict(), vec![scoped(2, 0)]);
    }

    #[test]
    fn the_entry_count_is_bounded_too() {
        let mut lru = Lru::new(u64::MAX, 2);
        for n in 0..5 {
            lru.insert(key(n), 1, false);
        }
        assert_eq!(lru.evict().len(), 3);
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn an_unpinned_entry_is_evicted_past_any_number_of_pinned_ones_and_they_cost_no_walk() {
        // Found by an attacker's review: eviction walked every pinned entry on each call.
        let mut lru = Lru::new(u64::MAX, 3);
        for n in 0..3 {
            lru.insert(key(n), 1, true);
        }
        lru.insert(key(9), 1, false);
        assert_eq!(lru.evict(), vec![key(9)], "only the unpinned entry can go");
        assert!(
            lru.order.is_empty(),
            "pinned entries are not in the recency order"
        );
        lru.unpin(&key(1));
        lru.insert(key(10), 1, false);
        assert_eq!(
            lru.evict(),
            vec![key(1)],
            "the least recently used unpinned one"
        );
    }

    #[test]
    fn a_removed_entry_is_no_longer_a_hit_even_while_pinned() {
        let mut lru = Lru::new(100, 10);
        lru.insert(key(1), 40, true);
        lru.remove(&key(1));
        assert_eq!(lru.pin(&key(1)), None);
        assert_eq!(lru.bytes(), 0);
        lru.unpin(&key(1));
        assert!(lru.evict().is_empty());
    }

    #[test]
    fn forgetting_a_key_another_holder_pins_only_drops_ones_own_pin() {
        let mut lru = Lru::new(100, 10);
        lru.insert(key(1), 40, true);
        lru.pin(&key(1));
        assert!(!lru.forget_if_last(&key(1)), "the other holder keeps it");
        assert!(lru.contains(&key(1)));
        assert!(lru.evict().is_empty());
        assert!(lru.forget_if_last(&key(1)), "the last pin");
        assert!(!lru.contains(&key(1)));
        assert_eq!(lru.bytes(), 0);
    }
}
