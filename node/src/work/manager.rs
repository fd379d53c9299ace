//! Runs work units on this node: accepts submissions, stores payloads, queues units under a
//! concurrency limit, runs each in the work type's handler component, follows results live,
//! cancels and releases.
//!
//! One scheduler task owns the queue, the running set and each running unit's cancel
//! switch; the [`Work`] handle sends it messages. A unit takes its work type's active
//! handler when it starts, so a deploy never changes a running unit.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

use super::protocol::Request;
use super::remote;
use super::scheduler::{SchedCmd, Scheduler};
use super::status::{Component, UnitStatus};
use super::store::{StoreError, UnitStore};
use super::unit::{UnitId, UnitState};
use crate::control::goformat::rfc3339_utc;
use crate::host::contain::UnitFiles;
use crate::host::registry::{ActiveHandler, COMMAND_HANDLER, Registry};
use crate::host::runner::{Host, Job, JobIo, Outcome};
use crate::id::NodeId;
use crate::mesh::driver::MeshHandle;

/// How often a results follower looks again when no change was announced (a safety net:
/// output and ends are announced as they happen).
const FOLLOW_INTERVAL: Duration = Duration::from_millis(250);

/// How often a release looks whether its cancelled unit has stopped.
const RELEASE_POLL: Duration = Duration::from_millis(25);

/// How long a release waits for a cancelled unit to stop before removing it anyway.
const RELEASE_WAIT: Duration = Duration::from_secs(15);

/// Limits of a node's work.
#[derive(Debug, Clone)]
pub struct WorkConfig {
    /// Units that may run at once; more wait in a queue.
    pub max_running: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
}

impl Default for WorkConfig {
    fn default() -> Self {
        Self {
            max_running: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            max_payload: 8 << 30,
        }
    }
}

/// Why a work request failed. `Display` is the operator's message.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// No such unit.
    #[error("unknown work unit {0}")]
    UnknownUnit(UnitId),
    /// This node does not offer the work type; the text names the node and the work type.
    #[error("{0}")]
    UnknownWorkType(String),
    /// The request is not acceptable (parameters, payload size).
    #[error("{0}")]
    Refused(String),
    /// The node failed (disk, task).
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for WorkError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownUnit { unit, .. } => Self::UnknownUnit(unit),
            other => Self::Internal(other.to_string()),
        }
    }
}

struct Inner {
    store: UnitStore,
    node: NodeId,
    /// Reaches other nodes for remote work; `None` runs local work only.
    mesh: Option<MeshHandle>,
    host: Arc<Host>,
    registry: watch::Receiver<Arc<Registry>>,
    config: WorkConfig,
    sched: mpsc::UnboundedSender<SchedCmd>,
    /// Bumped whenever a unit writes output or ends; results followers wait on it.
    changed: watch::Sender<u64>,
}

/// Runs work units on this node. Cheap to clone.
#[derive(Clone)]
pub struct Work {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

impl Work {
    /// Units that may run at once.
    pub(super) fn max_running(&self) -> usize {
        self.inner.config.max_running
    }

    /// Opens the unit store under `data_dir`, fails units a previous run left unfinished,
    /// and starts the scheduler.
    ///
    /// # Errors
    /// [`WorkError::Internal`] when the store cannot be opened.
    pub fn open(
        data_dir: &std::path::Path,
        node: NodeId,
        host: Arc<Host>,
        registry: watch::Receiver<Arc<Registry>>,
        config: WorkConfig,
        mesh: Option<MeshHandle>,
    ) -> Result<Self, WorkError> {
        let store = UnitStore::open(data_dir)?;
        let recovery = store.recover()?;
        for unit in &recovery.failed {
            tracing::warn!(%unit, "unit was unfinished when the node stopped; marked failed");
        }
        for error in &recovery.errors {
            tracing::warn!(%error, "unreadable unit left as it is");
        }
        let (sched, rx) = mpsc::unbounded_channel();
        let work = Self {
            inner: Arc::new(Inner {
                store,
                node,
                mesh,
                host,
                registry,
                config,
                sched,
                changed: watch::channel(0).0,
            }),
        };
        tokio::spawn(Scheduler::new(work.clone(), rx).run());
        Ok(work)
    }

    pub(super) fn store(&self) -> &UnitStore {
        &self.inner.store
    }

    /// Creates a unit of `work_type` (Pending, waiting for its payload).
    ///
    /// # Errors
    /// [`WorkError::UnknownWorkType`] when the work type is not offered,
    /// [`WorkError::Refused`] for parameters the work type does not allow.
    pub async fn create(
        &self,
        work_type: &str,
        params: BTreeMap<String, String>,
        submitter: NodeId,
    ) -> Result<UnitId, WorkError> {
        let active = self.inner.registry.borrow().get(work_type).ok_or_else(|| {
            let node = &self.inner.node;
            WorkError::UnknownWorkType(format!("node {node} does not offer work type {work_type}"))
        })?;
        check_params(&active, &params)?;
        let this = self.clone();
        let work_type = work_type.to_owned();
        let handle = blocking(move || {
            let node = this.inner.node.clone();
            this.store().create(&work_type, params, submitter, node)
        })
        .await?;
        let id = handle.id();
        self.store()
            .update(id, |s| s.detail = "Waiting for Input Data".into())?;
        Ok(id)
    }

    /// Creates a local unit that mirrors work to run on `node` (Pending until `start`
    /// submits it there). The running node checks the work type and parameters.
    ///
    /// # Errors
    /// [`WorkError::Refused`] when this node has no mesh to reach `node` with.
    pub async fn create_remote(
        &self,
        node: NodeId,
        work_type: &str,
        params: BTreeMap<String, String>,
        submitter: NodeId,
        expires_at: Option<SystemTime>,
    ) -> Result<UnitId, WorkError> {
        if self.inner.mesh.is_none() {
            return Err(WorkError::Refused(
                "this node cannot reach other nodes".into(),
            ));
        }
        let this = self.clone();
        let work_type = work_type.to_owned();
        let handle =
            blocking(move || this.store().create(&work_type, params, submitter, node)).await?;
        let id = handle.id();
        let expires_at = expires_at.map(|t| {
            let ms = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis();
            u64::try_from(ms).unwrap_or(u64::MAX)
        });
        self.store().update(id, |s| {
            s.detail = "Waiting for Input Data".into();
            s.expires_at = expires_at;
        })?;
        Ok(id)
    }

    /// Whether unit `id` runs on another node.
    fn remote_node(
        &self,
        id: UnitId,
    ) -> Result<Option<(MeshHandle, NodeId, UnitStatus)>, WorkError> {
        let status = self.store().status(id)?;
        if status.node == self.inner.node {
            return Ok(None);
        }
        match &self.inner.mesh {
            Some(mesh) => Ok(Some((mesh.clone(), status.node.clone(), status))),
            None => Err(WorkError::Refused(
                "this node cannot reach other nodes".into(),
            )),
        }
    }

    /// Reads the payload to EOF into the unit's stdin, then queues the unit to run.
    ///
    /// # Errors
    /// [`WorkError::Refused`] when the payload is over the limit (the unit fails);
    /// [`WorkError::Internal`] when it cannot be stored.
    pub async fn start(
        &self,
        id: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), WorkError> {
        let path = self.store().stdin_path(id);
        let limit = self.inner.config.max_payload;
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .await
            .map_err(|e| WorkError::Internal(format!("{}: {e}", path.display())))?;
        let copied = tokio::io::copy(&mut payload.take(limit + 1), &mut file)
            .await
            .map_err(|e| WorkError::Internal(format!("reading the payload: {e}")))?;
        file.flush()
            .await
            .map_err(|e| WorkError::Internal(e.to_string()))?;
        if copied > limit {
            let detail = format!("payload exceeds this node's limit of {limit} bytes");
            self.finish(id, UnitState::Failed, detail.clone())?;
            return Err(WorkError::Refused(detail));
        }
        if let Some((mesh, node, status)) = self.remote_node(id)? {
            return self.start_remote(id, mesh, node, status).await;
        }
        self.store().update(id, |s| s.detail = "Queued".into())?;
        let _ = self.inner.sched.send(SchedCmd::Queue(id));
        Ok(())
    }

    /// Submits a stored payload to the unit's node and starts mirroring it.
    async fn start_remote(
        &self,
        id: UnitId,
        mesh: MeshHandle,
        node: NodeId,
        status: UnitStatus,
    ) -> Result<(), WorkError> {
        let path = self.store().stdin_path(id);
        let mut payload = tokio::fs::File::open(&path)
            .await
            .map_err(|e| WorkError::Internal(format!("{}: {e}", path.display())))?;
        let submit = remote::submit(
            &mesh,
            &node,
            &status.work_type,
            status.params.clone(),
            &mut payload,
        );
        let submitted = match status.expires_at {
            None => submit.await,
            Some(ms) => {
                let deadline = UNIX_EPOCH + Duration::from_millis(ms);
                let left = deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tokio::time::timeout(left, submit)
                    .await
                    .unwrap_or_else(|_| {
                        Err(format!("Work unit expired on {}", rfc3339_utc(deadline)))
                    })
            }
        };
        let remote = match submitted {
            Ok(remote) => remote,
            Err(message) => {
                self.finish(id, UnitState::Failed, message.clone())?;
                return Err(WorkError::Refused(message));
            }
        };
        self.store().update(id, |s| {
            s.state = UnitState::Running;
            s.detail = format!("Running on {node} as {remote}");
            s.remote_unit_id = Some(remote);
        })?;
        tracing::info!(unit = %id, %node, %remote, "submitted remote unit");
        tokio::spawn(remote::mirror(self.clone(), mesh, node, id, remote));
        Ok(())
    }

    /// Records a mirrored unit's end as the running node reported it.
    pub(super) fn finish_mirror(
        &self,
        id: UnitId,
        state: UnitState,
        detail: String,
    ) -> Result<(), WorkError> {
        if self.store().status(id)?.state.is_terminal() {
            return Ok(());
        }
        self.finish(id, state, detail)
    }

    /// Bytes in the unit's local results file.
    pub(super) fn local_stdout_size(&self, id: UnitId) -> u64 {
        std::fs::metadata(self.store().stdout_path(id)).map_or(0, |m| m.len())
    }

    /// The unit's local results file, for appending mirrored output.
    pub(super) async fn open_stdout_append(&self, id: UnitId) -> std::io::Result<Announcing> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(self.store().stdout_path(id))
            .await?;
        Ok(Announcing::new(Box::new(file), self.inner.changed.clone()))
    }

    /// A mirrored unit is running (nothing to record: `start_remote` already did).
    pub(super) fn note_mirror_running(&self, _id: UnitId) {}

    /// Whether the unit is gone (released while its mirror was retrying).
    pub(super) fn is_released(&self, id: UnitId) -> bool {
        self.store().status(id).is_err()
    }

    /// The unit's status; a running unit's `StdoutSize` is the live size.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit.
    pub async fn status(&self, id: UnitId) -> Result<UnitStatus, WorkError> {
        let mut status = self.store().status(id)?;
        if !status.state.is_terminal()
            && let Ok(meta) = tokio::fs::metadata(self.store().stdout_path(id)).await
        {
            status.stdout_size = meta.len();
        }
        Ok(status)
    }

    /// Every unit, sorted by id.
    ///
    /// # Errors
    /// [`WorkError::Internal`] when the units cannot be listed.
    pub async fn list(&self) -> Result<Vec<(UnitId, UnitStatus)>, WorkError> {
        let mut units = self.store().list()?;
        for (id, status) in &mut units {
            if !status.state.is_terminal() {
                status.stdout_size = self.local_stdout_size(*id);
            }
        }
        Ok(units)
    }

    /// Results from `offset`, following live output; EOF once the unit is finished (in any
    /// terminal state, Canceled included) and everything was read.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit.
    pub async fn results(
        &self,
        id: UnitId,
        offset: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, WorkError> {
        self.store().status(id)?;
        let (reader, writer) = tokio::io::duplex(256 * 1024);
        tokio::spawn(follow(self.clone(), id, offset, writer));
        Ok(Box::new(reader))
    }

    /// Cancels the unit: a queued unit ends Canceled at once, a running one is asked to
    /// stop (its handler gets the cancel; the host kills it after a grace period).
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit.
    pub async fn cancel(&self, id: UnitId) -> Result<(), WorkError> {
        if let Some((mesh, node, status)) = self.remote_node(id)? {
            return match status.remote_unit_id {
                Some(unit) => remote::tell(&mesh, &node, Request::Cancel { unit })
                    .await
                    .map_err(WorkError::Refused),
                None => {
                    self.finish_mirror(id, UnitState::Canceled, "Canceled before it started".into())
                }
            };
        }
        let (done, wait) = oneshot::channel();
        let _ = self.inner.sched.send(SchedCmd::Cancel(id, done));
        let _ = wait.await;
        Ok(())
    }

    /// Cancels the unit, waits for it to stop (unless `force`), and deletes it.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit.
    pub async fn release(&self, id: UnitId, force: bool) -> Result<(), WorkError> {
        if let Some((mesh, node, status)) = self.remote_node(id)? {
            if let Some(unit) = status.remote_unit_id {
                let told = remote::tell(&mesh, &node, Request::Release { unit }).await;
                if let Err(message) = told
                    && !force
                {
                    return Err(WorkError::Refused(format!("release pending: {message}")));
                }
            }
            return Ok(self.store().release(id)?);
        }
        self.cancel(id).await?;
        if !force {
            let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
            while tokio::time::Instant::now() < deadline {
                if self.store().status(id)?.state.is_terminal() {
                    break;
                }
                tokio::time::sleep(RELEASE_POLL).await;
            }
        }
        Ok(self.store().release(id)?)
    }

    /// Ends a unit in a terminal state with `detail` and its final stdout size.
    pub(super) fn finish(
        &self,
        id: UnitId,
        state: UnitState,
        detail: String,
    ) -> Result<(), WorkError> {
        let size = std::fs::metadata(self.store().stdout_path(id)).map_or(0, |m| m.len());
        self.store().update(id, |s| {
            s.state = state;
            s.detail = detail;
            s.stdout_size = size;
        })?;
        self.inner.changed.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    /// Runs one unit to its end in its work type's current handler.
    pub(super) async fn run_unit(self, id: UnitId, cancelled: watch::Receiver<bool>) {
        let outcome = match self.prepare(id) {
            Ok((active, job, io)) => {
                let handler = &active.handler;
                let policy = active.policy.clone();
                self.inner
                    .host
                    .run(handler, policy, job, io, cancelled)
                    .await
            }
            Err(detail) => Outcome::Failed {
                detail,
                exit_code: None,
            },
        };
        let (state, detail) = match outcome {
            Outcome::Succeeded => (UnitState::Succeeded, "exit status 0".to_owned()),
            Outcome::Failed { detail, .. } => (UnitState::Failed, detail),
            Outcome::Canceled { detail } => (UnitState::Canceled, detail),
        };
        tracing::info!(unit = %id, state = %state, %detail, "unit finished");
        if let Err(e) = self.finish(id, state, detail) {
            tracing::error!(unit = %id, error = %e, "cannot record the end of a unit");
        }
        let _ = self.inner.sched.send(SchedCmd::Done(id));
    }

    /// Marks the unit Running with its component and opens its job directory and files.
    fn prepare(&self, id: UnitId) -> Result<(Arc<ActiveHandler>, Job, JobIo), String> {
        let status = self.store().status(id).map_err(|e| e.to_string())?;
        let active = self
            .inner
            .registry
            .borrow()
            .get(&status.work_type)
            .ok_or_else(|| format!("work type {} is no longer offered", status.work_type))?;
        let info = &active.info;
        let component = Component {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256_hex(),
        };
        self.store()
            .update(id, |s| {
                s.state = UnitState::Running;
                s.detail = "Running".into();
                s.component = Some(component);
            })
            .map_err(|e| e.to_string())?;
        let job_dir = self.store().stdin_path(id).with_file_name("job");
        let mut io = open_io(
            job_dir,
            self.store().stdin_path(id),
            self.store().stdout_path(id),
            self.inner.changed.clone(),
        )?;
        io.files = Some(self.unit_files(id));
        let job = Job {
            id: id.to_string(),
            work_type: status.work_type.clone(),
            handler: active.handler_name.clone(),
            params: job_params(&active, &status.params),
        };
        tracing::info!(unit = %id, work_type = %job.work_type, component = %info.name, version = %info.version, "unit started");
        Ok((active, job, io))
    }
}

impl Work {
    /// The unit's files for the host: detached programs write to them, and the host
    /// records the programs' containment as the unit's `ExtraData` (host/contain hook).
    fn unit_files(&self, id: UnitId) -> UnitFiles {
        let payload = self.store().stdin_path(id);
        let changed = self.inner.changed.clone();
        let work = self.clone();
        UnitFiles {
            dir: payload.parent().map(PathBuf::from).unwrap_or_default(),
            results: self.store().stdout_path(id),
            payload,
            on_output: Arc::new(move || changed.send_modify(|n| *n = n.wrapping_add(1))),
            on_extra_data: Arc::new(move |value| {
                if let Err(e) = work.store().update(id, |s| s.extra_data = value) {
                    tracing::warn!(unit = %id, error = %e, "cannot record the unit's containment");
                }
            }),
        }
    }
}

fn open_io(
    job_dir: PathBuf,
    stdin: PathBuf,
    stdout: PathBuf,
    changed: watch::Sender<u64>,
) -> Result<JobIo, String> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&job_dir)
        .map_err(|e| format!("{}: {e}", job_dir.display()))?;
    let payload = std::fs::File::open(&stdin).map_err(|e| format!("{}: {e}", stdin.display()))?;
    let results = std::fs::OpenOptions::new()
        .append(true)
        .open(&stdout)
        .map_err(|e| format!("{}: {e}", stdout.display()))?;
    Ok(JobIo {
        job_dir,
        payload: Box::new(tokio::fs::File::from_std(payload)),
        results: Box::new(Announcing::new(
            Box::new(tokio::fs::File::from_std(results)),
            changed,
        )),
        files: None,
    })
}

/// A results file that announces each write to the unit's followers.
pub(super) struct Announcing {
    inner: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    changed: watch::Sender<u64>,
}

impl Announcing {
    fn new(
        inner: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
        changed: watch::Sender<u64>,
    ) -> Self {
        Self { inner, changed }
    }
}

impl tokio::io::AsyncWrite for Announcing {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &poll
            && *n > 0
        {
            self.changed.send_modify(|c| *c = c.wrapping_add(1));
        }
        poll
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Keys a submitter may not set: they name the program and arguments of a command.
const RESERVED_PARAMS: [&str; 2] = ["program", "arg"];

fn check_params(
    active: &ActiveHandler,
    params: &BTreeMap<String, String>,
) -> Result<(), WorkError> {
    if let Some(key) = params
        .keys()
        .find(|k| RESERVED_PARAMS.contains(&k.as_str()))
    {
        return Err(WorkError::Refused(format!("parameter {key:?} is reserved")));
    }
    if params.contains_key("params") && !active.allow_runtime_params {
        return Err(WorkError::Refused(format!(
            "work type {} does not allow runtime params",
            active.work_type
        )));
    }
    Ok(())
}

/// The handler's parameters: the work type's fixed ones first, then the submission's, with
/// a command's runtime `params` split into arguments.
fn job_params(
    active: &ActiveHandler,
    submitted: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut params = active.fixed_params.clone();
    for (key, value) in submitted {
        if key == "params" && active.handler_name == COMMAND_HANDLER {
            params.extend(
                value
                    .split_whitespace()
                    .map(|w| ("arg".to_owned(), w.to_owned())),
            );
        } else {
            params.push((key.clone(), value.clone()));
        }
    }
    params
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, WorkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| WorkError::Internal(format!("store task failed: {e}")))?
        .map_err(WorkError::from)
}

/// Copies a unit's results from `offset` into `out` until the unit is finished and all
/// its output was copied, or the reader goes away.
async fn follow(work: Work, id: UnitId, mut offset: u64, mut out: tokio::io::DuplexStream) {
    let path = work.store().stdout_path(id);
    let mut changes = work.inner.changed.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Read the state before the data: output written before the unit finished is then
        // always seen before the follower stops.
        let finished = work
            .store()
            .status(id)
            .map_or(true, |s| s.state.is_terminal());
        let Ok(n) = read_at(&path, offset, &mut buf).await else {
            return;
        };
        if n > 0 {
            if out.write_all(&buf[..n]).await.is_err() {
                return;
            }
            offset += n as u64;
            continue;
        }
        if finished {
            let _ = out.shutdown().await;
            return;
        }
        // Wait for the next write or end of any unit (or the safety-net interval).
        let _ = tokio::time::timeout(FOLLOW_INTERVAL, changes.changed()).await;
    }
}

async fn read_at(path: &std::path::Path, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(std::io::SeekFrom::Start(offset)).await?;
    file.read(buf).await
}
