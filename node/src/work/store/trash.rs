//! Removing directory trees without making the store wait: [`Trash`] owns
//! `<data_dir>/trash/` and the thread that empties it.
//!
//! A released unit's directory, or a finished unit's job directory, can hold as many files
//! as the job's quota allows (200,000 by default): removing one takes seconds, and the
//! store's thread, which every creation, status write and release of the node waits for,
//! must not spend them. So a tree leaves its place with one `rename` into the trash (on the
//! same file system, under the data dir) and the trash's own thread removes it.
//!
//! The thread is woken through a channel of one slot (wake-ups coalesce; nothing queues
//! per tree), waits [`LINGER`] for the trees discarded with the first, and removes whatever
//! the trash holds, so a tree left there by a crash is removed at the next start: a node
//! releasing units by the hundred a second wakes it a few dozen times a second, not twice
//! per unit (a thread's wake-up is a large share of a tiny job's cost). It stops when the
//! `Trash` is dropped. `remove_dir_all` does
//! not follow symbolic links, so a link a job planted in its directory is removed, never
//! its target.

use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::time::Duration;

/// Mode of the trash directory: owner only (it holds units' files until they are gone).
const DIR_MODE: u32 = 0o700;

/// Names tried for one tree before giving up: each is random, so a second is needed only
/// when a tree already in the trash holds the first.
const NAME_TRIES: usize = 8;

/// How long the thread, once woken, waits for more trees before it empties the trash: the
/// trees of the units released meanwhile go with one listing and one wake-up. Short against
/// what a tree may hold (it only stays on the disk this much longer).
const LINGER: Duration = Duration::from_millis(20);

/// The trash directory and the way to wake its thread.
#[derive(Debug)]
pub(super) struct Trash {
    dir: PathBuf,
    wake: SyncSender<()>,
    /// Threads that removed trees (tests: the removal never runs on the caller's).
    #[cfg(test)]
    pub(super) removers: std::sync::Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>>,
}

impl Trash {
    /// Opens (creating it if needed) `dir` and starts the thread that empties it, at once
    /// for what an earlier run left there.
    pub(super) fn open(dir: PathBuf) -> io::Result<Self> {
        Self::open_lingering(dir, LINGER)
    }

    /// [`Trash::open`] with the thread waiting `linger` after each wake-up.
    fn open_lingering(dir: PathBuf, linger: Duration) -> io::Result<Self> {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&dir)?;
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        #[cfg(test)]
        let removers: std::sync::Arc<std::sync::Mutex<Vec<std::thread::ThreadId>>> =
            std::sync::Arc::default();
        let emptied = dir.clone();
        #[cfg(test)]
        let record = std::sync::Arc::clone(&removers);
        std::thread::Builder::new()
            .name("warren-trash".into())
            .spawn(move || {
                loop {
                    #[cfg(test)]
                    record
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(std::thread::current().id());
                    empty(&emptied);
                    if !wait_for_trees(&woken, linger) {
                        break;
                    }
                }
            })?;
        let _ = wake.try_send(());
        Ok(Self {
            dir,
            wake,
            #[cfg(test)]
            removers,
        })
    }

    /// Moves the tree at `path` into the trash and wakes the thread to remove it. A tree
    /// that cannot be moved (another file system) is removed here instead. A `path` that
    /// does not exist is not an error.
    ///
    /// Its name in the trash has a random suffix, tried again if taken: a tree an earlier
    /// run left there (still being removed, or one the node cannot remove) must not make
    /// the rename fail.
    pub(super) fn discard(&self, path: &Path) -> io::Result<()> {
        let stem = path
            .file_name()
            .map_or_else(|| "tree".into(), |name| name.to_string_lossy());
        let mut tries = 0;
        let moved = loop {
            let mut tag = [0u8; 8];
            getrandom::fill(&mut tag).map_err(|e| io::Error::other(e.to_string()))?;
            let name = format!("{stem}-{:016x}", u64::from_ne_bytes(tag));
            tries += 1;
            match fs::rename(path, self.dir.join(name)) {
                Err(e) if taken(&e) && tries < NAME_TRIES => {}
                moved => break moved,
            }
        };
        match moved {
            Ok(()) => {
                if let Err(TrySendError::Disconnected(())) = self.wake.try_send(()) {
                    tracing::error!(path = %self.dir.display(), "the trash's thread is gone: removed trees stay in the trash until the next start");
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => match fs::remove_dir_all(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            Err(e) => Err(e),
        }
    }
}

/// Waits for a wake-up, then `linger` more for the trees discarded meanwhile; false once
/// the `Trash` is dropped. A wake-up sent while lingering is taken too: the listing that
/// follows sees its tree (moved before it was sent).
fn wait_for_trees(woken: &Receiver<()>, linger: Duration) -> bool {
    if woken.recv().is_err() {
        return false;
    }
    std::thread::sleep(linger);
    let _ = woken.try_recv();
    true
}

/// Whether a rename failed because its target name is taken by a directory.
fn taken(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST))
}

/// Removes everything in the trash directory `dir`; what cannot be removed is logged and
/// tried again at the next wake-up.
fn empty(dir: &Path) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::error!(path = %dir.display(), error = %e, "cannot read the trash");
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let removed = match entry.file_type() {
            Ok(kind) if kind.is_dir() => fs::remove_dir_all(&path),
            _ => fs::remove_file(&path),
        };
        if let Err(e) = removed
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::error!(path = %path.display(), error = %e, "cannot remove a tree from the trash");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Waits (up to 10 s) until `dir` is empty.
    fn emptied(dir: &Path) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if fs::read_dir(dir).unwrap().next().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    #[test]
    fn a_discarded_tree_leaves_its_place_at_once_and_is_removed_by_the_trash_thread() {
        let data = tempfile::tempdir().unwrap();
        let tree = data.path().join("units").join("abc");
        fs::create_dir_all(tree.join("job/deep")).unwrap();
        for i in 0..100 {
            fs::write(tree.join(format!("job/deep/{i}")), b"x").unwrap();
        }
        let trash = Trash::open(data.path().join("trash")).unwrap();
        trash.discard(&tree).unwrap();
        assert!(!tree.exists(), "moved out at once");
        assert!(emptied(&data.path().join("trash")));
        let here = std::thread::current().id();
        let removers = trash.removers.lock().unwrap();
        assert!(!removers.is_empty() && removers.iter().all(|t| *t != here));
    }

    #[test]
    fn what_a_crash_left_in_the_trash_is_removed_at_the_next_open() {
        let data = tempfile::tempdir().unwrap();
        let left = data.path().join("trash/abc-0/job");
        fs::create_dir_all(&left).unwrap();
        fs::write(left.join("f"), b"x").unwrap();
        let _trash = Trash::open(data.path().join("trash")).unwrap();
        assert!(emptied(&data.path().join("trash")));
    }

    #[test]
    fn a_symlink_in_a_discarded_tree_is_removed_and_its_target_kept() {
        let data = tempfile::tempdir().unwrap();
        let outside = data.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("keep"), b"keep").unwrap();
        let tree = data.path().join("abc");
        fs::create_dir(&tree).unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("link")).unwrap();
        let trash = Trash::open(data.path().join("trash")).unwrap();
        trash.discard(&tree).unwrap();
        assert!(emptied(&data.path().join("trash")));
        assert_eq!(fs::read(outside.join("keep")).unwrap(), b"keep");
    }

    #[test]
    fn a_tree_is_discarded_while_the_trash_holds_trees_named_as_an_earlier_run_named_them() {
        // Found by an attacker's review: names were `<name>-<n>` with `n` from 0 in every
        // process, so after a restart the rename met a tree an earlier run left (still
        // being removed, or one it cannot remove) and failed with ENOTEMPTY: the release
        // failed and the unit came back at the next start.
        let data = tempfile::tempdir().unwrap();
        let trash = Trash::open(data.path().join("trash")).unwrap();
        assert!(emptied(&data.path().join("trash")));
        // Left there (the thread is not woken until the next discard).
        for n in 0..4 {
            fs::create_dir_all(data.path().join(format!("trash/job-{n}/x"))).unwrap();
        }
        for n in 0..4 {
            let job = data.path().join(format!("units/{n}/job"));
            fs::create_dir_all(job.join("deep")).unwrap();
            trash.discard(&job).unwrap();
            assert!(!job.exists(), "moved out");
        }
        assert!(emptied(&data.path().join("trash")));
    }

    #[test]
    fn trees_discarded_together_are_removed_after_one_wake_up() {
        let data = tempfile::tempdir().unwrap();
        let trash =
            Trash::open_lingering(data.path().join("trash"), Duration::from_secs(2)).unwrap();
        // The thread's first round (at its start) has begun: it now lingers after the
        // open's own wake-up, or waits for one.
        let deadline = Instant::now() + Duration::from_secs(10);
        while trash.removers.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let at_open = trash.removers.lock().unwrap().len();
        assert_eq!(at_open, 1);
        for n in 0..20 {
            let job = data.path().join(format!("units/{n}/job"));
            fs::create_dir_all(job.join("deep")).unwrap();
            trash.discard(&job).unwrap();
        }
        assert!(emptied(&data.path().join("trash")));
        assert_eq!(trash.removers.lock().unwrap().len(), at_open + 1);
    }

    #[test]
    fn discarding_a_missing_tree_is_not_an_error() {
        let data = tempfile::tempdir().unwrap();
        let trash = Trash::open(data.path().join("trash")).unwrap();
        trash.discard(&data.path().join("gone")).unwrap();
    }
}
