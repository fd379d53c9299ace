//! Removing one entry the sweep judged to be the uid's, and taking from the uid what will
//! not go.
//!
//! A directory is opened (`O_DIRECTORY | O_NOFOLLOW`) and its descriptor checked against
//! what was judged (device, inode, owner) before anything in it is touched; everything
//! below goes through that descriptor. So a name given to another directory between the
//! look and the removal (by whoever may rename in the parent) is left alone. Inside the
//! uid's tree only the uid's entries go: what another user put in a directory the uid left
//! open to everyone stays, and the directory, no longer removable, is taken instead.
//!
//! A directory is read once, removing as it goes; one pass more if the first removed
//! something and left it not empty (a file system whose reads skip past removals). Every
//! entry looked at is taken from the sweep's [`Budget`].
//!
//! The last step, `unlinkat` by name, cannot be tied to a descriptor: a name swapped just
//! before it is removed instead. Only who may rename in that directory can swap it (in a
//! sticky one its owner; in one open to all, anyone), and they may remove that entry
//! themselves.

use std::ffi::CStr;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

use super::{Budget, MAX_TREE_DEPTH, dir_flags};

/// Why an entry of the uid was not removed (or not taken).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TreeError {
    /// The tree goes deeper than the sweep follows.
    #[error("more than {MAX_TREE_DEPTH} levels deep")]
    TooDeep,
    /// The name now leads to something else than what the sweep judged.
    #[error("replaced by another entry while it was being removed")]
    Replaced,
    /// The sweep's bound on entries or time was reached inside it.
    #[error("the sweep's bound was reached inside it")]
    Bound,
    /// What the kernel said.
    #[error(transparent)]
    Os(#[from] Errno),
}

/// Removes the uid's entry `name` of `dir`, judged as `judged` (owned by `uid`).
pub(crate) fn remove(
    dir: BorrowedFd<'_>,
    name: &CStr,
    judged: &Stat,
    uid: u32,
    budget: &mut Budget,
) -> Result<(), TreeError> {
    if is_dir(judged) {
        remove_tree(dir, name, judged, uid, budget, 0)
    } else {
        Ok(rustix::fs::unlinkat(dir, name, AtFlags::empty())?)
    }
}

/// Gives the entry `name` of `dir`, if it still is the one judged, to the node (a
/// directory also gets mode 0700), through one descriptor opened without following a link.
pub(crate) fn take_from_uid(
    dir: BorrowedFd<'_>,
    name: &CStr,
    judged: &Stat,
) -> Result<(), TreeError> {
    let (uid, gid) = (rustix::process::geteuid(), rustix::process::getegid());
    if is_dir(judged) {
        let child = open_judged(dir, name, judged, dir_flags())?;
        rustix::fs::fchown(&child, Some(uid), Some(gid))?;
        return Ok(rustix::fs::fchmod(&child, Mode::from_raw_mode(0o700))?);
    }
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let child = open_judged(dir, name, judged, flags)?;
    Ok(rustix::fs::chownat(
        &child,
        c"",
        Some(uid),
        Some(gid),
        AtFlags::EMPTY_PATH | AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// Removes the uid's directory `name` of `parent`, judged as `judged`, with the uid's
/// entries in it, `depth` levels below the entry the sweep found.
fn remove_tree(
    parent: BorrowedFd<'_>,
    name: &CStr,
    judged: &Stat,
    uid: u32,
    budget: &mut Budget,
    depth: usize,
) -> Result<(), TreeError> {
    if depth >= MAX_TREE_DEPTH {
        return Err(TreeError::TooDeep);
    }
    let dir = open_judged(parent, name, judged, dir_flags())?;
    let pass = empty(&dir, uid, budget, depth)?;
    match rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR) {
        Err(Errno::NOTEMPTY) if pass.removed > 0 && pass.kept == 0 => {
            empty(&dir, uid, budget, depth)?;
            Ok(rustix::fs::unlinkat(parent, name, AtFlags::REMOVEDIR)?)
        }
        result => Ok(result?),
    }
}

/// What one pass over a directory did.
#[derive(Default)]
struct Pass {
    /// The uid's entries removed.
    removed: usize,
    /// Other users' entries left.
    kept: usize,
}

/// One pass over `dir`, removing the uid's entries.
fn empty(dir: &OwnedFd, uid: u32, budget: &mut Budget, depth: usize) -> Result<Pass, TreeError> {
    let mut pass = Pass::default();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if matches!(name.to_bytes(), b"." | b"..") {
            continue;
        }
        if !budget.take() {
            return Err(TreeError::Bound);
        }
        let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => stat,
            Err(Errno::NOENT) => continue,
            Err(e) => return Err(e.into()),
        };
        // Another user's: it stays, and so does this directory.
        if stat.st_uid != uid {
            pass.kept += 1;
            continue;
        }
        let result = if is_dir(&stat) {
            remove_tree(dir.as_fd(), name, &stat, uid, budget, depth + 1)
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(TreeError::from)
        };
        match result {
            Ok(()) => pass.removed += 1,
            Err(TreeError::Os(Errno::NOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(pass)
}

/// Opens `name` of `dir` with `flags` (never through a link) and checks it is the entry
/// judged as `judged`: the same device, inode and owner.
fn open_judged(
    dir: BorrowedFd<'_>,
    name: &CStr,
    judged: &Stat,
    flags: OFlags,
) -> Result<OwnedFd, TreeError> {
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    let now = rustix::fs::fstat(&fd)?;
    let same =
        (now.st_dev, now.st_ino, now.st_uid) == (judged.st_dev, judged.st_ino, judged.st_uid);
    if same {
        Ok(fd)
    } else {
        Err(TreeError::Replaced)
    }
}

fn is_dir(stat: &Stat) -> bool {
    FileType::from_raw_mode(stat.st_mode) == FileType::Directory
}
