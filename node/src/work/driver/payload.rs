//! Storing a unit's payload: the bytes a submitter sends are copied into the unit's stdin
//! file (up to the node's limit), hashed on the way for signed work, and synced before the
//! unit counts them as stored. Runs in the caller's task, never in the owner's. A payload
//! small enough to be read whole first (a job's input usually is) is written and synced in
//! one trip to a blocking thread, instead of one trip per file operation.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::work::readbuf::ReadBuf;

/// Payloads up to this size are read whole before they are written.
const SMALL_PAYLOAD: usize = 64 * 1024;

/// Why a payload could not be stored.
pub(super) enum CopyError {
    TooLarge,
    Io(io::Error),
}

/// Copies `payload` into the stdin file at `path`, at most `limit` bytes, and syncs it;
/// returns its size and SHA-256.
pub(super) async fn store_payload(
    path: &Path,
    payload: &mut (dyn AsyncRead + Unpin + Send),
    limit: u64,
) -> Result<(u64, [u8; 32]), CopyError> {
    let mut hasher = Sha256::new();
    let (head, whole) = read_head(payload, SMALL_PAYLOAD)
        .await
        .map_err(CopyError::Io)?;
    let mut size = head.len() as u64;
    if size > limit {
        return Err(CopyError::TooLarge);
    }
    hasher.update(&head);
    if whole {
        // Written and synced in one trip (why synced: below).
        write_synced(path.to_owned(), head)
            .await
            .map_err(CopyError::Io)?;
        return Ok((size, hasher.finalize().into()));
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .await
        .map_err(CopyError::Io)?;
    file.write_all(&head).await.map_err(CopyError::Io)?;
    let mut buf = ReadBuf::new(256 * 1024);
    loop {
        let n = payload.read(buf.space()).await.map_err(CopyError::Io)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        if size > limit {
            return Err(CopyError::TooLarge);
        }
        hasher.update(buf.filled(n));
        file.write_all(buf.filled(n)).await.map_err(CopyError::Io)?;
        buf.read_done(n);
    }
    file.flush().await.map_err(CopyError::Io)?;
    // On disk before its size is recorded: a status that says the payload is stored (and
    // lets a restarted node start or resubmit it) never points at a payload a power loss cut.
    file.sync_data().await.map_err(CopyError::Io)?;
    Ok((size, hasher.finalize().into()))
}

/// Reads from `payload` until its end or until `max` bytes; returns them and whether the end
/// was reached. The buffer grows with what arrives: a short payload costs a short buffer,
/// not `max` bytes (see [`crate::work::readbuf`]).
async fn read_head(
    payload: &mut (dyn AsyncRead + Unpin + Send),
    max: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = Vec::new();
    let mut rb = ReadBuf::new(max);
    while buf.len() < max {
        let room = max - buf.len();
        let space = rb.space();
        let want = space.len().min(room);
        let n = payload.read(&mut space[..want]).await?;
        if n == 0 {
            return Ok((buf, true));
        }
        buf.extend_from_slice(rb.filled(n));
        rb.read_done(n);
    }
    Ok((buf, false))
}

/// Replaces the contents of the existing file at `path` with `bytes` and syncs its data to
/// the disk, all on one blocking thread.
async fn write_synced(path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)?;
        file.write_all(&bytes)?;
        file.sync_data()
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_payload_shorter_than_the_head_is_read_whole_and_a_longer_one_is_not() {
        let (whole, ended) = read_head(&mut &b"hello\n"[..], 16).await.unwrap();
        assert_eq!((whole.as_slice(), ended), (&b"hello\n"[..], true));
        let long = [7u8; 40];
        let (head, ended) = read_head(&mut &long[..], 16).await.unwrap();
        assert_eq!((head.len(), ended), (16, false));
    }

    #[tokio::test]
    async fn a_head_longer_than_the_first_buffer_is_read_whole_and_in_order() {
        let payload: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
        let (head, ended) = read_head(&mut &payload[..], 64 * 1024).await.unwrap();
        assert_eq!((head.as_slice(), ended), (&payload[..], true));
        let (head, ended) = read_head(&mut &payload[..], 10_000).await.unwrap();
        assert_eq!((head.as_slice(), ended), (&payload[..10_000], false));
    }

    #[tokio::test]
    async fn write_synced_replaces_the_files_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        std::fs::write(&path, b"an older, longer payload").unwrap();
        write_synced(path.clone(), b"new".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_payload_over_the_limit_is_refused_whether_short_or_long() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        std::fs::write(&path, b"").unwrap();
        let short = store_payload(&path, &mut &[1u8; 10][..], 9).await;
        assert!(matches!(short, Err(CopyError::TooLarge)));
        let long = vec![2u8; SMALL_PAYLOAD * 3];
        let refused = store_payload(&path, &mut &long[..], SMALL_PAYLOAD as u64 * 2).await;
        assert!(matches!(refused, Err(CopyError::TooLarge)));
        let (size, _) = store_payload(&path, &mut &long[..], u64::MAX)
            .await
            .ok()
            .unwrap();
        assert_eq!(size, long.len() as u64);
        assert_eq!(std::fs::read(&path).unwrap(), long);
    }
}
