//! Link identity: static X25519 key pairs, their files and their public tokens.
//!
//! A public key travels as one copy-pasteable token that names its kind,
//! `x25519:<base64url>`, so that a link key is never mistaken for a signing key. Private
//! keys live in files of mode 0600 and never appear in `Debug` output or logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use curve25519_dalek::montgomery::MontgomeryPoint;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::file::{self as keyfile, KeyFileError, decode_32};

/// Token prefix of an X25519 link key.
pub const LINK_KEY_KIND: &str = "x25519";

/// First line of a private link key file, so a stray file is recognised for what it is.
const PRIVATE_FILE_HEADER: &str = "warren x25519 private key";

/// What went wrong reading, writing or parsing a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The token has no `kind:` prefix.
    #[error("key token {token:?} has no kind prefix; expected {LINK_KEY_KIND}:<base64url>")]
    MissingKind {
        /// The token as given.
        token: String,
    },
    /// The token is a key of another kind (for example a signing key).
    #[error("key token is of kind {found:?}, but a {expected} key is needed here")]
    WrongKind {
        /// The kind named by the token.
        found: String,
        /// The kind this place takes.
        expected: &'static str,
    },
    /// The token's body is not 32 bytes of base64url.
    #[error("key token {token:?} is not 32 bytes of base64url")]
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
    #[error("{path} is not a warren private key file ({reason})")]
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

/// A node's public X25519 link key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Parses a key from a slice, as received from a Noise handshake.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{LINK_KEY_KIND}:{}", URL_SAFE_NO_PAD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(token: &str) -> Result<Self, Self::Err> {
        let token = token.trim();
        let Some((kind, body)) = token.split_once(':') else {
            return Err(KeyError::MissingKind {
                token: token.to_owned(),
            });
        };
        if kind != LINK_KEY_KIND {
            return Err(KeyError::WrongKind {
                found: kind.to_owned(),
                expected: LINK_KEY_KIND,
            });
        }
        decode_32(body)
            .map(Self)
            .ok_or_else(|| KeyError::BadEncoding {
                token: token.to_owned(),
            })
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            self.0.serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let token = String::deserialize(d)?;
            token.parse().map_err(serde::de::Error::custom)
        } else {
            <[u8; 32]>::deserialize(d).map(Self)
        }
    }
}

/// A node's static X25519 key pair. `Debug` never shows the private half.
#[derive(Clone)]
pub struct LinkKeypair {
    private: [u8; 32],
    public: PublicKey,
}

impl fmt::Debug for LinkKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkKeypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl LinkKeypair {
    /// Generates a fresh key pair from the OS random number generator.
    ///
    /// # Errors
    /// [`KeyError::Random`] when the OS has no randomness to give.
    pub fn generate() -> Result<Self, KeyError> {
        let mut private = [0u8; 32];
        getrandom::fill(&mut private).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_private(private))
    }

    /// Builds the key pair for a known private key (tests use fixed keys).
    pub fn from_private(private: [u8; 32]) -> Self {
        let public = PublicKey(MontgomeryPoint::mul_base_clamped(private).to_bytes());
        Self { private, public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The private half, for the Noise handshake only.
    pub(crate) fn private_bytes(&self) -> &[u8; 32] {
        &self.private
    }

    /// Reads a private key file written by [`LinkKeypair::save`].
    ///
    /// # Errors
    /// [`KeyError::Io`] when the file cannot be read, [`KeyError::BadFile`] when it is not a
    /// warren private key file.
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        Ok(Self::from_private(keyfile::load(
            path,
            PRIVATE_FILE_HEADER,
        )?))
    }

    /// Writes the private key to `path` with mode 0600.
    ///
    /// # Errors
    /// [`KeyError::Exists`] when the file exists and `overwrite` is false; [`KeyError::Io`]
    /// when it cannot be written.
    pub fn save(&self, path: &Path, overwrite: bool) -> Result<(), KeyError> {
        Ok(keyfile::save(
            path,
            PRIVATE_FILE_HEADER,
            &self.private,
            overwrite,
        )?)
    }
}

impl From<KeyFileError> for KeyError {
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
        let pair = LinkKeypair::from_private([7; 32]);
        let token = pair.public().to_string();
        assert!(token.starts_with("x25519:"));
        assert_eq!(token.parse::<PublicKey>().unwrap(), pair.public());
    }

    #[test]
    fn rejects_signing_key_token() {
        let err = "ed25519:AAAA".parse::<PublicKey>().unwrap_err();
        assert!(matches!(err, KeyError::WrongKind { .. }), "{err}");
    }

    #[test]
    fn rejects_malformed_tokens() {
        assert!(matches!(
            "abc".parse::<PublicKey>(),
            Err(KeyError::MissingKind { .. })
        ));
        assert!(matches!(
            "x25519:abc".parse::<PublicKey>(),
            Err(KeyError::BadEncoding { .. })
        ));
    }

    #[test]
    fn file_round_trip_is_private_and_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let pair = LinkKeypair::generate().unwrap();
        pair.save(&path, false).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(LinkKeypair::load(&path).unwrap().public(), pair.public());
        assert!(matches!(
            LinkKeypair::generate().unwrap().save(&path, false),
            Err(KeyError::Exists { .. })
        ));
        LinkKeypair::from_private([1; 32])
            .save(&path, true)
            .unwrap();
        assert_eq!(
            LinkKeypair::load(&path).unwrap().public(),
            LinkKeypair::from_private([1; 32]).public()
        );
    }

    #[test]
    fn load_rejects_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        fs::write(&path, "hello\n").unwrap();
        assert!(matches!(
            LinkKeypair::load(&path),
            Err(KeyError::BadFile { .. })
        ));
        assert!(matches!(
            LinkKeypair::load(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn debug_hides_private_key() {
        let pair = LinkKeypair::from_private([9; 32]);
        let shown = format!("{pair:?}");
        assert!(!shown.contains(&URL_SAFE_NO_PAD.encode([9u8; 32])));
    }
}
