//! What a job's uid (`[work] job-users`) leaves in the places every user may write: files,
//! directories, sockets and POSIX message queues in the host's shared directories (`/tmp`,
//! `/var/tmp`, `/dev/shm`, `/run/lock`, `/dev/mqueue`, `/var/crash`, ...: found at each sweep,
//! see `places`), at their top level and inside the world-writable directories in them that
//! are not the uid's (`/tmp/.X11-unix`, another user's 1777 directory). The next job of the
//! uid, often another submitter's, would find them as their owner; [`remove_files_of`]
//! removes them.
//!
//! Every step is relative to a directory descriptor, opened with `O_NOFOLLOW`: a symlink is
//! never followed, and another user renaming or replacing a directory on the way cannot send
//! a removal elsewhere (`tree`: a directory is checked against what was judged before
//! anything in it is touched, and only the uid's entries in it go). The sweep runs in the
//! node, with its rights: what it may remove is bounded by those checks, not by the kernel.
//!
//! The scan is bounded: it descends [`MAX_DEPTH`] levels of others' world-writable
//! directories, looks at [`MAX_PLACE_ENTRIES`] entries per shared directory (every level,
//! the uid's trees included) and stops after [`SWEEP_TIME`] in all, saying so in the log:
//! a directory another user keeps filling cannot hold it. Each level is read to its end
//! before the directories below it. A sweep cut short, or one that left an entry of the
//! uid neither removed nor taken, keeps the uid from the next job (`users`): it is swept
//! again when next taken, and goes to a job only once a sweep completes. A tree of the uid is removed down to [`MAX_TREE_DEPTH`] levels; one
//! that cannot be removed whole (deeper, another user's entry in it, the bound reached in
//! it, an entry that will not go) is taken from the uid instead: given to the node with
//! mode 0700, so the next job of the uid cannot enter it.
//!
//! Blocking (directory reads): call it off the async workers, and only while no process
//! runs as the uid (after its reap, or when the pool sees none), so the uid cannot race it.

mod places;
mod tree;

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::fs::{Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use tree::TreeError;

/// Levels of others' world-writable directories descended below a shared directory:
/// `/tmp/.X11-unix` is one; four covers a user's 1777 tree in `/tmp` a few levels down
/// while a scan of a crowded `/tmp` stays short.
pub(crate) const MAX_DEPTH: usize = 4;

/// Entries looked at in one shared directory, at every level: a crowded `/tmp` (hundreds
/// of thousands of others' files) or a directory another user keeps filling costs a
/// bounded time (about a second here), and the next shared directory is still swept.
pub(crate) const MAX_PLACE_ENTRIES: usize = 250_000;

/// How long one sweep of every shared directory may take: it runs when a job's uid is
/// taken (a job's start waits for it) and when it comes free.
pub(crate) const SWEEP_TIME: Duration = Duration::from_secs(30);

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
    /// Shared directories not swept to the end: the sweep's bound was reached in them.
    pub(crate) cut_short: usize,
}

impl Swept {
    /// Whether everything of the uid the sweep found is gone or taken, and it looked
    /// everywhere: otherwise the uid must not go to another job.
    pub(crate) fn is_complete(&self) -> bool {
        self.failed == 0 && self.cut_short == 0
    }
}

/// What a sweep may still do: entries to look at in the shared directory at hand, and the
/// time the whole sweep ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    entries: usize,
    deadline: Instant,
}

impl Budget {
    /// `entries` looks, until `deadline`.
    pub(crate) fn new(entries: usize, deadline: Instant) -> Self {
        Self { entries, deadline }
    }

    /// Takes one entry's look; false once the entries or the time are used up.
    fn take(&mut self) -> bool {
        if self.entries == 0 || Instant::now() >= self.deadline {
            self.entries = 0;
            return false;
        }
        self.entries -= 1;
        true
    }

    fn is_spent(&self) -> bool {
        self.entries == 0
    }
}

/// Removes what `uid` owns in the host's shared directories (see the module doc).
pub(crate) fn remove_files_of(uid: u32) -> Swept {
    let mut swept = Swept::default();
    let deadline = Instant::now() + SWEEP_TIME;
    for dir in places::shared_dirs() {
        let mut budget = Budget::new(MAX_PLACE_ENTRIES, deadline);
        sweep(&dir, uid, &mut budget, &mut swept);
    }
    swept
}

/// Removes what `uid` owns in the shared directory `root` within `budget`, adding to
/// `swept`.
pub(crate) fn sweep(root: &Path, uid: u32, budget: &mut Budget, swept: &mut Swept) {
    let fd = match rustix::fs::open(root, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT | Errno::NOTDIR) => return,
        Err(e) => {
            tracing::warn!(uid, dir = %root.display(), error = %e, "cannot read a shared directory to remove what a job left");
            return;
        }
    };
    let mut scan = Scan { uid, budget, swept };
    scan.dir(fd.as_fd(), root, 0);
    if scan.budget.is_spent() {
        swept.cut_short += 1;
        tracing::warn!(uid, dir = %root.display(), "stopped removing what a job left: the sweep's bound ({MAX_PLACE_ENTRIES} entries per shared directory, {SWEEP_TIME:?} in all) was reached; the rest goes when the uid is next taken");
    }
}

/// One shared directory's scan.
struct Scan<'a> {
    uid: u32,
    budget: &'a mut Budget,
    swept: &'a mut Swept,
}

impl Scan<'_> {
    /// Removes the uid's entries of `dir` (at `path`, `depth` levels below the shared
    /// directory), then descends into others' world-writable directories in it: a level is
    /// read to its end before any directory below it, so a crowded directory of another
    /// user's cannot use up the budget before the uid's entries beside it are looked at.
    fn dir(&mut self, dir: BorrowedFd<'_>, path: &Path, depth: usize) {
        let entries = match Dir::read_from(dir) {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(uid = self.uid, dir = %path.display(), error = %e, "cannot read a directory to remove what a job left");
                return;
            }
        };
        let mut below = Vec::new();
        for entry in entries {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            if !self.budget.take() {
                return;
            }
            if self.entry(dir, name, &path.join(bytes_path(name)), depth) {
                below.push(name.to_owned());
            }
        }
        for name in below {
            self.descend(dir, &name, &path.join(bytes_path(&name)), depth);
        }
    }

    /// Removes `name` of `dir` if the uid owns it; returns whether it is another user's
    /// world-writable directory to descend into (within [`MAX_DEPTH`]).
    fn entry(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, depth: usize) -> bool {
        let Ok(stat) = rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) else {
            return false;
        };
        if stat.st_uid == self.uid {
            self.remove(dir, name, path, &stat);
            return false;
        }
        depth < MAX_DEPTH && is_open_dir(&stat)
    }

    /// Scans another user's world-writable directory `name` of `dir`, decided again on the
    /// opened directory (the name may have been replaced since it was looked at).
    fn descend(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, depth: usize) {
        if self.budget.is_spent() {
            return;
        }
        let Ok(child) = rustix::fs::openat(dir, name, dir_flags(), Mode::empty()) else {
            return;
        };
        if rustix::fs::fstat(&child).is_ok_and(|s| s.st_uid != self.uid && is_open_dir(&s)) {
            self.dir(child.as_fd(), path, depth + 1);
        }
    }

    /// Removes the uid's entry `name` of `dir`, judged as `judged`, or, failing that, takes
    /// it from the uid.
    fn remove(&mut self, dir: BorrowedFd<'_>, name: &CStr, path: &Path, judged: &Stat) {
        let uid = self.uid;
        let error = match tree::remove(dir, name, judged, uid, self.budget) {
            Ok(()) => {
                self.swept.removed += 1;
                tracing::info!(uid, path = %path.display(), "removed what a job left");
                return;
            }
            Err(TreeError::Os(Errno::NOENT)) => return,
            Err(TreeError::Replaced) => {
                tracing::warn!(uid, path = %path.display(), "an entry of a job's uid was replaced while it was being removed; left alone");
                return;
            }
            Err(e) => e,
        };
        match tree::take_from_uid(dir, name, judged) {
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
