//! Key rotation on the mesh: adopting this node's new key (a reload after `warren keygen
//! --rotate`), and following the successions that pinned peers present in their hellos and
//! adverts.
//!
//! Links and end-to-end sessions made under the old key keep running (their Noise state no
//! longer needs it); new handshakes and adverts use the new key, and every advert and hello
//! carries the succession chain so that peers which pinned an older key can follow it.

use std::time::Instant;

use super::{Event, MeshNode};
use crate::ca::SignedCertificate;
use crate::id::NodeId;
use crate::keys::succession::{self, SuccessionError};
use crate::keys::{LinkKeypair, PublicKey, SignedSuccession};

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

    /// Follows the successions `node` presents with `key` (in its hello or advert) when a
    /// local trust entry (a pin to `node`, or an unpinned key) names an older key of it:
    /// accepted statements are logged and handed to the driver to persist; refusals are
    /// logged (at most once a second).
    pub(super) fn learn_successions(
        &mut self,
        now: Instant,
        node: &NodeId,
        key: &PublicKey,
        chain: &[SignedSuccession],
    ) {
        let trust = &self.config.trust;
        let anchors = trust.anchors_for(node);
        if anchors.is_empty() || chain.is_empty() || trust.is_current_for(node, key) {
            return;
        }
        let in_use = trust.keys_in_use();
        let book = &mut self.config.trust.successions;
        let (accepted, refusal) = book.learn_chain(node, &anchors, &in_use, chain);
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

#[cfg(test)]
impl MeshNode {
    /// Drops the end-to-end session with `node`, as its idle timeout would.
    pub(crate) fn forget_session(&mut self, node: &NodeId) {
        self.sessions.forget(node);
    }
}
