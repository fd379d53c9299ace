//! The control socket's directory, and binding the socket into it.
//!
//! Whoever can write to the socket's directory can swap the socket for their own and read
//! every request clients send (payloads with keys and passwords included). So, as
//! ssh-agent and tmux insist for theirs: the directory is created without parents (mode
//! 0700), then checked with `lstat`; it must be a real directory (not a symlink) owned by
//! the node's user, that neither group nor others may write. Anything else is refused with
//! what is wrong and what to do.
//!
//! The socket is bound inside a fresh private subdirectory (mode 0700), given its mode,
//! then renamed into place: it is never reachable with the mode the umask would give it,
//! and the process-wide umask is never touched.

use std::fmt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

use super::listener::{ListenError, MAX_SOCKET_PATH};

/// How many private bind directories are tried before giving up (names are random).
const BIND_DIR_ATTEMPTS: usize = 16;

/// What is wrong with a socket directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirProblem {
    /// It is a symlink (which could be re-pointed).
    Symlink,
    /// It is not a directory.
    NotDirectory,
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

impl fmt::Display for DirProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlink => write!(
                f,
                "it is a symlink, which could be re-pointed; use a real directory"
            ),
            Self::NotDirectory => write!(f, "it is not a directory"),
            Self::Owner { owner, me } => write!(
                f,
                "it belongs to uid {owner}, not to this node's uid {me}: another user may have \
                 created it to take over the control socket; remove it (as its owner or root) \
                 or choose another path"
            ),
            Self::Writable { mode } => write!(
                f,
                "group or others may write to it (mode {mode:04o}), and so replace the socket; \
                 run `chmod go-w` on it or choose another path"
            ),
        }
    }
}

/// The verdict on a directory from its `lstat`: `None` when it may hold the socket.
pub fn judge(is_symlink: bool, is_dir: bool, owner: u32, mode: u32, me: u32) -> Option<DirProblem> {
    if is_symlink {
        Some(DirProblem::Symlink)
    } else if !is_dir {
        Some(DirProblem::NotDirectory)
    } else if owner != me {
        Some(DirProblem::Owner { owner, me })
    } else if mode & 0o022 != 0 {
        Some(DirProblem::Writable {
            mode: mode & 0o7777,
        })
    } else {
        None
    }
}

/// The node's effective uid.
pub(super) fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Creates the directory that will hold `path` (mode 0700, its parent must exist) unless
/// it exists, then checks it (see the module docs).
///
/// # Errors
/// [`ListenError::CreateDir`] or [`ListenError::UnsafeDir`].
pub(super) fn prepare(path: &Path) -> Result<(), ListenError> {
    let dir = socket_dir(path);
    let created = std::fs::DirBuilder::new().mode(0o700).create(&dir);
    match created {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => return Err(ListenError::CreateDir { path: dir, source }),
    }
    let meta = std::fs::symlink_metadata(&dir).map_err(|source| ListenError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let verdict = judge(
        meta.file_type().is_symlink(),
        meta.is_dir(),
        meta.uid(),
        meta.mode(),
        my_uid(),
    );
    match verdict {
        None => Ok(()),
        Some(problem) => Err(ListenError::UnsafeDir { path: dir, problem }),
    }
}

/// The directory a socket path is in (`.` for a bare name).
fn socket_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Binds `path` with `permissions` through a private subdirectory of its (checked)
/// directory, then renames it into place.
///
/// # Errors
/// [`ListenError::Io`] naming what failed.
pub(super) fn bind(path: &Path, permissions: u32) -> Result<UnixListener, ListenError> {
    let io_err = |action: &'static str, at: &Path| {
        let path = at.to_owned();
        move |source| ListenError::Io {
            action,
            path,
            source,
        }
    };
    let private = make_private_dir(&socket_dir(path)).map_err(io_err("bind", path))?;
    let temp = private.join("s");
    if temp.as_os_str().len() > MAX_SOCKET_PATH {
        // Only a name shorter than the private detour, right at the length limit, gets here:
        // the directory is the node's own, so binding in place leaves others nothing to swap.
        let _ = std::fs::remove_dir(&private);
        let listener = UnixListener::bind(path).map_err(io_err("bind", path))?;
        let mode = std::fs::Permissions::from_mode(permissions);
        std::fs::set_permissions(path, mode).map_err(io_err("set permissions on", path))?;
        return Ok(listener);
    }
    let bound = bind_and_move(&temp, path, permissions);
    let _ = std::fs::remove_file(&temp);
    let _ = std::fs::remove_dir(&private);
    bound
}

fn bind_and_move(temp: &Path, path: &Path, permissions: u32) -> Result<UnixListener, ListenError> {
    let io_err = |action: &'static str| {
        let path = path.to_owned();
        move |source| ListenError::Io {
            action,
            path,
            source,
        }
    };
    let listener = UnixListener::bind(temp).map_err(io_err("bind"))?;
    let mode = std::fs::Permissions::from_mode(permissions);
    std::fs::set_permissions(temp, mode).map_err(io_err("set permissions on"))?;
    std::fs::rename(temp, path).map_err(io_err("move into place"))?;
    Ok(listener)
}

/// A new directory `.wXXXX` (random hex) in `dir`, mode 0700.
fn make_private_dir(dir: &Path) -> std::io::Result<PathBuf> {
    let mut last = None;
    for _ in 0..BIND_DIR_ATTEMPTS {
        let mut bytes = [0u8; 2];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let private = dir.join(format!(".w{:02x}{:02x}", bytes[0], bytes[1]));
        match std::fs::DirBuilder::new().mode(0o700).create(&private) {
            Ok(()) => return Ok(private),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no free private directory name")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn judges_like_ssh_agent_and_tmux() {
        assert_eq!(judge(false, true, 7, 0o40700, 7), None);
        assert_eq!(judge(false, true, 7, 0o40755, 7), None);
        assert_eq!(
            judge(true, false, 7, 0o120777, 7),
            Some(DirProblem::Symlink)
        );
        assert_eq!(
            judge(false, false, 7, 0o100600, 7),
            Some(DirProblem::NotDirectory)
        );
        assert_eq!(
            judge(false, true, 65534, 0o40700, 7),
            Some(DirProblem::Owner {
                owner: 65534,
                me: 7
            })
        );
        assert_eq!(
            judge(false, true, 7, 0o41777, 7),
            Some(DirProblem::Writable { mode: 0o1777 })
        );
        assert_eq!(
            judge(false, true, 7, 0o40770, 7),
            Some(DirProblem::Writable { mode: 0o770 })
        );
    }

    #[test]
    fn binds_through_a_private_dir_that_is_gone_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        prepare(&path).unwrap();
        let listener = bind(&path, 0o600).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["control.sock"]);
        std::os::unix::net::UnixStream::connect(&path).unwrap();
        drop(listener);
    }

    #[test]
    fn refuses_a_group_writable_dir_and_a_symlink() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o775)).unwrap();
        let err = prepare(&open.join("c.sock")).unwrap_err();
        assert!(
            matches!(
                err,
                ListenError::UnsafeDir {
                    problem: DirProblem::Writable { .. },
                    ..
                }
            ),
            "{err}"
        );
        let link = base.path().join("link");
        std::os::unix::fs::symlink(base.path(), &link).unwrap();
        let err = prepare(&link.join("c.sock")).unwrap_err();
        assert!(
            matches!(
                err,
                ListenError::UnsafeDir {
                    problem: DirProblem::Symlink,
                    ..
                }
            ),
            "{err}"
        );
        let missing = base.path().join("no/such/dir/c.sock");
        assert!(matches!(
            prepare(&missing).unwrap_err(),
            ListenError::CreateDir { .. }
        ));
        assert!(!base.path().join("no").exists(), "parents are not created");
    }
}
