//! The control socket's Unix listener: path checks, stale-socket cleanup, permissions, and
//! one task per session.
//!
//! Owns the socket file's lifecycle (created on bind, removed on shutdown) and where the
//! socket lives by default. Its directory's checks and the private bind are
//! [`super::socket_dir`]'s; the protocol itself is [`super::session`]'s.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::session::{Backend, serve_session};
use super::socket_dir::{self, DirProblem};

/// Longest socket path Linux accepts, in bytes, not counting the NUL terminator
/// (`sun_path` is 108 bytes including it).
pub const MAX_SOCKET_PATH: usize = 107;

/// The permissions the socket gets unless configured otherwise: only the owner may connect,
/// as Receptor's `control-service` defaults to. Connecting is full control of the node.
pub const DEFAULT_PERMISSIONS: u32 = 0o600;

/// How long to pause after a failed `accept` (for example out of file descriptors) before
/// trying again, so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The path does not fit in a Unix socket address.
    #[error(
        "control socket path {path:?} is {len} bytes; Unix sockets allow at most {max} \
         (choose a shorter path)"
    )]
    PathTooLong {
        /// The path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
        /// The limit, [`MAX_SOCKET_PATH`].
        max: usize,
    },
    /// The socket's directory could not be created (its parent must exist) or inspected.
    #[error(
        "cannot create directory {path:?} for the control socket: {source} \
         (its parent must exist; Warren creates only the last directory)"
    )]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The socket's directory is not one only this node's user controls.
    #[error("refusing the control socket directory {path:?}: {problem}")]
    UnsafeDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: DirProblem,
    },
    /// Something other than a socket sits at the path; it is left alone.
    #[error("{path:?} exists and is not a socket; refusing to replace it")]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// Another process answers on the socket.
    #[error("another process is serving the control socket {path:?}")]
    InUse {
        /// The path.
        path: PathBuf,
    },
    /// The socket file could not be inspected, removed, bound or chmod-ed.
    #[error("cannot {action} control socket {path:?}: {source}")]
    Io {
        /// What was being done: "inspect", "remove stale", "bind", "set permissions on".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where a root node's socket goes without `XDG_RUNTIME_DIR` (a service): only root may
/// create entries in `/run`, so no other user, and no job, can make this directory first
/// and keep a restarted node from starting (as any user can in `/tmp`).
pub const ROOT_SOCKET_DIR: &str = "/run/warren";

/// Where the node listens and clients connect by default:
///
/// 1. `$WARREN_SOCKET` if set and not empty;
/// 2. else `$XDG_RUNTIME_DIR/warren/control.sock` if `XDG_RUNTIME_DIR` is set and not empty;
/// 3. else, for root, `/run/warren/control.sock` ([`ROOT_SOCKET_DIR`]) where `/run` is a
///    directory;
/// 4. else `/tmp/warren-<uid>/control.sock`.
pub fn default_socket_path() -> PathBuf {
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let run = Path::new(ROOT_SOCKET_DIR)
        .parent()
        .is_some_and(Path::is_dir);
    socket_path_from(
        std::env::var_os("WARREN_SOCKET"),
        std::env::var_os("XDG_RUNTIME_DIR"),
        uid,
        run,
    )
}

fn socket_path_from(
    explicit: Option<std::ffi::OsString>,
    runtime_dir: Option<std::ffi::OsString>,
    uid: u32,
    has_run: bool,
) -> PathBuf {
    if let Some(path) = explicit.filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    if let Some(dir) = runtime_dir.filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("warren").join("control.sock");
    }
    if uid == 0 && has_run {
        return PathBuf::from(ROOT_SOCKET_DIR).join("control.sock");
    }
    PathBuf::from(format!("/tmp/warren-{uid}")).join("control.sock")
}

/// A bound control socket, ready to serve.
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (device, inode), so shutdown removes only the file we created.
    identity: (u64, u64),
}

impl ControlSocket {
    /// Binds the control socket at `path` with mode `permissions`.
    ///
    /// Creates the socket's directory (mode 0700; not its parents) if missing and refuses
    /// one that another user could write to (see [`super::socket_dir`]), replaces a stale
    /// socket file that nothing answers on, and binds so that the socket is never
    /// reachable with a looser mode than `permissions`.
    ///
    /// # Errors
    /// [`ListenError`] naming the path: too long, an unsafe directory, a non-socket in the
    /// way, a live server already there, or an OS error.
    pub async fn bind(path: &Path, permissions: u32) -> Result<Self, ListenError> {
        check_length(path)?;
        socket_dir::prepare(path)?;
        remove_stale(path).await?;
        let io_err = |action| {
            let path = path.to_owned();
            move |source| ListenError::Io {
                action,
                path,
                source,
            }
        };
        let listener = socket_dir::bind(path, permissions)?;
        listener.set_nonblocking(true).map_err(io_err("bind"))?;
        let listener = UnixListener::from_std(listener).map_err(io_err("bind"))?;
        let meta = tokio::fs::symlink_metadata(path)
            .await
            .map_err(io_err("inspect"))?;
        Ok(Self {
            listener,
            path: path.to_owned(),
            identity: (meta.dev(), meta.ino()),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves sessions, one task each, until `shutdown` turns `true` or its sender is
    /// dropped; then ends the sessions and removes the socket file.
    pub async fn serve<B: Backend>(self, backend: Arc<B>, mut shutdown: watch::Receiver<bool>) {
        let mut sessions = JoinSet::new();
        while !*shutdown.borrow_and_update() {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        sessions.spawn(run_session(stream, Arc::clone(&backend)));
                    }
                    Err(error) => {
                        tracing::warn!(%error, path = ?self.path, "control socket accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
                Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            }
        }
        sessions.shutdown().await;
        self.remove_file().await;
    }

    async fn remove_file(&self) {
        let ours = tokio::fs::symlink_metadata(&self.path)
            .await
            .is_ok_and(|m| (m.dev(), m.ino()) == self.identity);
        if ours && let Err(error) = tokio::fs::remove_file(&self.path).await {
            tracing::warn!(%error, path = ?self.path, "cannot remove control socket");
        }
    }
}

async fn run_session<B: Backend>(stream: UnixStream, backend: Arc<B>) {
    if let Err(error) = serve_session(stream, &*backend).await {
        tracing::debug!(%error, "control session ended with an error");
    }
}

/// Binds `path` with `permissions` and serves it until `shutdown` (see
/// [`ControlSocket::bind`] and [`ControlSocket::serve`]).
///
/// # Errors
/// [`ListenError`] when the socket cannot be set up.
pub async fn serve_unix<B: Backend>(
    path: &Path,
    permissions: u32,
    backend: Arc<B>,
    shutdown: watch::Receiver<bool>,
) -> Result<(), ListenError> {
    let socket = ControlSocket::bind(path, permissions).await?;
    socket.serve(backend, shutdown).await;
    Ok(())
}

fn check_length(path: &Path) -> Result<(), ListenError> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(ListenError::PathTooLong {
            path: path.to_owned(),
            len,
            max: MAX_SOCKET_PATH,
        });
    }
    Ok(())
}

/// Removes a socket file left by a process that died, after checking nothing answers.
async fn remove_stale(path: &Path) -> Result<(), ListenError> {
    let meta = match tokio::fs::symlink_metadata(path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Io {
                action: "inspect",
                path: path.to_owned(),
                source,
            });
        }
    };
    if !meta.file_type().is_socket() {
        return Err(ListenError::NotASocket {
            path: path.to_owned(),
        });
    }
    if UnixStream::connect(path).await.is_ok() {
        return Err(ListenError::InUse {
            path: path.to_owned(),
        });
    }
    tracing::debug!(?path, "removing stale control socket");
    tokio::fs::remove_file(path)
        .await
        .map_err(|source| ListenError::Io {
            action: "remove stale",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use tokio::io::AsyncReadExt;

    use super::*;
    use crate::control::fake::FakeBackend;

    #[test]
    fn default_path_prefers_env_then_runtime_dir_then_run_for_root_then_tmp() {
        let some = |s: &str| Some(std::ffi::OsString::from(s));
        assert_eq!(
            socket_path_from(some("/x/s.sock"), some("/run/user/1"), 5, true),
            PathBuf::from("/x/s.sock")
        );
        assert_eq!(
            socket_path_from(some(""), some("/run/user/1"), 5, true),
            PathBuf::from("/run/user/1/warren/control.sock")
        );
        assert_eq!(
            socket_path_from(None, some(""), 5, true),
            PathBuf::from("/tmp/warren-5/control.sock")
        );
        // This stop's review: any user could make /tmp/warren-0 first, and a restarted root
        // node then refused to start; only root creates in /run.
        assert_eq!(
            socket_path_from(None, None, 0, true),
            PathBuf::from("/run/warren/control.sock")
        );
        assert_eq!(
            socket_path_from(some(""), some(""), 0, false),
            PathBuf::from("/tmp/warren-0/control.sock")
        );
        assert_eq!(
            socket_path_from(None, some("/run/user/0"), 0, true),
            PathBuf::from("/run/user/0/warren/control.sock")
        );
    }

    #[tokio::test]
    async fn rejects_overlong_path() {
        let path = PathBuf::from(format!("/tmp/{}", "x".repeat(110)));
        let err = ControlSocket::bind(&path, DEFAULT_PERMISSIONS)
            .await
            .unwrap_err();
        assert!(matches!(
            err,
            ListenError::PathTooLong {
                len: 115,
                max: 107,
                ..
            }
        ));
        assert!(err.to_string().contains("at most 107"));
    }

    #[tokio::test]
    async fn binds_with_owner_only_mode_and_serves() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/control.sock");
        let socket = ControlSocket::bind(&path, DEFAULT_PERMISSIONS)
            .await
            .unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let parent_mode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(parent_mode & 0o777, 0o700);

        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(socket.serve(Arc::new(FakeBackend::new()), shutdown));
        let mut stream = UnixStream::connect(&path).await.unwrap();
        let mut greeting = [0u8; 25];
        stream.read_exact(&mut greeting).await.unwrap();
        assert_eq!(&greeting, b"Receptor Control, node a\n");

        // A second node refuses to take over a live socket.
        let err = ControlSocket::bind(&path, DEFAULT_PERMISSIONS)
            .await
            .unwrap_err();
        assert!(matches!(err, ListenError::InUse { .. }), "{err:?}");

        stop.send(true).unwrap();
        server.await.unwrap();
        assert!(!path.exists(), "socket file removed on shutdown");
    }

    #[tokio::test]
    async fn replaces_stale_socket_but_not_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a dead listener leaves its file behind");
        let socket = ControlSocket::bind(&path, 0o660).await.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o660);
        drop(socket);

        let file = dir.path().join("plain");
        std::fs::write(&file, b"keep me").unwrap();
        let err = ControlSocket::bind(&file, DEFAULT_PERMISSIONS)
            .await
            .unwrap_err();
        assert!(matches!(err, ListenError::NotASocket { .. }));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }
}
