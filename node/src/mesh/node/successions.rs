//! Key rotation on the mesh: adopting this node's new key (a reload after `warren keygen
//! --rotate`), and following the successions that pinned peers present in their hellos and
//! adverts.
//!
//! Links and end-to-end sessions made under the old key keep running (their Noise state no
//! longer needs it); new handshakes and adverts use the new key, and every advert and hello
//! carries the succession chain so that peers which pinned an older key can follow it.
//!
//! A chain is followed only once its presenter proved it holds the chain's last key (the
//! link handshake authenticated it, or it signed the advert), so a pinned node cannot name
//! someone else's public key as its successor; nor may a successor be a key that already
//! speaks for another node here (a trust entry, a stored advert of another origin, a link
//! with another peer, or a certificate the presenter shows for another node).

use std::time::Instant;

use super::{Event, MeshNode};
use crate::ca::SignedCertificate;
use crate::id::NodeId;
use crate::keys::succession::{self, SuccessionError};
use crate::keys::{LinkKeypair, PublicKey, SignedSuccession};
use crate::mesh::succession::SuccessionRefusal;

/// Why a new key was not adopted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RotateError {
    /// The succession chain does not hold up.
    #[error("the key succession chain is invalid: {0}")]
    Chain(#[from] SuccessionError),
    /// The chain does not lead from the running key to the new one.
    #[error(
        "no key succession leads from the running key {running} to {new}; \
         rotate with `warren keygen --rotate` (or restart the node to start afresh)"
    )]
    NotASuccessor {
        /// The key the node runs with.
        running: PublicKey,
        /// The key offered.
        new: PublicKey,
    },
}

impl MeshNode {
    /// Adopts `keys`, which `chain` (this node's successions, oldest first) must lead to
    /// from the running key, with `cert` (for the new key, or none): new links, sessions
    /// and adverts use it at once, a new advert carrying the chain is flooded, and running
    /// links and sessions are left alone.
    ///
    /// # Errors
    /// [`RotateError`] when the chain is invalid or does not lead from the running key.
    pub fn rotate_key(
        &mut self,
        now: Instant,
        keys: LinkKeypair,
        chain: Vec<SignedSuccession>,
        cert: Option<SignedCertificate>,
    ) -> Result<(), RotateError> {
        let running = self.config.keys.public();
        let new = keys.public();
        succession::check_chain(&chain)?;
        if !succession::leads(&chain, &running, &new) {
            return Err(RotateError::NotASuccessor { running, new });
        }
        let former: Vec<PublicKey> = chain.iter().map(SignedSuccession::old).collect();
        self.lsdb.set_key(new, former);
        self.sessions.set_keys(keys.clone());
        self.config.keys = keys;
        self.config.successions = chain;
        self.config.cert = cert;
        tracing::info!(old = %running, %new, "adopted the rotated link key: new links and sessions use it; running ones keep theirs");
        self.originate(now);
        Ok(())
    }

    /// Whether the chain `node` shows with `key` is worth judging: a local trust entry (a
    /// pin to `node`, or an unpinned key) names a key of it, and `key` is not its current
    /// one already. Cheap: callers ask before proving `key`.
    pub(super) fn would_follow(
        &self,
        node: &NodeId,
        key: &PublicKey,
        chain: &[SignedSuccession],
    ) -> bool {
        let trust = &self.config.trust;
        !chain.is_empty() && !trust.anchors_for(node).is_empty() && !trust.is_current_for(node, key)
    }

    /// Follows the successions `node` presents with `key`, which it proved it holds (in its
    /// hello, after the handshake; in its advert, after the signature check), and `cert`,
    /// the certificate it shows: accepted statements are logged and handed to the driver to
    /// persist; refusals are logged (at most once a second).
    pub(super) fn learn_successions(
        &mut self,
        now: Instant,
        node: &NodeId,
        key: &PublicKey,
        chain: &[SignedSuccession],
        cert: Option<&SignedCertificate>,
    ) {
        if !self.would_follow(node, key, chain) {
            return;
        }
        let trust = &self.config.trust;
        let anchors = trust.anchors_for(node);
        let in_use = trust.keys_in_use();
        let ends_at_key = chain.last().is_some_and(|s| s.new_key() == *key);
        let (accepted, refusal) = match ends_at_key.then(|| self.key_of_other(node, chain, cert)) {
            Some(Some(refusal)) => (Vec::new(), Some(refusal)),
            _ => {
                let book = &mut self.config.trust.successions;
                book.learn_chain(node, &anchors, &in_use, chain, key)
            }
        };
        for statement in accepted {
            tracing::info!(
                %node, old = %statement.old(), new = %statement.new_key(),
                "accepted a key rotation signed by the trusted key: the trust entry now stands for the new key"
            );
            self.events.push_back(Event::SuccessionAccepted {
                node: node.clone(),
                statement,
            });
        }
        if let Some(refusal) = refusal
            && self.succession_log.allow(now)
        {
            tracing::warn!(%node, %key, %refusal, "refused a key succession (further refusals within a second are not logged)");
        }
    }
}

impl MeshNode {
    /// The refusal of a chain that `node` shows when one of its successors already speaks
    /// for another node here: the key of another origin's stored advert or of another
    /// peer's link (pinned, certified or first seen there), or a key the certificate shown
    /// binds to another node. (Trust entries are `keys_in_use`, checked with the chain.)
    fn key_of_other(
        &self,
        node: &NodeId,
        chain: &[SignedSuccession],
        cert: Option<&SignedCertificate>,
    ) -> Option<SuccessionRefusal> {
        let shown = cert.map(|c| (&c.cert.node, c.cert.key));
        let linked = (self.links.values())
            .filter(|slot| slot.binding.is_some())
            .filter_map(|slot| slot.peer.as_ref().map(|(n, k)| (n, *k)));
        let advertised = self.lsdb.adverts().map(|a| (&a.origin, a.key));
        let mut holders = shown.into_iter().chain(linked).chain(advertised);
        let (other, key) = holders
            .find(|(other, key)| *other != node && chain.iter().any(|s| s.new_key() == *key))?;
        Some(SuccessionRefusal::KeyOfOtherNode {
            key,
            other: other.clone(),
        })
    }
}

#[cfg(test)]
impl MeshNode {
    /// Drops the end-to-end session with `node`, as its idle timeout would.
    pub(crate) fn forget_session(&mut self, node: &NodeId) {
        self.sessions.forget(node);
    }
}
