//! Per-job store data: the WASI context (a preopen of the job directory and nothing else),
//! the resource table, the job's streams, its capabilities and its limits.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use wasmtime::{ResourceLimiter, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream};
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxView, WasiView};

use super::contain::spawn::JobContain;
use super::policy::Policy;

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
    pub(crate) job_dir: PathBuf,
    pub(crate) unit: String,
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
    /// preopen), gets no environment, arguments, stdio, network or other files.
    ///
    /// # Errors
    /// [`StateError`] when the job directory cannot be opened.
    pub fn new(
        unit: String,
        job_dir: PathBuf,
        policy: Arc<Policy>,
        payload: DynInputStream,
        results: DynOutputStream,
        cancelled: watch::Receiver<bool>,
    ) -> Result<Self, StateError> {
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
        Ok(Self {
            wasi: builder.build(),
            table: ResourceTable::new(),
            limits,
            policy,
            job_dir,
            unit,
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
}

impl WasiView for JobState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}
