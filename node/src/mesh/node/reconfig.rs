//! Changing a running node's configuration (a reload): whom it trusts and which peers it
//! dials. Links, database entries and streams that the new configuration no longer admits
//! are closed, removed and reset; everything else is left alone.

use std::time::Instant;

use super::links::admitted;
use super::{LinkId, MeshNode};
use crate::ca::SignedCertificate;
use crate::mesh::message::CloseReason;
use crate::mesh::peers::PeerSlotId;
use crate::mesh::trust::{self, Binding, TrustDecision, TrustPolicy};

impl MeshNode {
    /// Replaces the trust policy and this node's certificate. Every link is judged again
    /// (one whose peer is no longer admitted closes with the reason), the database drops
    /// the adverts nothing vouches for any more, and the sessions and streams with those
    /// nodes end. A new certificate goes out in the next advert and hellos.
    pub fn set_trust(
        &mut self,
        now: Instant,
        mut policy: TrustPolicy,
        cert: Option<SignedCertificate>,
    ) {
        let cert_changed = self.config.cert != cert;
        // Successions accepted while running stay accepted (the store has them too).
        policy.successions.merge(&self.config.trust.successions);
        self.config.trust = policy;
        self.config.cert = cert;
        self.rejudge_links(now);
        let wall = self.wall_ms(now);
        let removed = self.lsdb.rejudge(wall, &self.config.trust);
        for node in &removed {
            tracing::warn!(%node, "no longer trusted: its adverts, session and streams are dropped");
            self.sessions.forget(node);
            self.fail_pending(node, crate::mesh::message::ResetReason::Untrusted);
            let (mut events, mut out) = (Vec::new(), Vec::new());
            self.streams.drop_peer(node, &mut events, &mut out);
            self.emit_stream(events, out);
        }
        if !removed.is_empty() {
            self.routes_dirty = true;
        }
        if cert_changed || !removed.is_empty() {
            self.originate(now);
        }
    }

    /// Closes the links whose peers the current policy no longer admits.
    fn rejudge_links(&mut self, now: Instant) {
        let wall = self.wall_ms(now);
        let mut refused: Vec<(LinkId, CloseReason)> = Vec::new();
        for (id, slot) in &mut self.links {
            let (Some((node, key)), Some(binding)) = (&slot.peer, &slot.binding) else {
                continue;
            };
            if *binding == Binding::FirstSeen {
                continue;
            }
            let cert = slot.peer_cert.as_ref();
            let decision = trust::decide_peer(&self.config.trust, key, node, cert, wall);
            // A link made before its peer rotated its key runs on (its jobs too); only new
            // handshakes with the retired key are refused.
            if matches!(decision, TrustDecision::Superseded { .. }) {
                continue;
            }
            match admitted(*id, node, key, decision) {
                Ok(binding) => slot.binding = Some(binding),
                Err(reason) => {
                    tracing::warn!(link = %id, peer = %node, %key, %reason, "closing a link the new trust settings refuse");
                    refused.push((*id, reason));
                }
            }
        }
        for (id, reason) in refused {
            self.close_link(now, id, reason);
        }
    }

    /// Stops dialling a configured peer for good and closes the link it dialled, telling
    /// the peer it was removed. A link the peer itself dialled stays.
    pub fn remove_peer(&mut self, now: Instant, slot: PeerSlotId) {
        self.peers.remove(slot);
        let dialled: Vec<LinkId> = (self.links.iter())
            .filter(|(_, s)| s.slot == Some(slot))
            .map(|(id, _)| *id)
            .collect();
        for id in dialled {
            if let Some(s) = self.links.get_mut(&id) {
                s.slot = None;
            }
            self.close_link(now, id, CloseReason::Removed);
        }
    }
}
