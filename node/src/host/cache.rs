//! The compiled-component cache: precompiled components, which wasmtime loads as native
//! code. A file in it runs with the node's rights, so the cache is trusted only as far as
//! nobody but the node's user can have written it.
//!
//! - The directory is created with mode 0700 and checked through its open fd: it must be a
//!   directory owned by the node's user that neither group nor others may write. Otherwise
//!   the cache is disabled with a warning saying why and how to fix it: components are
//!   compiled in memory, the node works, only slower to start. (Refusing to start over an
//!   optimisation would turn a permissions slip into an outage; using the directory would
//!   run whatever another user put there.)
//! - A cached file is opened relative to the directory fd without following a symlink, and
//!   used only if it is a regular file owned by the node's user and not group or other
//!   writable; any other is ignored with a warning, recompiled, and replaced.
//! - New files are written to a temp name created with `O_EXCL` and mode 0600, then
//!   renamed into place.

use std::fmt;
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;
use wasmtime::Engine;
use wasmtime::component::Component;

/// Why a cache directory or file is not trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheProblem {
    /// Not a directory (or, for a file, not a regular file).
    WrongKind,
    /// Another user owns it.
    Owner {
        /// Its owner.
        owner: u32,
        /// The node's uid.
        me: u32,
    },
    /// Group or others may write to it.
    Writable {
        /// Its permission bits.
        mode: u32,
    },
}

impl fmt::Display for CacheProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WrongKind => write!(
                f,
                "it is not what it should be (a directory, a regular file)"
            ),
            Self::Owner { owner, me } => {
                write!(f, "it belongs to uid {owner}, not to this node's uid {me}")
            }
            Self::Writable { mode } => {
                write!(f, "group or others may write to it (mode {mode:04o})")
            }
        }
    }
}

/// Why the cache directory, or a file in it, is not used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The directory could not be created.
    #[error("cannot create it: {0}")]
    Create(#[source] std::io::Error),
    /// It could not be opened.
    #[error("cannot open it: {0}")]
    Open(#[source] Errno),
    /// Its `fstat` failed.
    #[error("cannot inspect it: {0}")]
    Inspect(#[source] Errno),
    /// A cached file is a symlink.
    #[error("it is a symlink")]
    Symlink,
    /// It is not trusted.
    #[error("{0}")]
    Untrusted(CacheProblem),
}

/// The verdict on a cache directory or file from its `fstat`.
pub fn judge(right_kind: bool, owner: u32, mode: u32, me: u32) -> Option<CacheProblem> {
    if !right_kind {
        Some(CacheProblem::WrongKind)
    } else if owner != me {
        Some(CacheProblem::Owner { owner, me })
    } else if mode & 0o022 != 0 {
        Some(CacheProblem::Writable {
            mode: mode & 0o7777,
        })
    } else {
        None
    }
}

/// The cache: a trusted directory, or disabled with the reason.
#[derive(Debug)]
pub(crate) struct Cache {
    path: PathBuf,
    dir: Result<OwnedFd, CacheError>,
}

impl Cache {
    /// Opens (creating it, mode 0700) the cache at `path`; an untrusted or unusable
    /// directory disables the cache with a warning.
    pub(crate) fn open(path: &Path) -> Self {
        let dir = open_dir(path).inspect_err(|reason| {
            tracing::warn!(
                path = %path.display(),
                "component cache disabled: {reason}; components are compiled in memory at \
                 each start (fix: make the directory the node user's with mode 0700, e.g. \
                 chown and chmod 700 it, or remove it)"
            );
        });
        Self {
            path: path.to_owned(),
            dir,
        }
    }

    /// The directory's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Why the cache is disabled, if it is.
    #[cfg(test)]
    pub(crate) fn problem(&self) -> Option<String> {
        self.dir.as_ref().err().map(ToString::to_string)
    }

    /// The cached component `name`, if there is a trusted, loadable one.
    pub(crate) fn load(&self, engine: &Engine, name: &str) -> Option<Component> {
        let dir = self.dir.as_ref().ok()?;
        let path = self.path.join(name);
        let file = match open_trusted(dir, name) {
            Ok(Some(file)) => file,
            Ok(None) => return None,
            Err(reason) => {
                tracing::warn!(path = %path.display(), "ignoring cached component: {reason}; recompiling and replacing it");
                return None;
            }
        };
        match deserialize(engine, &file) {
            Ok(component) => Some(component),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "recompiling: cached component unusable");
                None
            }
        }
    }

    /// Stores `compiled` as `name` (a temp file made with `O_EXCL`, mode 0600, renamed into
    /// place); a failure is a warning, as the component is in memory already.
    pub(crate) fn store(&self, name: &str, compiled: &[u8]) {
        let Ok(dir) = self.dir.as_ref() else {
            return;
        };
        if let Err(error) = store_at(dir, name, compiled) {
            tracing::warn!(path = %self.path.join(name).display(), %error, "cannot cache compiled component");
        }
    }
}

fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

fn open_dir(path: &Path) -> Result<OwnedFd, CacheError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(CacheError::Create)?;
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let dir = rustix::fs::openat(rustix::fs::CWD, path, flags, Mode::empty())
        .map_err(CacheError::Open)?;
    let stat = rustix::fs::fstat(&dir).map_err(CacheError::Inspect)?;
    let is_dir = FileType::from_raw_mode(stat.st_mode) == FileType::Directory;
    match judge(is_dir, stat.st_uid, stat.st_mode, my_uid()) {
        None => Ok(dir),
        Some(problem) => Err(CacheError::Untrusted(problem)),
    }
}

/// Opens `name` in `dir` if it exists and is trusted; `Err` says why it is not.
fn open_trusted(dir: &OwnedFd, name: &str) -> Result<Option<File>, CacheError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(Errno::LOOP) => return Err(CacheError::Symlink),
        Err(e) => return Err(CacheError::Open(e)),
    };
    let stat = rustix::fs::fstat(&fd).map_err(CacheError::Inspect)?;
    let is_file = FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile;
    match judge(is_file, stat.st_uid, stat.st_mode, my_uid()) {
        None => Ok(Some(File::from(fd))),
        Some(problem) => Err(CacheError::Untrusted(problem)),
    }
}

/// Loads the precompiled component open in `file`: through `/proc/self/fd` (wasmtime maps
/// that very file, whatever its directory entry becomes), else from its bytes.
fn deserialize(engine: &Engine, file: &File) -> wasmtime::Result<Component> {
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    if by_fd.exists() {
        // SAFETY: the file is open, owned by this node's user and writable by nobody else;
        // it was written by `precompile_component` of an engine with the same compatibility
        // hash (part of its name). wasmtime checks that header again and refuses a mismatch.
        return unsafe { Component::deserialize_file(engine, &by_fd) };
    }
    let mut bytes = Vec::new();
    (&*file).read_to_end(&mut bytes)?;
    // SAFETY: as above.
    unsafe { Component::deserialize(engine, &bytes) }
}

fn store_at(dir: &OwnedFd, name: &str, compiled: &[u8]) -> std::io::Result<()> {
    let mut random = [0u8; 4];
    getrandom::fill(&mut random).map_err(std::io::Error::other)?;
    let temp = format!(
        "{name}.tmp{}-{}",
        std::process::id(),
        u32::from_le_bytes(random)
    );
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(dir, temp.as_str(), flags, Mode::from_raw_mode(0o600))?;
    let written = File::from(fd)
        .write_all(compiled)
        .and_then(|()| Ok(rustix::fs::renameat(dir, temp.as_str(), dir, name)?));
    if written.is_err() {
        let _ = rustix::fs::unlinkat(dir.as_fd(), temp.as_str(), rustix::fs::AtFlags::empty());
    }
    written
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;

    #[test]
    fn judges_owner_and_write_bits() {
        assert_eq!(judge(true, 5, 0o40700, 5), None);
        assert_eq!(judge(true, 5, 0o100644, 5), None);
        assert_eq!(judge(false, 5, 0o120777, 5), Some(CacheProblem::WrongKind));
        assert_eq!(
            judge(true, 9, 0o40700, 5),
            Some(CacheProblem::Owner { owner: 9, me: 5 })
        );
        assert_eq!(
            judge(true, 5, 0o40777, 5),
            Some(CacheProblem::Writable { mode: 0o777 })
        );
    }

    #[test]
    fn a_directory_others_may_write_disables_the_cache() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("cache");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let cache = Cache::open(&open);
        let problem = cache.problem().expect("disabled");
        assert!(problem.contains("group or others may write"), "{problem}");
        cache.store("x.cwasm", b"native code");
        assert!(
            std::fs::read_dir(&open).unwrap().next().is_none(),
            "nothing written"
        );
    }

    #[test]
    fn a_new_cache_dir_is_private_and_files_are_replaced_atomically() {
        let base = tempfile::tempdir().unwrap();
        let path = base.path().join("a/cache");
        let cache = Cache::open(&path);
        assert_eq!(cache.problem(), None);
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o700);
        cache.store("c.cwasm", b"one");
        cache.store("c.cwasm", b"two");
        let meta = std::fs::metadata(path.join("c.cwasm")).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(std::fs::read(path.join("c.cwasm")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["c.cwasm"], "no temp files left");
    }
}
