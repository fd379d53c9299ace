//! Reading a planned regular file, refusing one that changed since the plan: the zip's
//! length is promised before its data, so a file must give exactly the bytes the plan
//! counted, and must look the same (size, inode, mtime, ctime) before and after it is read.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::TransmitError;
use super::plan::Stamp;

/// Bytes read from a file at a time.
pub(super) const READ_LEN: usize = 128 * 1024;

/// Opens `path` without following a symlink (it was a regular file when planned) and checks
/// it is still what the plan saw.
pub(super) fn open(path: &Path, stamp: &Stamp) -> Result<File, TransmitError> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            // ELOOP: the file was replaced by a symlink since it was planned.
            Some(libc::ELOOP | libc::ENOENT) => changed(path),
            _ => TransmitError::Read {
                path: path.to_owned(),
                source,
            },
        })?;
    check(&file, path, stamp)?;
    Ok(file)
}

/// Fails with [`TransmitError::Changed`] unless `file` still matches `stamp`.
fn check(file: &File, path: &Path, stamp: &Stamp) -> Result<(), TransmitError> {
    let meta = file.metadata().map_err(|source| TransmitError::Read {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_file() || Stamp::of(&meta) != *stamp {
        return Err(changed(path));
    }
    Ok(())
}

fn changed(path: &Path) -> TransmitError {
    TransmitError::Changed {
        path: path.to_owned(),
    }
}

/// Reads the whole of a planned file, `READ_LEN` bytes at a time (the last piece shorter),
/// into `each`, then checks that it ended where the plan said and did not change meanwhile.
/// The pieces are the same on every read of an unchanged file, so compressing them twice
/// gives the same bytes.
pub(super) fn read_all(
    path: &Path,
    stamp: &Stamp,
    mut each: impl FnMut(&[u8]) -> Result<(), TransmitError>,
) -> Result<(), TransmitError> {
    let mut file = open(path, stamp)?;
    let read = |source| TransmitError::Read {
        path: path.to_owned(),
        source,
    };
    let mut buf = vec![0u8; READ_LEN];
    let mut left = stamp.len;
    while left > 0 {
        let want = usize::try_from(left).map_or(READ_LEN, |left| left.min(READ_LEN));
        let filled = read_full(&mut file, &mut buf[..want]).map_err(read)?;
        if filled < want {
            return Err(changed(path));
        }
        each(&buf[..filled])?;
        left -= filled as u64;
    }
    let mut probe = [0u8; 1];
    if read_full(&mut file, &mut probe).map_err(read)? != 0 {
        return Err(changed(path));
    }
    check(&file, path, stamp)
}

/// Reads the first `limit` bytes of a planned file (fewer if it is shorter).
pub(super) fn read_head(
    path: &Path,
    stamp: &Stamp,
    limit: usize,
) -> Result<Vec<u8>, TransmitError> {
    let file = open(path, stamp)?;
    let mut head = Vec::with_capacity(limit);
    file.take(limit as u64)
        .read_to_end(&mut head)
        .map_err(|source| TransmitError::Read {
            path: path.to_owned(),
            source,
        })?;
    Ok(head)
}

/// Fills `buf` unless the file ends first; returns how much was read.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
