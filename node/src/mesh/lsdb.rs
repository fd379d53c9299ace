//! The link-state database: the newest [`Advert`] of every node on the mesh, keyed by origin.
//!
//! Owns the flood decision (is this advert new information?), duplicate node id detection,
//! the ageing out of departed nodes, and the [`Topology`] snapshot that routing runs on.
//! No IO and no clock: time comes in as `now`, and the caller does the flooding.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::id::{NodeId, ServiceName};
use crate::keys::PublicKey;
use crate::mesh::route::{Cost, Topology};

/// One node's link-state advertisement, flooded across the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advert {
    /// The node that issued the advert.
    pub origin: NodeId,
    /// The origin's static link key; two keys for one id means a duplicate node id.
    pub key: PublicKey,
    /// The origin's start time (ms since the UNIX epoch); a restart has a newer epoch.
    pub epoch: u64,
    /// Increases with every advert within an epoch.
    pub seq: u64,
    /// Wall-clock time of issue (ms since the UNIX epoch), for display only (Receptor's
    /// advert `Time`); never used to order adverts.
    pub issued_at_ms: u64,
    /// The origin's up links, sorted by peer.
    pub links: Vec<AdvertLink>,
    /// The services the origin offers.
    pub services: Vec<ServiceName>,
    /// The work types the origin can run.
    pub work_types: Vec<String>,
}

/// One link as its origin sees it: half of an undirected link in the [`Topology`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertLink {
    /// The node at the other end.
    pub peer: NodeId,
    /// The cost the origin gives the link.
    pub cost: Cost,
}

impl Advert {
    /// Whether this advert supersedes `other` from the same origin: a newer epoch, or the
    /// same epoch and a higher sequence number.
    pub fn is_newer_than(&self, other: &Self) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }
}

/// What [`Lsdb::handle_advert`] made of an advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertOutcome {
    /// New information: stored; the caller floods it to every other link.
    Stored,
    /// Same or older than what is stored: ignored, not flooded.
    Ignored,
    /// An advert for our own id but from someone else (a different key, or our key with a
    /// newer epoch than ours): a duplicate node id. Not stored.
    DuplicateOfMe {
        /// The key the advert carries.
        key: PublicKey,
    },
    /// An advert for a known id with a different key than the one stored (and the stored one
    /// has not expired): a duplicate node id elsewhere. Not stored.
    DuplicateId {
        /// The id both nodes claim.
        id: NodeId,
        /// The key stored for the id.
        known: PublicKey,
        /// The key of the rejected advert.
        other: PublicKey,
    },
    /// An advert of our own from an earlier life in this epoch with a higher seq than ours
    /// (we restarted fast): the caller must bump its seq above `seq`.
    OwnStale {
        /// The highest seq seen from our earlier life.
        seq: u64,
    },
}

/// One stored advert.
#[derive(Debug, Clone)]
struct Entry {
    advert: Advert,
    /// When the advert ages out unless refreshed; `None` for our own, which never does (and
    /// for a `max_age` too large to add to `now`).
    expires: Option<Instant>,
}

/// The link-state database of one node: its own advert plus the newest advert of every
/// other node it has heard from, each ageing out `max_age` after it was last refreshed.
#[derive(Debug, Clone)]
pub struct Lsdb {
    me: NodeId,
    /// Our static link key: an advert for our id with any other key is a duplicate.
    key: PublicKey,
    max_age: Duration,
    /// Ours included, so that [`Lsdb::adverts`] yields everything in id order.
    entries: BTreeMap<NodeId, Entry>,
    /// `(expires, origin)` of every entry that expires, earliest first; kept in step with
    /// `entries` so that expiry never scans the whole database.
    deadlines: BTreeSet<(Instant, NodeId)>,
}

impl Lsdb {
    /// An empty database for node `me` with link key `key`; other nodes' adverts age out
    /// `max_age` after they were stored unless a newer one refreshes them.
    pub fn new(me: NodeId, key: PublicKey, max_age: Duration) -> Self {
        Self {
            me,
            key,
            max_age,
            entries: BTreeMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// Our own node id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Stores our own current advert (never expires while we run).
    ///
    /// `advert.origin` must be [`Lsdb::me`]; it is stored under our id regardless.
    pub fn set_own(&mut self, advert: Advert) {
        debug_assert_eq!(advert.origin, self.me, "own advert for another id");
        let entry = Entry {
            advert,
            expires: None,
        };
        self.entries.insert(self.me.clone(), entry);
    }

    /// Decides what to do with an advert received from a neighbour, storing it when it is new
    /// information. A stored advert expires at `now + max_age`; a newer one refreshes it.
    ///
    /// Our own id's adverts are never stored: they are checked against our own advert (set
    /// with [`Lsdb::set_own`]; before that, ones with our key are ignored).
    pub fn handle_advert(&mut self, now: Instant, advert: Advert) -> AdvertOutcome {
        if advert.origin == self.me {
            return self.check_own(&advert);
        }
        let Some(stored) = self.entries.get(&advert.origin) else {
            return self.store(now, advert);
        };
        if stored.advert.key != advert.key {
            // A node that restarted with a new key is refused until its old advert ages out.
            if stored.expires.is_none_or(|expires| expires > now) {
                return AdvertOutcome::DuplicateId {
                    id: advert.origin,
                    known: stored.advert.key,
                    other: advert.key,
                };
            }
            return self.store(now, advert);
        }
        if advert.is_newer_than(&stored.advert) {
            self.store(now, advert)
        } else {
            AdvertOutcome::Ignored
        }
    }

    /// Removes entries whose expiry <= now; returns removed ids, earliest expiry first.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let mut removed = Vec::new();
        while self
            .deadlines
            .first()
            .is_some_and(|(expires, _)| *expires <= now)
        {
            if let Some((_, id)) = self.deadlines.pop_first() {
                self.entries.remove(&id);
                removed.push(id);
            }
        }
        removed
    }

    /// When [`Lsdb::expire`] next has something to remove; `None` when nothing expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.first().map(|(expires, _)| *expires)
    }

    /// The stored advert of `id` (ours too).
    pub fn get(&self, id: &NodeId) -> Option<&Advert> {
        self.entries.get(id).map(|entry| &entry.advert)
    }

    /// Every stored advert in origin order, ours included (for database sync to a new
    /// neighbour).
    pub fn adverts(&self) -> impl Iterator<Item = &Advert> {
        self.entries.values().map(|entry| &entry.advert)
    }

    /// Number of stored adverts, ours included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored, not even our own advert.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Only links both ends advertise (so a dead node's stale advert is ignored once its
    /// neighbours drop it); cost = max of the two directions.
    pub fn topology(&self) -> Topology {
        // Directed halves as advertised. An advert naming one peer twice keeps the dearer
        // cost, so the result never depends on the order of its links.
        let mut halves: BTreeMap<(&NodeId, &NodeId), Cost> = BTreeMap::new();
        for (origin, entry) in &self.entries {
            for link in &entry.advert.links {
                let half = halves.entry((origin, &link.peer)).or_insert(link.cost);
                *half = (*half).max(link.cost);
            }
        }
        let mut topology = Topology::new();
        for (&(a, b), &cost) in &halves {
            if a < b
                && let Some(&back) = halves.get(&(b, a))
            {
                topology.add_link(a, b, cost.max(back));
            }
        }
        topology
    }

    /// Nodes reachable from me in [`Lsdb::topology`] (including me), for "known nodes"
    /// display.
    pub fn reachable(&self) -> BTreeSet<NodeId> {
        let topology = self.topology();
        let mut seen = BTreeSet::from([self.me.clone()]);
        let mut todo = vec![self.me.clone()];
        while let Some(node) = todo.pop() {
            for (peer, _) in topology.neighbours(&node) {
                if seen.insert(peer.clone()) {
                    todo.push(peer.clone());
                }
            }
        }
        seen
    }

    /// Judges an advert that claims our id; never stores it.
    fn check_own(&self, advert: &Advert) -> AdvertOutcome {
        if advert.key != self.key {
            return AdvertOutcome::DuplicateOfMe { key: advert.key };
        }
        let Some(own) = self.entries.get(&self.me) else {
            return AdvertOutcome::Ignored;
        };
        let own = &own.advert;
        if advert.epoch > own.epoch {
            // Our key, but started after us: a second copy of this node is running.
            AdvertOutcome::DuplicateOfMe { key: advert.key }
        } else if advert.epoch == own.epoch && advert.seq > own.seq {
            AdvertOutcome::OwnStale { seq: advert.seq }
        } else {
            // An earlier life's advert: ours supersedes it wherever it is stored.
            AdvertOutcome::Ignored
        }
    }

    /// Stores `advert`, replacing any entry for its origin, and (re)arms its expiry.
    fn store(&mut self, now: Instant, advert: Advert) -> AdvertOutcome {
        let id = advert.origin.clone();
        let expires = now.checked_add(self.max_age);
        let entry = Entry { advert, expires };
        if let Some(old) = self.entries.insert(id.clone(), entry)
            && let Some(old_expires) = old.expires
        {
            self.deadlines.remove(&(old_expires, id.clone()));
        }
        if let Some(expires) = expires {
            self.deadlines.insert((expires, id));
        }
        AdvertOutcome::Stored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;

    const AGE: Duration = Duration::from_secs(60);
    const OWN_EPOCH: u64 = 100;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    fn advert(origin: &str, k: u8, epoch: u64, seq: u64, links: &[(&str, u32)]) -> Advert {
        Advert {
            origin: id(origin),
            key: key(k),
            epoch,
            seq,
            issued_at_ms: epoch + seq,
            links: links
                .iter()
                .map(|&(peer, cost)| AdvertLink {
                    peer: id(peer),
                    cost: Cost::from_millis(cost),
                })
                .collect(),
            services: vec![ServiceName::new("control").unwrap()],
            work_types: vec!["command".to_owned()],
        }
    }

    /// A database for `me` (key 0) holding its own advert with links to `links`.
    fn db(links: &[(&str, u32)]) -> Lsdb {
        let mut db = Lsdb::new(id("me"), key(0), AGE);
        db.set_own(advert("me", 0, OWN_EPOCH, 5, links));
        db
    }

    #[test]
    fn stores_newer_and_ignores_same_or_older() {
        let now = Instant::now();
        let mut db = db(&[]);
        let outcome =
            |db: &mut Lsdb, epoch, seq| db.handle_advert(now, advert("a", 1, epoch, seq, &[]));
        assert_eq!(outcome(&mut db, 1, 5), AdvertOutcome::Stored);
        assert_eq!(outcome(&mut db, 1, 5), AdvertOutcome::Ignored);
        assert_eq!(outcome(&mut db, 1, 4), AdvertOutcome::Ignored);
        assert_eq!(outcome(&mut db, 1, 6), AdvertOutcome::Stored);
        assert_eq!(outcome(&mut db, 0, 99), AdvertOutcome::Ignored);
        // A restart starts a new epoch with a low seq, and wins.
        assert_eq!(outcome(&mut db, 2, 0), AdvertOutcome::Stored);
        let stored = db.get(&id("a")).unwrap();
        assert_eq!((stored.epoch, stored.seq), (2, 0));
        assert_eq!(db.len(), 2);
    }

    #[test]
    fn expires_after_max_age_unless_refreshed() {
        let t0 = Instant::now();
        let secs = |s| t0 + Duration::from_secs(s);
        let mut db = db(&[]);
        assert_eq!(db.next_expiry(), None, "our own advert never expires");
        db.handle_advert(t0, advert("a", 1, 1, 1, &[]));
        db.handle_advert(secs(10), advert("b", 2, 1, 1, &[]));
        assert_eq!(db.next_expiry(), Some(t0 + AGE));
        // Hearing the same advert again does not refresh it; a newer one does.
        assert_eq!(
            db.handle_advert(secs(30), advert("a", 1, 1, 1, &[])),
            AdvertOutcome::Ignored
        );
        assert_eq!(db.next_expiry(), Some(t0 + AGE));
        db.handle_advert(secs(30), advert("a", 1, 1, 2, &[]));
        assert_eq!(db.next_expiry(), Some(secs(10) + AGE));

        assert!(
            db.expire(secs(10) + AGE - Duration::from_nanos(1))
                .is_empty()
        );
        assert_eq!(db.expire(secs(10) + AGE), [id("b")]);
        assert_eq!(db.next_expiry(), Some(secs(30) + AGE));
        assert_eq!(db.expire(secs(1000)), [id("a")]);
        assert_eq!(db.next_expiry(), None);
        assert_eq!(
            db.adverts().map(|a| &a.origin).collect::<Vec<_>>(),
            [&id("me")]
        );
    }

    #[test]
    fn detects_duplicate_of_me_by_key() {
        let mut db = db(&[]);
        let outcome = db.handle_advert(Instant::now(), advert("me", 9, 1, 1, &[]));
        assert_eq!(outcome, AdvertOutcome::DuplicateOfMe { key: key(9) });
        assert_eq!(db.get(&id("me")).unwrap().key, key(0));
    }

    #[test]
    fn detects_duplicate_of_me_by_newer_epoch() {
        let mut db = db(&[]);
        let outcome = db.handle_advert(Instant::now(), advert("me", 0, OWN_EPOCH + 1, 0, &[]));
        assert_eq!(outcome, AdvertOutcome::DuplicateOfMe { key: key(0) });
        assert_eq!(db.get(&id("me")).unwrap().epoch, OWN_EPOCH);
    }

    #[test]
    fn reports_own_stale_seq_from_earlier_life() {
        let now = Instant::now();
        let mut db = db(&[]);
        let own = |epoch, seq| advert("me", 0, epoch, seq, &[]);
        assert_eq!(
            db.handle_advert(now, own(OWN_EPOCH, 7)),
            AdvertOutcome::OwnStale { seq: 7 }
        );
        assert_eq!(
            db.handle_advert(now, own(OWN_EPOCH, 5)),
            AdvertOutcome::Ignored
        );
        assert_eq!(
            db.handle_advert(now, own(OWN_EPOCH - 1, 50)),
            AdvertOutcome::Ignored
        );
        assert_eq!(db.get(&id("me")).unwrap().seq, 5);
    }

    #[test]
    fn ignores_own_id_before_own_advert_is_set() {
        let mut db = Lsdb::new(id("me"), key(0), AGE);
        let outcome = db.handle_advert(Instant::now(), advert("me", 0, 1, 1, &[]));
        assert_eq!(outcome, AdvertOutcome::Ignored);
        assert!(db.is_empty());
    }

    #[test]
    fn detects_duplicate_id_elsewhere() {
        let now = Instant::now();
        let mut db = db(&[]);
        db.handle_advert(now, advert("a", 1, 1, 1, &[]));
        let expected = AdvertOutcome::DuplicateId {
            id: id("a"),
            known: key(1),
            other: key(2),
        };
        assert_eq!(db.handle_advert(now, advert("a", 2, 1, 1, &[])), expected);
        assert_eq!(db.handle_advert(now, advert("a", 2, 9, 9, &[])), expected);
        assert_eq!(db.get(&id("a")).unwrap().key, key(1));
    }

    #[test]
    fn accepts_new_key_once_old_advert_expired() {
        let t0 = Instant::now();
        let mut db = db(&[]);
        db.handle_advert(t0, advert("a", 1, 5, 5, &[]));
        // Expired but not yet purged: the new key takes over, even with an older epoch.
        let later = t0 + AGE;
        assert_eq!(
            db.handle_advert(later, advert("a", 2, 1, 1, &[])),
            AdvertOutcome::Stored
        );
        assert_eq!(db.get(&id("a")).unwrap().key, key(2));
        assert!(db.expire(later).is_empty(), "old deadline was dropped");
        assert_eq!(db.next_expiry(), Some(later + AGE));
    }

    #[test]
    fn topology_uses_only_links_both_ends_advertise() {
        let now = Instant::now();
        let mut db = db(&[("a", 1000), ("b", 1000), ("dead", 1000)]);
        db.handle_advert(now, advert("a", 1, 1, 1, &[("c", 1000), ("me", 3000)]));
        db.handle_advert(now, advert("b", 2, 1, 1, &[]));
        // A dead node's stale advert: its neighbours no longer list it.
        db.handle_advert(now, advert("dead", 3, 1, 1, &[("b", 1000), ("me", 1000)]));
        let mut only_me_a = Topology::new();
        only_me_a.add_link(&id("me"), &id("a"), Cost::from_millis(3000));
        only_me_a.add_link(&id("me"), &id("dead"), Cost::from_millis(1000));
        assert_eq!(db.topology(), only_me_a);

        // Once we drop our link to it, the dead node is unreachable though still stored.
        db.set_own(advert("me", 0, OWN_EPOCH, 6, &[("a", 1000), ("b", 1000)]));
        assert_eq!(db.reachable(), BTreeSet::from([id("me"), id("a")]));
        db.handle_advert(now, advert("c", 4, 1, 1, &[("a", 1000)]));
        assert_eq!(db.reachable(), BTreeSet::from([id("me"), id("a"), id("c")]));
        assert!(db.get(&id("dead")).is_some());
    }

    #[test]
    fn reachable_is_only_me_when_alone() {
        let db = Lsdb::new(id("me"), key(0), AGE);
        assert_eq!(db.reachable(), BTreeSet::from([id("me")]));
        assert_eq!(db.me(), &id("me"));
    }

    const NAMES: [&str; 5] = ["me", "o1", "o2", "o3", "o4"];

    /// Adverts from `NAMES` (origin i always has key i, so index 0 is us), at most one per
    /// (origin, epoch, seq) as a real origin never reuses a version for other content.
    fn arb_adverts() -> impl Strategy<Value = Vec<Advert>> {
        let links = proptest::collection::btree_map(0..NAMES.len(), 1u32..4, 0..4);
        let one = (0..NAMES.len(), 0u64..3, 0u64..4, links);
        proptest::collection::vec(one, 0..24).prop_map(|raw| {
            let mut by_version = BTreeMap::new();
            for (origin, epoch, seq, links) in raw {
                by_version.entry((origin, epoch, seq)).or_insert(links);
            }
            by_version
                .into_iter()
                .map(|((origin, epoch, seq), links)| {
                    let links: Vec<_> = links.into_iter().map(|(p, c)| (NAMES[p], c)).collect();
                    let k = u8::try_from(origin).unwrap();
                    advert(NAMES[origin], k, epoch, seq, &links)
                })
                .collect()
        })
    }

    fn apply(adverts: impl IntoIterator<Item = Advert>, now: Instant) -> Lsdb {
        let mut db = Lsdb::new(id("me"), key(0), AGE);
        db.set_own(advert("me", 0, 1, 1, &[("o1", 1), ("o2", 2), ("o3", 3)]));
        for a in adverts {
            db.handle_advert(now, a);
        }
        db
    }

    proptest! {
        #[test]
        fn same_database_whatever_the_order(
            (adverts, mut mixed) in arb_adverts()
                .prop_flat_map(|a| (Just(a.clone()), Just(a).prop_shuffle())),
            repeats in proptest::collection::vec((any::<Index>(), any::<Index>()), 0..12),
        ) {
            if !adverts.is_empty() {
                for (which, at) in &repeats {
                    let again = which.get(&adverts).clone();
                    mixed.insert(at.index(mixed.len() + 1), again);
                }
            }
            let now = Instant::now();
            let sorted = apply(adverts.clone(), now);
            let shuffled = apply(mixed, now);
            prop_assert!(sorted.adverts().eq(shuffled.adverts()));
            prop_assert_eq!(sorted.topology(), shuffled.topology());
            // And what is stored is each other origin's newest advert.
            for name in &NAMES[1..] {
                let newest = adverts
                    .iter()
                    .filter(|a| a.origin.as_str() == *name)
                    .max_by_key(|a| (a.epoch, a.seq));
                prop_assert_eq!(sorted.get(&id(name)), newest);
            }
        }
    }
}
