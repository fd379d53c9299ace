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

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};

use super::content_path;
use super::lru::{Key, Lru};

/// Batches of evicted keys waiting to be removed before further keys go to the overflow.
const QUEUE: usize = 64;

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
    /// Keys to remove that found the queue full.
    overflow: Overflow,
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
        #[cfg(test)] removals: Removals,
        #[cfg(test)] stall: Stall,
    ) -> std::io::Result<Self> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        let overflow = Overflow::default();
        let waiting = overflow.clone();
        std::thread::Builder::new()
            .name("content-cache-cleaner".into())
            .spawn(move || {
                run(
                    &jobs,
                    &root,
                    &index,
                    &waiting,
                    #[cfg(test)]
                    &removals,
                    #[cfg(test)]
                    &stall,
                );
            })?;
        Ok(Self { queue, overflow })
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
        overflow.extend(keys);
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

fn run(
    jobs: &Receiver<Job>,
    root: &std::path::Path,
    index: &Mutex<Lru>,
    overflow: &Overflow,
    #[cfg(test)] removals: &Removals,
    #[cfg(test)] stall: &Stall,
) {
    for job in jobs {
        #[cfg(test)]
        drop(stall.lock().unwrap_or_else(PoisonError::into_inner));
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
        let waiting = std::mem::take(&mut *overflow.lock().unwrap_or_else(PoisonError::into_inner));
        for keys in [keys, waiting] {
            remove(
                keys,
                root,
                index,
                #[cfg(test)]
                removals,
            );
        }
        #[cfg(test)]
        if let Some(done) = settled {
            let _ = done.send(());
        }
    }
}

/// Removes the files of `keys` that `index` does not hold again.
fn remove(
    keys: Vec<Key>,
    root: &std::path::Path,
    index: &Mutex<Lru>,
    #[cfg(test)] removals: &Removals,
) {
    for key in keys {
        // Under the lock, one file at a time: a commit renames its file into place and
        // indexes it in one hold, so a key indexed again is never removed here.
        let index = index.lock().unwrap_or_else(PoisonError::into_inner);
        if index.contains(&key) {
            continue;
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
