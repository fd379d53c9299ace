//! Whom a node accepts as a peer: trusted link keys, each optionally pinned to a node id.
//!
//! The one place that decides whether a key may speak as a node id. No IO.

use crate::id::NodeId;
use crate::keys::PublicKey;

/// A trusted link key, optionally pinned to one node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    /// The peer's public link key.
    pub key: PublicKey,
    /// When set, the key is accepted only as this node id.
    pub node: Option<NodeId>,
}

/// Whether a peer presenting a key may be linked as the node id it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// The key is trusted as this node id.
    Trusted,
    /// The key is not in the trust list.
    Untrusted,
    /// The key is trusted, but only as another node id.
    PinnedToOther {
        /// The node id the key is pinned to.
        expected: NodeId,
    },
    /// The key is trusted unpinned, but the claimed id is pinned to other keys: the peer
    /// is impersonating a pinned node.
    IdPinnedToOtherKey,
}

impl TrustDecision {
    /// Whether the link may go up.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Self::Trusted)
    }
}

/// Decides whether a peer presenting `key` is accepted as `claimed`.
///
/// A key pinned to a node id is accepted only as that id; an unpinned key is accepted as any
/// id that no other key is pinned to.
pub fn decide(entries: &[TrustEntry], key: &PublicKey, claimed: &NodeId) -> TrustDecision {
    let mut pinned_elsewhere = None;
    let mut found = false;
    for entry in entries.iter().filter(|e| e.key == *key) {
        found = true;
        match &entry.node {
            Some(node) if node != claimed => {
                pinned_elsewhere.get_or_insert_with(|| node.clone());
            }
            Some(_) => return TrustDecision::Trusted,
            None => {}
        }
    }
    if !found {
        return TrustDecision::Untrusted;
    }
    if let Some(expected) = pinned_elsewhere {
        return TrustDecision::PinnedToOther { expected };
    }
    if entries.iter().any(|e| e.node.as_ref() == Some(claimed)) {
        TrustDecision::IdPinnedToOtherKey
    } else {
        TrustDecision::Trusted
    }
}
