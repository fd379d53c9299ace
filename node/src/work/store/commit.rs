//! How the store commits a batch of changes: through the write-ahead journal (one flush),
//! or, without one, with a file system sync on each side of the renames; and how a journal
//! left by a crash is replayed over the status files at the next open.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::sync::PoisonError;

use super::{
    DIR_MODE, Durability, Entry, FILE_MODE, STATUS_FILE, STATUS_TEMP_FILE, STDOUT_FILE, StoreError,
    UnitStore, write_file,
};
use crate::work::status::UnitStatus;
use crate::work::unit::UnitId;

/// Most bytes of a status file read back to put it back after a failed sync (a status is
/// one JSON line of a few KiB).
const STATUS_READ_LIMIT: u64 = 1 << 20;

#[cfg(test)]
thread_local! {
    /// Test hook: how many file system syncs on this thread succeed before one fails with
    /// EIO (`None`: none fails).
    pub(super) static SYNCS_BEFORE_FAILURE: std::cell::Cell<Option<u32>> =
        const { std::cell::Cell::new(None) };
}

/// The bytes of the status file at `path`, `None` when there is none. A symlink there is
/// not followed (an error).
fn read_status_file(path: &std::path::Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file = match file {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut bytes = Vec::new();
    file.take(STATUS_READ_LIMIT).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
}

impl UnitStore {
    /// Applies what the journal holds over the status files (a crash may have left them
    /// behind it): statuses are written, a unit whose directory the crash lost is made again
    /// (with whatever output survived), released units are removed.
    pub(super) fn replay(&self, entries: &[Entry]) {
        for entry in entries {
            let result = match entry {
                Entry::Status { unit, status } => self.restore(*unit, status),
                Entry::Released { unit } => self.trash.discard(&self.unit_dir(*unit)),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "cannot replay a unit journal record");
            }
        }
    }

    fn restore(&self, id: UnitId, status: &UnitStatus) -> io::Result<()> {
        let dir = self.unit_dir(id);
        if !dir.is_dir() {
            DirBuilder::new().mode(DIR_MODE).create(&dir)?;
        }
        let stdout = dir.join(STDOUT_FILE);
        if !stdout.exists() {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .mode(FILE_MODE)
                .open(&stdout)?;
        }
        self.write_status(id, status, Durability::No)
            .map_err(io::Error::other)
    }

    /// Makes a batch of changes durable, then applies them: the entries are appended to the
    /// journal with one flush (a full journal is first emptied by a checkpoint: one sync of
    /// the file system, after which the status files hold everything), then each status is
    /// written to its file (temp and rename, not synced: the journal has it) and each
    /// released unit's files are removed.
    ///
    /// Returns one result per entry, in order; an entry that fails is not applied. When the
    /// journal cannot take the batch, the file system is synced around the renames instead.
    pub fn commit(&self, batch: &[Entry]) -> Vec<Result<(), StoreError>> {
        let _guard = self.lock();
        let journaled = self.journal_append(batch);
        if !journaled {
            return self.commit_synced(batch);
        }
        batch.iter().map(|entry| self.apply(entry)).collect()
    }

    /// Appends `batch` to the journal (checkpointing a full one); whether it is there.
    fn journal_append(&self, batch: &[Entry]) -> bool {
        let mut journal = self.journal.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(j) = journal.as_mut() else {
            return false;
        };
        let appended = match j.append(batch) {
            Ok(false) => {
                // Full: every status applied so far goes to the disk, then start again. A
                // failed sync keeps the journal: its records are the only durable copy.
                if let Err(e) = self.sync_fs() {
                    tracing::error!(error = %e, "cannot sync the units' file system; keeping the full journal and syncing this batch directly");
                    return false;
                }
                j.reset().and_then(|()| j.append(batch))
            }
            other => other,
        };
        if matches!(appended, Ok(true)) {
            self.count_syncs(1);
        }
        match appended {
            Ok(done) => done,
            Err(e) => {
                tracing::error!(path = %j.path().display(), error = %e, "cannot write the unit journal; syncing the file system instead");
                *journal = None;
                false
            }
        }
    }

    fn apply(&self, entry: &Entry) -> Result<(), StoreError> {
        match entry {
            Entry::Status { unit, status } => {
                self.check_exists(*unit)?;
                self.write_status(*unit, status, Durability::No)
            }
            Entry::Released { unit } => {
                self.check_exists(*unit)?;
                // Out of the units directory at once, removed by the trash's thread.
                let path = self.unit_dir(*unit);
                self.trash
                    .discard(&path)
                    .map_err(|source| StoreError::Release {
                        unit: *unit,
                        path,
                        source,
                    })
            }
        }
    }

    /// The batch without the journal: temp files, a file system sync, the renames and
    /// removals, another sync.
    fn commit_synced(&self, batch: &[Entry]) -> Vec<Result<(), StoreError>> {
        let mut results: Vec<Result<(), StoreError>> = batch
            .iter()
            .map(|entry| match entry {
                Entry::Status { unit, status } => {
                    self.check_exists(*unit)?;
                    let mut line =
                        serde_json::to_vec(status).map_err(|source| StoreError::EncodeStatus {
                            unit: *unit,
                            source,
                        })?;
                    line.push(b'\n');
                    let temp = self.unit_dir(*unit).join(STATUS_TEMP_FILE);
                    write_file(&temp, &line, Durability::No).map_err(|source| {
                        StoreError::WriteStatus {
                            unit: *unit,
                            path: temp,
                            source,
                        }
                    })
                }
                Entry::Released { .. } => Ok(()),
            })
            .collect();
        let synced = self.sync_fs();
        if let Err(e) = &synced {
            // The temp files may not be on the disk: no status of this batch is durable.
            self.fail_statuses(batch, &mut results, e);
        }
        let before = self.statuses_before(batch, &results);
        for (entry, result) in batch.iter().zip(&mut results) {
            if result.is_err() {
                continue;
            }
            *result = match entry {
                Entry::Status { unit, .. } => {
                    let dir = self.unit_dir(*unit);
                    fs::rename(dir.join(STATUS_TEMP_FILE), dir.join(STATUS_FILE)).map_err(
                        |source| StoreError::WriteStatus {
                            unit: *unit,
                            path: dir.join(STATUS_FILE),
                            source,
                        },
                    )
                }
                released => self.apply(released),
            };
        }
        if synced.is_ok()
            && let Err(e) = self.sync_fs()
        {
            // The renames may not be on the disk: a crash could bring back the old statuses.
            // Each write is answered as failed, so the old status goes back in place too: a
            // unit whose submitter is told "not taken" must not be found queued at the next
            // start.
            tracing::error!(error = %e, "cannot sync the units' file system: this batch of statuses is put back as it was");
            for (entry, (result, before)) in batch.iter().zip(results.iter().zip(&before)) {
                if let (Entry::Status { unit, .. }, Ok(()), Some(before)) = (entry, result, before)
                {
                    self.put_back(*unit, before.as_deref());
                }
            }
            self.fail_statuses(batch, &mut results, &e);
        }
        results
    }

    /// The status file of each status write of `batch` still to be renamed in, as it is
    /// now (`Some(None)`: there is none), so that it can be put back; `None` for the other
    /// entries and for a file that cannot be read (left as the batch makes it).
    fn statuses_before(
        &self,
        batch: &[Entry],
        results: &[Result<(), StoreError>],
    ) -> Vec<Option<Option<Vec<u8>>>> {
        batch
            .iter()
            .zip(results)
            .map(|(entry, result)| match (entry, result) {
                (Entry::Status { unit, .. }, Ok(())) => {
                    read_status_file(&self.unit_dir(*unit).join(STATUS_FILE)).ok()
                }
                _ => None,
            })
            .collect()
    }

    /// Puts `unit`'s status file back as it was before a batch whose last sync failed
    /// (`before`: its bytes, `None` when there was none).
    fn put_back(&self, unit: UnitId, before: Option<&[u8]>) {
        let dir = self.unit_dir(unit);
        let status = dir.join(STATUS_FILE);
        let restored = match before {
            Some(bytes) => {
                let temp = dir.join(STATUS_TEMP_FILE);
                write_file(&temp, bytes, Durability::No).and_then(|()| fs::rename(&temp, &status))
            }
            None => fs::remove_file(&status),
        };
        if let Err(e) = restored {
            tracing::error!(unit = %unit, error = %e, "cannot put back a unit's status after a failed sync: a restart may find the status its submitter was told was not stored");
        }
    }

    /// Marks every status write of `batch` not failed yet as failed by `error` (a sync that
    /// did not reach the disk).
    fn fail_statuses(
        &self,
        batch: &[Entry],
        results: &mut [Result<(), StoreError>],
        error: &io::Error,
    ) {
        for (entry, result) in batch.iter().zip(results) {
            if let (Entry::Status { unit, .. }, Ok(())) = (entry, &result) {
                *result = Err(StoreError::WriteStatus {
                    unit: *unit,
                    path: self.root.clone(),
                    source: io::Error::new(error.kind(), error.to_string()),
                });
            }
        }
    }

    /// Flushes the file system holding the store (data and directory entries).
    ///
    /// # Errors
    /// The units directory cannot be opened, or the kernel reports a write-back error.
    pub(super) fn sync_fs(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        self.count_syncs(1);
        #[cfg(test)]
        if let Some(left) = SYNCS_BEFORE_FAILURE.get() {
            SYNCS_BEFORE_FAILURE.set(left.checked_sub(1));
            if left == 0 {
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
        }
        let dir = File::open(&self.root)?;
        // SAFETY: syncfs takes a valid descriptor and only flushes.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}
