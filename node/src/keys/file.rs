//! Private key files: a header line naming the kind of key, then its 32-byte secret in
//! base64url; mode 0600; never overwritten unless asked. Shared by link keys and component
//! signing keys, which differ only in their header.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// What went wrong with a key file.
#[derive(Debug)]
pub(crate) enum KeyFileError {
    /// It could not be read or written.
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// It exists and overwriting was not asked for.
    Exists { path: PathBuf },
    /// It is not a key file of the expected kind.
    BadFile { path: PathBuf, reason: &'static str },
}

/// Reads the secret from a key file whose first line is `header`.
pub(crate) fn load(path: &Path, header: &str) -> Result<[u8; 32], KeyFileError> {
    let text = fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    })?;
    let bad = |reason| KeyFileError::BadFile {
        path: path.to_owned(),
        reason,
    };
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    if lines.next() != Some(header) {
        return Err(bad("missing header line"));
    }
    let body = lines.next().ok_or_else(|| bad("missing key line"))?;
    decode_32(body).ok_or_else(|| bad("key line is not 32 bytes of base64url"))
}

/// Writes `secret` under `header` to `path` with mode 0600.
pub(crate) fn save(
    path: &Path,
    header: &str,
    secret: &[u8; 32],
    overwrite: bool,
) -> Result<(), KeyFileError> {
    let io = |source| KeyFileError::Io {
        path: path.to_owned(),
        source,
    };
    if path.exists() && !overwrite {
        return Err(KeyFileError::Exists {
            path: path.to_owned(),
        });
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(io)?;
    // An existing file keeps its old mode on truncate; tighten it.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    let text = format!("{header}\n{}\n", URL_SAFE_NO_PAD.encode(secret));
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)
}

/// 32 bytes from base64url, if that is what `body` holds.
pub(crate) fn decode_32(body: &str) -> Option<[u8; 32]> {
    URL_SAFE_NO_PAD.decode(body).ok()?.try_into().ok()
}
