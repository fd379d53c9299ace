//! Per-job store data: the WASI context (a preopen of the job directory and nothing else),
//! the resource table, the job's streams, its capabilities and its limits, with the
//! ledgers of the descriptors and disk it holds.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::contain::spawn::JobContain;
use super::fds::{FdLedger, resource_cap};
use super::policy::Policy;
use super::quota::DiskLedger;

/// Why a job's store could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot open job directory {path} for the guest: {reason}")]
pub struct StateError {
    /// The job directory.
    pub path: PathBuf,
    /// What went wrong.
    pub reason: String,
}

/// Everything a job's host calls can reach. One per job, dropped with the store.
pub struct JobState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: StoreLimits,
    pub(crate) policy: Arc<Policy>,
    /// Absolute: children see it as `HOME` and working directory.
    pub(crate) job_dir: PathBuf,
    pub(crate) unit: String,
    /// The host descriptors the guest holds, against its cap.
    pub(crate) fds: FdLedger,
    /// The job directory's quota; `None` when not enforced.
    pub(crate) disk: Option<Arc<DiskLedger>>,
    /// Taken by the guest's first `payload()` call.
    pub(crate) payload: Option<DynInputStream>,
    /// Taken by the guest's first `results()` call.
    pub(crate) results: Option<DynOutputStream>,
    /// Turns true when the job is cancelled.
    pub(crate) cancelled: watch::Receiver<bool>,
    /// How the job's programs are contained (set by the runner).
    pub(crate) contain: JobContain,
}

impl std::fmt::Debug for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobState")
            .field("unit", &self.unit)
            .field("job_dir", &self.job_dir)
            .finish_non_exhaustive()
    }
}

impl JobState {
    /// The store data of one job. The guest sees `job_dir` as `/` and `.` (its only
    /// preopen), gets no environment, arguments, stdio, network or other files. Its
    /// resource table holds at most what its descriptor cap allows; `disk` charges its
    /// writes.
    ///
    /// # Errors
    /// [`StateError`] when the job directory cannot be opened.
    pub fn new(
        unit: String,
        job_dir: PathBuf,
        policy: Arc<Policy>,
        io: (DynInputStream, DynOutputStream),
        cancelled: watch::Receiver<bool>,
        disk: Option<Arc<DiskLedger>>,
    ) -> Result<Self, StateError> {
        // Children resolve HOME and their working directory from anywhere: never relative,
        // even when the node was started with a relative --data-dir.
        let job_dir = std::path::absolute(&job_dir).map_err(|e| StateError {
            path: job_dir.clone(),
            reason: e.to_string(),
        })?;
        let (payload, results) = io;
        let mut builder = WasiCtx::builder();
        builder
            .preopened_dir(&job_dir, ".", FsPerms::ReadWrite)
            .map_err(|e| StateError {
                path: job_dir.clone(),
                reason: e.to_string(),
            })?;
        // Deny by default: no network, no name lookups, no inherited stdio or environment.
        builder
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false);
        let limits = StoreLimitsBuilder::new()
            .memory_size(policy.limits.memory_bytes)
            .instances(16)
            .tables(64)
            .memories(4)
            .trap_on_grow_failure(true)
            .build();
        let mut table = ResourceTable::new();
        table.set_max_capacity(resource_cap(policy.limits.descriptors));
        let fds = FdLedger::new(policy.limits.descriptors);
        Ok(Self {
            wasi: builder.build(),
            table,
            limits,
            policy,
            job_dir,
            unit,
            fds,
            disk,
            payload: Some(payload),
            results: Some(results),
            cancelled,
            contain: JobContain::default(),
        })
    }

    /// The store's resource limiter.
    pub fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.limits
    }

    /// Counts a new child's descriptors (see [`FdLedger::track_child`]) and starts watching
    /// the job directory, which the child may write to.
    pub(crate) fn track_child(&mut self) -> super::fds::FdToken {
        if let Some(disk) = &self.disk {
            disk.child_started();
        }
        self.fds.track_child()
    }

    /// Whether the guest may take `descriptors` more host descriptors and `entries` more
    /// resource-table entries; the refusal is for the guest.
    ///
    /// # Errors
    /// [`AdmitError`] naming the cap.
    pub(crate) fn admit(&mut self, descriptors: usize, entries: usize) -> Result<(), AdmitError> {
        self.fds.check(descriptors)?;
        if self.table_has_room(entries) {
            Ok(())
        } else {
            Err(AdmitError::Table {
                cap: self.table.max_capacity(),
            })
        }
    }

    /// Whether `n` more entries fit in the resource table. Probes by pushing placeholders
    /// and deleting them again: their slots go back on the free list, where the next pushes
    /// find them.
    fn table_has_room(&mut self, n: usize) -> bool {
        let mut probes = Vec::with_capacity(n);
        let mut room = true;
        for _ in 0..n {
            match self.table.push(()) {
                Ok(probe) => probes.push(probe),
                Err(_) => {
                    room = false;
                    break;
                }
            }
        }
        for probe in probes {
            let _ = self.table.delete(probe);
        }
        room
    }
}

/// Why a job may not take more host descriptors or resource-table entries; the text goes
/// to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdmitError {
    /// Past the job's descriptor cap.
    #[error(transparent)]
    Descriptors(#[from] super::fds::FdLimit),
    /// Past the resource table's capacity.
    #[error("too many open resources: the job may hold {cap} handles, streams and pollables")]
    Table {
        /// The table's capacity.
        cap: usize,
    },
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
