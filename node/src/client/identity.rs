//! A client's identity: its link key (`$WARREN_IDENTITY`, else
//! `~/.config/warren/identity.key`, created on first use) and, when it has one, its
//! certificate (`$WARREN_CERT`, else the key's path with `.cert`), which names the node id it
//! runs as and the mesh authority it trusts.

use std::path::{Path, PathBuf};

use crate::ca::SignedCertificate;
use crate::keys::LinkKeypair;

use super::ClientError;

/// The client's key pair, where it lives, and its certificate if any.
#[derive(Debug)]
pub struct Identity {
    /// The link key pair.
    pub keys: LinkKeypair,
    /// The key file.
    pub path: PathBuf,
    /// The certificate, checked to be for this key.
    pub cert: Option<SignedCertificate>,
    /// Whether the key was created just now.
    pub created: bool,
}

/// Where the identity lives: `explicit`, else `$WARREN_IDENTITY`, else
/// `~/.config/warren/identity.key`.
///
/// # Errors
/// [`ClientError::Identity`] when no location can be found.
pub fn identity_path(explicit: Option<&Path>) -> Result<PathBuf, ClientError> {
    if let Some(path) = explicit {
        return Ok(path.to_owned());
    }
    if let Some(path) = std::env::var_os("WARREN_IDENTITY").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let home = std::env::var_os("HOME").ok_or_else(|| {
        ClientError::Identity("HOME is not set; set WARREN_IDENTITY to a key file".into())
    })?;
    Ok(PathBuf::from(home).join(".config/warren/identity.key"))
}

/// Loads the identity at `path`, creating the key on first use, and its certificate.
///
/// # Errors
/// [`ClientError::Identity`] for an unreadable key or a certificate for another key.
pub fn load(path: &Path) -> Result<Identity, ClientError> {
    let bad = |e: String| ClientError::Identity(format!("{}: {e}", path.display()));
    let (keys, created) = if path.exists() {
        (
            LinkKeypair::load(path).map_err(|e| bad(e.to_string()))?,
            false,
        )
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
        }
        let pair = LinkKeypair::generate().map_err(|e| bad(e.to_string()))?;
        pair.save(path, false).map_err(|e| bad(e.to_string()))?;
        (pair, true)
    };
    let cert = load_cert(path, &keys)?;
    Ok(Identity {
        keys,
        path: path.to_owned(),
        cert,
        created,
    })
}

fn load_cert(
    identity: &Path,
    keys: &LinkKeypair,
) -> Result<Option<SignedCertificate>, ClientError> {
    let path = std::env::var_os("WARREN_CERT")
        .filter(|p| !p.is_empty())
        .map_or_else(|| identity.with_extension("cert"), PathBuf::from);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let cert = SignedCertificate::from_armored(&text)
        .map_err(|e| ClientError::Identity(format!("{}: {e}", path.display())))?;
    if cert.cert.key != keys.public() {
        return Err(ClientError::Identity(format!(
            "{} is a certificate for key {}, not this client's key {}",
            path.display(),
            cert.cert.key,
            keys.public()
        )));
    }
    Ok(Some(cert))
}
