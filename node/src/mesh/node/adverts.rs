//! The node's side of link-state routing: originating (and signing) its own advert,
//! flooding others' once verified, syncing a new neighbour incrementally, ageing out
//! departed nodes.
//!
//! A new link does not receive the whole database: each side sends a summary (origin,
//! epoch, sequence) and asks for what it lacks, at most [`REQUEST_BATCH`] adverts at a time,
//! asking again when a batch has been sent. So sync is paced by the asker, not queued onto
//! the link at once.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Event, MeshNode};
use crate::id::NodeId;
use crate::keys::SignatureBytes;
use crate::keys::xeddsa::VerifyingKey;
use crate::mesh::advert::AdvertLink;
use crate::mesh::link::LinkId;
use crate::mesh::lsdb::{Advert, AdvertOutcome, SummaryEntry};
use crate::mesh::message::Message;

/// Summary entries per message: about 60 KiB, well under the frame limit.
pub(super) const SUMMARY_CHUNK: usize = 1024;

/// Adverts asked for at once during sync.
pub(super) const REQUEST_BATCH: usize = 256;

/// Bytes a link may have queued before a database request on it is left unanswered (an
/// honest neighbour asks again only after its last batch arrived).
const SERVE_QUEUE_LIMIT: usize = 4 << 20;

/// What became of the adverts this node received (for metrics): monotonic counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AdvertCounts {
    /// Adverts received from neighbours or in session handshakes.
    pub received: u64,
    /// Of those, stored as new information (and flooded).
    pub stored: u64,
    /// Refused, by [`AdvertRefusal::kind`](crate::mesh::lsdb::AdvertRefusal::kind), plus
    /// `duplicate_id` for a second key claiming a known id or ours.
    pub refused: BTreeMap<&'static str, u64>,
}

impl AdvertCounts {
    /// Every refusal, whatever its kind.
    #[must_use]
    pub fn refused_total(&self) -> u64 {
        self.refused.values().sum()
    }

    fn refuse(&mut self, kind: &'static str) {
        *self.refused.entry(kind).or_default() += 1;
    }
}

/// What a link's sync with its neighbour still needs.
#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// Origins the neighbour's summary showed we lack, not yet asked for.
    wanted: Vec<NodeId>,
    /// Whether a request is out (answered by `DbSent`).
    asking: bool,
}

impl MeshNode {
    /// Issues a new signed advert of our links and offers at once, and floods it.
    pub(super) fn originate(&mut self, now: Instant) {
        self.seq += 1;
        let mut links: Vec<AdvertLink> = self
            .neighbours
            .iter()
            .map(|(peer, link)| AdvertLink {
                peer: peer.clone(),
                cost: self.links[link].cost,
            })
            .collect();
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        let mut nonce = [0u8; 64];
        for chunk in nonce.chunks_mut(8) {
            chunk.copy_from_slice(&self.rng.next_u64().to_le_bytes());
        }
        let advert = Advert {
            origin: self.config.id.clone(),
            key: self.config.keys.public(),
            epoch: self.config.epoch_ms,
            seq: self.seq,
            issued_at_ms: self.wall_ms(now),
            links,
            services: self.listening.iter().cloned().collect(),
            work_types: self.work_types.clone(),
            cert: self.config.cert.clone().map(Box::new),
            successions: self.config.successions.clone(),
            signature: SignatureBytes([0; 64]),
        }
        .sign(&self.config.keys, &nonce);
        self.lsdb.set_own(now, advert.clone());
        self.routes_dirty = true;
        self.advert_due = None;
        self.refresh_due = now + self.config.refresh_interval;
        if !self.neighbours.is_empty() {
            self.last_flooded = Some(now);
        }
        self.flood(&advert, None);
    }

    /// Asks for a new advert: at once when none went to a neighbour within the debounce
    /// delay, else when that delay since the last one has passed. A lone change (a link
    /// cut, a new service) is advertised without delay, and a burst of them (every link of
    /// a cold start coming up) costs two adverts however long it is: each one is checked by
    /// every node of the mesh.
    pub(super) fn schedule_advert(&mut self, now: Instant) {
        let ready = self
            .last_flooded
            .map_or(now, |last| last + self.config.advert_debounce);
        if ready <= now {
            self.originate(now);
        } else if self.advert_due.is_none() {
            self.advert_due = Some(ready);
        }
    }

    /// Sends `advert` on every up link but `except`.
    fn flood(&mut self, advert: &Advert, except: Option<LinkId>) {
        let message = Message::Advert(advert.clone());
        for link in self.neighbours.values() {
            if Some(*link) == except {
                continue;
            }
            if let Some(slot) = self.links.get_mut(link)
                && let Err(e) = slot.link.send(&message)
            {
                tracing::warn!(link = %link, error = %e, "could not send advert");
            }
        }
    }

    /// Sends a new neighbour the summary of our database, in parts.
    pub(super) fn send_summary(&mut self, link: LinkId) {
        let summary = self.lsdb.summary();
        let Some(slot) = self.links.get_mut(&link) else {
            return;
        };
        let parts = summary.chunks(SUMMARY_CHUNK).count().max(1);
        let mut chunks = summary.chunks(SUMMARY_CHUNK);
        for i in 0..parts {
            let entries = chunks
                .next()
                .map(<[SummaryEntry]>::to_vec)
                .unwrap_or_default();
            let message = Message::DbSummary {
                entries,
                last: i + 1 == parts,
            };
            if let Err(e) = slot.link.send(&message) {
                tracing::warn!(%link, error = %e, "could not send database summary");
                return;
            }
        }
        self.syncs.insert(link, SyncState::default());
    }

    /// Part of a neighbour's summary: note what we lack and ask for it.
    pub(super) fn handle_summary(&mut self, link: LinkId, entries: &[SummaryEntry]) {
        let lacking: Vec<NodeId> = self.lsdb.lacking(entries).into_iter().cloned().collect();
        let Some(sync) = self.syncs.get_mut(&link) else {
            return;
        };
        // A hostile neighbour cannot make the wish list outgrow the database it may fill.
        let room = self.config.lsdb.max_nodes.saturating_sub(sync.wanted.len());
        sync.wanted.extend(lacking.into_iter().take(room));
        self.ask_more(link);
    }

    /// Sends the next request of a link's sync, if none is out.
    fn ask_more(&mut self, link: LinkId) {
        let Some(sync) = self.syncs.get_mut(&link) else {
            return;
        };
        if sync.asking || sync.wanted.is_empty() {
            return;
        }
        let take = sync.wanted.len().min(REQUEST_BATCH);
        let batch: Vec<NodeId> = sync.wanted.drain(..take).collect();
        sync.asking = true;
        if let Some(slot) = self.links.get_mut(&link)
            && let Err(e) = slot.link.send(&Message::DbRequest(batch))
        {
            tracing::warn!(%link, error = %e, "could not send database request");
        }
    }

    /// A neighbour asks for adverts: send those we hold, then `DbSent`.
    pub(super) fn handle_request(&mut self, now: Instant, link: LinkId, origins: &[NodeId]) {
        if origins.len() > REQUEST_BATCH {
            self.close_link(
                now,
                link,
                crate::mesh::message::CloseReason::ProtocolViolation,
            );
            return;
        }
        let Some(slot) = self.links.get_mut(&link) else {
            return;
        };
        if slot.link.queued_bytes() > SERVE_QUEUE_LIMIT {
            tracing::debug!(%link, "database request left unanswered: the link is backed up");
            return;
        }
        for origin in origins {
            if let Some(advert) = self.lsdb.get(origin)
                && slot.link.send(&Message::Advert(advert.clone())).is_err()
            {
                return;
            }
        }
        let _ = slot.link.send(&Message::DbSent);
    }

    /// A neighbour sent the batch we asked for: ask for the next.
    pub(super) fn handle_sent(&mut self, link: LinkId) {
        if let Some(sync) = self.syncs.get_mut(&link) {
            sync.asking = false;
        }
        self.ask_more(link);
    }

    /// An advert arrived on `link` (or, with `None`, in a session handshake).
    pub(super) fn handle_advert(&mut self, now: Instant, link: Option<LinkId>, advert: Advert) {
        let origin = advert.origin.clone();
        let wall = self.wall_ms(now);
        self.advert_counts.received += 1;
        // Only an advert signed by the key its chain leads to proves the origin holds it.
        if origin != self.config.id
            && self.would_follow(&origin, &advert.key, &advert.successions)
            && advert.check_shape().is_ok()
            && VerifyingKey::new(&advert.key).is_some_and(|k| advert.is_signed_by(&k))
        {
            let cert = advert.cert.as_deref();
            self.learn_successions(now, &origin, &advert.key, &advert.successions, cert);
        }
        let via = link
            .and_then(|l| self.links.get(&l))
            .and_then(|slot| slot.peer.as_ref())
            .map(|(node, _)| node.clone());
        match self.lsdb.handle_advert_via(
            now,
            wall,
            advert.clone(),
            &self.config.trust,
            via.as_ref(),
        ) {
            AdvertOutcome::Stored => {
                self.advert_counts.stored += 1;
                self.routes_dirty = true;
                self.flood(&advert, link);
            }
            AdvertOutcome::Ignored => {}
            AdvertOutcome::Refused(reason) => {
                self.advert_counts.refuse(reason.kind());
                if self.refusal_log.allow(now) {
                    tracing::warn!(
                        node = %origin, %reason, refused_so_far = self.advert_counts.refused_total(),
                        "refused an advert (further refusals within a second are counted, not logged)"
                    );
                }
            }
            AdvertOutcome::OwnStale { seq } => {
                // An advert of ours from before a quick restart: outbid it.
                self.seq = self.seq.max(seq);
                self.originate(now);
            }
            AdvertOutcome::DuplicateOfMe { key } => {
                self.advert_counts.refuse("duplicate_id");
                tracing::error!(
                    node = %origin, other_key = %key,
                    "duplicate node id: another node advertises our id; give each node a unique id"
                );
                self.events
                    .push_back(Event::DuplicateNodeId { id: origin, key });
            }
            AdvertOutcome::DuplicateId { id, known, other } => {
                self.advert_counts.refuse("duplicate_id");
                if self.refusal_log.allow(now) {
                    tracing::error!(
                        node = %id, %known, %other,
                        "duplicate node id: two nodes advertise the same id with different keys"
                    );
                }
                self.events
                    .push_back(Event::DuplicateNodeId { id, key: other });
            }
        }
    }

    /// Forgets nodes whose adverts stopped.
    pub(super) fn expire_adverts(&mut self, now: Instant) {
        if self.lsdb.next_expiry().is_some_and(|t| t <= now) {
            for gone in self.lsdb.expire(now) {
                tracing::info!(node = %gone, "forgot node: no advert within the maximum age");
            }
            self.routes_dirty = true;
        }
    }
}
