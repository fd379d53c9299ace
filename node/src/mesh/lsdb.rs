//! The link-state database: the newest verified [`Advert`] of every node on the mesh, keyed
//! by origin.
//!
//! Owns the store decision (is this advert new, well formed, signed by its origin's key, is
//! that key bound to the origin's id, and is there room?), duplicate node id detection, the
//! per-origin rate limit, the database's size caps, ageing out departed nodes, the summaries
//! neighbours compare to sync incrementally, and the [`Topology`] snapshot routing runs on.
//! No IO and no clock: time comes in as `now` (monotonic) and `wall_ms` (for epochs and
//! certificates), and the caller does the flooding.

mod first_seen;
mod outcome;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use super::advert::{Advert, AdvertLink, ShapeError};
use super::trust::{self, Binding, TrustDecision, TrustPolicy};
use crate::ca::CertSignature;
use crate::id::NodeId;
use crate::keys::xeddsa::VerifyingKey;
use crate::keys::{PublicKey, succession};
use crate::mesh::route::Topology;
use first_seen::{Admission, FirstSeen};
pub use outcome::{AdvertOutcome, AdvertRefusal};

/// How far in the future an advert's epoch may lie (clock skew between nodes). Beyond it
/// the advert is refused: one node with a clock years ahead must not lock its own later
/// adverts out.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(60 * 60);

/// Adverts an origin may have stored in a burst before its rate limit applies.
const RATE_BURST: u32 = 20;

/// Sustained adverts per origin: a node advertises on change (debounced) and every 30 s,
/// far below this.
const RATE_REFILL: Duration = Duration::from_millis(500);

/// New origins may not take the last `1 / GROWTH_RESERVE` of a database's byte cap: it is
/// kept for known origins' adverts to grow into, each origin an equal share of it.
const GROWTH_RESERVE: usize = 8;

/// Limits of a database.
#[derive(Debug, Clone)]
pub struct LsdbLimits {
    /// Forget a node whose adverts stop for this long.
    pub max_age: Duration,
    /// Most origins stored, ours included.
    pub max_nodes: usize,
    /// Most origins stored whose key only [`Binding::FirstSeen`] binds (nothing this node
    /// configured vouches for them). Any node of a mesh without an authority can make up
    /// such origins, so they get a fraction of `max_nodes`; the rest is for pinned, trusted
    /// and certified ones, which also evict first-seen origins when the database is full.
    pub max_first_seen: usize,
    /// Most encoded advert bytes stored.
    pub max_bytes: usize,
}

impl LsdbLimits {
    /// Limits with `max_age` and default caps: 10,000 nodes, of which at most 1,000 known
    /// first-seen, and 64 MiB.
    pub fn new(max_age: Duration) -> Self {
        Self {
            max_age,
            max_nodes: 10_000,
            max_first_seen: 1_000,
            max_bytes: 64 << 20,
        }
    }
}

/// One line of a database summary: which version of an origin's advert a node holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SummaryEntry {
    /// The origin.
    pub origin: NodeId,
    /// Its advert's epoch.
    pub epoch: u64,
    /// Its advert's sequence number.
    pub seq: u64,
}

/// One stored advert.
#[derive(Debug, Clone)]
struct Entry {
    advert: Advert,
    /// How the advert's key is bound to its origin here.
    binding: Binding,
    /// The advert's key made ready to check the origin's next adverts with (`None` for our
    /// own, which is never checked).
    verifying: Option<VerifyingKey>,
    /// When the advert ages out unless refreshed; `None` for our own, which never does (and
    /// for a `max_age` too large to add to `now`).
    expires: Option<Instant>,
    /// Encoded size, for the byte cap.
    size: usize,
    /// What the entry may grow from into its share of the growth reserve: its size when last
    /// stored with the database under the reserve line, lowered when it shrinks. Never above
    /// `size`.
    baseline: usize,
    /// The origin's rate limit: tokens left, and when they were last topped up.
    tokens: u32,
    refilled: Instant,
    /// For a first-seen origin, when and through whom it was admitted (see `first_seen`).
    admitted: Option<Admission>,
}

impl Entry {
    /// The origin's tokens at `now`, topped up for the time since the last refill, and
    /// when that refill happened.
    fn tokens_at(&self, now: Instant) -> (u32, Instant) {
        let earned = now.saturating_duration_since(self.refilled).as_millis()
            / RATE_REFILL.as_millis().max(1);
        if earned == 0 {
            return (self.tokens, self.refilled);
        }
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        (self.tokens.saturating_add(earned).min(RATE_BURST), now)
    }
}

impl Entry {
    /// Whether `advert`'s certificate is the one this entry's binding was certified by, its
    /// signature checked then. Only a certified binding says so: an entry bound by a
    /// trusted key may carry a certificate that never passed.
    fn cert_signature(&self, advert: &Advert) -> CertSignature {
        let certified = matches!(self.binding, Binding::Certified { .. });
        if certified && advert.cert.is_some() && advert.cert == self.advert.cert {
            CertSignature::CheckedBefore
        } else {
            CertSignature::Unchecked
        }
    }
}

/// What an origin's stored advert already established for its next one with the same key.
#[derive(Debug, Clone, Copy)]
struct Known {
    /// The key, made ready.
    key: Option<VerifyingKey>,
    /// Whether the certificate is the one checked then.
    cert: CertSignature,
}

/// What checking an advert established: how its key is bound to its origin, and the key
/// made ready for the origin's next adverts; and the neighbour it came through.
#[derive(Debug, Clone)]
struct Checked {
    binding: Binding,
    verifying: VerifyingKey,
    via: Option<NodeId>,
}

/// The link-state database of one node: its own advert plus the newest verified advert of
/// every other node it has heard from, each ageing out `max_age` after it was last
/// refreshed.
#[derive(Debug, Clone)]
pub struct Lsdb {
    me: NodeId,
    /// Our static link key: an advert for our id with any other key is a duplicate.
    key: PublicKey,
    /// Keys we retired by rotation: our adverts signed with them are an earlier life's.
    former: BTreeSet<PublicKey>,
    limits: LsdbLimits,
    /// Ours included, so that [`Lsdb::adverts`] yields everything in id order.
    entries: BTreeMap<NodeId, Entry>,
    /// Sum of the entries' sizes.
    bytes: usize,
    /// `(expires, origin)` of every entry that expires, earliest first; kept in step with
    /// `entries` so that expiry never scans the whole database.
    deadlines: BTreeSet<(Instant, NodeId)>,
    /// The first-seen entries, kept in step with `entries`: their count is capped.
    first_seen: FirstSeen,
}

fn encoded_len(advert: &Advert) -> usize {
    postcard::experimental::serialized_size(advert).unwrap_or(usize::MAX)
}

impl Lsdb {
    /// An empty database for node `me` with link key `key`.
    pub fn new(me: NodeId, key: PublicKey, limits: LsdbLimits) -> Self {
        Self {
            me,
            key,
            former: BTreeSet::new(),
            limits,
            entries: BTreeMap::new(),
            bytes: 0,
            deadlines: BTreeSet::new(),
            first_seen: FirstSeen::default(),
        }
    }

    /// Our key changed (a rotation): adverts for our id signed by a `former` key are from
    /// before it, not a duplicate.
    pub fn set_key(&mut self, key: PublicKey, former: impl IntoIterator<Item = PublicKey>) {
        self.former.extend(former);
        self.former.remove(&key);
        self.key = key;
    }

    /// Our own node id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// Stores our own current advert (never expires while we run).
    ///
    /// `advert.origin` must be [`Lsdb::me`]; it is stored under our id regardless.
    pub fn set_own(&mut self, now: Instant, advert: Advert) {
        debug_assert_eq!(advert.origin, self.me, "own advert for another id");
        let size = encoded_len(&advert);
        let anchor = advert.key;
        let entry = Entry {
            advert,
            binding: Binding::Pinned { anchor },
            verifying: None,
            expires: None,
            size,
            baseline: size,
            tokens: RATE_BURST,
            refilled: now,
            admitted: None,
        };
        if let Some(old) = self.entries.insert(self.me.clone(), entry) {
            self.bytes -= old.size;
        }
        self.bytes += size;
    }

    /// Decides what to do with an advert that came from no neighbour in particular (see
    /// [`Lsdb::handle_advert_via`]).
    pub fn handle_advert(
        &mut self,
        now: Instant,
        wall_ms: u64,
        advert: Advert,
        policy: &TrustPolicy,
    ) -> AdvertOutcome {
        self.handle_advert_via(now, wall_ms, advert, policy, None)
    }

    /// Decides what to do with an advert flooded to us by neighbour `via` (`None`: carried
    /// by its origin's session handshake), storing it when it is new, valid and vouched
    /// for. A stored advert expires at `now + max_age`; a newer one refreshes it.
    pub fn handle_advert_via(
        &mut self,
        now: Instant,
        wall_ms: u64,
        advert: Advert,
        policy: &TrustPolicy,
        via: Option<&NodeId>,
    ) -> AdvertOutcome {
        if advert.origin == self.me {
            return self.check_own(&advert);
        }
        let stored = self.entries.get(&advert.origin);
        if stored.is_some_and(|s| s.advert.key == advert.key && !advert.is_newer_than(&s.advert)) {
            return AdvertOutcome::Ignored;
        }
        // Signed with a key the origin has since retired (its stored, verified advert lists
        // the succession): from before the rotation, superseded.
        if stored.is_some_and(|s| s.advert.successions.iter().any(|x| x.old() == advert.key)) {
            return AdvertOutcome::Ignored;
        }
        let same_key = stored.filter(|s| s.advert.key == advert.key);
        // Out of tokens: refused before the signature check, so that a flood of an origin's
        // adverts costs no more than counting them.
        if same_key.is_some_and(|s| s.tokens_at(now).0 == 0) {
            return AdvertOutcome::Refused(AdvertRefusal::RateLimited);
        }
        let known = Known {
            key: same_key.and_then(|s| s.verifying),
            cert: same_key.map_or(CertSignature::Unchecked, |s| s.cert_signature(&advert)),
        };
        let (binding, verifying) = match self.verify(wall_ms, &advert, known, policy) {
            Ok(checked) => checked,
            Err(refusal) => return AdvertOutcome::Refused(refusal),
        };
        let checked = Checked {
            binding,
            verifying,
            via: via.cloned(),
        };
        match self.entries.get(&advert.origin) {
            Some(stored) if stored.advert.key != advert.key => {
                self.replace_key(now, advert, checked)
            }
            Some(_) => self.refresh(now, advert, checked),
            None => self.admit(now, advert, checked),
        }
    }

    /// Shape, epoch, signature and binding of an advert that would be new information;
    /// `known` is what the origin's stored advert already established.
    fn verify(
        &self,
        wall_ms: u64,
        advert: &Advert,
        known: Known,
        policy: &TrustPolicy,
    ) -> Result<(Binding, VerifyingKey), AdvertRefusal> {
        advert.check_shape()?;
        let horizon = wall_ms.saturating_add(MAX_CLOCK_SKEW.as_millis() as u64);
        if advert.epoch > horizon {
            return Err(AdvertRefusal::FutureEpoch {
                epoch: advert.epoch,
            });
        }
        let verifying = known
            .key
            .or_else(|| VerifyingKey::new(&advert.key))
            .filter(|key| advert.is_signed_by(key))
            .ok_or(AdvertRefusal::BadSignature)?;
        match trust::decide_remote_with(
            policy,
            &advert.key,
            &advert.origin,
            advert.cert.as_deref(),
            wall_ms,
            known.cert,
        ) {
            TrustDecision::Trusted(binding) => Ok((binding, verifying)),
            other => Err(AdvertRefusal::Untrusted(other)),
        }
    }

    /// A known origin's newer advert with the same key: store it if its rate allows.
    fn refresh(&mut self, now: Instant, advert: Advert, checked: Checked) -> AdvertOutcome {
        let Some(entry) = self.entries.get(&advert.origin) else {
            return AdvertOutcome::Ignored;
        };
        let (tokens, refilled) = entry.tokens_at(now);
        if tokens == 0 {
            return AdvertOutcome::Refused(AdvertRefusal::RateLimited);
        }
        self.store(now, advert, checked, tokens - 1, refilled)
    }

    /// An origin's advert with another key than the stored one.
    fn replace_key(&mut self, now: Instant, advert: Advert, checked: Checked) -> AdvertOutcome {
        let Some(stored) = self.entries.get(&advert.origin) else {
            return AdvertOutcome::Ignored;
        };
        let live = stored.expires.is_none_or(|expires| expires > now);
        // The node rotated its key, and its advert carries the succession from the stored
        // key, each step signed by the key it retires.
        if succession::leads(&advert.successions, &stored.advert.key, &advert.key) {
            return self.store(now, advert, checked, RATE_BURST - 1, now);
        }
        // A node that restarted with a new key is refused until its old advert ages out,
        // unless something this node configured vouches for the new key and nothing did
        // for the old.
        let outranks = checked.binding.is_verified() && !stored.binding.is_verified();
        if live && !outranks {
            return AdvertOutcome::DuplicateId {
                id: advert.origin,
                known: stored.advert.key,
                other: advert.key,
            };
        }
        self.store(now, advert, checked, RATE_BURST - 1, now)
    }

    /// A new origin: store it if the database has room. A first-seen origin only while
    /// fewer than `max_first_seen` are stored; a vouched-for one evicts first-seen origins
    /// (the most recently admitted first) when the database is full.
    fn admit(&mut self, now: Instant, advert: Advert, checked: Checked) -> AdvertOutcome {
        if !checked.binding.is_verified() {
            if self.first_seen.len() >= self.limits.max_first_seen
                && !self.evict_for_newcomer(checked.via.as_ref())
            {
                return AdvertOutcome::Refused(AdvertRefusal::FirstSeenFull);
            }
        } else {
            self.evict_for(encoded_len(&advert));
        }
        if self.entries.len() >= self.limits.max_nodes {
            return AdvertOutcome::Refused(AdvertRefusal::Full);
        }
        self.store(now, advert, checked, RATE_BURST - 1, now)
    }

    /// Evicts first-seen origins, most recently admitted first, until a new origin's advert
    /// of `size` bytes fits the node and byte caps; none when even evicting all of them
    /// would not make room for it.
    fn evict_for(&mut self, size: usize) {
        let line = self.limits.max_bytes - self.limits.max_bytes / GROWTH_RESERVE;
        let bytes_fit = |db: &Self| db.bytes.saturating_add(size) <= line;
        let nodes_fit = |db: &Self| db.entries.len() < db.limits.max_nodes;
        let kept = self.bytes - self.first_seen.bytes();
        let could_fit = kept.saturating_add(size) <= line
            && self.entries.len() - self.first_seen.len() < self.limits.max_nodes;
        if !could_fit {
            return;
        }
        while !(bytes_fit(self) && nodes_fit(self)) {
            let Some(victim) = self.first_seen.newest().cloned() else {
                return;
            };
            tracing::info!(node = %victim, "evicted a first-seen node to make room for a vouched-for one");
            self.remove(&victim);
        }
    }

    /// Makes room among the first-seen origins for a newcomer through `via`, if the
    /// neighbour that brought the most brought more than `via` did (see `first_seen`);
    /// returns whether it did.
    fn evict_for_newcomer(&mut self, via: Option<&NodeId>) -> bool {
        let Some(victim) = self.first_seen.fair_victim(via).cloned() else {
            return false;
        };
        tracing::info!(node = %victim, "evicted a first-seen node: the neighbour it came through brought the most");
        self.remove(&victim);
        true
    }

    /// Removes `id`'s entry with everything kept in step with it.
    fn remove(&mut self, id: &NodeId) -> Option<Entry> {
        let old = self.entries.remove(id)?;
        self.unindex(id, &old);
        Some(old)
    }

    /// Takes a removed or replaced entry out of the totals and indexes.
    fn unindex(&mut self, id: &NodeId, old: &Entry) {
        self.bytes -= old.size;
        if let Some(expires) = old.expires {
            self.deadlines.remove(&(expires, id.clone()));
        }
        if let Some(admitted) = &old.admitted {
            self.first_seen.remove(id, admitted, old.size);
        }
    }

    /// Removes entries whose expiry <= now; returns removed ids, earliest expiry first.
    pub fn expire(&mut self, now: Instant) -> Vec<NodeId> {
        let mut removed = Vec::new();
        while let Some((expires, id)) = self.deadlines.first().cloned() {
            if expires > now {
                break;
            }
            self.remove(&id);
            removed.push(id);
        }
        removed
    }

    /// How many origins are stored first-seen.
    pub fn first_seen_len(&self) -> usize {
        self.first_seen.len()
    }

    /// Judges every stored advert again under a new trust policy (a reload, a revocation):
    /// an origin nothing vouches for any more is removed; returns the removed ids.
    pub fn rejudge(&mut self, wall_ms: u64, policy: &TrustPolicy) -> Vec<NodeId> {
        let mut removed = Vec::new();
        let mut rebound = Vec::new();
        for (id, entry) in &self.entries {
            if *id == self.me {
                continue;
            }
            let advert = &entry.advert;
            match trust::decide_remote(
                policy,
                &advert.key,
                &advert.origin,
                advert.cert.as_deref(),
                wall_ms,
            ) {
                TrustDecision::Trusted(binding) => rebound.push((id.clone(), binding)),
                _ => removed.push(id.clone()),
            }
        }
        for (id, binding) in rebound {
            self.rebind(&id, binding);
        }
        for id in &removed {
            self.remove(id);
        }
        removed
    }

    /// Gives `id`'s entry a new binding, moving it into or out of the first-seen index.
    fn rebind(&mut self, id: &NodeId, binding: Binding) {
        let Some(mut entry) = self.remove(id) else {
            return;
        };
        let first_seen = !binding.is_verified();
        entry.admitted = match entry.admitted {
            Some(admitted) if first_seen => Some(admitted),
            _ if first_seen => Some(self.first_seen.admit(None)),
            _ => None,
        };
        entry.binding = binding;
        self.insert(id.clone(), entry);
    }

    /// Inserts an entry (none stored for `id`) with everything kept in step with it.
    fn insert(&mut self, id: NodeId, entry: Entry) {
        self.bytes += entry.size;
        if let Some(expires) = entry.expires {
            self.deadlines.insert((expires, id.clone()));
        }
        if let Some(admitted) = &entry.admitted {
            self.first_seen.insert(&id, admitted, entry.size);
        }
        self.entries.insert(id, entry);
    }

    /// When [`Lsdb::expire`] next has something to remove; `None` when nothing expires.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.deadlines.first().map(|(expires, _)| *expires)
    }

    /// The stored advert of `id` (ours too).
    pub fn get(&self, id: &NodeId) -> Option<&Advert> {
        self.entries.get(id).map(|entry| &entry.advert)
    }

    /// The key stored for `id` and what binds it to the id here.
    pub fn binding(&self, id: &NodeId) -> Option<(PublicKey, &Binding)> {
        self.entries
            .get(id)
            .map(|entry| (entry.advert.key, &entry.binding))
    }

    /// Every stored advert in origin order, ours included.
    pub fn adverts(&self) -> impl Iterator<Item = &Advert> {
        self.entries.values().map(|entry| &entry.advert)
    }

    /// Which version of every origin's advert is stored, for a neighbour to compare.
    pub fn summary(&self) -> Vec<SummaryEntry> {
        self.entries
            .values()
            .map(|e| SummaryEntry {
                origin: e.advert.origin.clone(),
                epoch: e.advert.epoch,
                seq: e.advert.seq,
            })
            .collect()
    }

    /// Of a neighbour's summary, the origins whose advert it holds and we lack or hold an
    /// older version of; and our own id when its version is not our current advert (another
    /// node with our id, or our earlier life), so that we look at it.
    pub fn lacking<'a>(&self, summary: &'a [SummaryEntry]) -> Vec<&'a NodeId> {
        summary
            .iter()
            .filter(|s| {
                let stored = self.entries.get(&s.origin);
                if s.origin == self.me {
                    return stored
                        .is_none_or(|e| (s.epoch, s.seq) != (e.advert.epoch, e.advert.seq));
                }
                stored.is_none_or(|e| (s.epoch, s.seq) > (e.advert.epoch, e.advert.seq))
            })
            .map(|s| &s.origin)
            .collect()
    }

    /// Number of stored adverts, ours included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is stored, not even our own advert.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Encoded bytes of the stored adverts.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Only links both ends advertise (so a dead node's stale advert is ignored once its
    /// neighbours drop it); cost = max of the two directions.
    pub fn topology(&self) -> Topology {
        // Directed halves as advertised. An advert naming one peer twice keeps the dearer
        // cost, so the result never depends on the order of its links.
        let mut halves: BTreeMap<(&NodeId, &NodeId), crate::mesh::route::Cost> = BTreeMap::new();
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

    /// Judges an advert that claims our id; never stores it. Unsigned claims are refused
    /// without raising the duplicate alarm.
    fn check_own(&self, advert: &Advert) -> AdvertOutcome {
        if !advert.has_valid_signature() {
            return AdvertOutcome::Refused(AdvertRefusal::BadSignature);
        }
        if self.former.contains(&advert.key) {
            // Ours from before a key rotation: the new advert supersedes it.
            return AdvertOutcome::Ignored;
        }
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

    /// The baseline an advert of `size` bytes is stored with, if it fits: replacing a known
    /// origin's entry `old`, or as a new origin's (`None`).
    ///
    /// The last [`GROWTH_RESERVE`]th of the byte cap (above the "line") is kept for known
    /// origins whose adverts grow (a new link, a longer sequence number), so that strangers
    /// filling the database cannot get a known node's next advert refused and let it expire
    /// from the mesh:
    /// - a new origin is stored only while the total stays under the line;
    /// - a known origin may grow freely while the total stays under the line, and past it
    ///   only within its own share of the reserve (the reserve split over `max_nodes`)
    ///   above its baseline, so no set of origins can use up another's share;
    /// - an advert that does not grow is always taken, even when our own advert (never
    ///   refused) has pushed the total past the cap.
    ///
    /// So the sum of baselines stays under the line, each entry's size stays within its
    /// share of its baseline, and the total (our own advert aside) stays under the cap.
    fn room(&self, old: Option<&Entry>, size: usize) -> Option<usize> {
        let cap = self.limits.max_bytes;
        let line = cap - cap / GROWTH_RESERVE;
        let share = cap / GROWTH_RESERVE / self.limits.max_nodes.max(1);
        let total = (self.bytes - old.map_or(0, |entry| entry.size)).saturating_add(size);
        match old {
            None => (total <= line).then_some(size),
            Some(_) if total <= line => Some(size),
            Some(entry) if size <= entry.size || size - entry.baseline <= share => {
                Some(entry.baseline.min(size))
            }
            Some(_) => None,
        }
    }

    /// Stores `advert`, replacing any entry for its origin, and (re)arms its expiry.
    fn store(
        &mut self,
        now: Instant,
        advert: Advert,
        checked: Checked,
        tokens: u32,
        refilled: Instant,
    ) -> AdvertOutcome {
        let id = advert.origin.clone();
        let expires = now.checked_add(self.limits.max_age);
        let size = encoded_len(&advert);
        let Some(baseline) = self.room(self.entries.get(&id), size) else {
            return AdvertOutcome::Refused(AdvertRefusal::Full);
        };
        let old = self.remove(&id);
        // A first-seen origin keeps its admission number across its refreshes.
        let admitted = match old.and_then(|old| old.admitted) {
            _ if checked.binding.is_verified() => None,
            Some(admitted) => Some(admitted),
            None => Some(self.first_seen.admit(checked.via)),
        };
        let entry = Entry {
            advert,
            binding: checked.binding,
            verifying: Some(checked.verifying),
            expires,
            size,
            baseline,
            tokens,
            refilled,
            admitted,
        };
        self.insert(id, entry);
        AdvertOutcome::Stored
    }
}

#[cfg(test)]
mod tests;
