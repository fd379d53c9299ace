//! One node's link-state advertisement: its links, services and work types, signed by the
//! node's own link key (XEdDSA), so nobody can speak for another node's id or replay it
//! with a new epoch.
//!
//! Owns the advert's shape, its limits and its signature. Whether the signing key may speak
//! for the node id is `trust.rs`'s decision; what to store is `lsdb.rs`'s. No IO.

use serde::{Deserialize, Serialize};

use crate::ca::SignedCertificate;
use crate::id::{NodeId, ServiceName};
use crate::keys::succession::MAX_CHAIN;
use crate::keys::{LinkKeypair, PublicKey, SignatureBytes, SignedSuccession, xeddsa};
use crate::mesh::route::Cost;

/// Most links one advert may list: far above any real node's degree.
pub const MAX_ADVERT_LINKS: usize = 256;

/// Most services one advert may list.
pub const MAX_ADVERT_SERVICES: usize = 64;

/// Most work types one advert may list.
pub const MAX_ADVERT_WORK_TYPES: usize = 256;

/// Longest work type name in an advert (as a node's config allows).
pub const MAX_WORK_TYPE_LEN: usize = 64;

/// Signed before the advert's fields, so an advert signature never stands for anything else.
const SIGNING_CONTEXT: &[u8] = b"warren advert v3\0";

/// One node's link-state advertisement, flooded across the mesh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Advert {
    /// The node that issued the advert.
    pub origin: NodeId,
    /// The origin's static link key, which signed the advert.
    pub key: PublicKey,
    /// The origin's start time (ms since the UNIX epoch); a restart has a newer epoch.
    pub epoch: u64,
    /// Increases with every advert within an epoch.
    pub seq: u64,
    /// Wall-clock time of issue (ms since the UNIX epoch), for display only (Receptor's
    /// advert `Time`); never used to order adverts.
    pub issued_at_ms: u64,
    /// The origin's up links, sorted by peer.
    pub links: Vec<AdvertLink>,
    /// The services the origin offers.
    pub services: Vec<ServiceName>,
    /// The work types the origin can run.
    pub work_types: Vec<String>,
    /// The origin's certificate, when it has one: what binds `key` to `origin` at nodes that
    /// trust its authority.
    pub cert: Option<Box<SignedCertificate>>,
    /// The origin's key successions, oldest first, ending at `key` (after `keygen
    /// --rotate`): how a node that pinned or first saw an older key follows it.
    pub successions: Vec<SignedSuccession>,
    /// XEdDSA signature by `key` over everything above.
    pub signature: SignatureBytes,
}

/// One link as its origin sees it: half of an undirected link in the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertLink {
    /// The node at the other end.
    pub peer: NodeId,
    /// The cost the origin gives the link.
    pub cost: Cost,
}

/// Why an advert's shape is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    /// Over one of the count limits.
    #[error("advert lists too many {what} ({count}, limit {limit})")]
    TooMany {
        /// Links, services or work types.
        what: &'static str,
        /// How many it lists.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A work type name that no node's config could hold.
    #[error("advert names an invalid work type")]
    BadWorkType,
    /// The certificate names another node or key.
    #[error("advert's certificate is for another node or key")]
    CertMismatch,
    /// The key successions do not end at the advert's key.
    #[error("advert's key successions do not end at its key")]
    SuccessionMismatch,
}

/// The fields the signature covers, borrowed.
#[derive(Serialize)]
struct SignedFields<'a> {
    origin: &'a NodeId,
    key: &'a PublicKey,
    epoch: u64,
    seq: u64,
    issued_at_ms: u64,
    links: &'a [AdvertLink],
    services: &'a [ServiceName],
    work_types: &'a [String],
    cert: &'a Option<Box<SignedCertificate>>,
    successions: &'a [SignedSuccession],
}

impl Advert {
    /// Whether this advert supersedes `other` from the same origin: a newer epoch, or the
    /// same epoch and a higher sequence number.
    pub fn is_newer_than(&self, other: &Self) -> bool {
        (self.epoch, self.seq) > (other.epoch, other.seq)
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let fields = SignedFields {
            origin: &self.origin,
            key: &self.key,
            epoch: self.epoch,
            seq: self.seq,
            issued_at_ms: self.issued_at_ms,
            links: &self.links,
            services: &self.services,
            work_types: &self.work_types,
            cert: &self.cert,
            successions: &self.successions,
        };
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(&fields).expect("invariant: adverts serialise"));
        bytes
    }

    /// Signs the advert with its origin's key pair (setting `key` to its public half).
    pub fn sign(mut self, keys: &LinkKeypair, nonce_seed: &[u8; 64]) -> Self {
        self.key = keys.public();
        self.signature = SignatureBytes(xeddsa::sign(keys, &self.signed_bytes(), nonce_seed));
        self
    }

    /// Whether `key` signed this advert.
    pub fn has_valid_signature(&self) -> bool {
        xeddsa::verify(&self.key, &self.signed_bytes(), &self.signature.0)
    }

    /// Whether `key`, made ready beforehand, is the advert's key and signed it.
    pub fn is_signed_by(&self, key: &xeddsa::VerifyingKey) -> bool {
        *key.public() == self.key && key.verify(&self.signed_bytes(), &self.signature.0)
    }

    /// Checks the advert's limits and consistency (not its signature).
    ///
    /// # Errors
    /// The first [`ShapeError`] found.
    pub fn check_shape(&self) -> Result<(), ShapeError> {
        let limits = [
            ("links", self.links.len(), MAX_ADVERT_LINKS),
            ("services", self.services.len(), MAX_ADVERT_SERVICES),
            ("work types", self.work_types.len(), MAX_ADVERT_WORK_TYPES),
            ("key successions", self.successions.len(), MAX_CHAIN),
        ];
        for (what, count, limit) in limits {
            if count > limit {
                return Err(ShapeError::TooMany { what, count, limit });
            }
        }
        if !self.work_types.iter().all(|w| is_work_type_name(w)) {
            return Err(ShapeError::BadWorkType);
        }
        if let Some(cert) = &self.cert
            && (cert.cert.node != self.origin || cert.cert.key != self.key)
        {
            return Err(ShapeError::CertMismatch);
        }
        if self
            .successions
            .last()
            .is_some_and(|s| s.new_key() != self.key)
        {
            return Err(ShapeError::SuccessionMismatch);
        }
        Ok(())
    }
}

/// Whether `name` is a work type name a node could offer: what configs allow, so nothing a
/// peer advertises can smuggle control characters into an operator's terminal.
pub fn is_work_type_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_WORK_TYPE_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An advert of `origin` signed by `keys`, with the given version and links.
    pub(crate) fn signed(
        origin: &str,
        keys: &LinkKeypair,
        epoch: u64,
        seq: u64,
        links: &[(&str, u32)],
    ) -> Advert {
        Advert {
            origin: NodeId::new(origin).unwrap(),
            key: keys.public(),
            epoch,
            seq,
            issued_at_ms: epoch + seq,
            links: links
                .iter()
                .map(|&(peer, cost)| AdvertLink {
                    peer: NodeId::new(peer).unwrap(),
                    cost: Cost::from_millis(cost),
                })
                .collect(),
            services: vec![ServiceName::new("control").unwrap()],
            work_types: vec!["command".to_owned()],
            cert: None,
            successions: Vec::new(),
            signature: SignatureBytes([0; 64]),
        }
        .sign(keys, &[0; 64])
    }

    #[test]
    fn a_signed_advert_verifies_and_any_change_breaks_it() {
        let keys = LinkKeypair::from_private([3; 32]);
        let advert = signed("n1", &keys, 5, 1, &[("n2", 1000)]);
        assert!(advert.has_valid_signature());
        let mut bumped = advert.clone();
        bumped.epoch = u64::MAX;
        assert!(!bumped.has_valid_signature(), "a replay with a huge epoch");
        let mut renamed = advert.clone();
        renamed.origin = NodeId::new("n9").unwrap();
        assert!(!renamed.has_valid_signature());
        let mut rekeyed = advert;
        rekeyed.key = LinkKeypair::from_private([4; 32]).public();
        assert!(
            !rekeyed.has_valid_signature(),
            "another key cannot claim it"
        );
    }

    #[test]
    fn shape_limits_and_work_type_names() {
        let keys = LinkKeypair::from_private([3; 32]);
        let mut advert = signed("n1", &keys, 5, 1, &[]);
        assert_eq!(advert.check_shape(), Ok(()));
        advert.work_types = vec!["\u{1b}]0;pwned\u{7}".to_owned()];
        assert_eq!(advert.check_shape(), Err(ShapeError::BadWorkType));
        advert.work_types = vec!["w".to_owned(); MAX_ADVERT_WORK_TYPES + 1];
        assert!(matches!(
            advert.check_shape(),
            Err(ShapeError::TooMany { .. })
        ));
    }
}
