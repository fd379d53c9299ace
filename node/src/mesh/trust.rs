//! Whom a node believes: which link key may speak for which node id.
//!
//! The one place that decides it, for neighbours (may this peer link?) and for far nodes
//! (may this advert, or this end-to-end session, speak for that id?). Three sources vouch:
//! local trust entries (a key, optionally pinned to one node id), certificates of trusted
//! mesh authorities, and — only for far nodes of a mesh that uses no authority — the first
//! key seen for an id, which signed adverts then keep from being taken over. Local pins win
//! over certificates. A pin follows the key successions accepted here (`succession.rs`): it
//! stands for the pinned peer's current key, and the keys it retired are refused. No IO; the
//! time is passed in.

use std::collections::BTreeSet;

use super::succession::Successions;
use crate::ca::{Authorities, CertError, CertSignature, SignedCertificate};
use crate::id::{GroupName, NodeId};
use crate::keys::PublicKey;

/// A trusted link key, optionally pinned to one node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustEntry {
    /// The peer's public link key.
    pub key: PublicKey,
    /// When set, the key is accepted only as this node id.
    pub node: Option<NodeId>,
}

/// Everything a node trusts: its entries and its authorities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// Trusted keys and pins.
    pub entries: Vec<TrustEntry>,
    /// Trusted mesh authorities and their revocations.
    pub authorities: Authorities,
    /// Key successions accepted for pinned peers.
    pub successions: Successions,
}

impl From<Vec<TrustEntry>> for TrustPolicy {
    /// Trust entries alone, no authority.
    fn from(entries: Vec<TrustEntry>) -> Self {
        Self {
            entries,
            ..Self::default()
        }
    }
}

impl TrustPolicy {
    /// The configured keys that may speak for `node`: those pinned to it and the unpinned
    /// ones (before successions). A key succession must start from one of them.
    pub fn anchors_for(&self, node: &NodeId) -> Vec<PublicKey> {
        (self.entries.iter())
            .filter(|e| e.node.as_ref().is_none_or(|n| n == node))
            .map(|e| e.key)
            .collect()
    }

    /// The current key of `node` by its pin, following accepted successions.
    pub fn pinned_key(&self, node: &NodeId) -> Option<PublicKey> {
        self.pin_of(node).map(|(_, current)| current)
    }

    /// `node`'s pin: the key it names and the node's current key (after the successions
    /// accepted here).
    pub fn pin_of(&self, node: &NodeId) -> Option<(PublicKey, PublicKey)> {
        (self.entries.iter())
            .find(|e| e.node.as_ref() == Some(node))
            .map(|e| (e.key, self.successions.current(&e.key)))
    }

    /// Whether `key` is the current key of an anchor of `node` (nothing to follow).
    pub fn is_current_for(&self, node: &NodeId, key: &PublicKey) -> bool {
        (self.anchors_for(node).iter()).any(|a| self.successions.current(a) == *key)
    }

    /// Every key trusted here for something (configured, and the current keys of pins): no
    /// succession may hand one of them to another node.
    pub fn keys_in_use(&self) -> BTreeSet<PublicKey> {
        (self.entries.iter())
            .flat_map(|e| [e.key, self.successions.current(&e.key)])
            .collect()
    }
}

/// How a key came to be accepted for a node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A local trust entry pins the id to this key.
    Pinned {
        /// The key the pin names, which the node's current key succeeded through key
        /// rotations accepted here (the current key itself when it never rotated): what
        /// the node's work is held under, so that a rotation keeps its units.
        anchor: PublicKey,
    },
    /// A local trust entry trusts the key unpinned (as any id no other key is pinned to).
    TrustedKey,
    /// A trusted authority's certificate binds them.
    Certified {
        /// The certificate's serial.
        serial: u64,
        /// The groups the certificate gives the node.
        groups: Vec<GroupName>,
    },
    /// Nothing local vouches: the first key seen for the id keeps it. Only for far nodes,
    /// and only where no authority is configured (a mesh run on pins alone).
    FirstSeen,
}

impl Binding {
    /// The node's groups (only certificates give groups).
    pub fn groups(&self) -> &[GroupName] {
        match self {
            Self::Certified { groups, .. } => groups,
            _ => &[],
        }
    }

    /// Whether something this node configured vouches for the binding.
    pub fn is_verified(&self) -> bool {
        !matches!(self, Self::FirstSeen)
    }
}

/// Whether a key may speak as the node id it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustDecision {
    /// Yes, and why.
    Trusted(Binding),
    /// Nothing vouches for the key.
    Untrusted,
    /// The key is trusted, but only as another node id.
    PinnedToOther {
        /// The node id the key is pinned to.
        expected: NodeId,
    },
    /// The claimed id is pinned to other keys: the peer impersonates a pinned node.
    IdPinnedToOtherKey,
    /// The only voucher was a certificate, and it does not hold.
    BadCertificate(CertError),
    /// The key was pinned to the claimed id, but the node retired it (a key succession
    /// accepted here): only its successor speaks for the id now.
    Superseded {
        /// The node's current key.
        successor: PublicKey,
    },
}

impl TrustDecision {
    /// Whether the key is accepted.
    pub fn is_trusted(&self) -> bool {
        matches!(self, Self::Trusted(_))
    }
}

/// Decides whether a neighbour presenting `key` (proven by the link handshake) and `cert`
/// is accepted as `claimed` at wall-clock time `now_ms`.
pub fn decide_peer(
    policy: &TrustPolicy,
    key: &PublicKey,
    claimed: &NodeId,
    cert: Option<&SignedCertificate>,
    now_ms: u64,
) -> TrustDecision {
    decide(
        policy,
        key,
        claimed,
        cert,
        now_ms,
        false,
        CertSignature::Unchecked,
    )
}

/// Decides whether `key` may speak for the far node `claimed` (its adverts, its end-to-end
/// sessions). Like [`decide_peer`], but a mesh without authorities accepts unknown keys
/// as [`Binding::FirstSeen`].
pub fn decide_remote(
    policy: &TrustPolicy,
    key: &PublicKey,
    claimed: &NodeId,
    cert: Option<&SignedCertificate>,
    now_ms: u64,
) -> TrustDecision {
    decide(
        policy,
        key,
        claimed,
        cert,
        now_ms,
        true,
        CertSignature::Unchecked,
    )
}

/// [`decide_remote`] for a certificate whose exact bytes passed the signature check before
/// (an origin's next advert carrying the certificate its stored one did).
pub fn decide_remote_with(
    policy: &TrustPolicy,
    key: &PublicKey,
    claimed: &NodeId,
    cert: Option<&SignedCertificate>,
    now_ms: u64,
    signature: CertSignature,
) -> TrustDecision {
    decide(policy, key, claimed, cert, now_ms, true, signature)
}

fn decide(
    policy: &TrustPolicy,
    key: &PublicKey,
    claimed: &NodeId,
    cert: Option<&SignedCertificate>,
    now_ms: u64,
    remote: bool,
    signature: CertSignature,
) -> TrustDecision {
    let scan = scan_entries(policy, key, claimed);
    if let Some(decision) = scan.decision {
        return decision;
    }
    let certified = cert.map(|c| {
        policy
            .authorities
            .check_with(c, claimed, key, now_ms, signature)
            .map(|groups| Binding::Certified {
                serial: c.cert.serial,
                groups: groups.to_vec(),
            })
    });
    match (certified, scan.key_trusted) {
        (Some(Ok(binding)), _) => TrustDecision::Trusted(binding),
        (_, true) => TrustDecision::Trusted(Binding::TrustedKey),
        (Some(Err(e)), false) => TrustDecision::BadCertificate(e),
        (None, false) if remote && policy.authorities.is_empty() => {
            TrustDecision::Trusted(Binding::FirstSeen)
        }
        (None, false) => TrustDecision::Untrusted,
    }
}

/// What one pass over the trust entries found for a key and the id it claims.
struct EntryScan {
    /// What pins alone decide: `Some` when a pin settles it either way.
    decision: Option<TrustDecision>,
    /// Whether an unpinned entry's current key is the key.
    key_trusted: bool,
}

/// Where `key` lies on the succession path of the configured key `anchor`: `None` off the
/// path, else whether it is the current key, and the current key. Allocates nothing when
/// no succession was accepted (every check of every advert comes here, once per entry).
fn on_path(
    successions: &Successions,
    anchor: &PublicKey,
    key: &PublicKey,
) -> Option<(bool, PublicKey)> {
    if successions.is_empty() {
        return (anchor == key).then_some((true, *anchor));
    }
    let path = successions.path(anchor);
    let at = path.iter().position(|k| k == key)?;
    let current = *path.last()?;
    Some((at + 1 == path.len(), current))
}

/// One pass over the entries. A pin stands for the keys on its succession path: the
/// current one is the node's, the retired ones are no one's (and never another id's).
fn scan_entries(policy: &TrustPolicy, key: &PublicKey, claimed: &NodeId) -> EntryScan {
    let mut pinned_elsewhere = None;
    let mut superseded = None;
    let mut id_pinned = false;
    let mut key_trusted = false;
    for entry in &policy.entries {
        id_pinned |= entry.node.as_ref() == Some(claimed);
        let Some((is_current, current)) = on_path(&policy.successions, &entry.key, key) else {
            continue;
        };
        match &entry.node {
            // An unpinned key (or its successor) is judged by the caller.
            None if is_current => key_trusted = true,
            None => superseded = Some(current),
            Some(node) if node == claimed && is_current => {
                return EntryScan {
                    decision: Some(TrustDecision::Trusted(Binding::Pinned {
                        anchor: entry.key,
                    })),
                    key_trusted,
                };
            }
            Some(node) if node == claimed => superseded = Some(current),
            Some(node) => {
                pinned_elsewhere.get_or_insert_with(|| node.clone());
            }
        }
    }
    let decision = if let Some(expected) = pinned_elsewhere {
        Some(TrustDecision::PinnedToOther { expected })
    } else if let Some(successor) = superseded {
        Some(TrustDecision::Superseded { successor })
    } else if id_pinned {
        Some(TrustDecision::IdPinnedToOtherKey)
    } else {
        None
    };
    EntryScan {
        decision,
        key_trusted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{CERT_VERSION, Certificate, RevocationList};
    use crate::keys::SigningKeypair;

    fn key(b: u8) -> PublicKey {
        PublicKey::from_bytes([b; 32])
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn policy(entries: &[(u8, Option<&str>)]) -> TrustPolicy {
        TrustPolicy {
            entries: entries
                .iter()
                .map(|&(k, node)| TrustEntry {
                    key: key(k),
                    node: node.map(id),
                })
                .collect(),
            ..TrustPolicy::default()
        }
    }

    fn peer(policy: &TrustPolicy, k: u8, claimed: &str) -> TrustDecision {
        decide_peer(policy, &key(k), &id(claimed), None, 0)
    }

    #[test]
    fn pinned_key_only_as_its_id() {
        let p = policy(&[(1, Some("a"))]);
        let pinned = Binding::Pinned { anchor: key(1) };
        assert_eq!(peer(&p, 1, "a"), TrustDecision::Trusted(pinned));
        assert_eq!(
            peer(&p, 1, "b"),
            TrustDecision::PinnedToOther { expected: id("a") }
        );
        assert_eq!(peer(&p, 2, "a"), TrustDecision::IdPinnedToOtherKey);
        assert_eq!(peer(&p, 2, "b"), TrustDecision::Untrusted);
    }

    #[test]
    fn unpinned_key_as_any_unpinned_id() {
        let p = policy(&[(1, None), (2, Some("b"))]);
        assert_eq!(
            peer(&p, 1, "x"),
            TrustDecision::Trusted(Binding::TrustedKey)
        );
        assert_eq!(peer(&p, 1, "b"), TrustDecision::IdPinnedToOtherKey);
    }

    #[test]
    fn far_nodes_are_first_seen_only_without_authorities() {
        let mut p = policy(&[]);
        let far = |p: &TrustPolicy| decide_remote(p, &key(5), &id("far"), None, 0);
        assert_eq!(far(&p), TrustDecision::Trusted(Binding::FirstSeen));
        assert_eq!(peer(&p, 5, "far"), TrustDecision::Untrusted);
        p.authorities = Authorities::new([SigningKeypair::from_private([9; 32]).public()]);
        assert_eq!(far(&p), TrustDecision::Untrusted);
    }

    #[test]
    fn certificates_vouch_unless_a_pin_says_otherwise_or_they_fail() {
        let ca = SigningKeypair::from_private([9; 32]);
        let mut p = policy(&[(7, Some("pinned"))]);
        p.authorities = Authorities::new([ca.public()]);
        let cert = |node: &str, k: u8, serial: u64| {
            Certificate {
                version: CERT_VERSION,
                serial,
                node: id(node),
                key: key(k),
                groups: vec!["workers".parse().unwrap()],
                not_before_ms: 0,
                not_after_ms: 100,
                issuer: ca.public(),
            }
            .sign(&ca)
        };
        let c = cert("n1", 3, 1);
        assert_eq!(
            decide_peer(&p, &key(3), &id("n1"), Some(&c), 50),
            TrustDecision::Trusted(Binding::Certified {
                serial: 1,
                groups: vec!["workers".parse().unwrap()]
            })
        );
        assert!(matches!(
            decide_peer(&p, &key(3), &id("n1"), Some(&c), 100),
            TrustDecision::BadCertificate(CertError::Expired { .. })
        ));
        // A certificate cannot take an id pinned locally to another key.
        let forged = cert("pinned", 3, 2);
        assert_eq!(
            decide_remote(&p, &key(3), &id("pinned"), Some(&forged), 50),
            TrustDecision::IdPinnedToOtherKey
        );
        let list = RevocationList {
            issuer: ca.public(),
            issued_at_ms: 1,
            serials: [1].into(),
        }
        .sign(&ca);
        p.authorities.revoke(&list).unwrap();
        assert_eq!(
            decide_remote(&p, &key(3), &id("n1"), Some(&c), 50),
            TrustDecision::BadCertificate(CertError::Revoked { serial: 1 })
        );
    }

    #[test]
    fn a_pin_follows_accepted_successions_and_refuses_retired_keys() {
        use crate::keys::succession::tests::{pair, step};
        let a = id("a");
        let mut p = TrustPolicy::from(vec![TrustEntry {
            key: pair(1).public(),
            node: Some(a.clone()),
        }]);
        let (accepted, refusal) = p.successions.learn_chain(
            &a,
            &p.anchors_for(&a),
            &p.keys_in_use(),
            &[step(1, 2), step(2, 3)],
            &pair(3).public(),
        );
        assert_eq!((accepted.len(), refusal), (2, None));
        let decide = |p: &TrustPolicy, k: u8, claimed: &str| {
            decide_peer(p, &pair(k).public(), &id(claimed), None, 0)
        };
        // The current key is the pin's, and the node's work stays under the pinned key.
        let anchored = Binding::Pinned {
            anchor: pair(1).public(),
        };
        assert_eq!(decide(&p, 3, "a"), TrustDecision::Trusted(anchored));
        for retired in [1, 2] {
            assert_eq!(
                decide(&p, retired, "a"),
                TrustDecision::Superseded {
                    successor: pair(3).public()
                }
            );
            // Nor may a retired key speak for any other id.
            assert_eq!(
                decide_remote(&p, &pair(retired).public(), &id("b"), None, 0),
                TrustDecision::PinnedToOther {
                    expected: a.clone()
                }
            );
        }
        assert_eq!(p.pinned_key(&a), Some(pair(3).public()));
        // The pin removed (a reload), the recorded successions vouch for nothing.
        p.entries.clear();
        assert_eq!(decide(&p, 3, "a"), TrustDecision::Untrusted);
        p.authorities = Authorities::new([SigningKeypair::from_private([9; 32]).public()]);
        assert_eq!(
            decide_remote(&p, &pair(3).public(), &a, None, 0),
            TrustDecision::Untrusted
        );
    }
}
