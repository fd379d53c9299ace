//! What goes into the zip, in order: the private data dir walked as Python's `os.walk`
//! walks it (each dir's files, then its subdirs, then each subdir in turn), with each entry's
//! metadata as it was when the walk saw it.
//!
//! Directory entries and symlinks (mode `0o120777`, data = target) are kept; FIFOs, sockets
//! and devices are skipped, as the reference skips FIFOs (a reader of one would hang).

use std::fs::{self, Metadata};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use super::TransmitError;
use super::layout::{DosTime, MAX_NAME_LEN};
use crate::ansible::archive::dos_time;

/// What a regular file looked like when it was planned: if any of it differs when the file
/// is read, the file changed during the transmit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) len: u64,
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    pub(super) fn of(meta: &Metadata) -> Self {
        Self {
            len: meta.len(),
            dev: meta.dev(),
            ino: meta.ino(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

/// An entry's contents.
#[derive(Debug, Clone)]
pub(super) enum Body {
    /// A regular file, read when it is compressed or sent.
    File { path: PathBuf, stamp: Stamp },
    /// A directory (no data).
    Dir,
    /// A symlink: its data is the target.
    Link { target: String },
    /// A regular file whose contents are already here (a node assembling a submission's
    /// stream from a manifest: the contents sent inline).
    Bytes(Vec<u8>),
}

/// One zip entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    /// The name in the zip, relative, `/`-separated; directories end with `/`.
    pub(super) name: String,
    /// `st_mode` as the zip carries it: type bits plus permission bits (`0o777`).
    pub(super) mode: u32,
    pub(super) time: DosTime,
    pub(super) body: Body,
}

impl Entry {
    /// The bytes of the entry's data before any compression.
    pub(super) fn size(&self) -> u64 {
        match &self.body {
            Body::File { stamp, .. } => stamp.len,
            Body::Dir => 0,
            Body::Link { target } => target.len() as u64,
            Body::Bytes(bytes) => bytes.len() as u64,
        }
    }
}

pub(super) const TYPE_FILE: u32 = 0o100_000;
pub(super) const TYPE_DIR: u32 = 0o040_000;
pub(super) const TYPE_LINK: u32 = 0o120_000;

/// Every entry of the zip of `dir`, in the reference's order.
///
/// # Errors
///
/// [`TransmitError::Read`] when a directory or entry cannot be read,
/// [`TransmitError::NonUtf8`] for a name the zip cannot carry as the reference names it.
pub(super) fn walk(dir: &Path) -> Result<Vec<Entry>, TransmitError> {
    let mut entries = Vec::new();
    walk_into(&mut entries, dir, "")?;
    Ok(entries)
}

fn walk_into(entries: &mut Vec<Entry>, dir: &Path, rel: &str) -> Result<(), TransmitError> {
    let read = |source| TransmitError::Read {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for item in fs::read_dir(dir).map_err(read)? {
        let item = item.map_err(read)?;
        let name = item
            .file_name()
            .into_string()
            .map_err(|_| TransmitError::NonUtf8 { path: item.path() })?;
        // `os.walk` sorts by `is_dir()`, which follows symlinks.
        match fs::metadata(item.path()) {
            Ok(meta) if meta.is_dir() => dirs.push(name),
            _ => files.push(name),
        }
    }
    for name in files.iter().chain(&dirs) {
        if let Some(entry) = entry(&dir.join(name), &join_rel(rel, name))? {
            entries.push(entry);
        }
    }
    for name in &dirs {
        let path = dir.join(name);
        let meta = fs::symlink_metadata(&path).map_err(|source| TransmitError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk_into(entries, &path, &join_rel(rel, name))?;
        }
    }
    Ok(())
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

/// The entry for `path`, named `name`; `None` for what the zip skips.
fn entry(path: &Path, name: &str) -> Result<Option<Entry>, TransmitError> {
    let read = |source| TransmitError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(read)?;
    let time = dos_time(meta.modified().unwrap_or(UNIX_EPOCH));
    let time = DosTime {
        date: time.datepart(),
        time: time.timepart(),
    };
    let perm = meta.mode() & 0o777;
    let kind = meta.file_type();
    let (name, mode, body) = if kind.is_symlink() {
        let target = fs::read_link(path).map_err(read)?;
        let target = target
            .into_os_string()
            .into_string()
            .map_err(|_| TransmitError::NonUtf8 {
                path: path.to_owned(),
            })?;
        (name.to_owned(), TYPE_LINK | 0o777, Body::Link { target })
    } else if kind.is_dir() {
        (format!("{name}/"), TYPE_DIR | perm, Body::Dir)
    } else if kind.is_file() {
        let body = Body::File {
            path: path.to_owned(),
            stamp: Stamp::of(&meta),
        };
        (name.to_owned(), TYPE_FILE | perm, body)
    } else {
        return Ok(None);
    };
    if name.len() > MAX_NAME_LEN {
        return Err(TransmitError::NameTooLong {
            path: path.to_owned(),
        });
    }
    Ok(Some(Entry {
        name,
        mode,
        time,
        body,
    }))
}
