//! Mesh certificates: a mesh authority's signed statement that a node id belongs to a link
//! key, with the node's groups and a validity period.
//!
//! A certificate is postcard bytes (the body and the authority's Ed25519 signature over a
//! context string and the body), armoured in files. Checking one is a pure function of the
//! trusted authorities, their revocations and the time. No IO.

use serde::{Deserialize, Serialize};

use super::armor::{self, ArmorError};
use crate::id::{GroupName, NodeId};
use crate::keys::{PublicKey, SignatureBytes, SignerKey, SigningKeypair};

/// The armour label of a certificate file.
pub const CERT_LABEL: &str = "WARREN CERTIFICATE";

/// Version of the certificate body; a node refuses versions it does not know.
pub const CERT_VERSION: u8 = 1;

/// Most groups one certificate may carry.
pub const MAX_GROUPS: usize = 64;

/// Signed before the body, so a certificate signature can never stand for another document.
const SIGNING_CONTEXT: &[u8] = b"warren mesh certificate v1\0";

/// What a certificate says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// [`CERT_VERSION`].
    pub version: u8,
    /// The authority's number for it, named by revocation lists.
    pub serial: u64,
    /// The node id it binds.
    pub node: NodeId,
    /// The link key the node id belongs to.
    pub key: PublicKey,
    /// The node's groups, sorted and without duplicates.
    pub groups: Vec<GroupName>,
    /// Valid from (ms since the UNIX epoch).
    pub not_before_ms: u64,
    /// Valid until (ms since the UNIX epoch).
    pub not_after_ms: u64,
    /// The authority that signed it.
    pub issuer: SignerKey,
}

/// A certificate with its authority's signature: what nodes present and check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedCertificate {
    /// The statement.
    pub cert: Certificate,
    /// The issuer's Ed25519 signature over `SIGNING_CONTEXT` and the postcard body.
    pub signature: SignatureBytes,
}

/// Why a certificate file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertDecodeError {
    /// The armour is broken.
    #[error(transparent)]
    Armor(#[from] ArmorError),
    /// The bytes are not a certificate.
    #[error("not a warren certificate: {0}")]
    Body(#[from] postcard::Error),
    /// A certificate of a version this node does not know.
    #[error("certificate version {0} is not supported (this node knows version {CERT_VERSION})")]
    Version(u8),
}

/// Why a certificate does not vouch for a peer. `Display` is the operator's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    /// Signed by an authority this node does not trust.
    #[error("certificate issued by {issuer}, an authority this node does not trust")]
    UnknownIssuer {
        /// The issuer named by the certificate.
        issuer: SignerKey,
    },
    /// The signature does not verify.
    #[error("certificate signature is invalid")]
    BadSignature,
    /// Not valid yet.
    #[error("certificate serial {serial} is not valid before {not_before_ms} ms")]
    NotYetValid {
        /// The certificate.
        serial: u64,
        /// Its start.
        not_before_ms: u64,
    },
    /// Expired.
    #[error("certificate serial {serial} expired at {not_after_ms} ms")]
    Expired {
        /// The certificate.
        serial: u64,
        /// Its end.
        not_after_ms: u64,
    },
    /// Revoked by its authority.
    #[error("certificate serial {serial} is revoked")]
    Revoked {
        /// The certificate.
        serial: u64,
    },
    /// Issued to another node id than the one presented.
    #[error("certificate is for node {cert_node}, not {claimed}")]
    WrongNode {
        /// The node id in the certificate.
        cert_node: NodeId,
        /// The node id the peer claims.
        claimed: NodeId,
    },
    /// Issued for another key than the one the peer proved.
    #[error("certificate is for key {cert_key}, not the peer's key {key}")]
    WrongKey {
        /// The key in the certificate.
        cert_key: PublicKey,
        /// The key the peer proved in the handshake.
        key: PublicKey,
    },
    /// A malformed certificate (unsorted or too many groups, empty validity).
    #[error("certificate is malformed: {0}")]
    Malformed(&'static str),
}

impl Certificate {
    /// The bytes the authority signs.
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(self).expect("invariant: certificates serialise"));
        bytes
    }

    /// Signs the certificate with the authority's key (which must be `self.issuer`).
    pub fn sign(mut self, authority: &SigningKeypair) -> SignedCertificate {
        self.issuer = authority.public();
        self.groups.sort();
        self.groups.dedup();
        let signature = SignatureBytes(authority.sign(&self.signed_bytes()));
        SignedCertificate {
            cert: self,
            signature,
        }
    }

    /// Whether the certificate is well formed.
    fn check_shape(&self) -> Result<(), CertError> {
        if self.groups.len() > MAX_GROUPS {
            return Err(CertError::Malformed("too many groups"));
        }
        if !self.groups.windows(2).all(|w| w[0] < w[1]) {
            return Err(CertError::Malformed("groups not sorted or duplicated"));
        }
        if self.not_after_ms <= self.not_before_ms {
            return Err(CertError::Malformed("empty validity period"));
        }
        Ok(())
    }
}

/// Whether a certificate's signature is still to be checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSignature {
    /// Check it.
    Unchecked,
    /// These exact bytes (certificate and signature) passed the check before: only the
    /// rest (issuer trusted, not revoked, validity, binding) is judged again. A signature's
    /// validity never changes, so this is sound for byte-equal certificates.
    CheckedBefore,
}

impl SignedCertificate {
    /// Whether the issuer's signature verifies (the issuer may still be untrusted).
    pub fn has_valid_signature(&self) -> bool {
        self.cert
            .issuer
            .is_valid(&self.cert.signed_bytes(), &self.signature.0)
    }

    /// Checks everything but whether the issuer is trusted or the serial revoked: shape,
    /// signature, validity at `now_ms`, and that it binds `node` to `key`.
    ///
    /// # Errors
    /// The first [`CertError`] found.
    pub fn check_binding(
        &self,
        node: &NodeId,
        key: &PublicKey,
        now_ms: u64,
    ) -> Result<(), CertError> {
        self.check_binding_with(node, key, now_ms, CertSignature::Unchecked)
    }

    /// [`SignedCertificate::check_binding`], skipping the signature when the caller
    /// checked these exact bytes before (`signature`).
    ///
    /// # Errors
    /// The first [`CertError`] found.
    pub fn check_binding_with(
        &self,
        node: &NodeId,
        key: &PublicKey,
        now_ms: u64,
        signature: CertSignature,
    ) -> Result<(), CertError> {
        let cert = &self.cert;
        cert.check_shape()?;
        if &cert.node != node {
            return Err(CertError::WrongNode {
                cert_node: cert.node.clone(),
                claimed: node.clone(),
            });
        }
        if &cert.key != key {
            return Err(CertError::WrongKey {
                cert_key: cert.key,
                key: *key,
            });
        }
        if now_ms < cert.not_before_ms {
            return Err(CertError::NotYetValid {
                serial: cert.serial,
                not_before_ms: cert.not_before_ms,
            });
        }
        if now_ms >= cert.not_after_ms {
            return Err(CertError::Expired {
                serial: cert.serial,
                not_after_ms: cert.not_after_ms,
            });
        }
        if signature == CertSignature::Unchecked && !self.has_valid_signature() {
            return Err(CertError::BadSignature);
        }
        Ok(())
    }

    /// The armoured text of a certificate file.
    pub fn to_armored(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("invariant: certificates serialise");
        armor::encode(CERT_LABEL, &bytes)
    }

    /// Reads a certificate file's text.
    ///
    /// # Errors
    /// [`CertDecodeError`] when the text is not a certificate this node can read.
    pub fn from_armored(text: &str) -> Result<Self, CertDecodeError> {
        let bytes = armor::decode(CERT_LABEL, text)?;
        let signed: Self = postcard::from_bytes(&bytes)?;
        if signed.cert.version != CERT_VERSION {
            return Err(CertDecodeError::Version(signed.cert.version));
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::LinkKeypair;

    pub(crate) fn authority(seed: u8) -> SigningKeypair {
        SigningKeypair::from_private([seed; 32])
    }

    pub(crate) fn cert_for(node: &str, key: PublicKey, ca: &SigningKeypair) -> SignedCertificate {
        Certificate {
            version: CERT_VERSION,
            serial: 7,
            node: NodeId::new(node).unwrap(),
            key,
            groups: vec![GroupName::new("workers").unwrap()],
            not_before_ms: 1_000,
            not_after_ms: 2_000,
            issuer: ca.public(),
        }
        .sign(ca)
    }

    #[test]
    fn a_signed_certificate_binds_its_node_and_key_while_valid() {
        let key = LinkKeypair::from_private([1; 32]).public();
        let signed = cert_for("node1", key, &authority(9));
        let node = NodeId::new("node1").unwrap();
        assert_eq!(signed.check_binding(&node, &key, 1_500), Ok(()));
        assert!(matches!(
            signed.check_binding(&node, &key, 999),
            Err(CertError::NotYetValid { .. })
        ));
        assert!(matches!(
            signed.check_binding(&node, &key, 2_000),
            Err(CertError::Expired { .. })
        ));
        let other = NodeId::new("node2").unwrap();
        assert!(matches!(
            signed.check_binding(&other, &key, 1_500),
            Err(CertError::WrongNode { .. })
        ));
        let stranger = LinkKeypair::from_private([2; 32]).public();
        assert!(matches!(
            signed.check_binding(&node, &stranger, 1_500),
            Err(CertError::WrongKey { .. })
        ));
    }

    #[test]
    fn a_tampered_certificate_fails_its_signature() {
        let key = LinkKeypair::from_private([1; 32]).public();
        let mut signed = cert_for("node1", key, &authority(9));
        signed.cert.groups.push("zz-admins".parse().unwrap());
        let node = NodeId::new("node1").unwrap();
        assert_eq!(
            signed.check_binding(&node, &key, 1_500),
            Err(CertError::BadSignature)
        );
    }

    #[test]
    fn armored_text_round_trips_and_garbage_is_refused() {
        let key = LinkKeypair::from_private([1; 32]).public();
        let signed = cert_for("node1", key, &authority(9));
        let text = signed.to_armored();
        assert!(text.starts_with("-----BEGIN WARREN CERTIFICATE-----\n"));
        assert_eq!(SignedCertificate::from_armored(&text).unwrap(), signed);
        assert!(
            SignedCertificate::from_armored(
                "-----BEGIN WARREN CERTIFICATE-----\nAAAA\n-----END WARREN CERTIFICATE-----"
            )
            .is_err()
        );
    }
}
