//! Mesh authorities: certificates that bind node ids to link keys (with groups and an
//! expiry), revocation lists, and the set of authorities a node trusts.
//!
//! With an authority, a node accepts any peer holding a valid certificate without a
//! per-peer trust list, and every node can check that an advert or an end-to-end session
//! for a node id comes from the key the authority bound to it (as Nebula does). Pins
//! (`--trust NODE=TOKEN`) keep working beside it; see `mesh/trust.rs` for the one decision
//! that combines them. No IO: files are read by callers.

mod armor;
pub mod cert;
pub mod revocation;

use std::collections::{BTreeMap, BTreeSet};

pub use armor::ArmorError;
pub use cert::{
    CERT_LABEL, CERT_VERSION, CertDecodeError, CertError, CertSignature, Certificate,
    SignedCertificate,
};
pub use revocation::{REVOCATION_LABEL, RevocationError, RevocationList, SignedRevocationList};

use crate::id::{GroupName, NodeId};
use crate::keys::{PublicKey, SignerKey};

/// The authorities a node trusts and what they revoked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorities {
    trusted: BTreeSet<SignerKey>,
    /// Per issuer, the newest list loaded.
    revoked: BTreeMap<SignerKey, RevocationList>,
}

/// Why a revocation list was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevocationRefused {
    /// The list's issuer is not a trusted authority.
    #[error("revocation list issued by {issuer}, an authority this node does not trust")]
    UnknownIssuer {
        /// The list's issuer.
        issuer: SignerKey,
    },
    /// A newer list of the same authority is loaded already.
    #[error("an equally new or newer revocation list of {issuer} is loaded")]
    Older {
        /// The list's issuer.
        issuer: SignerKey,
    },
}

impl Authorities {
    /// Trusts `keys` as authorities, with nothing revoked.
    pub fn new(keys: impl IntoIterator<Item = SignerKey>) -> Self {
        Self {
            trusted: keys.into_iter().collect(),
            revoked: BTreeMap::new(),
        }
    }

    /// Whether no authority is trusted (then certificates vouch for nobody).
    pub fn is_empty(&self) -> bool {
        self.trusted.is_empty()
    }

    /// The trusted authorities.
    pub fn keys(&self) -> impl Iterator<Item = &SignerKey> {
        self.trusted.iter()
    }

    /// Takes a verified revocation list of a trusted authority, replacing an older one.
    ///
    /// # Errors
    /// [`RevocationRefused`] for an untrusted issuer or a list no newer than the loaded one.
    pub fn revoke(&mut self, list: &SignedRevocationList) -> Result<(), RevocationRefused> {
        let issuer = list.list.issuer;
        if !self.trusted.contains(&issuer) {
            return Err(RevocationRefused::UnknownIssuer { issuer });
        }
        if let Some(old) = self.revoked.get(&issuer)
            && old.issued_at_ms >= list.list.issued_at_ms
        {
            return Err(RevocationRefused::Older { issuer });
        }
        self.revoked.insert(issuer, list.list.clone());
        Ok(())
    }

    /// Whether `serial` of `issuer` is revoked.
    pub fn is_revoked(&self, issuer: &SignerKey, serial: u64) -> bool {
        self.revoked
            .get(issuer)
            .is_some_and(|list| list.serials.contains(&serial))
    }

    /// Checks that `cert` is a valid certificate of a trusted authority binding `node` to
    /// `key` at `now_ms`; returns the node's groups.
    ///
    /// # Errors
    /// The [`CertError`] that makes it fail.
    pub fn check<'a>(
        &self,
        cert: &'a SignedCertificate,
        node: &NodeId,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<&'a [GroupName], CertError> {
        self.check_with(cert, node, key, now_ms, CertSignature::Unchecked)
    }

    /// [`Authorities::check`], skipping the signature of bytes checked before.
    ///
    /// # Errors
    /// The [`CertError`] that makes it fail.
    pub fn check_with<'a>(
        &self,
        cert: &'a SignedCertificate,
        node: &NodeId,
        key: &PublicKey,
        now_ms: u64,
        signature: CertSignature,
    ) -> Result<&'a [GroupName], CertError> {
        let issuer = cert.cert.issuer;
        if !self.trusted.contains(&issuer) {
            return Err(CertError::UnknownIssuer { issuer });
        }
        if self.is_revoked(&issuer, cert.cert.serial) {
            return Err(CertError::Revoked {
                serial: cert.cert.serial,
            });
        }
        cert.check_binding_with(node, key, now_ms, signature)?;
        Ok(&cert.cert.groups)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{LinkKeypair, SigningKeypair};

    fn cert(serial: u64, ca: &SigningKeypair, key: PublicKey) -> SignedCertificate {
        Certificate {
            version: CERT_VERSION,
            serial,
            node: NodeId::new("n1").unwrap(),
            key,
            groups: Vec::new(),
            not_before_ms: 0,
            not_after_ms: 10,
            issuer: ca.public(),
        }
        .sign(ca)
    }

    #[test]
    fn only_trusted_unrevoked_certificates_vouch() {
        let ca = SigningKeypair::from_private([1; 32]);
        let stranger = SigningKeypair::from_private([2; 32]);
        let key = LinkKeypair::from_private([3; 32]).public();
        let node = NodeId::new("n1").unwrap();
        let mut authorities = Authorities::new([ca.public()]);
        assert!(
            authorities
                .check(&cert(1, &ca, key), &node, &key, 5)
                .is_ok()
        );
        assert!(matches!(
            authorities.check(&cert(1, &stranger, key), &node, &key, 5),
            Err(CertError::UnknownIssuer { .. })
        ));
        let list = RevocationList {
            issuer: ca.public(),
            issued_at_ms: 1,
            serials: [1].into(),
        }
        .sign(&ca);
        authorities.revoke(&list).unwrap();
        assert_eq!(
            authorities.check(&cert(1, &ca, key), &node, &key, 5),
            Err(CertError::Revoked { serial: 1 })
        );
        assert!(
            authorities
                .check(&cert(2, &ca, key), &node, &key, 5)
                .is_ok()
        );
        assert!(matches!(
            authorities.revoke(&list),
            Err(RevocationRefused::Older { .. })
        ));
        let foreign = RevocationList {
            issuer: stranger.public(),
            issued_at_ms: 9,
            serials: [2].into(),
        }
        .sign(&stranger);
        assert!(matches!(
            authorities.revoke(&foreign),
            Err(RevocationRefused::UnknownIssuer { .. })
        ));
    }
}
