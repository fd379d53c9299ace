//! Signed work-handler components: manifests, signer keys, signing and verification.
//!
//! A component `handler.wasm` travels with `handler.wasm.sig`, a JSON [`SignedManifest`]:
//!
//! ```json
//! {"manifest": {...}, "signer": "ed25519:<base64url>", "signature": "<base64url>"}
//! ```
//!
//! The [`Manifest`] binds the component's name, version, work types and capabilities to
//! its exact bytes (SHA-256 and length) for a validity window.
//!
//! **Canonical bytes.** The signature is Ed25519 over the manifest's *canonical bytes*:
//! the compact `serde_json` encoding of [`Manifest`] (no whitespace, fields in the order
//! the struct declares them, `sha256` as lower-case hex, every `capabilities` field
//! present except an empty `args`). Verification re-encodes the parsed manifest, so a signature file may be
//! pretty-printed; unknown fields are rejected rather than ignored, since they would not
//! be covered by the signature.
//!
//! No clock and no file IO here except key files: `now` is passed in.

#[cfg(feature = "host")]
mod embedded;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::args::ArgPolicy;

pub use crate::keys::{SIGNING_KEY_KIND, SignerKey, SigningKeyError, SigningKeypair};
#[cfg(feature = "host")]
pub use embedded::{EmbeddedManifest, EmbeddedManifestError, MANIFEST_SECTION, embedded_manifest};

/// How far in the future a manifest's `issued_at` may be: the signer's and the node's
/// clocks may disagree by a few minutes without making fresh signatures useless.
pub const CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// What a component may do on a node, as signed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Logical program names it may spawn; `"*"` means whatever the node's policy lists.
    pub programs: Vec<String>,
    /// Environment variable names it may read.
    #[serde(default)]
    pub env: Vec<String>,
    /// Logical program name -> the arguments it runs that program with. A program left out
    /// declares nothing and is held to the node's policy at spawn; a declaration broader
    /// than the node's policy is refused at deploy. Left out of the canonical bytes when
    /// empty, so manifests signed before it existed still verify.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, ArgPolicy>,
}

/// The signed statement about one component. Field order is part of the canonical bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The component's name.
    pub name: String,
    /// The component's version.
    pub version: String,
    /// The work types it handles.
    pub work_types: Vec<String>,
    /// SHA-256 of the component's bytes (hex in JSON).
    #[serde(with = "hex32")]
    pub sha256: [u8; 32],
    /// The component's length in bytes.
    pub length: u64,
    /// What it may do.
    pub capabilities: Capabilities,
    /// When it was signed, in Unix seconds.
    pub issued_at: u64,
    /// When the signature stops being valid, in Unix seconds (exclusive).
    pub expires_at: u64,
}

impl Manifest {
    /// Describes `component` as `about` says, valid from `issued_at` until `expires_at`.
    #[cfg(feature = "host")]
    pub fn for_component(
        component: &[u8],
        about: EmbeddedManifest,
        issued_at: u64,
        expires_at: u64,
    ) -> Self {
        Self {
            name: about.name,
            version: about.version,
            work_types: about.work_types,
            sha256: Sha256::digest(component).into(),
            length: component.len() as u64,
            capabilities: about.capabilities,
            issued_at,
            expires_at,
        }
    }

    /// The bytes the signature covers (see the module docs).
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("invariant: a Manifest always serialises to JSON")
    }
}

/// The contents of a `COMPONENT.wasm.sig` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    /// What is signed.
    pub manifest: Manifest,
    /// Who signed it.
    pub signer: SignerKey,
    /// Ed25519 signature over [`Manifest::canonical_bytes`] (base64url in JSON).
    #[serde(with = "base64_64")]
    pub signature: [u8; 64],
}

impl SignedManifest {
    /// Parses a signature file.
    ///
    /// # Errors
    /// [`VerifyError::Malformed`] when it is not a signature file.
    pub fn from_json(bytes: &[u8]) -> Result<Self, VerifyError> {
        serde_json::from_slice(bytes).map_err(|e| VerifyError::Malformed(e.to_string()))
    }

    /// The signature file's text (pretty-printed JSON with a final newline).
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self)
            .expect("invariant: a SignedManifest always serialises to JSON");
        text.push('\n');
        text
    }
}

/// Why a component may not run under its signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The signature file could not be parsed.
    #[error("malformed signature file: {0}")]
    Malformed(String),
    /// The signer is not among the trusted keys.
    #[error("signer {signer} is not trusted")]
    UntrustedSigner {
        /// The signer named by the signature file.
        signer: SignerKey,
    },
    /// The signature does not match the manifest (it was altered, or signed by another).
    #[error("bad signature: the manifest was altered or not signed by {signer}")]
    BadSignature {
        /// The signer named by the signature file.
        signer: SignerKey,
    },
    /// The component's length differs from the signed one.
    #[error("component is {actual} bytes, but the signed manifest says {expected}")]
    LengthMismatch {
        /// The signed length.
        expected: u64,
        /// The component's length.
        actual: u64,
    },
    /// The component's SHA-256 differs from the signed one.
    #[error(
        "component sha256 is {}, but the signed manifest says {} (hash mismatch)",
        hex(.actual), hex(.expected)
    )]
    HashMismatch {
        /// The signed hash.
        expected: [u8; 32],
        /// The component's hash.
        actual: [u8; 32],
    },
    /// The manifest was issued in the future, beyond the allowed clock skew.
    #[error("signature not valid yet: issued at {}", unix_to_rfc3339(*.issued_at))]
    NotYetValid {
        /// When it was issued, in Unix seconds.
        issued_at: u64,
    },
    /// The signature's validity has ended.
    #[error("signature expired at {}", unix_to_rfc3339(*.expires_at))]
    Expired {
        /// When it expired, in Unix seconds.
        expires_at: u64,
    },
}

/// Signs `manifest` with `key`.
pub fn sign(key: &SigningKeypair, manifest: Manifest) -> SignedManifest {
    let signature = key.sign(&manifest.canonical_bytes());
    SignedManifest {
        manifest,
        signer: key.public(),
        signature,
    }
}

/// Checks that `component_bytes` may run under `sig` at `now_unix` (Unix seconds), given
/// the `trusted` signers; returns the verified manifest.
///
/// Checks, in order: the signer is trusted, the signature is valid, the length and SHA-256
/// match the component, `issued_at` is no later than `now + CLOCK_SKEW`, and `now` is
/// before `expires_at`.
///
/// # Errors
/// The first check that fails, as a [`VerifyError`].
pub fn verify<'a>(
    component_bytes: &[u8],
    sig: &'a SignedManifest,
    trusted: &[SignerKey],
    now_unix: u64,
) -> Result<&'a Manifest, VerifyError> {
    let manifest = &sig.manifest;
    if !trusted.contains(&sig.signer) {
        return Err(VerifyError::UntrustedSigner { signer: sig.signer });
    }
    if !sig
        .signer
        .is_valid(&manifest.canonical_bytes(), &sig.signature)
    {
        return Err(VerifyError::BadSignature { signer: sig.signer });
    }
    let length = component_bytes.len() as u64;
    if length != manifest.length {
        return Err(VerifyError::LengthMismatch {
            expected: manifest.length,
            actual: length,
        });
    }
    let sha256: [u8; 32] = Sha256::digest(component_bytes).into();
    if sha256 != manifest.sha256 {
        return Err(VerifyError::HashMismatch {
            expected: manifest.sha256,
            actual: sha256,
        });
    }
    if manifest.issued_at > now_unix.saturating_add(CLOCK_SKEW.as_secs()) {
        return Err(VerifyError::NotYetValid {
            issued_at: manifest.issued_at,
        });
    }
    if now_unix >= manifest.expires_at {
        return Err(VerifyError::Expired {
            expires_at: manifest.expires_at,
        });
    }
    Ok(manifest)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Formats Unix seconds as RFC 3339 UTC; times beyond what `SystemTime` holds are shown
/// as raw seconds rather than panicking.
pub fn unix_to_rfc3339(secs: u64) -> String {
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(time) => crate::control::goformat::rfc3339_utc(time),
        None => format!("{secs} (Unix seconds)"),
    }
}

/// Unix seconds of `time`, 0 before the epoch.
pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Serde for `[u8; 32]` as 64 hex digits.
mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::hex(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let digits: Option<Vec<u8>> = text
            .chars()
            .map(|c| c.to_digit(16).and_then(|v| u8::try_from(v).ok()))
            .collect();
        let mut out = [0u8; 32];
        match digits {
            Some(digits) if digits.len() == 64 => {
                for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
                    *byte = pair[0] << 4 | pair[1];
                }
            }
            _ => return Err(D::Error::custom("sha256 must be 64 hex digits")),
        }
        Ok(out)
    }
}

/// Serde for a 64-byte signature as unpadded base64url.
mod base64_64 {
    use super::{Engine, URL_SAFE_NO_PAD};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        let text = String::deserialize(d)?;
        URL_SAFE_NO_PAD
            .decode(&text)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| D::Error::custom("signature must be 64 bytes of base64url"))
    }
}
