//! How a unit's payload reaches its `stdin` file fast: a payload small enough to be read
//! whole first (a job's input usually is) is written and synced in one trip to a blocking
//! thread, instead of one trip per file operation. Owns nothing.

use std::io::{self, Write};
use std::path::PathBuf;

use tokio::io::{AsyncRead, AsyncReadExt};

/// Payloads up to this size are read whole before they are written.
pub(super) const SMALL_PAYLOAD: usize = 64 * 1024;

/// Reads from `payload` until its end or until `max` bytes; returns them and whether the end
/// was reached.
pub(super) async fn read_head(
    payload: &mut (dyn AsyncRead + Unpin + Send),
    max: usize,
) -> io::Result<(Vec<u8>, bool)> {
    let mut buf = vec![0u8; max];
    let mut filled = 0;
    while filled < max {
        let n = payload.read(&mut buf[filled..]).await?;
        if n == 0 {
            buf.truncate(filled);
            return Ok((buf, true));
        }
        filled += n;
    }
    Ok((buf, false))
}

/// Replaces the contents of the existing file at `path` with `bytes` and syncs its data to
/// the disk, all on one blocking thread.
pub(super) async fn write_synced(path: PathBuf, bytes: Vec<u8>) -> io::Result<()> {
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
    async fn write_synced_replaces_the_files_contents() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        std::fs::write(&path, b"an older, longer payload").unwrap();
        write_synced(path.clone(), b"new".to_vec()).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
    }
}
