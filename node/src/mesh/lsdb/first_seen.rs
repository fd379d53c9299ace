//! The first-seen origins of a database: those whose key nothing this node configured
//! vouches for, which any node of a mesh without an authority can make up. Owns their
//! admission order (the most recently admitted is evicted first for a vouched-for origin),
//! their total size, and which neighbour each came through, so that when their share of the
//! database is full, one neighbour's flood of made-up origins cannot keep out a newcomer
//! that arrives through another: a newcomer takes the place of the most recent origin of
//! the neighbour that brought the most, while that neighbour brought more than its own.

use std::collections::{BTreeSet, HashMap};

use crate::id::NodeId;

/// When and through whom a first-seen origin was admitted. Kept across its refreshes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Admission {
    /// A counter: later admissions have larger numbers.
    pub(super) number: u64,
    /// The neighbour whose flood brought its first stored advert (`None`: it came in a
    /// session handshake of the origin's own, or was rebound to first-seen on a reload).
    pub(super) via: Option<NodeId>,
}

/// The first-seen index; the caller keeps it in step with its entries.
#[derive(Debug, Clone, Default)]
pub(super) struct FirstSeen {
    /// `(number, origin)` of every first-seen entry.
    order: BTreeSet<(u64, NodeId)>,
    /// The same, by the neighbour each came through.
    by_via: HashMap<Option<NodeId>, BTreeSet<(u64, NodeId)>>,
    /// Sum of their encoded sizes: what evicting all of them would free.
    bytes: usize,
    /// The last admission's number.
    admissions: u64,
}

impl FirstSeen {
    /// A new admission through `via`.
    pub(super) fn admit(&mut self, via: Option<NodeId>) -> Admission {
        self.admissions += 1;
        Admission {
            number: self.admissions,
            via,
        }
    }

    pub(super) fn insert(&mut self, id: &NodeId, admission: &Admission, size: usize) {
        let key = (admission.number, id.clone());
        self.order.insert(key.clone());
        self.by_via
            .entry(admission.via.clone())
            .or_default()
            .insert(key);
        self.bytes += size;
    }

    pub(super) fn remove(&mut self, id: &NodeId, admission: &Admission, size: usize) {
        let key = (admission.number, id.clone());
        self.order.remove(&key);
        if let Some(set) = self.by_via.get_mut(&admission.via) {
            set.remove(&key);
            if set.is_empty() {
                self.by_via.remove(&admission.via);
            }
        }
        self.bytes -= size;
    }

    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The most recently admitted origin.
    pub(super) fn newest(&self) -> Option<&NodeId> {
        self.order.last().map(|(_, id)| id)
    }

    /// The origin a newcomer through `via` takes the place of when the index is full: the
    /// most recently admitted of the neighbour that brought the most, if that neighbour
    /// brought at least two more than `via` did (so that two neighbours never take turns
    /// evicting each other's last origin). `None`: the newcomer is refused.
    pub(super) fn fair_victim(&self, via: Option<&NodeId>) -> Option<&NodeId> {
        let own = self.by_via.get(&via.cloned()).map_or(0, BTreeSet::len);
        let (_, heaviest) = self
            .by_via
            .iter()
            .max_by_key(|(via, set)| (set.len(), (*via).clone()))?;
        if heaviest.len() < own + 2 {
            return None;
        }
        heaviest.last().map(|(_, id)| id)
    }
}
