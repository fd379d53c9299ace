//! Ed25519 signing identities: key pairs, their private key files and their public tokens.
//!
//! Mirrors [`crate::keys`] for link keys: a public key travels as `ed25519:<base64url>`,
//! a private key lives in a mode-0600 file and never appears in `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::file::{self as keyfile, KeyFileError, decode_32};
use super::link::LINK_KEY_KIND;

/// Token prefix of an Ed25519 component signing key.
pub const SIGNING_KEY_KIND: &str = "ed25519";

/// What an Ed25519 key pair is for. Each purpose has its own key file header, so a component
/// signer's key is never taken for a mesh authority's, nor the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningPurpose {
    /// Signs work-handler components (`warren component keygen`).
    Components,
    /// Signs mesh certificates and revocation lists (`warren ca init`).
    Authority,
}

impl SigningPurpose {
    /// First line of a private key file of this purpose, so a stray file is recognised.
    fn header(self) -> &'static str {
        match self {
            Self::Components => "warren ed25519 signing key",
            Self::Authority => "warren ed25519 mesh authority key",
        }
    }
}

/// What went wrong reading, writing or parsing a signing key.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// The token has no `kind:` prefix.
    #[error("key token {token:?} has no kind prefix; expected {SIGNING_KEY_KIND}:<base64url>")]
    MissingKind {
        /// The token as given.
        token: String,
    },
    /// The token is an X25519 link key, which cannot sign components.
    #[error(
        "key token is an {LINK_KEY_KIND} link key, not a component signing key; \
         pass the {SIGNING_KEY_KIND}:... token printed by `warren component keygen`"
    )]
    LinkKey,
    /// The token is a key of some other kind.
    #[error("key token is of kind {found:?}, but an {SIGNING_KEY_KIND} signing key is needed")]
    WrongKind {
        /// The kind named by the token.
        found: String,
    },
    /// The token's body is not an Ed25519 public key in base64url.
    #[error("key token {token:?} is not an Ed25519 public key (32 bytes of base64url)")]
    BadEncoding {
        /// The token as given.
        token: String,
    },
    /// A key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A key file exists and overwriting was not asked for.
    #[error("{path} already exists; pass --force to overwrite it")]
    Exists {
        /// The file.
        path: PathBuf,
    },
    /// A key file is not in the expected format.
    #[error("{path} is not a warren signing key file ({reason})")]
    BadFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The OS random number generator failed.
    #[error("could not get random bytes from the OS: {0}")]
    Random(String),
}

/// The public half of a component signer: what a node trusts.
///
/// Holds the compressed point, checked to be a valid Ed25519 key when parsed; the
/// decompressed key is rebuilt for each verification, which keeps this type small.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignerKey([u8; 32]);

impl SignerKey {
    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Checks `signature` over `message` (strict: rejects malleable and weak-key signatures).
    pub(crate) fn is_valid(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        VerifyingKey::from_bytes(&self.0).is_ok_and(|key| {
            key.verify_strict(message, &Signature::from_bytes(signature))
                .is_ok()
        })
    }
}

impl fmt::Display for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SIGNING_KEY_KIND}:{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for SignerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignerKey({self})")
    }
}

impl FromStr for SignerKey {
    type Err = SigningKeyError;
    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let token = token.trim();
        let Some((kind, body)) = token.split_once(':') else {
            return Err(SigningKeyError::MissingKind {
                token: token.to_owned(),
            });
        };
        match kind {
            SIGNING_KEY_KIND => {}
            LINK_KEY_KIND => return Err(SigningKeyError::LinkKey),
            _ => {
                return Err(SigningKeyError::WrongKind {
                    found: kind.to_owned(),
                });
            }
        }
        decode_32(body)
            .filter(|bytes| VerifyingKey::from_bytes(bytes).is_ok())
            .map(Self)
            .ok_or_else(|| SigningKeyError::BadEncoding {
                token: token.to_owned(),
            })
    }
}

impl Serialize for SignerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for SignerKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let token = String::deserialize(d)?;
        token.parse().map_err(serde::de::Error::custom)
    }
}

/// A component signer's Ed25519 key pair. `Debug` never shows the private half, and the
/// private half is wiped when dropped.
#[derive(Clone)]
pub struct SigningKeypair {
    key: SigningKey,
}

impl fmt::Debug for SigningKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKeypair")
            .field("public", &self.public())
            .finish_non_exhaustive()
    }
}

impl SigningKeypair {
    /// Generates a fresh key pair from the OS random number generator.
    ///
    /// # Errors
    /// [`SigningKeyError::Random`] when the OS has no randomness to give.
    pub fn generate() -> Result<Self, SigningKeyError> {
        let mut secret = [0u8; 32];
        getrandom::fill(&mut secret).map_err(|e| SigningKeyError::Random(e.to_string()))?;
        Ok(Self::from_private(secret))
    }

    /// Builds the key pair for a known 32-byte secret (tests use fixed keys).
    pub fn from_private(secret: [u8; 32]) -> Self {
        Self {
            key: SigningKey::from_bytes(&secret),
        }
    }

    /// The public half, as nodes trust it.
    pub fn public(&self) -> SignerKey {
        SignerKey(self.key.verifying_key().to_bytes())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }

    /// Reads a private key file written by [`SigningKeypair::save`].
    ///
    /// # Errors
    /// [`SigningKeyError::Io`] when the file cannot be read, [`SigningKeyError::BadFile`]
    /// when it is not a warren signing key file (a link key file is one such).
    pub fn load(path: &Path) -> Result<Self, SigningKeyError> {
        Self::load_for(path, SigningPurpose::Components)
    }

    /// Reads a private key file of the given purpose.
    ///
    /// # Errors
    /// As [`SigningKeypair::load`]; a key file of another purpose is a
    /// [`SigningKeyError::BadFile`].
    pub fn load_for(path: &Path, purpose: SigningPurpose) -> Result<Self, SigningKeyError> {
        Ok(Self::from_private(keyfile::load(path, purpose.header())?))
    }

    /// Writes the private key to `path` with mode 0600.
    ///
    /// # Errors
    /// [`SigningKeyError::Exists`] when the file exists and `overwrite` is false;
    /// [`SigningKeyError::Io`] when it cannot be written.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), SigningKeyError> {
        self.save_for(path, SigningPurpose::Components, overwrite)
    }

    /// Writes the private key to `path` with mode 0600, headed for `purpose`.
    ///
    /// # Errors
    /// As [`SigningKeypair::save`].
    pub fn save_for(
        &self,
        path: &Path,
        purpose: SigningPurpose,
        overwrite: bool,
    ) -> Result<(), SigningKeyError> {
        Ok(keyfile::save(
            path,
            purpose.header(),
            self.key.as_bytes(),
            overwrite,
        )?)
    }
}

impl From<KeyFileError> for SigningKeyError {
    fn from(e: KeyFileError) -> Self {
        match e {
            KeyFileError::Io { path, source } => Self::Io { path, source },
            KeyFileError::Exists { path } => Self::Exists { path },
            KeyFileError::BadFile { path, reason } => Self::BadFile { path, reason },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn token_round_trips() {
        let public = SigningKeypair::from_private([7; 32]).public();
        let token = public.to_string();
        assert!(token.starts_with("ed25519:"), "{token}");
        assert_eq!(token.parse::<SignerKey>().unwrap(), public);
        let json = serde_json::to_string(&public).unwrap();
        assert_eq!(json, format!("\"{token}\""));
        assert_eq!(serde_json::from_str::<SignerKey>(&json).unwrap(), public);
    }

    #[test]
    fn rejects_link_key_token_as_signer() {
        let link = crate::keys::LinkKeypair::from_private([7; 32]).public();
        let err = link.to_string().parse::<SignerKey>().unwrap_err();
        assert!(matches!(err, SigningKeyError::LinkKey), "{err}");
        assert!(err.to_string().contains("link key, not a"), "{err}");
    }

    #[test]
    fn rejects_malformed_tokens() {
        assert!(matches!(
            "abc".parse::<SignerKey>(),
            Err(SigningKeyError::MissingKind { .. })
        ));
        assert!(matches!(
            "rsa:abc".parse::<SignerKey>(),
            Err(SigningKeyError::WrongKind { .. })
        ));
        assert!(matches!(
            "ed25519:abc".parse::<SignerKey>(),
            Err(SigningKeyError::BadEncoding { .. })
        ));
    }

    #[test]
    fn file_round_trip_is_private_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signer.key");
        let pair = SigningKeypair::generate().unwrap();
        pair.save(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(SigningKeypair::load(&path).unwrap().public(), pair.public());
        assert!(matches!(
            SigningKeypair::generate().unwrap().save(&path, false),
            Err(SigningKeyError::Exists { .. })
        ));
        let other = SigningKeypair::from_private([1; 32]);
        other.save(&path, true).unwrap();
        assert_eq!(
            SigningKeypair::load(&path).unwrap().public(),
            other.public()
        );
    }

    #[test]
    fn load_rejects_link_key_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        crate::keys::LinkKeypair::from_private([3; 32])
            .save(&path, false)
            .unwrap();
        assert!(matches!(
            SigningKeypair::load(&path),
            Err(SigningKeyError::BadFile { .. })
        ));
    }

    #[test]
    fn debug_hides_private_key() {
        let shown = format!("{:?}", SigningKeypair::from_private([9; 32]));
        assert!(
            !shown.contains(&URL_SAFE_NO_PAD.encode([9u8; 32])),
            "{shown}"
        );
        assert!(shown.contains("ed25519:"), "{shown}");
    }
}
