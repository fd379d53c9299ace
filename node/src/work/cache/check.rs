//! Checks that a cached file still holds its content before it is used again: read and
//! hashed only when `fstat` shows it changed since it was last read and found good, and
//! that record kept only once the file's times have settled past the coarse clock's tick
//! and no one could write it unseen.
//!
//! A write moves the file's change time, with one exception: a page already made dirty
//! through a writable shared mapping takes later writes through that mapping with no fault
//! and no time update. So a stamp is recorded only when, after the `fstat` it comes from
//! and before the read, a read lease (`F_SETLEASE F_RDLCK`) was granted on the read-only
//! descriptor: the kernel refuses it while anyone holds the file open for writing, a
//! writable mapping included (it keeps its file open). Any writer after that must open
//! and fault anew, which moves the times. The lease is released at once; where leases are
//! not available, no stamp is recorded and every reuse hashes the file.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::Session;
use super::lru::Stamp;

/// How long after its last change a file's stamp is trusted: file times come from a
/// coarse clock (a tick of up to 10 ms, far more on some filesystems), so a write in the
/// same tick as the `fstat` would leave the stamp unchanged. A file changed less than this
/// before it was checked is hashed again next time.
pub(super) const SETTLED: std::time::Duration = std::time::Duration::from_secs(2);

impl Session {
    /// Whether the cached file `path` of the content `hash` (pinned by [`Session::hit`])
    /// still holds its `size` bytes, at `now`. It is read and hashed unless `fstat` shows
    /// it exactly as when it was last read and found good.
    ///
    /// # Errors
    /// When it cannot be read, for another reason than being missing or not a regular
    /// file: the entry may well be good, so it is not to be forgotten for that.
    pub fn check(
        &mut self,
        hash: &[u8; 32],
        path: &Path,
        size: u64,
        now: std::time::SystemTime,
    ) -> io::Result<bool> {
        let key = self.key(hash);
        let known = self.cache.lock().stamp(&key);
        let counts = (&self.cache.rehashed, &self.cache.leases_unavailable);
        match holds(path, hash, size, known, now, counts.0, counts.1)? {
            Found::Lost => Ok(false),
            Found::Good(stamp, Settled::Yes) => {
                self.cache.lock().set_stamp(&key, stamp);
                Ok(true)
            }
            Found::Good(_, Settled::No) => Ok(true),
        }
    }
}

fn stamp_of(meta: &std::fs::Metadata) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    Stamp {
        file: (meta.dev(), meta.ino()),
        size: meta.size(),
        times: [
            (meta.mtime(), meta.mtime_nsec()),
            (meta.ctime(), meta.ctime_nsec()),
        ],
    }
}

/// Whether the file `stamp` describes last changed at least [`SETTLED`] before `now`.
fn is_settled(stamp: &Stamp, now: std::time::SystemTime) -> bool {
    let (secs, nanos) = stamp.times[1];
    let (Ok(secs), Ok(nanos)) = (u64::try_from(secs), u32::try_from(nanos)) else {
        return false;
    };
    let changed = std::time::UNIX_EPOCH + std::time::Duration::new(secs, nanos);
    changed + SETTLED <= now
}

/// What [`holds`] found.
pub(super) enum Found {
    /// The file holds its content; it looked like this when `fstat`ed before it was read
    /// (or it was not read: it still looks as it did when last found good), and whether
    /// that stamp may be trusted next time.
    Good(Stamp, Settled),
    /// Missing, cut or changed.
    Lost,
}

/// Whether a stamp may be recorded: the file's times had settled and no one held it open
/// for writing after it was stamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settled {
    Yes,
    No,
}

/// `fcntl`'s command choosing the signal a lease break sends (`F_SETSIG`, 10 on Linux;
/// not in the `libc` crate for glibc targets).
const F_SETSIG: libc::c_int = 10;

/// Whether no one holds `file` open for writing now: a read lease is granted (and given
/// back at once). A lease break signals its holder, `SIGIO` by default, which would end
/// the node; it is made `SIGURG`, ignored unless handled, before the lease is asked for.
/// False where it is refused (`EAGAIN`: a writer has it open).
///
/// # Errors
/// Where leases are not available (`EINVAL`, `ENOLCK`, `EACCES`, ...: NFS, some overlay
/// set-ups, `fs.leases-enable=0`, a file the node does not own without `CAP_LEASE`).
fn no_writer(file: &std::fs::File) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    #[cfg(test)]
    if LEASES_FAIL.get() {
        return Err(io::Error::from_raw_os_error(libc::ENOLCK));
    }
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows, with integer arguments.
    unsafe {
        if libc::fcntl(fd, F_SETSIG, libc::SIGURG) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::fcntl(fd, libc::F_SETLEASE, libc::F_RDLCK) != 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) => Ok(false),
                _ => Err(e),
            };
        }
        libc::fcntl(fd, libc::F_SETLEASE, libc::F_UNLCK);
    }
    Ok(true)
}

#[cfg(test)]
thread_local! {
    /// Test hook: leases are not available on this thread.
    pub(super) static LEASES_FAIL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether a lease was found unavailable yet (it is warned of once).
static LEASE_WARNED: AtomicBool = AtomicBool::new(false);

/// [`no_writer`], a lease not available counted in `unavailable` (and warned of once:
/// without leases no stamp is ever recorded, so every reuse hashes every file again).
fn settles(file: &std::fs::File, unavailable: &AtomicU64) -> bool {
    match no_writer(file) {
        Ok(free) => free,
        Err(e) => {
            unavailable.fetch_add(1, Ordering::Relaxed);
            if !LEASE_WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(error = %e, "file leases are not available in the content cache's directory: every cached content is hashed again at each use (counted in content_cache_lease_unavailable)");
            }
            false
        }
    }
}

/// Whether the file at `path` holds `size` bytes whose SHA-256 is `hash` (a cached
/// content may have been removed, cut or changed on disk since it was stored). Read (and
/// counted in `rehashed`) only if it no longer looks as `known`; the stamp is taken
/// before the read, so a write during it shows next time, and it is settled when its
/// times are [`SETTLED`] before `now` and [`no_writer`] held between stamp and read.
///
/// # Errors
/// When it cannot be read for another reason than its absence or its kind (running out of
/// descriptors, say): that says nothing of the content, so the caller must not forget it.
pub(super) fn holds(
    path: &Path,
    hash: &[u8; 32],
    size: u64,
    known: Option<Stamp>,
    now: std::time::SystemTime,
    rehashed: &AtomicU64,
    unavailable: &AtomicU64,
) -> io::Result<Found> {
    // Without following a link or waiting for a writer: something other than a regular
    // file planted at the path (a FIFO would block this thread, with the session's slot
    // and pins, for ever) is lost, not waited for.
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path);
    let mut file = match opened {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Found::Lost),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(Found::Lost),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let stamp = stamp_of(&meta);
    if !meta.is_file() || stamp.size != size {
        return Ok(Found::Lost);
    }
    if known == Some(stamp) {
        return Ok(Found::Good(stamp, Settled::Yes));
    }
    let settled = match is_settled(&stamp, now) && settles(&file, unavailable) {
        true => Settled::Yes,
        false => Settled::No,
    };
    let mut hasher = Sha256::new();
    let read = io::copy(&mut io::Read::take(&mut file, size), &mut hasher)?;
    rehashed.fetch_add(read, Ordering::Relaxed);
    match read == size && <[u8; 32]>::from(hasher.finalize()) == *hash {
        true => Ok(Found::Good(stamp, settled)),
        false => Ok(Found::Lost),
    }
}
