//! Measuring disk: what a job directory holds ([`measure`]), and whether the node's file
//! system still has its free-space floor ([`has_room`]).
//!
//! [`measure`] walks a directory without following symlinks, with an explicit stack (a
//! hostile tree cannot overflow ours), a depth limit, and an early stop once the total is
//! past a quota, so measuring a job that is over its quota costs no more than its quota.
//! Each entry counts one inode and the larger of its length and its allocated blocks: a
//! sparse file counts as big as it claims, since copying or packing it fills that much.
//! Hard links count once per name. Both err on the side of the node.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// How deep a job directory may nest before it cannot be measured (and the job is
/// stopped): far past any private data dir, collection or virtualenv, and well inside
/// what a path may hold.
pub const MAX_SCAN_DEPTH: usize = 128;

/// Free inodes below which the file system counts as full, whatever the byte floor: a
/// unit's status and results need a few files.
pub const MIN_FREE_INODES: u64 = 1024;

/// A job directory's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskQuota {
    /// Bytes its files and directories may take.
    pub bytes: u64,
    /// Files, directories and links it may hold.
    pub inodes: u64,
}

/// What a directory tree holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Bytes (per entry, the larger of length and allocated blocks).
    pub bytes: u64,
    /// Entries: files, directories, links.
    pub inodes: u64,
}

impl Usage {
    /// Whether this is more than `quota` allows.
    pub fn exceeds(&self, quota: DiskQuota) -> bool {
        self.bytes > quota.bytes || self.inodes > quota.inodes
    }

    /// Both counts added.
    pub fn plus(self, other: Self) -> Self {
        Self {
            bytes: self.bytes.saturating_add(other.bytes),
            inodes: self.inodes.saturating_add(other.inodes),
        }
    }
}

/// Why a directory could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A directory or entry could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Where.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The tree nests deeper than [`MAX_SCAN_DEPTH`].
    #[error("{path} nests deeper than {MAX_SCAN_DEPTH} directories")]
    TooDeep {
        /// The first directory too deep.
        path: PathBuf,
    },
}

/// The bytes one entry counts for.
pub fn entry_bytes(meta: &std::fs::Metadata) -> u64 {
    meta.len().max(meta.blocks().saturating_mul(512))
}

/// Measures everything under `dir` (not `dir` itself). Stops early, returning a total past
/// `stop_past`, once the total exceeds it. Entries that vanish while it runs are skipped.
///
/// # Errors
/// [`ScanError`] when a directory cannot be read or the tree is too deep.
pub fn measure(dir: &Path, stop_past: Option<DiskQuota>) -> Result<Usage, ScanError> {
    let mut usage = Usage::default();
    let mut pending: Vec<(PathBuf, usize)> = vec![(dir.to_owned(), 0)];
    while let Some((path, depth)) = pending.pop() {
        if depth > MAX_SCAN_DEPTH {
            return Err(ScanError::TooDeep { path });
        }
        let entries = match std::fs::read_dir(&path) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound && depth > 0 => continue,
            Err(source) => return Err(ScanError::Io { path, source }),
        };
        for entry in entries {
            let io_error = |source| ScanError::Io {
                path: path.clone(),
                source,
            };
            let entry = entry.map_err(io_error)?;
            // DirEntry::metadata does not follow symlinks.
            let meta = match entry.metadata() {
                Ok(meta) => meta,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    let path = entry.path();
                    return Err(ScanError::Io { path, source });
                }
            };
            usage = usage.plus(Usage {
                bytes: entry_bytes(&meta),
                inodes: 1,
            });
            if stop_past.is_some_and(|quota| usage.exceeds(quota)) {
                return Ok(usage);
            }
            if meta.is_dir() {
                pending.push((entry.path(), depth + 1));
            }
        }
    }
    Ok(usage)
}

/// Free space on a file system, as an unprivileged user may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes free.
    pub free_bytes: u64,
    /// Inodes free; `None` where the file system has no fixed number (btrfs).
    pub free_inodes: Option<u64>,
}

/// The free space of the file system holding `path`.
///
/// # Errors
/// When `statvfs(3)` fails (for example, `path` does not exist).
pub fn space(path: &Path) -> io::Result<Space> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statvfs is a plain C struct of integers; all-zero is a valid value.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is writable; both outlive the call.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &raw mut stat) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(space_of(&stat))
}

/// The free space a `statvfs` result describes.
#[allow(
    clippy::useless_conversion,
    reason = "the statvfs counts are u32 on some targets"
)]
fn space_of(stat: &libc::statvfs) -> Space {
    let free_bytes = u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize));
    let free_inodes = (stat.f_files > 0).then_some(u64::from(stat.f_favail));
    Space {
        free_bytes,
        free_inodes,
    }
}

/// The node's file system is below its free-space floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "{} MiB free, below this node's free-space floor of {} MiB{}",
    .free_bytes >> 20,
    .floor_bytes >> 20,
    inodes_note(*.free_inodes)
)]
pub struct BelowFloor {
    /// Bytes free.
    pub free_bytes: u64,
    /// The floor.
    pub floor_bytes: u64,
    /// Inodes free, when that is what is short.
    pub free_inodes: Option<u64>,
}

fn inodes_note(free_inodes: Option<u64>) -> String {
    free_inodes.map_or_else(String::new, |n| {
        format!(" (and only {n} free inodes, fewer than {MIN_FREE_INODES})")
    })
}

/// Whether `space` keeps the floor: at least `floor_bytes` free and, when there is a
/// floor, at least [`MIN_FREE_INODES`] inodes. A floor of 0 always passes.
///
/// # Errors
/// [`BelowFloor`] naming the free space and the floor.
pub fn check_floor(space: Space, floor_bytes: u64) -> Result<(), BelowFloor> {
    if floor_bytes == 0 {
        return Ok(());
    }
    let few_inodes = space.free_inodes.filter(|&n| n < MIN_FREE_INODES);
    if space.free_bytes < floor_bytes || few_inodes.is_some() {
        return Err(BelowFloor {
            free_bytes: space.free_bytes,
            floor_bytes,
            free_inodes: few_inodes,
        });
    }
    Ok(())
}

/// Why the node will not take new work on a file system.
#[derive(Debug, thiserror::Error)]
pub enum RoomError {
    /// Below the floor.
    #[error("{path}: {below}")]
    BelowFloor {
        /// The data directory.
        path: PathBuf,
        /// By how much.
        below: BelowFloor,
    },
    /// The free space could not be read.
    #[error("cannot read the free space of {path}: {source}")]
    Unknown {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// Whether the file system holding `data_dir` keeps `floor_bytes` free (a floor of 0 is
/// not checked).
///
/// # Errors
/// [`RoomError`] naming the free space and the floor, or why it could not be read.
pub fn has_room(data_dir: &Path, floor_bytes: u64) -> Result<(), RoomError> {
    if floor_bytes == 0 {
        return Ok(());
    }
    let path = data_dir.to_owned();
    let space = match space(data_dir) {
        Ok(space) => space,
        Err(source) => return Err(RoomError::Unknown { path, source }),
    };
    check_floor(space, floor_bytes).map_err(|below| RoomError::BelowFloor { path, below })
}

#[cfg(test)]
mod tests;
