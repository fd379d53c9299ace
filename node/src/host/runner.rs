//! Runs jobs: one engine per node; per job a store with a memory cap, a wall-clock deadline,
//! an output cap, caps on descriptors and resources, a disk quota on the job directory
//! (watched while the job runs), cancellation with a grace period, and one instance whose
//! handler is called once. How the job ends (stops, the handler call under its limits, the
//! outcome) is in `end`; the results cap in `capped`.
//!
//! Components are compiled once and cached in the data dir, keyed by content hash and
//! engine compatibility, so a job pays an instantiation, not a compilation. The cache holds
//! native code, so [`super::cache`] trusts only what the node's own user can have written.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::pipe::{AsyncReadStream, AsyncWriteStream};

use super::bindings::WorkHandlerPre;
use super::cache::Cache;
use super::contain::spawn::JobContain;
use super::contain::users::JobUser;
use super::contain::{Containment, UnitFiles};
use super::params::{JobParams, Task};
use super::policy::Policy;
use super::quota::DiskLedger;
use super::state::JobState;

mod capped;
mod end;

use capped::CappedWriter;
use end::{Stops, call_with_limits, wait_uid_returned, with_breach, with_fd_note};
pub(super) use end::{disk_stopped, free_job_dir};

/// How often the engine's epoch advances: the granularity of deadlines and of yielding to
/// other tasks while a guest computes.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Bytes the guest may buffer towards the results before it must wait for the sink.
const RESULTS_WRITE_BUDGET: usize = 256 * 1024;

/// Why the host could not be set up or a component loaded.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The engine or linker could not be built.
    #[error("cannot set up the WebAssembly engine: {0}")]
    Engine(String),
    /// The component is not a valid work handler (or does not compile).
    #[error("component is not a usable work handler: {0}")]
    Component(String),
    /// The component was built against a `warren:worker` world this node does not run.
    #[error(
        "component is built against warren:worker@{found}, but this node runs \
         warren:worker@{world} (0.2.0 typed the job's parameters); rebuild it \
         against this node's wit/worker.wit and sign it again",
        world = super::world::WORLD_VERSION
    )]
    WorldVersion {
        /// The world version the component imports or exports.
        found: String,
    },
}

/// A job for a handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// The unit id.
    pub id: String,
    /// The work type asked for.
    pub work_type: String,
    /// What the work type's config asks of the handler.
    pub task: Task,
    /// The submission's parameters, typed.
    pub params: JobParams,
}

/// A job's I/O: its directory (the guest's only preopen), payload and results.
pub struct JobIo {
    /// The job directory.
    pub job_dir: PathBuf,
    /// The payload the submitter sent.
    pub payload: Box<dyn AsyncRead + Send + Unpin>,
    /// Where results go.
    pub results: Box<dyn AsyncWrite + Send + Unpin>,
    /// The unit's files, for detached programs and the unit's `ExtraData`; `None` (embedded
    /// tests, benches) means the job cannot detach.
    pub files: Option<UnitFiles>,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The handler reported success.
    Succeeded,
    /// The handler reported failure, or the host stopped it (deadline, memory, output cap,
    /// trap).
    Failed {
        /// Why, for the unit's detail.
        detail: String,
        /// The exit code of the handler's program, when there was one.
        exit_code: Option<i32>,
    },
    /// The job was cancelled.
    Canceled {
        /// What happened.
        detail: String,
    },
}

impl Outcome {
    pub(crate) fn failed(detail: impl Into<String>) -> Self {
        Self::Failed {
            detail: detail.into(),
            exit_code: None,
        }
    }
}

/// A compiled component, ready to instantiate for each job.
#[derive(Clone)]
pub struct Handler {
    pre: WorkHandlerPre<JobState>,
    sha256: [u8; 32],
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler")
            .field("sha256", &hex(&self.sha256))
            .finish_non_exhaustive()
    }
}

impl Handler {
    /// The sha256 of the component's bytes.
    pub fn sha256(&self) -> [u8; 32] {
        self.sha256
    }
}

/// The node's WebAssembly host: one engine, one linker, a compile cache.
pub struct Host {
    engine: Engine,
    linker: Linker<JobState>,
    cache: Cache,
    /// Counts compiles and cache hits (disabled unless [`Host::set_metrics`] was called).
    metrics: crate::metrics::Metrics,
    /// How jobs' programs are contained.
    pub(super) containment: Arc<Containment>,
    /// The node's free-space floor in bytes, watched while jobs write; 0 is not watched.
    pub(super) free_space_floor: u64,
    /// Stops the epoch ticker thread when the host is dropped.
    _ticker: Ticker,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host")
            .field("cache", &self.cache.path())
            .finish_non_exhaustive()
    }
}

struct Ticker(Arc<AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn start_ticker(engine: &Engine) -> Ticker {
    let stop = Arc::new(AtomicBool::new(false));
    let weak = engine.weak();
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("warren-epoch".into())
        .spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .ok();
    Ticker(stop)
}

/// Adds the `warren:worker` imports (WASI's own, `wasi:io` included, come from
/// wasmtime-wasi).
fn add_worker_interfaces(linker: &mut Linker<JobState>) -> wasmtime::Result<()> {
    use super::bindings::warren::worker::{cancel, job_io, process, types};
    types::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)?;
    process::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)?;
    job_io::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)?;
    cancel::add_to_linker::<JobState, HasSelf<JobState>>(linker, |s| s)?;
    Ok(())
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Host {
    /// A host caching compiled components in `cache_dir` (created with mode 0700; a
    /// directory that another user could write to is not used, see [`super::cache`]),
    /// containing programs as [`Containment::auto`] finds.
    ///
    /// # Errors
    /// [`HostError::Engine`] when the engine or linker cannot be built.
    pub fn new(cache_dir: &Path) -> Result<Self, HostError> {
        Self::with_containment(cache_dir, Containment::auto())
    }

    /// A host caching compiled components in `cache_dir`, containing programs with
    /// `containment`.
    ///
    /// # Errors
    /// [`HostError::Engine`] when the engine or linker cannot be built.
    pub fn with_containment(cache_dir: &Path, containment: Containment) -> Result<Self, HostError> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let engine = Engine::new(&config).map_err(|e| HostError::Engine(e.to_string()))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)
            .map_err(|e| HostError::Engine(e.to_string()))?;
        add_worker_interfaces(&mut linker).map_err(|e| HostError::Engine(e.to_string()))?;
        super::guestfs::add_to_linker(&mut linker).map_err(|e| HostError::Engine(e.to_string()))?;
        let ticker = start_ticker(&engine);
        for note in containment.notes() {
            tracing::debug!("containment: {note}");
        }
        Ok(Self {
            engine,
            linker,
            cache: Cache::open(cache_dir),
            metrics: crate::metrics::Metrics::default(),
            containment: Arc::new(containment),
            free_space_floor: 0,
            _ticker: ticker,
        })
    }

    /// How this host contains jobs' programs.
    pub fn containment(&self) -> &Containment {
        &self.containment
    }

    /// Counts this host's component compiles and cache hits in `metrics`.
    pub fn set_metrics(&mut self, metrics: crate::metrics::Metrics) {
        self.metrics = metrics;
    }

    /// Stops a job whose directory grows while the node's file system has less than
    /// `bytes` free (0, the default, does not watch).
    #[must_use]
    pub fn with_free_space_floor(mut self, bytes: u64) -> Self {
        self.free_space_floor = bytes;
        self
    }

    /// Compiles (or loads from the cache) a component and links it.
    ///
    /// # Errors
    /// [`HostError::WorldVersion`] when the component is built against another version of
    /// the world; [`HostError::Component`] when the bytes are not a work handler that this
    /// node can link.
    pub fn load(&self, bytes: &[u8]) -> Result<Handler, HostError> {
        let sha256: [u8; 32] = Sha256::digest(bytes).into();
        let component = self.cached(bytes, &sha256)?;
        let ty = component.component_type();
        let imports: Vec<String> = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_owned())
            .collect();
        let exports = ty.exports(&self.engine).map(|(n, _)| n.to_owned());
        let names: Vec<String> = imports.iter().cloned().chain(exports).collect();
        if let Some(found) = super::world::foreign_world(names.iter().map(String::as_str)) {
            return Err(HostError::WorldVersion {
                found: found.to_owned(),
            });
        }
        if let Some(name) = super::component::forbidden_import(imports.iter().map(String::as_str)) {
            return Err(HostError::Component(format!(
                "it imports {name}, which work handlers may not use (no network or other host access)"
            )));
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| HostError::Component(format!("{e:#}")))?;
        let pre = WorkHandlerPre::new(pre).map_err(|e| HostError::Component(format!("{e:#}")))?;
        Ok(Handler { pre, sha256 })
    }

    /// The cache file name of a component: its sha256 and the engine's compatibility hash.
    pub(crate) fn cache_name(&self, sha256: &[u8; 32]) -> String {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut h);
        format!("{}-{:016x}.cwasm", hex(sha256), h.finish())
    }

    /// Why the compile cache is not used, if it is not.
    #[cfg(test)]
    pub(crate) fn cache_problem(&self) -> Option<String> {
        self.cache.problem()
    }

    fn cached(&self, bytes: &[u8], sha256: &[u8; 32]) -> Result<Component, HostError> {
        let name = self.cache_name(sha256);
        if let Some(component) = self.cache.load(&self.engine, &name) {
            self.metrics.component_cache_hit();
            return Ok(component);
        }
        let started = Instant::now();
        let compiled = self
            .engine
            .precompile_component(bytes)
            .map_err(|e| HostError::Component(format!("{e:#}")))?;
        tracing::info!(sha256 = %hex(sha256), took = ?started.elapsed(), "compiled component");
        self.metrics.component_compiled();
        self.cache.store(&name, &compiled);
        // SAFETY: `compiled` was produced by this engine just now.
        let component = unsafe { Component::deserialize(&self.engine, &compiled) }
            .map_err(|e| HostError::Component(format!("{e:#}")));
        drop(compiled);
        // Cranelift's working memory (several MiB, on the thread that compiled) would
        // otherwise stay in the allocator's arenas for the node's whole life.
        crate::heap::give_back_freed_memory();
        component
    }

    /// Runs one job to its end. Never panics on guest behaviour: every failure is an
    /// [`Outcome`].
    pub async fn run(
        &self,
        handler: &Handler,
        policy: Arc<Policy>,
        job: Job,
        io: JobIo,
        cancelled: watch::Receiver<bool>,
    ) -> Outcome {
        let limits = policy.limits.clone();
        let capped = CappedWriter::new(io.results, limits.output_bytes);
        let exceeded = capped.exceeded.clone();
        let payload = Box::new(AsyncReadStream::new(io.payload));
        let results = Box::new(AsyncWriteStream::new(RESULTS_WRITE_BUDGET, capped));
        let mut contain = self.job_contain(&policy, io.files);
        contain.job_dir = Some(io.job_dir.clone());
        let breaches = contain.breaches().clone();
        let disk =
            (limits.disk).map(|q| DiskLedger::new(io.job_dir.clone(), q, self.free_space_floor));
        let state = match JobState::new(
            job.id.clone(),
            io.job_dir.clone(),
            policy,
            (payload, results),
            cancelled.clone(),
            disk.clone(),
        ) {
            Ok(mut state) => {
                state.contain = contain;
                state
            }
            Err(e) => return Outcome::failed(e.to_string()),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s.limiter());
        let deadline = Instant::now() + limits.deadline;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                Err(wasmtime::Error::msg("job deadline exceeded"))
            } else {
                Ok(UpdateDeadline::Yield(1))
            }
        });
        let stops = Stops {
            cancelled,
            disk: disk.clone(),
        };
        let outcome = call_with_limits(&mut store, handler, &job, &limits, stops).await;
        let fd_refusal = store.data().fds.refused();
        let spawned = store.data().fds.has_spawned();
        let uid_returned = (store.data().contain.job_user.as_ref()).map(JobUser::returned);
        // Dropping the store drops every child resource, which kills the children.
        drop(store);
        if let Some(returned) = uid_returned {
            wait_uid_returned(returned).await;
        }
        // A child may have written past the quota since the watcher last looked.
        if spawned && let Some(disk) = disk.as_ref().filter(|d| !d.is_stopped()) {
            let _ = disk.rescan().await;
        }
        if exceeded.load(Ordering::Relaxed) {
            return Outcome::failed(format!(
                "results exceeded the output limit of {} bytes",
                limits.output_bytes
            ));
        }
        if let Some(stop) = disk.as_ref().and_then(|d| d.verdict()) {
            free_job_dir(&io.job_dir, &job.id, &stop).await;
            return Outcome::failed(stop.to_string());
        }
        with_breach(with_fd_note(outcome, fd_refusal), breaches.get())
    }

    fn job_contain(&self, policy: &Policy, files: Option<UnitFiles>) -> JobContain {
        let limits = &policy.limits;
        let deadline = SystemTime::now() + limits.deadline;
        let deadline_ms = deadline.duration_since(UNIX_EPOCH).map_or(u64::MAX, |d| {
            u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
        });
        JobContain {
            containment: Some(self.containment.clone()),
            limits: policy.program_limits,
            files,
            deadline_ms,
            deadline: limits.deadline,
            cancel_grace: limits.cancel_grace,
            output_bytes: limits.output_bytes,
            ..JobContain::default()
        }
    }
}
