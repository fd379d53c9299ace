//! Checks each content just put in the cache once its file has settled, on a thread of its
//! own, so that its first reuse finds it verified already and does not read and hash the
//! whole file on a submission's path (a second run of a 200 MB dir read 200 MB there).
//!
//! Owns that thread and its bounded queue of committed contents, each due [`SETTLED`] and a
//! margin after it was put in place. The check is the one a reuse makes
//! ([`check::holds`]): `fstat`, the settle rule and the read lease, then the whole file
//! read and hashed; a stamp is recorded only for a file that holds its content, settled,
//! with no one holding it open for writing. A file that does not hold it is left as it is:
//! its next reuse hashes it and forgets it. A content committed while the queue is full is
//! not checked ahead (its first reuse hashes it, as it did before this thread).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::check::{self, Found, SETTLED, Settled};
use super::content_path;
use super::lru::{Key, Lru};

/// Contents waiting to be checked before more are left to their first reuse.
const QUEUE: usize = 4096;

/// Waited past [`SETTLED`] before a check, so that a file put in place when it was queued
/// has settled by then (its change time and the queue's clock are read apart).
const MARGIN: Duration = Duration::from_millis(100);

/// What the settler counts: bytes it read, and checks that found file leases not
/// available (shared with the cache, which reports both).
#[derive(Debug, Default, Clone)]
pub(super) struct Counters {
    /// Bytes read to check new contents ahead of their first reuse.
    pub(super) read: Arc<AtomicU64>,
    /// Checks that found file leases not available.
    pub(super) leases_unavailable: Arc<AtomicU64>,
}

/// A committed content to check, and when.
struct Due {
    key: Key,
    size: u64,
    at: Instant,
}

/// The sending end of the settler thread: the thread ends once it is dropped (after the
/// checks queued before).
#[derive(Debug)]
pub(super) struct Settler {
    queue: SyncSender<Due>,
}

impl Settler {
    /// Starts the thread checking the contents under `root` that `index` holds, counting
    /// in `counters`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(
        root: PathBuf,
        index: Arc<Mutex<Lru>>,
        counters: Counters,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("content-cache-settler".into())
            .spawn(move || run(&jobs, &root, &index, &counters))?;
        Ok(Self { queue })
    }

    /// Queues `key` (of `size` bytes, just put in place) to be checked once it has
    /// settled; skipped when [`QUEUE`] contents are waiting already.
    pub(super) fn queue(&self, key: Key, size: u64) {
        let due = Due {
            key,
            size,
            at: Instant::now() + SETTLED + MARGIN,
        };
        if let Err(TrySendError::Disconnected(_)) = self.queue.try_send(due) {
            tracing::warn!(
                "the content cache's settler has stopped: new contents are hashed on their first reuse"
            );
        }
    }
}

/// Checks each queued content when it is due (they come in the order they are due).
fn run(jobs: &Receiver<Due>, root: &Path, index: &Mutex<Lru>, counters: &Counters) {
    for due in jobs {
        std::thread::sleep(due.at.saturating_duration_since(Instant::now()));
        check_one(&due, root, index, counters);
    }
}

/// Checks `due`'s file if it is still indexed, and records its stamp if it holds its
/// content and has settled. The index lock is not held while the file is read: a commit
/// that replaces the file meanwhile leaves a stamp naming the old inode, which the next
/// reuse does not trust.
fn check_one(due: &Due, root: &Path, index: &Mutex<Lru>, counters: &Counters) {
    let lock = || index.lock().unwrap_or_else(PoisonError::into_inner);
    let known = {
        let index = lock();
        if !index.contains(&due.key) {
            return;
        }
        index.stamp(&due.key)
    };
    let path = content_path(root, &due.key);
    let now = std::time::SystemTime::now();
    let found = check::holds(
        &path,
        &due.key.hash,
        due.size,
        known,
        now,
        &counters.read,
        &counters.leases_unavailable,
    );
    match found {
        Ok(Found::Good(stamp, Settled::Yes)) => lock().set_stamp(&due.key, stamp),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(file = %path.display(), error = %e, "a new cache file could not be checked ahead")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index holding `content` under one key, its file written under `root` now.
    fn one(root: &Path, content: &[u8]) -> (Mutex<Lru>, Due) {
        use sha2::Digest;
        let key = Key {
            scope: [7; 32],
            hash: sha2::Sha256::digest(content).into(),
        };
        let path = content_path(root, &key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, content).unwrap();
        let mut lru = Lru::new(1 << 20, 10);
        lru.insert(key, content.len() as u64, false);
        let size = content.len() as u64;
        (
            Mutex::new(lru),
            Due {
                key,
                size,
                at: Instant::now(),
            },
        )
    }

    #[test]
    fn a_file_checked_before_it_settled_or_while_open_for_writing_gets_no_stamp() {
        let root = tempfile::tempdir().unwrap();
        let (index, due) = one(root.path(), b"the playbook");
        let counters = Counters::default();
        let read = &counters.read;
        // Due early (written just now): it holds its content, but a write in the same tick
        // as the fstat would not show, so nothing is recorded.
        check_one(&due, root.path(), &index, &counters);
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 12);
        assert_eq!(index.lock().unwrap().stamp(&due.key), None);
        std::thread::sleep(SETTLED + MARGIN);
        // Settled, but someone holds it open for writing (a writable mapping would write
        // unseen): refused a read lease, so still nothing.
        let path = content_path(root.path(), &due.key);
        let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        check_one(&due, root.path(), &index, &counters);
        assert_eq!(index.lock().unwrap().stamp(&due.key), None);
        drop(writer);
        check_one(&due, root.path(), &index, &counters);
        assert!(index.lock().unwrap().stamp(&due.key).is_some());
        assert_eq!(read.load(std::sync::atomic::Ordering::Relaxed), 36);
    }
}
