//! The node's side of link-state routing: originating its own advert, flooding others',
//! syncing a new neighbour, ageing out departed nodes.

use std::time::Instant;

use super::{Event, MeshNode};
use crate::mesh::link::LinkId;
use crate::mesh::lsdb::{Advert, AdvertLink, AdvertOutcome};
use crate::mesh::message::Message;

impl MeshNode {
    /// Issues a new advert of our links and offers at once, and floods it.
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
        let advert = Advert {
            origin: self.config.id.clone(),
            key: self.config.keys.public(),
            epoch: self.config.epoch_ms,
            seq: self.seq,
            issued_at_ms: self.wall_ms(now),
            links,
            services: self.listening.iter().cloned().collect(),
            work_types: self.work_types.clone(),
        };
        self.lsdb.set_own(advert.clone());
        self.routes_dirty = true;
        self.advert_due = None;
        self.refresh_due = now + self.config.refresh_interval;
        self.flood(&advert, None);
    }

    /// Asks for a new advert after the debounce delay (several changes, one advert).
    pub(super) fn schedule_advert(&mut self, now: Instant) {
        if self.advert_due.is_none() {
            self.advert_due = Some(now + self.config.advert_debounce);
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

    /// Sends a new neighbour every advert we know.
    pub(super) fn sync_database(&mut self, link: LinkId) {
        let Some(slot) = self.links.get_mut(&link) else {
            return;
        };
        for advert in self.lsdb.adverts() {
            if let Err(e) = slot.link.send(&Message::Advert(advert.clone())) {
                tracing::warn!(%link, error = %e, "could not sync advert");
                return;
            }
        }
    }

    /// An advert arrived on `link`.
    pub(super) fn handle_advert(&mut self, now: Instant, link: LinkId, advert: Advert) {
        let origin = advert.origin.clone();
        match self.lsdb.handle_advert(now, advert.clone()) {
            AdvertOutcome::Stored => {
                self.routes_dirty = true;
                self.flood(&advert, Some(link));
            }
            AdvertOutcome::Ignored => {}
            AdvertOutcome::OwnStale { seq } => {
                // An advert of ours from before a quick restart: outbid it.
                self.seq = self.seq.max(seq);
                self.originate(now);
            }
            AdvertOutcome::DuplicateOfMe { key } => {
                tracing::error!(
                    node = %origin, other_key = %key,
                    "duplicate node id: another node advertises our id; give each node a unique id"
                );
                self.events
                    .push_back(Event::DuplicateNodeId { id: origin, key });
            }
            AdvertOutcome::DuplicateId { id, known, other } => {
                tracing::error!(
                    node = %id, %known, %other,
                    "duplicate node id: two nodes advertise the same id with different keys"
                );
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
