//! Removes evicted cache files on a thread of its own, so that an eviction of many entries
//! (up to a million tiny ones) costs its caller, often an async worker, no `unlink` at all
//! and holds the index lock only to take the entries out.
//!
//! Owns that thread and its bounded queue. An entry is gone from the index before its file
//! is queued, so no look-up finds a file about to be removed; the thread takes the index
//! lock for each file and leaves one whose key was indexed again meanwhile (a commit
//! renamed a new file into its place).

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};

use super::content_path;
use super::lru::{Key, Lru};

/// Batches of evicted keys waiting to be removed before an eviction waits for room.
const QUEUE: usize = 64;

enum Job {
    /// Remove these entries' files (unless indexed again).
    Remove(Vec<Key>),
    /// Answer once every job queued before is done.
    #[cfg(test)]
    Settle(std::sync::mpsc::Sender<()>),
}

/// The sending end of the cleaner thread: the thread ends once it is dropped.
#[derive(Debug)]
pub(super) struct Cleaner {
    queue: SyncSender<Job>,
}

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
    ) -> std::io::Result<Self> {
        let (queue, jobs) = std::sync::mpsc::sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("content-cache-cleaner".into())
            .spawn(move || {
                run(
                    &jobs,
                    &root,
                    &index,
                    #[cfg(test)]
                    &removals,
                );
            })?;
        Ok(Self { queue })
    }

    /// Queues the files of `keys` (already out of the index) for removal. Waits only when
    /// [`QUEUE`] batches are waiting already.
    pub(super) fn remove(&self, keys: Vec<Key>) {
        if keys.is_empty() {
            return;
        }
        if self.queue.send(Job::Remove(keys)).is_err() {
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
    #[cfg(test)] removals: &Removals,
) {
    for job in jobs {
        match job {
            Job::Remove(keys) => remove(
                keys,
                root,
                index,
                #[cfg(test)]
                removals,
            ),
            #[cfg(test)]
            Job::Settle(done) => {
                let _ = done.send(());
            }
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
