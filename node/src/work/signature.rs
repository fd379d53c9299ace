//! Signed work (receptorctl's `signwork`): the submitting node signs what it asks another
//! node to run — target, submitter, work type, parameters, a digest of the payload, an
//! expiry and a nonce — with its work signing key, and a node configured to require it runs
//! only work signed by a key it trusts, once.
//!
//! Owns the signed message's shape, signing, and the checks (signature, binding to this
//! submission, expiry, replay). No IO: the caller digests the payload as it streams.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::{Deserialize, Serialize};

use crate::id::NodeId;
use crate::keys::{SignatureBytes, SignerKey, SigningKeypair};

/// How long a work signature is valid: the submission reaches its target in seconds.
pub const SIGNATURE_LIFETIME_MS: u64 = 5 * 60 * 1000;

/// How far a signature's expiry may lie beyond a lifetime from this node's clock: the
/// signer's clock may run ahead of ours by this much. A signature that outlives it is
/// refused, so that no signer can hold a nonce in the table longer than a lifetime and this.
pub const MAX_SIGNATURE_SKEW_MS: u64 = 5 * 60 * 1000;

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
    /// Its expiry lies further ahead than a signature's lifetime and the clock skew allowed.
    #[error(
        "the signature expires at {expires_at_ms} ms, later than this node's clock allows \
         ({latest_ms} ms: a {}-minute lifetime plus {} minutes of clock skew); check the \
         submitting node's clock",
        SIGNATURE_LIFETIME_MS / 60_000,
        MAX_SIGNATURE_SKEW_MS / 60_000
    )]
    TooFarAhead {
        /// The signature's expiry.
        expires_at_ms: u64,
        /// The latest expiry this node takes now.
        latest_ms: u64,
    },
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
    /// The nonces of signatures not yet expired.
    seen: HashSet<[u8; 16]>,
    /// `(expires_at_ms, nonce)` of every entry of `seen`, earliest first, so that forgetting
    /// the expired ones never scans the whole table.
    expiries: BTreeSet<(u64, [u8; 16])>,
}

impl Verifier {
    /// Trusts `keys` for work.
    pub fn new(trusted: Vec<SignerKey>) -> Self {
        Self {
            trusted,
            ..Self::default()
        }
    }

    /// Forgets the nonces of signatures expired at `now_ms`.
    fn forget_expired(&mut self, now_ms: u64) {
        while let Some(&(expires, nonce)) = self.expiries.first() {
            if expires > now_ms {
                break;
            }
            self.expiries.pop_first();
            self.seen.remove(&nonce);
        }
    }

    /// How many nonces are remembered.
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.seen.len()
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
        let latest_ms = now_ms
            .saturating_add(SIGNATURE_LIFETIME_MS)
            .saturating_add(MAX_SIGNATURE_SKEW_MS);
        if signature.expires_at_ms > latest_ms {
            return Err(SignatureError::TooFarAhead {
                expires_at_ms: signature.expires_at_ms,
                latest_ms,
            });
        }
        self.forget_expired(now_ms);
        if self.seen.contains(&signature.nonce) {
            return Err(SignatureError::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED {
            // Never forget a live nonce to make room: refuse until some expire (within a
            // lifetime and the skew, as no expiry lies further ahead).
            return Err(SignatureError::Replayed);
        }
        self.seen.insert(signature.nonce);
        self.expiries
            .insert((signature.expires_at_ms, signature.nonce));
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
        // Signed to outlive its lifetime (a clock far ahead): refused, its nonce not kept.
        let far = sub.sign(&key, [7; 32], 2_000 + MAX_SIGNATURE_SKEW_MS + 1, [5; 16]);
        assert_eq!(
            verifier.check(&sub, &far, 2_000),
            Err(SignatureError::TooFarAhead {
                expires_at_ms: far.expires_at_ms,
                latest_ms: 2_000 + SIGNATURE_LIFETIME_MS + MAX_SIGNATURE_SKEW_MS,
            })
        );
        let ahead = sub.sign(&key, [7; 32], 2_000 + MAX_SIGNATURE_SKEW_MS, [6; 16]);
        assert_eq!(
            verifier.check(&sub, &ahead, 2_000),
            Ok(()),
            "within the skew"
        );
        let stranger = SigningKeypair::from_private([6; 32]);
        let foreign = sub.sign(&stranger, [7; 32], 1_000, [4; 16]);
        assert!(matches!(
            verifier.check(&sub, &foreign, 2_000),
            Err(SignatureError::UntrustedSigner(_))
        ));
    }

    #[test]
    fn nonces_are_forgotten_as_their_signatures_expire_and_far_future_ones_never_stored() {
        let key = SigningKeypair::from_private([5; 32]);
        let params = BTreeMap::new();
        let (target, submitter) = (node("node1"), node("controller"));
        let sub = Submission {
            target: &target,
            submitter: &submitter,
            work_type: "cat",
            params: &params,
        };
        let mut verifier = Verifier::new(vec![key.public()]);
        // A trusted signer's far-future signatures fill nothing.
        for i in 0..100u8 {
            let far = sub.sign(&key, [0; 32], u64::MAX / 2, [i; 16]);
            assert!(matches!(
                verifier.check(&sub, &far, 1_000),
                Err(SignatureError::TooFarAhead { .. })
            ));
        }
        assert_eq!(verifier.remembered(), 0);
        for (i, signed_at) in [(1u8, 1_000), (2, 2_000), (3, 3_000)] {
            let sig = sub.sign(&key, [0; 32], signed_at, [100 + i; 16]);
            assert_eq!(verifier.check(&sub, &sig, signed_at), Ok(()));
        }
        assert_eq!(verifier.remembered(), 3);
        // At the second one's expiry, the first two are forgotten and the third kept.
        let later = 2_000 + SIGNATURE_LIFETIME_MS;
        let sig = sub.sign(&key, [0; 32], later, [200; 16]);
        assert_eq!(verifier.check(&sub, &sig, later), Ok(()));
        assert_eq!(verifier.remembered(), 2);
    }
}
