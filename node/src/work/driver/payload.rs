//! Storing a unit's payload: the bytes a submitter sends are copied into the unit's stdin
//! file (up to the node's limit), hashed on the way for signed work, and synced before the
//! unit counts them as stored. Runs in the caller's task, never in the owner's.

use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

/// Why a payload could not be stored.
pub(super) enum CopyError {
    TooLarge,
    Io(std::io::Error),
}

/// Copies `payload` into the stdin file at `path`, at most `limit` bytes, and syncs it;
/// returns its size and SHA-256.
pub(super) async fn store_payload(
    path: &Path,
    payload: &mut (dyn AsyncRead + Unpin + Send),
    limit: u64,
) -> Result<(u64, [u8; 32]), CopyError> {
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await
        .map_err(CopyError::Io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = payload.read(&mut buf).await.map_err(CopyError::Io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(CopyError::TooLarge);
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).await.map_err(CopyError::Io)?;
    }
    file.flush().await.map_err(CopyError::Io)?;
    // On disk before its size is recorded: a status that says the payload is stored (and
    // lets a restarted node start or resubmit it) never points at a payload a power loss cut.
    file.sync_data().await.map_err(CopyError::Io)?;
    Ok((size, hasher.finalize().into()))
}
