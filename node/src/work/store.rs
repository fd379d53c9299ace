//! Work units on disk: [`UnitStore`] owns `<data_dir>/units/`.
//!
//! Each unit has a directory `<data_dir>/units/<id>/` (mode 0700) holding three files
//! (mode 0600): `status` (one JSON line, see [`UnitStatus`]), `stdin` (the whole payload,
//! written before the unit starts) and `stdout` (the results, appended while it runs).
//!
//! Every change of `status` goes through [`UnitStore::update`], which enforces
//! [`UnitState::transition`] and replaces the file whole (a temp file, synced, renamed over
//! the old one, the directory synced: a crash leaves either the old or the new status), or
//! through [`UnitStore::commit`], which makes a batch of changes durable with one flush of
//! the write-ahead journal (see [`journal`]) and then overwrites the status files in place;
//! at the next open the journal is replayed over them, so a status file a crash tore is
//! rewritten from its record.
//!
//! The IO is blocking `std::fs`; async callers use `spawn_blocking`. The store does not run
//! work, watch files or talk to other nodes. Its errors are in `error`, its file writes and
//! reads in `file`, batched commits in `commit`; trees it removes (a released unit, a
//! finished unit's job directory) go to `trash`, emptied by a thread of its own.

use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

pub use self::error::StoreError;
use self::file::{Durability, overwrite_file, read_range, write_file};
pub use self::journal::Entry;
use self::journal::{JOURNAL_SIZE, Journal};
use self::trash::Trash;
use super::status::UnitStatus;
use super::unit::{UnitId, UnitState};
use crate::id::NodeId;

/// Mode of the units directory and of each unit's directory: owner only.
const DIR_MODE: u32 = 0o700;
/// Mode of every file in a unit directory: owner only (payloads and results may hold secrets).
const FILE_MODE: u32 = 0o600;
/// How many random ids [`UnitStore::create`] tries before giving up. With 62⁸ ids a single
/// collision is already unlikely; 16 in a row means something else is wrong.
const MAX_ID_DRAWS: usize = 16;

/// The status file's name in a unit directory.
const STATUS_FILE: &str = "status";
/// The temp file a new status is written to before it is renamed over [`STATUS_FILE`].
const STATUS_TEMP_FILE: &str = "status.tmp";
/// The payload file's name in a unit directory.
const STDIN_FILE: &str = "stdin";
/// The results file's name in a unit directory.
const STDOUT_FILE: &str = "stdout";
/// The job directory's name in a unit directory.
pub(crate) const JOB_DIR: &str = "job";
/// The directory of the units' directories in the data dir.
pub(crate) const UNITS_DIR: &str = "units";

/// Detail recorded by [`UnitStore::recover`] for a unit that was running.
pub const DETAIL_RESTARTED_RUNNING: &str = "node restarted while the unit was running";
/// Detail recorded by [`UnitStore::recover`] for a unit that was pending (Receptor says
/// "Pending at restart").
pub const DETAIL_RESTARTED_PENDING: &str = "node restarted while the unit was pending";

/// A unit just created by [`UnitStore::create`]: its id and where its files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitHandle {
    id: UnitId,
    dir: PathBuf,
}

impl UnitHandle {
    /// The unit's id.
    pub fn id(&self) -> UnitId {
        self.id
    }

    /// The unit's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the payload goes; write it fully before starting the unit.
    pub fn stdin_path(&self) -> PathBuf {
        self.dir.join(STDIN_FILE)
    }

    /// Where the results go.
    pub fn stdout_path(&self) -> PathBuf {
        self.dir.join(STDOUT_FILE)
    }
}

/// What [`UnitStore::recover`] found at startup.
#[derive(Debug, Default)]
pub struct Recovery {
    /// Units that were `Pending` or `Running` and are now `Failed`, sorted by id.
    pub failed: Vec<UnitId>,
    /// Units that could not be read or updated; they were left as they were.
    pub errors: Vec<StoreError>,
}

/// The work units of one node, on disk under `<data_dir>/units/`.
///
/// One `UnitStore` per data dir: it serialises its own read-modify-write cycles, but not
/// against another process or another store on the same directory.
#[derive(Debug)]
pub struct UnitStore {
    /// `<data_dir>/units`.
    root: PathBuf,
    /// Held across each status read-modify-write so that concurrent updates through
    /// `&self` do not lose each other's changes. Guards no data of its own.
    update_lock: Mutex<()>,
    /// The write-ahead journal of [`UnitStore::commit`] (`None` when it could not be
    /// opened: batches are then made durable by syncing the file system).
    journal: Mutex<Option<Journal>>,
    /// How many times the store has waited for the disk (journal flushes, file and file
    /// system syncs): what group commit saves, counted.
    syncs: AtomicU64,
    /// `<data_dir>/trash`: removed trees go there, and its thread deletes them.
    trash: Trash,
}

impl UnitStore {
    /// Opens the store under `data_dir`, creating `<data_dir>/units/` (mode 0700) if needed.
    ///
    /// # Errors
    /// [`StoreError::CreateUnitsDir`] when the directory cannot be created.
    pub fn open(data_dir: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = data_dir.as_ref().join(UNITS_DIR);
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(&root)
            .map_err(|source| StoreError::CreateUnitsDir {
                path: root.clone(),
                source,
            })?;
        if let Err(e) = spread::mark_top_directory(&root) {
            tracing::debug!(path = %root.display(), error = %e, "units directory not marked a top directory");
        }
        let trash_dir = data_dir.as_ref().join("trash");
        let trash =
            Trash::open(trash_dir.clone()).map_err(|source| StoreError::CreateUnitsDir {
                path: trash_dir,
                source,
            })?;
        let store = Self {
            root,
            update_lock: Mutex::new(()),
            journal: Mutex::new(None),
            syncs: AtomicU64::new(0),
            trash,
        };
        let path = data_dir.as_ref().join("units.journal");
        match Journal::open(&path, JOURNAL_SIZE) {
            Ok((mut journal, entries)) => {
                if !entries.is_empty() {
                    store.replay(&entries);
                    // A failed sync keeps the journal, to be replayed again next time.
                    if let Err(e) = store.sync_fs() {
                        tracing::error!(error = %e, "cannot sync the units' file system after replaying the unit journal; keeping it");
                    } else if let Err(e) = journal.reset() {
                        tracing::error!(path = %path.display(), error = %e, "cannot reset the unit journal");
                    }
                }
                *store.journal.lock().unwrap_or_else(PoisonError::into_inner) = Some(journal);
            }
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot open the unit journal; status batches will sync the file system");
            }
        }
        Ok(store)
    }

    /// The units directory, `<data_dir>/units`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many times this store has waited for the disk since it was opened: each flush
    /// of the journal, each synced status file and its directory, each file system sync.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Counts `n` waits for the disk.
    fn count_syncs(&self, n: u64) {
        self.syncs.fetch_add(n, Ordering::Relaxed);
    }

    /// Creates a `Pending` unit with a fresh random id, an empty `stdin` and `stdout`, and
    /// its first status.
    ///
    /// # Errors
    /// [`StoreError::Random`] or [`StoreError::NoFreeId`] when no id could be drawn;
    /// [`StoreError::CreateUnit`] or [`StoreError::WriteStatus`] when the files cannot be
    /// made (a half-made directory is removed).
    pub fn create(
        &self,
        work_type: &str,
        params: BTreeMap<String, String>,
        submitter: NodeId,
        node: NodeId,
    ) -> Result<UnitHandle, StoreError> {
        let handle = self.create_dir()?;
        let status = UnitStatus::new(work_type, params, submitter, node, crate::clock::now_ms());
        let filled = self.fill_unit_dir(&handle, &status);
        if filled.is_err() {
            // Best effort: the error being returned matters more than a cleanup failure.
            let _ = fs::remove_dir_all(&handle.dir);
        }
        filled.map(|()| handle)
    }

    /// Creates unit `id` (drawn by the caller) with `status` as its first status, an empty
    /// `stdin` and `stdout`.
    ///
    /// # Errors
    /// [`StoreError::CreateUnit`] when the directory exists already or the files cannot be
    /// made (a half-made directory is removed).
    pub fn create_unit(&self, id: UnitId, status: &UnitStatus) -> Result<UnitHandle, StoreError> {
        let dir = self.unit_dir(id);
        DirBuilder::new()
            .mode(DIR_MODE)
            .create(&dir)
            .map_err(|source| StoreError::CreateUnit {
                unit: id,
                path: dir.clone(),
                source,
            })?;
        let handle = UnitHandle { id, dir };
        let filled = self.fill_unit_dir(&handle, status);
        if filled.is_err() {
            let _ = fs::remove_dir_all(&handle.dir);
        }
        filled.map(|()| handle)
    }

    /// Makes the directory for a fresh id, redrawing while the id is taken.
    fn create_dir(&self) -> Result<UnitHandle, StoreError> {
        for _ in 0..MAX_ID_DRAWS {
            let id = UnitId::random().map_err(|source| StoreError::Random { source })?;
            let dir = self.unit_dir(id);
            match DirBuilder::new().mode(DIR_MODE).create(&dir) {
                Ok(()) => return Ok(UnitHandle { id, dir }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(source) => {
                    return Err(StoreError::CreateUnit {
                        unit: id,
                        path: dir,
                        source,
                    });
                }
            }
        }
        Err(StoreError::NoFreeId {
            path: self.root.clone(),
        })
    }

    /// Creates the empty payload and results files and writes the first status.
    fn fill_unit_dir(&self, handle: &UnitHandle, status: &UnitStatus) -> Result<(), StoreError> {
        for path in [handle.stdin_path(), handle.stdout_path()] {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|source| StoreError::CreateUnit {
                    unit: handle.id,
                    path,
                    source,
                })?;
        }
        // Not synced: until its first update the unit has not started, and a crash that
        // loses this write leaves a status that `recover` reports as unreadable. Syncing
        // here would make every submit wait for the disk.
        self.write_status(handle.id, status, Durability::No)
    }

    /// Where unit `id`'s payload is (whether or not the unit exists).
    pub fn stdin_path(&self, id: UnitId) -> PathBuf {
        self.unit_dir(id).join(STDIN_FILE)
    }

    /// Where unit `id`'s results are (whether or not the unit exists).
    pub fn stdout_path(&self, id: UnitId) -> PathBuf {
        self.unit_dir(id).join(STDOUT_FILE)
    }

    /// Reads unit `id`'s status as stored (secrets included; see
    /// [`UnitStatus::redacted`]).
    ///
    /// # Errors
    /// [`StoreError::UnknownUnit`] when there is no such unit;
    /// [`StoreError::ReadStatus`] or [`StoreError::CorruptStatus`] when its status file
    /// cannot be read or parsed.
    pub fn status(&self, id: UnitId) -> Result<UnitStatus, StoreError> {
        self.check_exists(id)?;
        let path = self.unit_dir(id).join(STATUS_FILE);
        let text = fs::read(&path).map_err(|source| StoreError::ReadStatus {
            unit: id,
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&text).map_err(|source| StoreError::CorruptStatus {
            unit: id,
            path,
            source,
        })
    }

    /// Changes unit `id`'s status with `change` and writes it back, stamping `UpdatedAt`.
    /// A change of state must be legal ([`UnitState::transition`]); keeping the state
    /// (for example to update the detail or the stdout size) is always allowed.
    ///
    /// # Errors
    /// [`StoreError::IllegalTransition`] (and nothing is written) when the state change is
    /// not allowed; the errors of [`UnitStore::status`]; [`StoreError::WriteStatus`].
    pub fn update(
        &self,
        id: UnitId,
        change: impl FnOnce(&mut UnitStatus),
    ) -> Result<UnitStatus, StoreError> {
        let _guard = self.lock();
        let old = self.status(id)?;
        let mut new = old.clone();
        change(&mut new);
        if new.state != old.state {
            old.state
                .transition(new.state)
                .map_err(|source| StoreError::IllegalTransition { unit: id, source })?;
        }
        new.updated_at = crate::clock::now_ms().max(old.updated_at);
        self.write_status(id, &new, Durability::Yes)?;
        Ok(new)
    }

    /// Records that unit `id`'s stdout now holds `size` bytes.
    ///
    /// # Errors
    /// As [`UnitStore::update`].
    pub fn set_stdout_size(&self, id: UnitId, size: u64) -> Result<UnitStatus, StoreError> {
        self.update(id, |status| status.stdout_size = size)
    }

    /// Every unit whose status can be read, sorted by id. Units with an unreadable status
    /// are left out ([`UnitStore::recover`] reports them).
    ///
    /// # Errors
    /// [`StoreError::ListUnits`] when the units directory cannot be listed.
    pub fn list(&self) -> Result<Vec<(UnitId, UnitStatus)>, StoreError> {
        let units = self
            .unit_ids()?
            .into_iter()
            .filter_map(|id| self.status(id).ok().map(|status| (id, status)))
            .collect();
        Ok(units)
    }

    /// Removes unit `id` and all its files.
    ///
    /// # Errors
    /// [`StoreError::UnknownUnit`] when there is no such unit; [`StoreError::Release`]
    /// when its directory cannot be removed.
    pub fn release(&self, id: UnitId) -> Result<(), StoreError> {
        let _guard = self.lock();
        self.check_exists(id)?;
        let path = self.unit_dir(id);
        self.trash
            .discard(&path)
            .map_err(|source| StoreError::Release {
                unit: id,
                path,
                source,
            })
    }

    /// Removes what a finished unit must not keep: its payload (which may hold keys and
    /// passwords) and its job directory. Its results stay until release.
    ///
    /// # Errors
    /// [`StoreError::Release`] when they cannot be removed.
    pub fn drop_secrets(&self, id: UnitId) -> Result<(), StoreError> {
        let dir = self.unit_dir(id);
        let remove = |path: PathBuf, result: io::Result<()>| match result {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(StoreError::Release {
                unit: id,
                path,
                source: e,
            }),
            _ => Ok(()),
        };
        let stdin = dir.join(STDIN_FILE);
        remove(stdin.clone(), fs::remove_file(&stdin))?;
        // The job directory can hold a quota's worth of files: it goes to the trash.
        let job = dir.join(JOB_DIR);
        remove(job.clone(), self.trash.discard(&job))
    }

    /// Where unit `id`'s job directory is (the handler's only preopen).
    pub fn job_dir(&self, id: UnitId) -> PathBuf {
        self.unit_dir(id).join(JOB_DIR)
    }

    /// Reads up to `max` bytes of unit `id`'s stdout starting at byte `offset`. At or past
    /// the end of the file the result is empty.
    ///
    /// # Errors
    /// [`StoreError::UnknownUnit`] when there is no such unit; [`StoreError::ReadStdout`]
    /// when the file cannot be read.
    pub fn read_stdout(&self, id: UnitId, offset: u64, max: usize) -> Result<Bytes, StoreError> {
        self.check_exists(id)?;
        let path = self.stdout_path(id);
        read_range(&path, offset, max)
            .map(Bytes::from)
            .map_err(|source| StoreError::ReadStdout {
                unit: id,
                path,
                source,
            })
    }

    /// Runs at startup, before any unit is started: every unit left `Pending` or `Running`
    /// by the previous run is marked `Failed`, since nothing is running it any more.
    /// Units whose status cannot be read or written are reported and left alone.
    ///
    /// # Errors
    /// [`StoreError::ListUnits`] when the units directory cannot be listed.
    pub fn recover(&self) -> Result<Recovery, StoreError> {
        let mut recovery = Recovery::default();
        for id in self.unit_ids()? {
            match self.status(id) {
                Ok(status) if status.state.is_terminal() => {}
                Ok(_) => match self.update(id, fail_unfinished) {
                    Ok(_) => recovery.failed.push(id),
                    Err(e) => recovery.errors.push(e),
                },
                Err(e) => recovery.errors.push(e),
            }
        }
        Ok(recovery)
    }

    /// The ids of every unit directory, sorted. Entries whose name is not a unit id (such
    /// as stray files) are ignored.
    fn unit_ids(&self) -> Result<Vec<UnitId>, StoreError> {
        let list_error = |source| StoreError::ListUnits {
            path: self.root.clone(),
            source,
        };
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.root).map_err(list_error)? {
            let entry = entry.map_err(list_error)?;
            let is_dir = entry.file_type().map_err(list_error)?.is_dir();
            let id = entry.file_name().to_str().and_then(|s| s.parse().ok());
            if let (true, Some(id)) = (is_dir, id) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    /// Writes `status` to the unit's status file. Durably ([`Durability::Yes`]): to the
    /// temp file, synced, renamed over the status file, the directory synced. Otherwise
    /// (the journal holds the status, or the caller syncs the file system next) in place:
    /// no new inode, no rename, no old inode to free on every change of every unit. A
    /// crash in the middle of an in-place write can tear the file, but the status is then
    /// still in the journal, whose replay at the next open rewrites it (the journal is only
    /// emptied after a sync of the file system).
    fn write_status(
        &self,
        id: UnitId,
        status: &UnitStatus,
        sync: Durability,
    ) -> Result<(), StoreError> {
        let mut line = serde_json::to_vec(status)
            .map_err(|source| StoreError::EncodeStatus { unit: id, source })?;
        line.push(b'\n');
        let dir = self.unit_dir(id);
        let write_error = |path: &Path| {
            let path = path.to_owned();
            move |source| StoreError::WriteStatus {
                unit: id,
                path,
                source,
            }
        };
        if sync == Durability::No {
            let path = dir.join(STATUS_FILE);
            return overwrite_file(&path, &line).map_err(write_error(&path));
        }
        let temp = dir.join(STATUS_TEMP_FILE);
        write_file(&temp, &line, sync).map_err(write_error(&temp))?;
        fs::rename(&temp, dir.join(STATUS_FILE)).map_err(write_error(&temp))?;
        // The rename is a change of the directory: durable only once it is synced.
        self.count_syncs(2);
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_error(&dir))?;
        Ok(())
    }

    /// Fails with [`StoreError::UnknownUnit`] unless unit `id`'s directory exists.
    fn check_exists(&self, id: UnitId) -> Result<(), StoreError> {
        if self.unit_dir(id).is_dir() {
            Ok(())
        } else {
            Err(StoreError::UnknownUnit { unit: id })
        }
    }

    fn unit_dir(&self, id: UnitId) -> PathBuf {
        self.root.join(id.as_str())
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The mutex guards no data, so a panic elsewhere cannot leave anything inconsistent.
        self.update_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The change [`UnitStore::recover`] makes: a unit nothing is running any more has failed.
fn fail_unfinished(status: &mut UnitStatus) {
    let detail = match status.state {
        UnitState::Pending => DETAIL_RESTARTED_PENDING,
        UnitState::Running => DETAIL_RESTARTED_RUNNING,
        UnitState::Succeeded | UnitState::Failed | UnitState::Canceled => return,
    };
    status.state = UnitState::Failed;
    detail.clone_into(&mut status.detail);
}

mod commit;
mod error;
mod file;
pub mod journal;
mod spread;
#[cfg(test)]
mod tests;
mod trash;
