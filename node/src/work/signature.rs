//! Signed work (receptorctl's `signwork`): the submitting node signs what it asks another
//! node to run — target, submitter, work type, parameters, a digest of the payload, an
//! expiry and a nonce — with its work signing key, and a node configured to require it runs
//! only work signed by a key it trusts, once.
//!
//! Owns the signed message's shape, signing, and the checks (signature, binding to this
//! submission, expiry, replay). No IO: the caller digests the payload as it streams.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::keys::{SignatureBytes, SignerKey, SigningKeypair};

/// How long a work signature is valid: the submission reaches its target in seconds.
pub const SIGNATURE_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// Most nonces remembered (each until its signature expires): far more submissions than a
/// node takes in a signature's lifetime.
const MAX_REMEMBERED: usize = 1_000_000;

/// Signed before the fields, so a work signature never stands for another document.
const SIGNING_CONTEXT: &[u8] = b"warren signed work v1\0";

/// A submitting node's signature over one submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkSignature {
    /// The signing key (the verifier must trust it).
    pub signer: SignerKey,
    /// Until when the signature is valid (ms since the UNIX epoch).
    pub expires_at_ms: u64,
    /// Random: the target refuses a nonce it has seen.
    pub nonce: [u8; 16],
    /// SHA-256 of the payload.
    pub payload_sha256: [u8; 32],
    /// Ed25519 over the context and `Signed`.
    pub signature: SignatureBytes,
}

/// What the signature covers.
#[derive(Serialize)]
struct Signed<'a> {
    target: &'a NodeId,
    submitter: &'a NodeId,
    work_type: &'a str,
    params: &'a BTreeMap<String, String>,
    payload_sha256: &'a [u8; 32],
    expires_at_ms: u64,
    nonce: &'a [u8; 16],
}

/// One submission, as both ends see it.
#[derive(Debug, Clone, Copy)]
pub struct Submission<'a> {
    /// The node asked to run it.
    pub target: &'a NodeId,
    /// The node that asks.
    pub submitter: &'a NodeId,
    /// Its work type.
    pub work_type: &'a str,
    /// Its parameters.
    pub params: &'a BTreeMap<String, String>,
}

impl Submission<'_> {
    fn message(&self, payload_sha256: &[u8; 32], expires_at_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
        let signed = Signed {
            target: self.target,
            submitter: self.submitter,
            work_type: self.work_type,
            params: self.params,
            payload_sha256,
            expires_at_ms,
            nonce,
        };
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(&signed).expect("invariant: submissions serialise"));
        bytes
    }

    /// Signs the submission of a payload with digest `payload_sha256`.
    pub fn sign(
        &self,
        key: &SigningKeypair,
        payload_sha256: [u8; 32],
        now_ms: u64,
        nonce: [u8; 16],
    ) -> WorkSignature {
        let expires_at_ms = now_ms.saturating_add(SIGNATURE_LIFETIME_MS);
        let signature = key.sign(&self.message(&payload_sha256, expires_at_ms, &nonce));
        WorkSignature {
            signer: key.public(),
            expires_at_ms,
            nonce,
            payload_sha256,
            signature: SignatureBytes(signature),
        }
    }
}

/// Why signed work was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No signature, and this node requires one.
    #[error(
        "the submission is not signed (submit with signwork, from a node with a work signing key)"
    )]
    Missing,
    /// Signed by a key this node does not trust.
    #[error("signed by {0}, a key this node does not trust for work")]
    UntrustedSigner(SignerKey),
    /// The signature does not cover this submission.
    #[error("the signature does not match this submission")]
    Invalid,
    /// Past its expiry.
    #[error("the signature expired")]
    Expired,
    /// Its nonce was used before.
    #[error("the signature was already used (a replay)")]
    Replayed,
    /// The payload is not the one signed.
    #[error("the payload does not match its signature")]
    PayloadMismatch,
}

/// The verifying side: trusted keys and the nonces already seen.
#[derive(Debug, Default)]
pub struct Verifier {
    trusted: Vec<SignerKey>,
    seen: HashMap<[u8; 16], u64>,
}

impl Verifier {
    /// Trusts `keys` for work.
    pub fn new(trusted: Vec<SignerKey>) -> Self {
        Self {
            trusted,
            seen: HashMap::new(),
        }
    }

    /// Trusts `keys` from now on (a reload); the nonces seen are kept.
    pub fn trust(&mut self, keys: Vec<SignerKey>) {
        self.trusted = keys;
    }

    /// Checks `signature` for `submission` at `now_ms`, before the payload arrives; records
    /// its nonce. The payload's digest is checked with [`check_payload`] once it is in.
    ///
    /// # Errors
    /// The [`SignatureError`] that refuses it.
    pub fn check(
        &mut self,
        submission: &Submission<'_>,
        signature: &WorkSignature,
        now_ms: u64,
    ) -> Result<(), SignatureError> {
        if !self.trusted.contains(&signature.signer) {
            return Err(SignatureError::UntrustedSigner(signature.signer));
        }
        let message = submission.message(
            &signature.payload_sha256,
            signature.expires_at_ms,
            &signature.nonce,
        );
        if !signature.signer.is_valid(&message, &signature.signature.0) {
            return Err(SignatureError::Invalid);
        }
        if now_ms >= signature.expires_at_ms {
            return Err(SignatureError::Expired);
        }
        self.seen.retain(|_, expires| *expires > now_ms);
        if self.seen.contains_key(&signature.nonce) {
            return Err(SignatureError::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            // Never forget a live nonce to make room: refuse until some expire.
            return Err(SignatureError::Replayed);
        }
        self.seen.insert(signature.nonce, signature.expires_at_ms);
        Ok(())
    }
}

/// Whether the payload that arrived is the one signed.
///
/// # Errors
/// [`SignatureError::PayloadMismatch`] when it is not.
pub fn check_payload(signature: &WorkSignature, digest: &[u8; 32]) -> Result<(), SignatureError> {
    if &signature.payload_sha256 == digest {
        Ok(())
    } else {
        Err(SignatureError::PayloadMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(s: &str) -> NodeId {
        s.parse().unwrap()
    }

    #[test]
    fn a_signature_covers_exactly_its_submission_once() {
        let key = SigningKeypair::from_private([5; 32]);
        let params = BTreeMap::from([("params".to_owned(), "--x".to_owned())]);
        let (target, submitter) = (node("node1"), node("controller"));
        let sub = Submission {
            target: &target,
            submitter: &submitter,
            work_type: "ansible-runner",
            params: &params,
        };
        let sig = sub.sign(&key, [7; 32], 1_000, [1; 16]);
        let mut verifier = Verifier::new(vec![key.public()]);
        assert_eq!(verifier.check(&sub, &sig, 2_000), Ok(()));
        assert_eq!(
            verifier.check(&sub, &sig, 2_000),
            Err(SignatureError::Replayed)
        );
        assert_eq!(check_payload(&sig, &[7; 32]), Ok(()));
        assert_eq!(
            check_payload(&sig, &[8; 32]),
            Err(SignatureError::PayloadMismatch)
        );
        // Another target, work type or parameter set is not covered.
        let other = node("node2");
        let moved = Submission {
            target: &other,
            ..sub
        };
        let fresh = sub.sign(&key, [7; 32], 1_000, [2; 16]);
        assert_eq!(
            verifier.check(&moved, &fresh, 2_000),
            Err(SignatureError::Invalid)
        );
        let late = sub.sign(&key, [7; 32], 1_000, [3; 16]);
        assert_eq!(
            verifier.check(&sub, &late, 1_000 + SIGNATURE_LIFETIME_MS),
            Err(SignatureError::Expired)
        );
        let stranger = SigningKeypair::from_private([6; 32]);
        let foreign = sub.sign(&stranger, [7; 32], 1_000, [4; 16]);
        assert!(matches!(
            verifier.check(&sub, &foreign, 2_000),
            Err(SignatureError::UntrustedSigner(_))
        ));
    }
}
