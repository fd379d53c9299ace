//! Revocation lists: an authority's signed list of the certificate serials it withdrew
//! before their expiry. A node loads the lists of the authorities it trusts and refuses
//! revoked certificates everywhere: links, adverts and end-to-end sessions. No IO.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::armor::{self, ArmorError};
use crate::keys::{SignatureBytes, SignerKey, SigningKeypair};

/// The armour label of a revocation list file.
pub const REVOCATION_LABEL: &str = "WARREN REVOCATION LIST";

/// Most serials one list may hold: far beyond any mesh, small enough to bound memory.
pub const MAX_REVOKED: usize = 1_000_000;

/// Signed before the body, so a list's signature can never stand for another document.
const SIGNING_CONTEXT: &[u8] = b"warren mesh revocation list v1\0";

/// An authority's revoked serials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationList {
    /// The authority whose certificates are revoked.
    pub issuer: SignerKey,
    /// When the list was signed (ms since the UNIX epoch): a newer list replaces an older.
    pub issued_at_ms: u64,
    /// The revoked serials, sorted.
    pub serials: BTreeSet<u64>,
}

/// A list with its authority's signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRevocationList {
    /// The list.
    pub list: RevocationList,
    /// The issuer's Ed25519 signature over `SIGNING_CONTEXT` and the postcard body.
    pub signature: SignatureBytes,
}

/// Why a revocation list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// The armour is broken.
    #[error(transparent)]
    Armor(#[from] ArmorError),
    /// The bytes are not a revocation list.
    #[error("not a warren revocation list: {0}")]
    Body(#[from] postcard::Error),
    /// The signature does not verify.
    #[error("revocation list signature is invalid")]
    BadSignature,
    /// Too many serials.
    #[error("revocation list holds more than {MAX_REVOKED} serials")]
    TooLarge,
}

impl RevocationList {
    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(self).expect("invariant: lists serialise"));
        bytes
    }

    /// Signs the list with the authority's key (setting the issuer to it).
    pub fn sign(mut self, authority: &SigningKeypair) -> SignedRevocationList {
        self.issuer = authority.public();
        let signature = SignatureBytes(authority.sign(&self.signed_bytes()));
        SignedRevocationList {
            list: self,
            signature,
        }
    }
}

impl SignedRevocationList {
    /// The armoured text of a list file.
    pub fn to_armored(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("invariant: lists serialise");
        armor::encode(REVOCATION_LABEL, &bytes)
    }

    /// Reads and verifies a list file's text (whether its issuer is trusted is the
    /// caller's question).
    ///
    /// # Errors
    /// [`RevocationError`] when the text is not a list or its signature fails.
    pub fn from_armored(text: &str) -> Result<Self, RevocationError> {
        let bytes = armor::decode(REVOCATION_LABEL, text)?;
        let signed: Self = postcard::from_bytes(&bytes)?;
        if signed.list.serials.len() > MAX_REVOKED {
            return Err(RevocationError::TooLarge);
        }
        let message = signed.list.signed_bytes();
        if !signed.list.issuer.is_valid(&message, &signed.signature.0) {
            return Err(RevocationError::BadSignature);
        }
        Ok(signed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_lists_round_trip_and_tampering_is_caught() {
        let ca = SigningKeypair::from_private([4; 32]);
        let list = RevocationList {
            issuer: ca.public(),
            issued_at_ms: 5,
            serials: [3, 1].into(),
        }
        .sign(&ca);
        let text = list.to_armored();
        assert_eq!(SignedRevocationList::from_armored(&text).unwrap(), list);
        let mut tampered = list.clone();
        tampered.list.serials.remove(&3);
        assert!(matches!(
            SignedRevocationList::from_armored(&tampered.to_armored()),
            Err(RevocationError::BadSignature)
        ));
    }
}
