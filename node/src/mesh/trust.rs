//! Whom a node believes: which link key may speak for which node id.
//!
//! The one place that decides it, for neighbours (may this peer link?) and for far nodes
//! (may this advert, or this end-to-end session, speak for that id?). Three sources vouch:
//! local trust entries (a key, optionally pinned to one node id), certificates of trusted
//! mesh authorities, and — only for far nodes of a mesh that uses no authority — the first
//! key seen for an id, which signed adverts then keep from being taken over. Local pins win
//! over certificates. No IO; the time is passed in.

use crate::ca::{Authorities, CertError, SignedCertificate};
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
}

impl From<Vec<TrustEntry>> for TrustPolicy {
    /// Trust entries alone, no authority.
    fn from(entries: Vec<TrustEntry>) -> Self {
        Self {
            entries,
            authorities: Authorities::default(),
        }
    }
}

/// How a key came to be accepted for a node id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding {
    /// A local trust entry pins the id to this key.
    Pinned,
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
    decide(policy, key, claimed, cert, now_ms, false)
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
    decide(policy, key, claimed, cert, now_ms, true)
}

fn decide(
    policy: &TrustPolicy,
    key: &PublicKey,
    claimed: &NodeId,
    cert: Option<&SignedCertificate>,
    now_ms: u64,
    remote: bool,
) -> TrustDecision {
    if let Some(decision) = decide_by_entries(&policy.entries, key, claimed) {
        return decision;
    }
    let key_trusted = policy
        .entries
        .iter()
        .any(|e| e.key == *key && e.node.is_none());
    let certified = cert.map(|c| {
        policy
            .authorities
            .check(c, claimed, key, now_ms)
            .map(|groups| Binding::Certified {
                serial: c.cert.serial,
                groups: groups.to_vec(),
            })
    });
    match (certified, key_trusted) {
        (Some(Ok(binding)), _) => TrustDecision::Trusted(binding),
        (_, true) => TrustDecision::Trusted(Binding::TrustedKey),
        (Some(Err(e)), false) => TrustDecision::BadCertificate(e),
        (None, false) if remote && policy.authorities.is_empty() => {
            TrustDecision::Trusted(Binding::FirstSeen)
        }
        (None, false) => TrustDecision::Untrusted,
    }
}

/// What pins alone decide: `Some` when a pin settles it either way.
fn decide_by_entries(
    entries: &[TrustEntry],
    key: &PublicKey,
    claimed: &NodeId,
) -> Option<TrustDecision> {
    let mut pinned_elsewhere = None;
    for entry in entries.iter().filter(|e| e.key == *key) {
        match &entry.node {
            Some(node) if node == claimed => return Some(TrustDecision::Trusted(Binding::Pinned)),
            Some(node) => {
                pinned_elsewhere.get_or_insert_with(|| node.clone());
            }
            None => {}
        }
    }
    if let Some(expected) = pinned_elsewhere {
        return Some(TrustDecision::PinnedToOther { expected });
    }
    if entries.iter().any(|e| e.node.as_ref() == Some(claimed)) {
        return Some(TrustDecision::IdPinnedToOtherKey);
    }
    None
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
            authorities: Authorities::default(),
        }
    }

    fn peer(policy: &TrustPolicy, k: u8, claimed: &str) -> TrustDecision {
        decide_peer(policy, &key(k), &id(claimed), None, 0)
    }

    #[test]
    fn pinned_key_only_as_its_id() {
        let p = policy(&[(1, Some("a"))]);
        assert_eq!(peer(&p, 1, "a"), TrustDecision::Trusted(Binding::Pinned));
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
}
