//! Files beneath one directory, reached without following a single symlink: how the client
//! writes whatever a worker sent (artifacts, event files).
//!
//! A [`Tree`] holds the directory's fd; every lookup is relative to it. Directories are
//! resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` where the kernel has it,
//! else one `openat(O_NOFOLLOW | O_DIRECTORY)` per component; the last component is opened
//! with `O_NOFOLLOW` too. A symlink anywhere on the way is an error, never a detour, so a
//! link planted by one entry cannot redirect a later write outside the tree. Names are
//! checked by [`is_plain_name`] before any call: no `/`, `.`, `..` or NUL.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// Set once `openat2` turned out unsupported (kernel before 5.6, or a seccomp filter):
/// lookups then walk component by component.
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// The longest file name Linux accepts (`NAME_MAX`).
const NAME_MAX: usize = 255;

/// What sits at a name (not following a symlink there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symlink.
    Symlink,
    /// A FIFO (opening it would block).
    Fifo,
    /// A socket or a device.
    Other,
}

/// A directory opened at its root; every lookup stays beneath it.
#[derive(Debug)]
pub(crate) struct Tree {
    root: OwnedFd,
    /// The last directory looked up, by relative path: a zip lists a directory's files
    /// together, so this saves most lookups.
    last: Option<(String, OwnedFd)>,
}

impl Tree {
    /// Opens the directory at `path` (see [`open_root`]).
    pub(crate) fn open(path: &Path) -> io::Result<Self> {
        Ok(Self {
            root: open_root(path)?,
            last: None,
        })
    }

    /// The root directory's fd.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// The directory `parts` (each a [plain name](is_plain_name)) beneath the root,
    /// creating missing ones as `os.makedirs` does (mode 0777 less the umask).
    ///
    /// # Errors
    /// `ELOOP` when a symlink is on the way, `ENOTDIR` when a file is, or the OS error.
    pub(crate) fn dir(&mut self, parts: &[&str]) -> io::Result<BorrowedFd<'_>> {
        if parts.is_empty() {
            return Ok(self.root.as_fd());
        }
        let key = parts.join("/");
        if self.last.as_ref().is_none_or(|(last, _)| *last != key) {
            self.last = None;
            let fd = self.lookup(&key, parts)?;
            self.last = Some((key, fd));
        }
        let (_, fd) = self.last.as_ref().expect("invariant: set just above");
        Ok(fd.as_fd())
    }

    fn lookup(&self, joined: &str, parts: &[&str]) -> io::Result<OwnedFd> {
        if !NO_OPENAT2.load(Ordering::Relaxed) {
            match open_beneath(self.root.as_fd(), joined) {
                Ok(fd) => return Ok(fd),
                Err(Errno::NOENT | Errno::AGAIN) => {}
                Err(Errno::NOSYS | Errno::PERM | Errno::INVAL | Errno::TOOBIG) => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                Err(errno) => return Err(errno.into()),
            }
        }
        walk(self.root.as_fd(), parts)
    }
}

/// The directory `parts` beneath `root`, one `O_NOFOLLOW` step per component, created where
/// missing.
fn walk(root: BorrowedFd<'_>, parts: &[&str]) -> io::Result<OwnedFd> {
    let mut dir = open_dir_at(root, ".")?;
    for part in parts {
        dir = open_or_make_dir(dir.as_fd(), part)?;
    }
    Ok(dir)
}

/// Opens the directory at `path`: the user's own path, so symlinks in it are followed.
pub(crate) fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    Ok(rustix::fs::openat(
        rustix::fs::CWD,
        path,
        flags,
        Mode::empty(),
    )?)
}

/// The error of a lookup that found something other than a regular file.
#[derive(Debug, thiserror::Error)]
#[error("not a regular file")]
struct NotRegular;

/// Whether `error` says a symlink (`ELOOP` under `O_NOFOLLOW`) or a non-regular file was
/// where a plain file or directory was expected.
pub(crate) fn is_not_plain(error: &io::Error) -> bool {
    error.raw_os_error() == Some(libc::ELOOP)
        || error.raw_os_error() == Some(libc::ENOTDIR)
        || error
            .get_ref()
            .is_some_and(|inner| inner.is::<NotRegular>())
}

/// `openat2` of a relative directory path that may not leave `root` or cross a symlink.
#[cfg(target_os = "linux")]
fn open_beneath(root: BorrowedFd<'_>, path: &str) -> Result<OwnedFd, Errno> {
    use rustix::fs::ResolveFlags;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    rustix::fs::openat2(root, path, flags, Mode::empty(), resolve)
}

#[cfg(not(target_os = "linux"))]
fn open_beneath(_root: BorrowedFd<'_>, _path: &str) -> Result<OwnedFd, Errno> {
    Err(Errno::NOSYS)
}

fn open_or_make_dir(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    match open_dir_at(dir, name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o777)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(errno) => return Err(errno.into()),
            }
            open_dir_at(dir, name)
        }
        other => other,
    }
}

/// Whether `name` is one plain path component: not empty, `.` or `..`, no `/` or NUL, and
/// short enough for the file system.
pub(crate) fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= NAME_MAX
        && !name.contains(['/', '\0'])
}

/// Opens the directory `name` in `dir`, refusing a symlink there (`ELOOP`, which the
/// kernel reports as `ENOTDIR` under `O_DIRECTORY`).
pub(crate) fn open_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Err(Errno::NOTDIR) if kind_at(dir, name)? == Some(Kind::Symlink) => Err(Errno::LOOP.into()),
        other => Ok(other?),
    }
}

/// What is at `name` in `dir`, if anything (a symlink is reported, not followed).
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<Option<Kind>> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => Ok(Some(kind_of(stat.st_mode))),
        Err(Errno::NOENT) => Ok(None),
        Err(errno) => Err(errno.into()),
    }
}

fn kind_of(mode: u32) -> Kind {
    match FileType::from_raw_mode(mode) {
        FileType::RegularFile => Kind::File,
        FileType::Directory => Kind::Dir,
        FileType::Symlink => Kind::Symlink,
        FileType::Fifo => Kind::Fifo,
        _ => Kind::Other,
    }
}

/// Removes `name` (of `kind`) from `dir`.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &str, kind: Kind) -> io::Result<()> {
    let flags = if kind == Kind::Dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rustix::fs::unlinkat(dir, name, flags)?)
}

/// Creates or truncates the regular file `name` in `dir` for writing, new files with
/// `mode`. A symlink there is an error (`ELOOP`), a FIFO does not block, and anything but a
/// regular file is refused.
pub(crate) fn create_file_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY
        | OFlags::CREATE
        | OFlags::TRUNC
        | OFlags::NOFOLLOW
        | OFlags::NONBLOCK
        | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    regular(fd)
}

/// Creates the file `name` in `dir`, which must not exist yet (`O_EXCL`).
pub(crate) fn create_new_at(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::from_raw_mode(mode))?;
    Ok(File::from(fd))
}

/// Opens the regular file `name` in `dir` for reading, refusing a symlink or anything else.
pub(crate) fn open_read_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, name, flags, Mode::empty())?;
    regular(fd)
}

fn regular(fd: OwnedFd) -> io::Result<File> {
    if kind_of(rustix::fs::fstat(&fd)?.st_mode) != Kind::File {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, NotRegular));
    }
    Ok(File::from(fd))
}

/// Creates the directory `name` in `dir` (mode 0700 until the caller sets its own) and
/// opens it.
pub(crate) fn make_dir_at(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700))?;
    Ok(File::from(open_dir_at(dir, name)?))
}

/// Creates the symlink `name` in `dir` pointing at `target` (the caller checks `target`).
pub(crate) fn symlink_at(target: &str, dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    Ok(rustix::fs::symlinkat(target, dir, name)?)
}

/// Sets the permission bits of an open file, masked to 0o777: no setuid, setgid or sticky
/// bit ever comes from a worker.
pub(crate) fn set_mode(file: &File, mode: u32) -> io::Result<()> {
    Ok(rustix::fs::fchmod(file, Mode::from_raw_mode(mode & 0o777))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_symlinks_on_the_way_and_at_the_end() {
        let outside = tempfile::tempdir().expect("tempdir");
        let inside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), inside.path().join("link")).expect("link");
        std::os::unix::fs::symlink(outside.path().join("victim"), inside.path().join("file"))
            .expect("link");
        let mut tree = Tree::open(inside.path()).expect("open");
        let error = tree.dir(&["link", "sub"]).expect_err("through a symlink");
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        let error = create_file_at(tree.root(), "file", 0o600).expect_err("a symlink");
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        assert!(!outside.path().join("victim").exists());
        assert!(!outside.path().join("sub").exists());
    }

    #[test]
    fn walks_without_openat2_the_same_way() {
        let inside = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(outside.path(), inside.path().join("link")).expect("link");
        let tree = Tree::open(inside.path()).expect("open");
        walk(tree.root(), &["a", "b"]).expect("created");
        assert!(inside.path().join("a/b").is_dir());
        let error = walk(tree.root(), &["link", "x"]).expect_err("symlink");
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        assert!(!outside.path().join("x").exists());
    }

    #[test]
    fn plain_names_are_single_components() {
        for bad in ["", ".", "..", "a/b", "/", "a\0b", &"x".repeat(256)] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
        for good in ["1-abc.json", "..x", "a b", "é"] {
            assert!(is_plain_name(good), "{good:?}");
        }
    }
}
