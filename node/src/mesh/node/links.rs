//! The node's links: connections dialled and accepted (with the cap on unauthenticated
//! handshakes), bytes in and out of each link, judging a peer's identity once its handshake
//! ends (trust, duplicate links, duplicate ids), and what a link coming up or going down
//! changes in the topology, the dial schedule and the streams. No IO.

use std::net::IpAddr;
use std::time::Instant;

use bytes::BytesMut;

use super::{Event, LinkSlot, MeshNode};
use crate::ca::SignedCertificate;
use crate::id::NodeId;
use crate::keys::PublicKey;
use crate::mesh::link::{Link, LinkEnd, LinkEvent, LinkId};
use crate::mesh::message::{CloseReason, Hello, Message};
use crate::mesh::noise::Role;
use crate::mesh::peers::PeerSlotId;
use crate::mesh::route::Cost;
use crate::mesh::trust::{self, Binding, TrustDecision};

impl MeshNode {
    /// A dial for `slot` connected; returns the new link's handle.
    pub fn handle_dialed(&mut self, now: Instant, slot: PeerSlotId, cost: Cost) -> LinkId {
        let id = self.add_link(now, Role::Initiator, cost, Some(slot));
        self.peers.handle_dialed(slot, id);
        id
    }

    /// A dial for `slot` failed.
    pub fn handle_dial_failed(&mut self, now: Instant, slot: PeerSlotId) {
        self.peers.handle_failed(now, slot);
    }

    /// A connection was accepted on a listener of the given cost, from `source`. When too
    /// many connections are still handshaking (overall, or from that source), the oldest of
    /// them is dropped to make room.
    pub fn handle_accepted(&mut self, now: Instant, cost: Cost, source: Option<IpAddr>) -> LinkId {
        self.make_room_for_handshake(now, source);
        let id = self.add_link(now, Role::Responder, cost, None);
        if let Some(slot) = self.links.get_mut(&id) {
            slot.source = source;
        }
        id
    }

    /// Drops the oldest handshaking connections while the caps would be exceeded.
    fn make_room_for_handshake(&mut self, now: Instant, source: Option<IpAddr>) {
        loop {
            let handshaking = || {
                self.links
                    .iter()
                    .filter(|(_, s)| s.link.role() == Role::Responder && s.link.is_handshaking())
            };
            let total = handshaking().count();
            let from_source = handshaking().filter(|(_, s)| s.source == source).count();
            let victim =
                if source.is_some() && from_source >= self.config.max_handshaking_per_source {
                    handshaking()
                        .filter(|(_, s)| s.source == source)
                        .min_by_key(|(_, s)| s.opened)
                } else if total >= self.config.max_handshaking {
                    handshaking().min_by_key(|(_, s)| s.opened)
                } else {
                    None
                };
            let Some((&id, _)) = victim else {
                return;
            };
            if self.handshake_log.allow(now) {
                tracing::warn!(
                    handshaking = total,
                    ?source,
                    "too many unauthenticated connections: dropping the oldest (further drops within a second are not logged)"
                );
            }
            self.close_link(now, id, CloseReason::TooManyHandshakes);
        }
    }

    fn hello(&self) -> Hello {
        Hello {
            node: self.config.id.clone(),
            epoch: self.config.epoch_ms,
            cert: self.config.cert.clone(),
            successions: self.config.successions.clone(),
        }
    }

    fn add_link(
        &mut self,
        now: Instant,
        role: Role,
        cost: Cost,
        slot: Option<PeerSlotId>,
    ) -> LinkId {
        self.next_link += 1;
        let id = LinkId(self.next_link);
        let (keys, lc, hello) = (&self.config.keys, self.config.link.clone(), self.hello());
        let link = match role {
            Role::Initiator => Link::initiator(now, keys, hello, lc),
            Role::Responder => Link::responder(now, keys, hello, lc),
        }
        .expect("invariant: our own key pair is valid for Noise");
        self.links.insert(
            id,
            LinkSlot {
                link,
                peer: None,
                peer_epoch: 0,
                cost,
                slot,
                up: false,
                source: None,
                opened: now,
                binding: None,
                peer_cert: None,
                inits: super::init_budget::InitBudget::new(now),
            },
        );
        id
    }

    /// Bytes arrived on a link's socket.
    pub fn handle_link_bytes(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        self.handle_link_owned_bytes(now, link, BytesMut::from(bytes));
    }

    /// As [`MeshNode::handle_link_bytes`], keeping the buffer the socket was read into.
    pub fn handle_link_owned_bytes(&mut self, now: Instant, link: LinkId, bytes: BytesMut) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.handle_owned_bytes(now, bytes);
            self.process_link_events(now, link);
        }
    }

    /// A link's socket reached EOF or failed.
    pub fn handle_link_socket_closed(&mut self, now: Instant, link: LinkId, why: &str) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.handle_socket_closed(why);
            self.process_link_events(now, link);
        }
    }

    /// Closes a link, telling the peer why.
    pub fn close_link(&mut self, now: Instant, link: LinkId, reason: CloseReason) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.close(reason);
            self.process_link_events(now, link);
        }
    }

    /// Closes every link (for shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.close_link(now, id, CloseReason::Shutdown);
        }
    }

    pub(super) fn process_link_events(&mut self, now: Instant, id: LinkId) {
        while let Some(event) = self.links.get_mut(&id).and_then(|s| s.link.poll_event()) {
            match event {
                LinkEvent::Identified {
                    node,
                    key,
                    epoch,
                    cert,
                    successions,
                } => {
                    // The handshake proved `key`: the chain may lead to it, and the pin then
                    // stands for it when the peer is judged.
                    let cert = cert.as_deref();
                    self.learn_successions(now, &node, &key, &successions, cert);
                    self.judge_peer(now, id, node, key, epoch, cert);
                }
                LinkEvent::Up => self.handle_link_up(now, id),
                LinkEvent::Message(message) => self.handle_message(now, id, message),
                LinkEvent::Plaintext(frame) => {
                    self.events
                        .push_back(Event::LinkPlaintext { link: id, frame });
                }
                LinkEvent::Closed(end) => self.handle_link_closed(now, id, end),
            }
        }
    }

    fn handle_message(&mut self, now: Instant, id: LinkId, message: Message) {
        match message {
            Message::Advert(advert) => self.handle_advert(now, Some(id), advert),
            Message::Packet(packet) => self.handle_packet(now, id, packet),
            Message::DbSummary { entries, .. } => self.handle_summary(id, &entries),
            Message::DbRequest(origins) => self.handle_request(now, id, &origins),
            Message::DbSent => self.handle_sent(id),
            // Keepalive, Rekey, Close and Hello are consumed by the link itself.
            Message::Keepalive | Message::Rekey | Message::Close(_) | Message::Hello(_) => {}
        }
    }

    /// Decides whether the identified peer may link: trust, duplicate ids, one link per pair.
    fn judge_peer(
        &mut self,
        now: Instant,
        id: LinkId,
        node: NodeId,
        key: PublicKey,
        epoch: u64,
        cert: Option<&SignedCertificate>,
    ) {
        let verdict = self.verdict(now, id, &node, &key, epoch, cert);
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        slot.peer = Some((node.clone(), key));
        slot.peer_epoch = epoch;
        slot.peer_cert = cert.cloned();
        match verdict {
            Ok(binding) => {
                slot.binding = Some(binding);
                slot.link.accept(now);
            }
            Err(reason) => {
                log_refusal(id, &node, &key, reason);
                if reason == CloseReason::DuplicateLink
                    && let Some(ps) = slot.slot
                {
                    self.peers.handle_satisfied(ps, node);
                    slot.slot = None;
                }
                slot.link.refuse(reason);
            }
        }
    }

    fn verdict(
        &self,
        now: Instant,
        id: LinkId,
        node: &NodeId,
        key: &PublicKey,
        epoch: u64,
        cert: Option<&SignedCertificate>,
    ) -> Result<Binding, CloseReason> {
        if node == &self.config.id {
            return Err(CloseReason::DuplicateNodeId);
        }
        let wall = self.wall_ms(now);
        let binding = match trust::decide_peer(&self.config.trust, key, node, cert, wall) {
            TrustDecision::Untrusted
                if self.config.trust_first_contact
                    && self.links[&id].link.role() == Role::Initiator =>
            {
                Binding::FirstSeen
            }
            decision => admitted(id, node, key, decision)?,
        };
        let Some(existing) = self.other_link_to(node, id) else {
            return Ok(binding);
        };
        let old = &self.links[&existing];
        if old.peer.as_ref().is_some_and(|(_, k)| k != key) || epoch < old.peer_epoch {
            return Err(CloseReason::DuplicateNodeId);
        }
        // A newer run of the peer: the old link is a leftover of a crash (its idle timeout
        // has not noticed yet). The new link replaces it when it comes up.
        if epoch > old.peer_epoch {
            return Ok(binding);
        }
        if self.keeps(node, existing, id) == existing {
            return Err(CloseReason::DuplicateLink);
        }
        Ok(binding)
    }

    /// A live link other than `except` whose peer identified as `peer`.
    fn other_link_to(&self, peer: &NodeId, except: LinkId) -> Option<LinkId> {
        self.links
            .iter()
            .find(|(id, slot)| {
                **id != except
                    && !slot.link.is_closed()
                    && slot.peer.as_ref().is_some_and(|(n, _)| n == peer)
            })
            .map(|(id, _)| *id)
    }

    /// Of two links to `peer`, the one to keep. Both ends must choose the same connection:
    /// keep the one dialled by the smaller node id; if one side dialled both, the older.
    fn keeps(&self, peer: &NodeId, x: LinkId, y: LinkId) -> LinkId {
        let role = |l: LinkId| self.links.get(&l).map(|s| s.link.role());
        let (rx, ry) = (role(x), role(y));
        if rx == ry {
            return x.min(y);
        }
        let keep_ours = self.config.id < *peer;
        if (rx == Some(Role::Initiator)) == keep_ours {
            x
        } else {
            y
        }
    }

    fn handle_link_up(&mut self, now: Instant, id: LinkId) {
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        let Some((peer, _)) = slot.peer.clone() else {
            return;
        };
        if let Some(cost) = self.config.link_costs.get(&peer) {
            slot.cost = *cost;
        }
        slot.up = true;
        if let Some(ps) = slot.slot {
            self.peers.handle_up(ps, &peer);
        }
        if let Some(&old) = self.neighbours.get(&peer) {
            let restarted = self
                .links
                .get(&old)
                .is_some_and(|o| o.peer_epoch < self.links[&id].peer_epoch);
            if !restarted && self.keeps(&peer, old, id) == old {
                self.close_link(now, id, CloseReason::DuplicateLink);
                return;
            }
            self.neighbours.insert(peer.clone(), id);
            self.close_link(now, old, CloseReason::DuplicateLink);
        }
        self.neighbours.insert(peer.clone(), id);
        self.peers.handle_peer_reached(&peer);
        tracing::info!(link = %id, %peer, "link up");
        self.events.push_back(Event::LinkUp {
            link: id,
            peer: peer.clone(),
        });
        // The first link's advert goes at once, so that short-lived nodes (the CLI's) are
        // routable within milliseconds; then the new peer gets our database.
        self.schedule_advert(now);
        self.send_summary(id);
    }

    fn handle_link_closed(&mut self, now: Instant, id: LinkId, end: LinkEnd) {
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        let peer = slot.peer.as_ref().map(|(n, _)| n.clone());
        let was_up = std::mem::replace(&mut slot.up, false);
        if let Some(ps) = slot.slot.take() {
            let surplus = matches!(
                end,
                LinkEnd::ByUs(CloseReason::DuplicateLink)
                    | LinkEnd::ByPeer(CloseReason::DuplicateLink)
            );
            match &peer {
                Some(p) if surplus && self.other_link_to(p, id).is_some() => {
                    self.peers.handle_satisfied(ps, p.clone());
                }
                // A refusal (or a peer that stopped reading) is a failed dial: back off
                // rather than redial at once forever.
                _ if was_up && !needs_backoff(&end) => self.peers.handle_link_lost(now, ps),
                _ => self.peers.handle_failed(now, ps),
            }
        }
        if let LinkEnd::ByPeer(
            CloseReason::UntrustedKey
            | CloseReason::KeyPinnedToOtherNode
            | CloseReason::IdPinnedToOtherKey,
        ) = end
        {
            tracing::warn!(
                link = %id, peer = ?peer, %end,
                "peer refused our key; to be trusted, the peer's operator must add `--trust {}={}`",
                self.config.id, self.config.keys.public()
            );
        } else if is_version_mismatch(&end) {
            // Before authentication: anyone can cause it, so at most one line a second.
            if self.version_log.allow(now) {
                tracing::warn!(
                    link = %id, %end,
                    "link refused: mesh protocol versions differ; upgrade the older node \
                     (further refusals within a second are not logged)"
                );
            }
        } else if was_up {
            tracing::info!(link = %id, peer = ?peer, %end, "link down");
        } else {
            tracing::debug!(link = %id, peer = ?peer, %end, "link ended before it came up");
        }
        if let Some(p) = &peer
            && self.neighbours.get(p) == Some(&id)
        {
            self.neighbours.remove(p);
            self.peers.handle_peer_lost(now, p);
            self.schedule_advert(now);
        }
        self.syncs.remove(&id);
        self.streams_link_down(id);
        self.events.push_back(Event::LinkDown {
            link: id,
            peer,
            end,
        });
    }
}

fn log_refusal(id: LinkId, node: &NodeId, key: &PublicKey, reason: CloseReason) {
    match reason {
        CloseReason::UntrustedKey => tracing::warn!(
            link = %id, peer = %node, key = %key,
            "refused link: untrusted key; to trust it add `--trust {node}={key}`"
        ),
        CloseReason::DuplicateLink => {
            tracing::debug!(link = %id, peer = %node, "surplus link to an existing peer");
        }
        _ => tracing::warn!(link = %id, peer = %node, key = %key, %reason, "refused link"),
    }
}

/// Whether a link ended because the two nodes speak different protocol versions.
fn is_version_mismatch(end: &LinkEnd) -> bool {
    matches!(
        end,
        LinkEnd::ByUs(CloseReason::VersionMismatch { .. })
            | LinkEnd::ByPeer(CloseReason::VersionMismatch { .. })
    )
}

/// Whether redialling at once cannot help: the peer turned the link away as soon as it was
/// up (it refuses who we are, or still holds a link from us that we have lost), or one side
/// stopped reading (a redial would fill the same queue again).
fn needs_backoff(end: &LinkEnd) -> bool {
    matches!(
        end,
        LinkEnd::ByPeer(
            CloseReason::DuplicateLink
                | CloseReason::UntrustedKey
                | CloseReason::KeyPinnedToOtherNode
                | CloseReason::IdPinnedToOtherKey
                | CloseReason::DuplicateNodeId
                | CloseReason::BadCertificate
                | CloseReason::VersionMismatch { .. }
                | CloseReason::SendQueueFull
        ) | LinkEnd::ByUs(CloseReason::SendQueueFull)
    )
}

/// The binding a trust decision admits a peer's link with, or the reason to close it.
pub(super) fn admitted(
    link: LinkId,
    node: &NodeId,
    key: &PublicKey,
    decision: TrustDecision,
) -> Result<Binding, CloseReason> {
    match decision {
        TrustDecision::Trusted(binding) => Ok(binding),
        TrustDecision::Untrusted => Err(CloseReason::UntrustedKey),
        TrustDecision::PinnedToOther { .. } => Err(CloseReason::KeyPinnedToOtherNode),
        TrustDecision::IdPinnedToOtherKey => Err(CloseReason::IdPinnedToOtherKey),
        TrustDecision::Superseded { successor } => {
            tracing::warn!(%link, peer = %node, %key, %successor, "refused link: the peer's key was retired by a key rotation");
            Err(CloseReason::KeyRetired)
        }
        TrustDecision::BadCertificate(e) => {
            tracing::warn!(%link, peer = %node, %key, error = %e, "refused link: bad certificate");
            Err(CloseReason::BadCertificate)
        }
    }
}
