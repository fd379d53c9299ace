//! The store's file writes and reads: owner-only files written whole or overwritten in
//! place, never through a symlink a job planted, and a range of a unit's results.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::FILE_MODE;

/// Whether a status write waits for the disk before the rename.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Durability {
    /// Sync the temp file first, so the renamed status survives a crash.
    Yes,
    /// Leave it to the OS.
    No,
}

/// Writes `bytes` to an owner-only file at `path`, syncing it to disk if asked. A symlink
/// at `path` (a job runs as the node's user and could plant one) is refused, not followed.
pub(super) fn write_file(path: &Path, bytes: &[u8], sync: Durability) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)?;
    match sync {
        Durability::Yes => file.sync_all(),
        Durability::No => Ok(()),
    }
}

/// Replaces the contents of the owner-only file at `path` (created if missing) with
/// `bytes`, in place: written from offset 0, then cut to their length. A symlink at `path`
/// is refused, as by [`write_file`].
pub(super) fn overwrite_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    file.write_all(bytes)?;
    file.set_len(bytes.len() as u64)
}

/// Reads up to `max` bytes of the file at `path` from byte `offset`.
pub(super) fn read_range(path: &Path, offset: u64, max: usize) -> io::Result<Vec<u8>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if offset >= len {
        return Ok(Vec::new());
    }
    file.seek(SeekFrom::Start(offset))?;
    let want = usize::try_from(len - offset).map_or(max, |rest| rest.min(max));
    let mut buf = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut buf)?;
    Ok(buf)
}
