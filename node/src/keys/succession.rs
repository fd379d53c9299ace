//! Key succession statements: "link key OLD is retired in favour of NEW", signed by OLD.
//!
//! `warren keygen --rotate` writes one when it replaces a node's key. The node carries its
//! chain of statements (oldest first) in its hellos and adverts, so a peer that pinned an
//! older key can follow the chain to the current key, checking each step with the key it
//! already trusts; nobody without the old private key can make one.
//!
//! Owns the statement's shape (versioned, domain separated, fixed size), its signature, its
//! one-line text form (the `node.key.succession` file and peers' stores) and the checks of a
//! chain's links. Whether a peer *accepts* a statement (is the old key pinned there? did it
//! already accept another successor?) is `mesh::succession`'s decision. No IO.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::link::{LinkKeypair, PublicKey};
use super::signature::SignatureBytes;
use super::xeddsa;

/// The statement format this code writes and reads.
pub const SUCCESSION_VERSION: u8 = 1;

/// Signed before the statement's fields, so that no other signature made with a node key
/// (an advert) can be taken for a succession, nor the other way round.
const SIGNING_CONTEXT: &[u8] = b"warren key succession v1\0";

/// Most statements a node carries (its last rotations). A peer whose pin is older than that
/// must be given the new key by hand.
pub const MAX_CHAIN: usize = 8;

/// First word of a statement's text line.
const LINE_TAG: &str = "warren-key-succession-v1";

/// Longest text line accepted: a statement is about 150 bytes encoded.
const MAX_LINE_LEN: usize = 512;

/// What is wrong with a succession statement or chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SuccessionError {
    /// A format version this node does not know.
    #[error(
        "key succession statement of unknown version {0} (this node reads v{SUCCESSION_VERSION})"
    )]
    Version(u8),
    /// Old and new key are the same.
    #[error("key succession statement names the same key as old and new ({0})")]
    SameKey(PublicKey),
    /// The signature is not the old key's.
    #[error("key succession {old} -> {new} is not signed by {old} (forged)")]
    BadSignature {
        /// The key said to be retired.
        old: PublicKey,
        /// The key said to replace it.
        new: PublicKey,
    },
    /// The key pair given to sign with is not the statement's old key.
    #[error("cannot sign a succession of {old} with key {signer}")]
    WrongSigner {
        /// The statement's old key.
        old: PublicKey,
        /// The key offered.
        signer: PublicKey,
    },
    /// More statements than a chain may hold.
    #[error("key succession chain of {0} statements (limit {MAX_CHAIN})")]
    TooLong(usize),
    /// Consecutive statements do not connect (`new` of one is not `old` of the next).
    #[error("key succession chain is broken after {0}")]
    Broken(PublicKey),
    /// A key appears twice in the chain.
    #[error("key succession chain returns to {0} (a loop)")]
    Loop(PublicKey),
    /// A text line is not a statement.
    #[error("not a key succession line ({0})")]
    BadLine(&'static str),
}

/// "`old` is retired; `new` replaces it", issued at `issued_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Succession {
    /// [`SUCCESSION_VERSION`].
    pub version: u8,
    /// The retired key (which signs).
    pub old: PublicKey,
    /// The key that replaces it.
    pub new: PublicKey,
    /// Wall-clock time of issue (ms since the UNIX epoch), for operators' logs.
    pub issued_at_ms: u64,
}

/// A [`Succession`] and the old key's XEdDSA signature over it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedSuccession {
    /// The statement.
    pub succession: Succession,
    /// `succession.old`'s signature over the context and the statement.
    pub signature: SignatureBytes,
}

impl Succession {
    /// A statement retiring `old` for `new`.
    pub fn new(old: PublicKey, new: PublicKey, issued_at_ms: u64) -> Self {
        Self {
            version: SUCCESSION_VERSION,
            old,
            new,
            issued_at_ms,
        }
    }

    fn signed_bytes(&self) -> Vec<u8> {
        let mut bytes = SIGNING_CONTEXT.to_vec();
        bytes.extend(postcard::to_stdvec(self).expect("invariant: statements serialise"));
        bytes
    }

    /// Signs the statement with the old key pair.
    ///
    /// # Errors
    /// [`SuccessionError::WrongSigner`] when `old_keys` is not the statement's old key,
    /// [`SuccessionError::SameKey`] when old and new are the same.
    pub fn sign(
        self,
        old_keys: &LinkKeypair,
        nonce_seed: &[u8; 64],
    ) -> Result<SignedSuccession, SuccessionError> {
        if old_keys.public() != self.old {
            return Err(SuccessionError::WrongSigner {
                old: self.old,
                signer: old_keys.public(),
            });
        }
        if self.old == self.new {
            return Err(SuccessionError::SameKey(self.old));
        }
        let signature = SignatureBytes(xeddsa::sign(old_keys, &self.signed_bytes(), nonce_seed));
        Ok(SignedSuccession {
            succession: self,
            signature,
        })
    }
}

impl SignedSuccession {
    /// The retired key.
    pub fn old(&self) -> PublicKey {
        self.succession.old
    }

    /// The key that replaces it.
    pub fn new_key(&self) -> PublicKey {
        self.succession.new
    }

    /// Checks version, keys and the old key's signature.
    ///
    /// # Errors
    /// The [`SuccessionError`] found.
    pub fn verify(&self) -> Result<(), SuccessionError> {
        let s = &self.succession;
        if s.version != SUCCESSION_VERSION {
            return Err(SuccessionError::Version(s.version));
        }
        if s.old == s.new {
            return Err(SuccessionError::SameKey(s.old));
        }
        if !xeddsa::verify(&s.old, &s.signed_bytes(), &self.signature.0) {
            return Err(SuccessionError::BadSignature {
                old: s.old,
                new: s.new,
            });
        }
        Ok(())
    }

    /// The statement as one line of text (no newline).
    pub fn to_line(&self) -> String {
        let bytes = postcard::to_stdvec(self).expect("invariant: statements serialise");
        format!("{LINE_TAG} {}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Parses a line written by [`SignedSuccession::to_line`] (not its signature).
    ///
    /// # Errors
    /// [`SuccessionError::BadLine`] naming what is wrong.
    pub fn from_line(line: &str) -> Result<Self, SuccessionError> {
        if line.len() > MAX_LINE_LEN {
            return Err(SuccessionError::BadLine("too long"));
        }
        let Some((tag, body)) = line.trim().split_once(' ') else {
            return Err(SuccessionError::BadLine("no tag"));
        };
        if tag != LINE_TAG {
            return Err(SuccessionError::BadLine("unknown tag"));
        }
        let bytes = (URL_SAFE_NO_PAD.decode(body.trim()))
            .map_err(|_| SuccessionError::BadLine("not base64url"))?;
        match postcard::take_from_bytes::<Self>(&bytes) {
            Ok((statement, [])) => Ok(statement),
            Ok(_) => Err(SuccessionError::BadLine("trailing bytes")),
            Err(_) => Err(SuccessionError::BadLine("does not decode")),
        }
    }
}

/// Parses a file of statement lines (blank lines and `#` comments skipped); each line's
/// error carries its line number.
///
/// # Errors
/// The first bad line: its number and what is wrong.
pub fn parse_lines(text: &str) -> Result<Vec<SignedSuccession>, (usize, SuccessionError)> {
    text.lines()
        .enumerate()
        .map(|(n, l)| (n + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .map(|(n, l)| SignedSuccession::from_line(l).map_err(|e| (n, e)))
        .collect()
}

/// Checks a node's own chain (oldest first): at most [`MAX_CHAIN`] statements, each signed
/// by its old key, each one's new key the next one's old key, no key twice. Returns the
/// chain's last key (`None` for an empty chain).
///
/// # Errors
/// The first [`SuccessionError`] found.
pub fn check_chain(chain: &[SignedSuccession]) -> Result<Option<PublicKey>, SuccessionError> {
    if chain.len() > MAX_CHAIN {
        return Err(SuccessionError::TooLong(chain.len()));
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut last: Option<PublicKey> = None;
    for statement in chain {
        if let Some(prev) = last
            && prev != statement.old()
        {
            return Err(SuccessionError::Broken(prev));
        }
        statement.verify()?;
        if last.is_none() {
            seen.insert(statement.old());
        }
        if !seen.insert(statement.new_key()) {
            return Err(SuccessionError::Loop(statement.new_key()));
        }
        last = Some(statement.new_key());
    }
    Ok(last)
}

/// Whether `chain` leads from `from` to `to` through verified statements (for a key that
/// nothing pinned: a far node first seen under `from`).
pub fn leads(chain: &[SignedSuccession], from: &PublicKey, to: &PublicKey) -> bool {
    let Some(start) = chain.iter().position(|s| s.old() == *from) else {
        return false;
    };
    matches!(check_chain(&chain[start..]), Ok(Some(last)) if last == *to)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn pair(b: u8) -> LinkKeypair {
        LinkKeypair::from_private([b; 32])
    }

    /// A statement retiring key `a` for key `b` (fixed test keys).
    pub(crate) fn step(a: u8, b: u8) -> SignedSuccession {
        Succession::new(pair(a).public(), pair(b).public(), 1_000)
            .sign(&pair(a), &[a; 64])
            .unwrap()
    }

    #[test]
    fn a_signed_statement_verifies_and_round_trips_as_a_line() {
        let s = step(1, 2);
        assert_eq!(s.verify(), Ok(()));
        let line = s.to_line();
        assert!(line.starts_with("warren-key-succession-v1 "), "{line}");
        assert_eq!(SignedSuccession::from_line(&line).unwrap(), s);
    }

    #[test]
    fn a_statement_not_signed_by_the_old_key_is_forged() {
        // The attacker holds key 9 and claims that key 1 is succeeded by key 9.
        let forged = SignedSuccession {
            succession: Succession::new(pair(1).public(), pair(9).public(), 5),
            signature: step(9, 3).signature,
        };
        assert!(matches!(
            forged.verify(),
            Err(SuccessionError::BadSignature { .. })
        ));
        // Changing any field of a genuine statement breaks it.
        let mut redirected = step(1, 2);
        redirected.succession.new = pair(9).public();
        assert!(redirected.verify().is_err());
        let mut redated = step(1, 2);
        redated.succession.issued_at_ms += 1;
        assert!(redated.verify().is_err());
        assert!(matches!(
            Succession::new(pair(1).public(), pair(2).public(), 0).sign(&pair(9), &[0; 64]),
            Err(SuccessionError::WrongSigner { .. })
        ));
    }

    #[test]
    fn refuses_other_versions_and_same_keys() {
        let mut s = step(1, 2);
        s.succession.version = 2;
        assert_eq!(s.verify(), Err(SuccessionError::Version(2)));
        assert!(matches!(
            Succession::new(pair(1).public(), pair(1).public(), 0).sign(&pair(1), &[0; 64]),
            Err(SuccessionError::SameKey(_))
        ));
    }

    #[test]
    fn refuses_bad_lines_without_panicking() {
        let huge = format!("{LINE_TAG} {}", "A".repeat(10_000));
        assert_eq!(
            SignedSuccession::from_line(&huge),
            Err(SuccessionError::BadLine("too long"))
        );
        for bad in ["", "hello", "warren-key-succession-v1 !!!", "other AAAA"] {
            assert!(SignedSuccession::from_line(bad).is_err(), "{bad}");
        }
        let mut line = step(1, 2).to_line();
        line.push_str("AAAA");
        assert!(SignedSuccession::from_line(&line).is_err());
        let text = format!("# comment\n\n{}\nbroken\n", step(1, 2).to_line());
        assert!(matches!(parse_lines(&text), Err((4, _))));
    }

    #[test]
    fn chains_must_connect_verify_and_not_loop() {
        assert_eq!(check_chain(&[]), Ok(None));
        let good = [step(1, 2), step(2, 3)];
        assert_eq!(check_chain(&good), Ok(Some(pair(3).public())));
        assert!(leads(&good, &pair(1).public(), &pair(3).public()));
        assert!(leads(&good, &pair(2).public(), &pair(3).public()));
        assert!(!leads(&good, &pair(3).public(), &pair(1).public()));
        assert!(!leads(&good, &pair(4).public(), &pair(3).public()));
        assert_eq!(
            check_chain(&[step(1, 2), step(3, 4)]),
            Err(SuccessionError::Broken(pair(2).public()))
        );
        assert_eq!(
            check_chain(&[step(1, 2), step(2, 1)]),
            Err(SuccessionError::Loop(pair(1).public()))
        );
        let long: Vec<_> = (1..=MAX_CHAIN as u8 + 1).map(|i| step(i, i + 1)).collect();
        assert_eq!(
            check_chain(&long),
            Err(SuccessionError::TooLong(MAX_CHAIN + 1))
        );
    }
}
