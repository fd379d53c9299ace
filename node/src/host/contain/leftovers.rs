//! What a job's uid (`[work] job-users`) leaves in the places every user may write: files,
//! directories, sockets and POSIX message queues in `/tmp`, `/var/tmp`, `/dev/shm`,
//! `/run/lock` and `/dev/mqueue`, at their top level and inside the world-writable
//! directories in them that are not the uid's (`/tmp/.X11-unix`, `/tmp/.ICE-unix`, another
//! user's 1777 directory). The next job of the uid, often another submitter's, would find
//! them as their owner; [`remove_files_of`] removes them.
//!
//! Every step is relative to a directory descriptor, opened with `O_NOFOLLOW`: a symlink is
//! never followed, and another user renaming or replacing a directory on the way cannot send
//! a removal elsewhere. The scan is bounded: it descends [`MAX_DEPTH`] levels of others'
//! world-writable directories and looks at [`MAX_NESTED_ENTRIES`] entries below the top
//! level (each top level is read whole, as before). A tree of the uid is removed down to
//! [`MAX_TREE_DEPTH`] levels; one that cannot be removed whole (deeper, or an entry that
//! will not go) is taken from the uid instead: given to the node with mode 0700, so the
//! next job of the uid cannot enter it.
//!
//! Blocking (directory reads): call it off the async workers, and only while no process
//! runs as the uid (after its reap, or when the pool sees none), so the uid cannot race it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

/// The places every user may write (1777 on Debian: `/run/lock` too; `/dev/mqueue` where
/// the mqueue file system is mounted), whose entries of a uid are removed.
pub(crate) const SHARED_DIRS: [&str; 5] =
    ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"];

/// Levels of others' world-writable directories descended below a shared directory:
/// `/tmp/.X11-unix` is one; four covers a user's 1777 tree in `/tmp` a few levels down
/// while a scan of a crowded `/tmp` stays short.
pub(crate) const MAX_DEPTH: usize = 4;

/// Entries looked at below the top level of one shared directory: bounds the time a scan
/// spends in other users' trees.
pub(crate) const MAX_NESTED_ENTRIES: usize = 100_000;

/// Levels of one of the uid's directory trees removed, one open descriptor each; a deeper
/// tree is taken from the uid instead.
pub(crate) const MAX_TREE_DEPTH: usize = 128;

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Entries of the uid removed.
    pub(crate) removed: usize,
    /// Entries of the uid that could not be removed and were given to the node (0700).
    pub(crate) taken: usize,
    /// Entries of the uid left as they were (neither removed nor taken).
    pub(crate) failed: usize,
}

/// Removes what `uid` owns in [`SHARED_DIRS`] (see the module doc).
pub(crate) fn remove_files_of(uid: u32) -> Swept {
    let mut swept = Swept::default();
    for dir in SHARED_DIRS {
        sweep(Path::new(dir), uid, &mut swept);
    }
    swept
}

/// Removes what `uid` owns in the shared directory `root`, adding to `swept`.
pub(crate) fn sweep(root: &Path, uid: u32, swept: &mut Swept) {
    let fd = match rustix::fs::open(root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return,
        Err(e) => {
            tracing::warn!(uid, dir = %root.display(), error = %e, "cannot read a shared directory to remove what a job left");
            return;
        }
    };
    let mut scan = Scan {
        uid,
        budget: MAX_NESTED_ENTRIES,
        swept,
    };
    scan.dir(fd.as_fd(), root, 0);
}

/// One shared directory's scan.
struct Scan<'a> {
    uid: u32,
    /// Entries below the top level still to be looked at.
    budget: usize,
    swept: &'a mut Swept,
}

impl Scan<'_> {
    /// Removes the uid's entries of `dir` (at `path`, `depth` levels below the shared
    /// directory) and descends into others' world-writable directories.
    fn dir(&mut self, dir: BorrowedFd<'_>, path: &Path, depth: usize) {
        let entries = match Dir::read_from(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(uid = self.uid, dir = %path.display(), error = %e, "cannot read a directory to remove what a job left");
                return;
            }
        };
        for entry in entries {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if depth > 0 {
                if self.budget == 0 {
                    tracing::warn!(uid = self.uid, dir = %path.display(), "stopped looking for what a job left after {MAX_NESTED_ENTRIES} nested entries");
                    return;
                }
                self.budget -= 1;
            }
            self.entry(dir, name, &path.join(bytes_path(name)), depth);
        }
    }

    /// Removes `name` of `dir` if the uid owns it, else descends into it if it is a
    /// world-writable directory within [`MAX_DEPTH`].
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, depth: usize) {
        let Ok(stat) = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) else {
            return;
        };
        if stat.st_uid == self.uid {
            self.remove(dir, name, path, &stat);
        } else if depth < MAX_DEPTH && is_open_dir(&stat) {
            // Decided again on the opened directory: the name may have been replaced.
            let Ok(child) = rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) else {
                return;
            };
            if rustix::fs::fstat(&child).is_ok_and(|s| s.st_uid != self.uid && is_open_dir(&s)) {
                self.dir(child.as_fd(), path, depth + 1);
            }
        }
    }

    /// Removes the uid's entry `name` of `dir`, or, failing that, takes it from the uid.
    fn remove(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, stat: &Stat) {
        let uid = self.uid;
        let removed = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
            remove_tree(dir, name, 0)
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(io::Error::from)
        };
        let error = match removed {
            Ok(()) => {
                self.swept.removed += 1;
                tracing::info!(uid, path = %path.display(), "removed what a job left");
                return;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return,
            Err(e) => e,
        };
        match take_from_uid(dir, name) {
            Ok(()) => {
                self.swept.taken += 1;
                tracing::warn!(uid, path = %path.display(), error = %error, "cannot remove what a job left; gave it to the node (mode 0700 for a directory) so the uid's next job cannot read it");
            }
            Err(e) => {
                self.swept.failed += 1;
                tracing::error!(uid, path = %path.display(), error = %error, take_error = %e, "cannot remove what a job left, nor take it from the uid");
            }
        }
    }
}

/// Removes the directory `name` of `parent` and everything in it, down to
/// [`MAX_TREE_DEPTH`] levels below it (`depth`: this one's level).
fn remove_tree(parent: BorrowedFd<'_>, name: &CStr, depth: usize) -> io::Result<()> {
    if depth >= MAX_TREE_DEPTH {
        return Err(io::Error::other(format!(
            "more than {MAX_TREE_DEPTH} levels deep"
        )));
    }
    let dir = rustix::fs::openat(parent, name, dir_flags(), Mode::empty())?;
    // Names a batch at a time (the directory changes as they go), until none is left: a
    // directory of millions of entries costs time, not the node's memory; one that another
    // user keeps filling is given up on after `MAX_BATCHES`.
    let mut emptied = false;
    for _ in 0..MAX_BATCHES {
        let batch = names(dir.as_fd(), REMOVE_BATCH)?;
        if batch.is_empty() {
            emptied = true;
            break;
        }
        for child in &batch {
            remove_entry(dir.as_fd(), child, depth)?;
        }
    }
    if !emptied {
        return Err(io::Error::other(format!(
            "still not empty after {} entries",
            MAX_BATCHES * REMOVE_BATCH
        )));
    }
    drop(dir);
    Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
}

/// Names read and removed at a time, per level of a tree being removed.
const REMOVE_BATCH: usize = 1024;

/// Batches one directory of a tree may take before its removal is given up.
const MAX_BATCHES: usize = 10_000;

/// Up to `most` names of `dir` (not `.` and `..`), from its start.
fn names(dir: BorrowedFd<'_>, most: usize) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        if !matches!(entry.file_name().to_bytes(), b"." | b"..") {
            names.push(entry.file_name().to_owned());
        }
        if names.len() >= most {
            break;
        }
    }
    Ok(names)
}

/// Removes the entry `name` of `dir` (a tree `depth` levels deep), gone already is fine.
fn remove_entry(dir: BorrowedFd<'_>, name: &CStr, depth: usize) -> io::Result<()> {
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let removed = if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
        remove_tree(dir, name, depth + 1)
    } else {
        rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(Into::into)
    };
    match removed {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
        _ => Ok(()),
    }
}

/// Gives the entry `name` of `dir` to the node (not following a link); a directory also
/// gets mode 0700, through a descriptor of it, so owner and mode change on the same one.
fn take_from_uid(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    match rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) {
        Ok(child) => {
            rustix::fs::fchown(&child, Some(uid), Some(gid))?;
            Ok(rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700))?)
        }
        Err(Errno::NOTDIR | Errno::LOOP) => Ok(rustix::fs::chownat(
            dir,
            name,
            Some(uid),
            Some(gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )?),
        Err(e) => Err(e.into()),
    }
}

/// Whether `stat` is a directory others may write in.
fn is_open_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory && stat.st_mode & 0o002 != 0
}

/// A directory, read-only, never through a symlink.
fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// A file name as a path (for logs and the next level's name).
fn bytes_path(name: &CStr) -> PathBuf {
    use std::os::unix::ffi::OsStrExt as _;
    PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()))
}

#[cfg(test)]
#[path = "leftovers_tests.rs"]
mod tests;
