//! Removes evicted cache files on a thread of its own, so that an eviction of many entries
//! (up to a million tiny ones) costs its caller, often an async worker, no `unlink` at all
//! and holds the index lock only to take the entries out.
//!
//! Owns that thread, its bounded queue and the overflow beside it: queueing never waits (its
//! callers run on async workers), so when the queue is full (a slow disk under the thread)
//! the keys wait in the overflow, which the thread empties after each batch. Either holds
//! only keys taken out of the index, each once. An entry is gone from the index before its
//! file is queued, so no look-up finds a file about to be removed; the thread takes the
//! index lock for each file and leaves one whose key was indexed again meanwhile (a commit
//! renamed a new file into its place).
//!
//! The overflow holds at most [`MAX_OVERFLOW`] keys. Keys past it are dropped, and the
//! thread, once it has caught up, sweeps the cache's directory instead: it removes every
//! content file the index does not hold (under the lock, file by file, as above), which
//! is every file a dropped key named. So a cleaner far behind costs bounded memory, the
//! dropped files stay on disk only until that sweep (or, if the node stops first, until
//! the next start indexes them again and evicts what does not fit).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use super::lru::{Key, Lru};
use super::{TEMP_PREFIX, content_path, unhex};

/// Batches of evicted keys waiting to be removed before further keys go to the overflow.
const QUEUE: usize = 64;

/// Most keys the overflow holds (64 bytes each: 4 MiB); past it keys are dropped and the
/// directory swept instead. A full cache of tiny entries evicts up to a million at once.
pub(super) const MAX_OVERFLOW: usize = 65_536;

enum Job {
    /// Remove these entries' files (unless indexed again).
    Remove(Vec<Key>),
    /// Keys wait in the overflow.
    Overflow,
    /// Answer once every job queued before is done.
    #[cfg(test)]
    Settle(std::sync::mpsc::Sender<()>),
}

/// The sending end of the cleaner thread: the thread ends once it is dropped.
#[derive(Debug)]
pub(super) struct Cleaner {
    queue: SyncSender<Job>,
    /// Keys to remove that found the queue full, at most `overflow_cap`.
    overflow: Overflow,
    /// [`MAX_OVERFLOW`] (smaller in tests).
    overflow_cap: usize,
    /// Set when keys were dropped at the cap: the thread sweeps the directory.
    sweep: Arc<AtomicBool>,
}

type Overflow = Arc<Mutex<Vec<Key>>>;

/// Holds the thread before each job while taken (tests: a stalled disk).
#[cfg(test)]
pub(super) type Stall = Arc<Mutex<()>>;

/// Who removed each file (the thread), for tests.
#[cfg(test)]
pub(super) type Removals = Arc<Mutex<Vec<std::thread::ThreadId>>>;

impl Cleaner {
    /// Starts the thread removing files under `root` that `index` no longer holds.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(
        root: PathBuf,
        index: Arc<Mutex<Lru>>,
        overflow_cap: usize,
        #[cfg(test)] removals: Removals,
        #[cfg(test)] stall: Stall,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let overflow = Overflow::default();
        let sweep = Arc::new(AtomicBool::new(false));
        let thread = Thread {
            root,
            index,
            overflow: overflow.clone(),
            sweep: sweep.clone(),
            #[cfg(test)]
            removals,
            #[cfg(test)]
            stall,
        };
        std::thread::Builder::new()
            .name("content-cache-cleaner".into())
            .spawn(move || thread.run(&jobs))?;
        Ok(Self {
            queue,
            overflow,
            overflow_cap,
            sweep,
        })
    }

    /// Queues the files of `keys` (already out of the index) for removal. Never waits:
    /// when [`QUEUE`] batches are waiting already, the keys go to the overflow.
    pub(super) fn remove(&self, keys: Vec<Key>) {
        if keys.is_empty() {
            return;
        }
        let keys = match self.queue.try_send(Job::Remove(keys)) {
            Ok(()) => return,
            Err(TrySendError::Full(Job::Remove(keys))) => keys,
            Err(_) => {
                tracing::warn!("the content cache's cleaner has stopped: evicted files stay");
                return;
            }
        };
        let mut overflow = self.overflow.lock().unwrap_or_else(PoisonError::into_inner);
        if overflow.is_empty() {
            tracing::warn!(
                "the content cache's cleaner is behind (a slow disk?): evicted files wait to be removed"
            );
        }
        let room = self.overflow_cap.saturating_sub(overflow.len());
        if keys.len() > room && !self.sweep.swap(true, Ordering::AcqRel) {
            tracing::warn!(
                cap = self.overflow_cap,
                "the content cache's cleaner is far behind: evicted files past its list are found by a sweep of the cache once it catches up"
            );
        }
        overflow.extend(keys.into_iter().take(room));
        drop(overflow);
        // Full again: a job still queued is followed by a look at the overflow.
        if let Err(TrySendError::Disconnected(_)) = self.queue.try_send(Job::Overflow) {
            tracing::warn!("the content cache's cleaner has stopped: evicted files stay");
        }
    }

    /// Waits until everything queued so far is removed.
    #[cfg(test)]
    pub(super) fn settle(&self) {
        let (done, wait) = std::sync::mpsc::channel();
        self.queue.send(Job::Settle(done)).unwrap();
        wait.recv().unwrap();
    }
}

/// What the cleaner thread owns.
struct Thread {
    root: PathBuf,
    index: Arc<Mutex<Lru>>,
    overflow: Overflow,
    sweep: Arc<AtomicBool>,
    #[cfg(test)]
    removals: Removals,
    #[cfg(test)]
    stall: Stall,
}

impl Thread {
    fn run(&self, jobs: &Receiver<Job>) {
        for job in jobs {
            #[cfg(test)]
            drop(self.stall.lock().unwrap_or_else(PoisonError::into_inner));
            #[cfg(test)]
            let mut settled = None;
            let keys = match job {
                Job::Remove(keys) => keys,
                Job::Overflow => Vec::new(),
                #[cfg(test)]
                Job::Settle(done) => {
                    settled = Some(done);
                    Vec::new()
                }
            };
            let waiting =
                std::mem::take(&mut *self.overflow.lock().unwrap_or_else(PoisonError::into_inner));
            for keys in [keys, waiting] {
                self.remove(keys);
            }
            if self.sweep.swap(false, Ordering::AcqRel) {
                self.sweep_unindexed();
            }
            #[cfg(test)]
            if let Some(done) = settled {
                let _ = done.send(());
            }
        }
    }

    fn remove(&self, keys: Vec<Key>) {
        remove(
            keys,
            &self.root,
            &self.index,
            #[cfg(test)]
            &self.removals,
        );
    }

    /// Removes every content file under the root whose key the index does not hold (what
    /// dropped keys named), each as the directory listing yields it: no list of a scope's
    /// entries is held (a scope of a million tiny entries would be 64 MiB of keys). Files
    /// being received ([`TEMP_PREFIX`]) are left alone.
    fn sweep_unindexed(&self) {
        let Ok(scopes) = std::fs::read_dir(&self.root) else {
            return;
        };
        for scope_dir in scopes.filter_map(Result::ok) {
            let Some(scope) = scope_dir.file_name().to_str().and_then(unhex) else {
                continue;
            };
            let Ok(files) = std::fs::read_dir(scope_dir.path()) else {
                continue;
            };
            for hash in files.filter_map(|file| content_hash(&file.ok()?)) {
                // Indexed keys are skipped under the lock, as for any queued key.
                remove_one(
                    Key { scope, hash },
                    &self.root,
                    &self.index,
                    #[cfg(test)]
                    &self.removals,
                );
            }
        }
        tracing::info!("swept the content cache of the evicted files its cleaner had dropped");
    }
}

/// The hash a scope directory's entry names, unless it is a file being received.
fn content_hash(file: &std::fs::DirEntry) -> Option<[u8; 32]> {
    let name = file.file_name();
    let name = name.to_str()?;
    if name.starts_with(TEMP_PREFIX) {
        return None;
    }
    unhex(name)
}

/// Removes the files of `keys` that `index` does not hold again.
fn remove(
    keys: Vec<Key>,
    root: &std::path::Path,
    index: &Mutex<Lru>,
    #[cfg(test)] removals: &Removals,
) {
    for key in keys {
        remove_one(
            key,
            root,
            index,
            #[cfg(test)]
            removals,
        );
    }
}

/// Removes the file of `key` unless `index` holds it again.
fn remove_one(
    key: Key,
    root: &std::path::Path,
    index: &Mutex<Lru>,
    #[cfg(test)] removals: &Removals,
) {
    // Under the lock, one file at a time: a commit renames its file into place and
    // indexes it in one hold, so a key indexed again is never removed here.
    let index = index.lock().unwrap_or_else(PoisonError::into_inner);
    if index.contains(&key) {
        return;
    }
    #[cfg(test)]
    removals
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(std::thread::current().id());
    match std::fs::remove_file(content_path(root, &key)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!(error = %e, "could not remove an evicted cache file");
        }
        _ => {}
    }
    drop(index);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scope: u8, hash: u8) -> Key {
        Key {
            scope: [scope; 32],
            hash: [hash; 32],
        }
    }

    fn put(root: &std::path::Path, key: &Key) {
        let path = content_path(root, key);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, b"x").unwrap();
    }

    #[test]
    fn a_stalled_cleaners_overflow_stays_bounded_and_a_sweep_removes_what_it_dropped() {
        // The s23 review: the overflow was bounded only by what was evicted (a million
        // keys of a full cache of tiny entries, on every eviction while the disk stalls).
        let root = tempfile::tempdir().unwrap();
        let kept = key(9, 9);
        let receiving =
            content_path(root.path(), &key(9, 0)).with_file_name(format!("{TEMP_PREFIX}x"));
        let mut lru = Lru::new(1 << 30, 100_000);
        put(root.path(), &kept);
        lru.insert(kept, 1, false);
        std::fs::write(&receiving, b"half").unwrap();
        let index = Arc::new(Mutex::new(lru));
        let stall = Stall::default();
        let stalled = stall.lock().unwrap();
        let cap = 10;
        let cleaner = Cleaner::start(
            root.path().to_owned(),
            index.clone(),
            cap,
            Removals::default(),
            stall.clone(),
        )
        .unwrap();
        // The thread holds one job at the stall; QUEUE more fill the queue; the rest of
        // the evictions find it full.
        let mut evicted = Vec::new();
        for batch in 0..(QUEUE as u8 + 40) {
            let keys: Vec<Key> = (0..4).map(|i| key(batch, i)).collect();
            for k in &keys {
                put(root.path(), k);
            }
            evicted.extend(keys.iter().copied());
            cleaner.remove(keys);
        }
        let waiting = cleaner.overflow.lock().unwrap().len();
        assert!(waiting <= cap, "{waiting} keys wait, over the cap of {cap}");
        assert!(
            cleaner.sweep.load(Ordering::Acquire),
            "keys were dropped: a sweep is due"
        );
        drop(stalled);
        cleaner.settle();
        let left: Vec<&Key> = evicted
            .iter()
            .filter(|k| content_path(root.path(), k).exists())
            .collect();
        assert!(left.is_empty(), "{} evicted files stayed", left.len());
        assert!(
            content_path(root.path(), &kept).is_file(),
            "an indexed file was swept"
        );
        assert!(receiving.is_file(), "a file being received was swept");
    }

    #[test]
    fn a_file_whose_key_was_indexed_again_before_its_turn_is_kept() {
        // A commit renames a new file into an evicted key's place while the old one waits
        // in the queue: the cleaner must not remove the new one.
        let root = tempfile::tempdir().unwrap();
        let (again, gone) = (
            Key {
                scope: [1; 32],
                hash: [1; 32],
            },
            Key {
                scope: [1; 32],
                hash: [2; 32],
            },
        );
        for key in [again, gone] {
            let path = content_path(root.path(), &key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, b"x").unwrap();
        }
        let mut lru = Lru::new(1 << 20, 10);
        lru.insert(again, 1, false);
        let removals = Removals::default();
        remove(vec![again, gone], root.path(), &Mutex::new(lru), &removals);
        assert!(content_path(root.path(), &again).is_file());
        assert!(!content_path(root.path(), &gone).exists());
        assert_eq!(removals.lock().unwrap().len(), 1);
    }
}
