//! The work layer's driver: the one task that owns the [`Core`](super::core::Core) and
//! carries out its actions, and [`Work`], the cheap handle everyone else uses.
//!
//! The owner task decides nothing itself: it feeds requests and outcomes to the core and
//! executes what the core asks — file operations on the store's own thread, handlers and
//! remote exchanges as tasks that report back. Byte streams (payloads coming in, results
//! going out) run in the caller's task, so the owner never waits on a slow peer.

mod command;
mod owner;
mod payload;
pub(crate) mod results;
mod store_thread;
mod tasks;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::sync::{mpsc, oneshot, watch};

use super::core::{CoreConfig, NewUnit, PayloadError, PayloadInfo, Requester};
use super::error::WorkError;
use super::status::UnitStatus;
use super::store::UnitStore;
use super::unit::{SubmitNonce, UnitId};
use crate::host::registry::Registry;
use crate::host::runner::Host;
use crate::id::NodeId;
use crate::keys::{PublicKey, SigningKeypair};
use crate::mesh::driver::MeshHandle;
use command::Command;
use payload::{CopyError, store_payload};

/// How long a submission through the control socket waits for the remote node to take the
/// unit before answering (the unit then goes on being submitted in the background). A unit
/// that runs here is answered only once its status is on the disk, however long that takes.
pub(crate) const SUBMIT_WAIT: Duration = Duration::from_secs(10);

/// `[work] max-units-per-submitter` when none is configured: far more than a controller
/// that releases what it collected ever holds, far fewer than would fill a node.
pub const DEFAULT_MAX_UNITS_PER_SUBMITTER: usize = 10_000;

/// Limits of a node's work.
#[derive(Debug, Clone)]
pub struct WorkConfig {
    /// Units that may run at once; more wait in a queue.
    pub max_running: usize,
    /// Largest payload accepted, in bytes.
    pub max_payload: u64,
    /// How long finished units are kept before they are released; `None`: until released.
    pub keep_finished: Option<Duration>,
    /// Where unit counters go (disabled by default).
    pub metrics: crate::metrics::Metrics,
    /// Free bytes the data dir's file system must keep for new units to be accepted (0:
    /// not checked): the units already here need room for their results and status.
    pub free_space_floor: u64,
    /// Most results bytes a unit sent to another node may send back, when its work type is
    /// not offered here (one that is uses its own output cap): past it the mirror stops,
    /// the unit fails and is cancelled there. The node it ran on is not trusted to stop
    /// on its own.
    pub mirror_output: u64,
    /// Most units one peer may hold here: submitted over the mesh to run here and not yet
    /// released. More are refused with [`WorkError::OverLimit`].
    pub max_units_per_submitter: usize,
    /// How long a status write nobody waits for may be held back, so that several units'
    /// writes share one commit (group commit). A submitter is answered only once its
    /// unit's status is committed, whatever this is.
    pub commit_delay: Duration,
}

impl Default for WorkConfig {
    fn default() -> Self {
        Self {
            max_running: std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            max_payload: 1 << 30,
            keep_finished: Some(Duration::from_secs(24 * 60 * 60)),
            metrics: crate::metrics::Metrics::default(),
            free_space_floor: crate::config::DEFAULT_FREE_SPACE_FLOOR_MB << 20,
            mirror_output: crate::config::DEFAULT_OUTPUT_MB << 20,
            commit_delay: store_thread::FLUSH_DELAY,
            max_units_per_submitter: DEFAULT_MAX_UNITS_PER_SUBMITTER,
        }
    }
}

/// What a work layer needs to run.
pub struct WorkSetup {
    /// The node's data directory (units live in `units/` under it).
    pub data_dir: PathBuf,
    /// This node.
    pub node: NodeId,
    /// Runs handlers.
    pub host: Arc<Host>,
    /// The offered work types.
    pub registry: watch::Receiver<Arc<Registry>>,
    /// Limits.
    pub config: WorkConfig,
    /// Reaches other nodes (`None`: local work only).
    pub mesh: Option<MeshHandle>,
    /// Signs submissions that ask for it (receptorctl's `signwork`).
    pub signing_key: Option<SigningKeypair>,
}

/// A new unit, as a caller asks for it.
#[derive(Debug, Clone)]
pub struct Submission {
    /// The node to run it on (`localhost` or this node's id: here).
    pub node: String,
    /// The work type.
    pub work_type: String,
    /// Parameters.
    pub params: BTreeMap<String, String>,
    /// The submitter: its node id, and the key it proved (`None`: the control socket).
    pub submitter: (NodeId, Option<PublicKey>),
    /// Remote work: how long the remote node may take to start it.
    pub ttl: Option<Duration>,
    /// Remote work: sign the submission (receptorctl's `signwork`).
    pub sign_work: bool,
}

/// Runs work units on this node and mirrors units it sent to others. Cheap to clone.
#[derive(Clone)]
pub struct Work {
    commands: mpsc::UnboundedSender<Command>,
    node: NodeId,
    store: Arc<UnitStore>,
    /// Changed by a reload, read by every payload.
    max_payload: Arc<std::sync::atomic::AtomicU64>,
    /// Changed by a reload, checked for every new unit.
    free_space_floor: Arc<std::sync::atomic::AtomicU64>,
    data_dir: PathBuf,
    metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Work")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// What a create made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// A new unit, waiting for its payload.
    New(UnitId),
    /// The unit an earlier submission with the same key and nonce made, with its payload
    /// (its submitter restarted): no payload follows.
    Existing(UnitId),
}

/// The answer to a payload: where the unit stands once it was taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    /// Its status when answered.
    pub status: UnitStatus,
}

impl Work {
    /// Opens the unit store, takes over what the last run left (re-queueing, resuming
    /// mirrors, failing what cannot resume) and starts the owner task.
    ///
    /// # Errors
    /// [`WorkError::Store`] when the store cannot be opened.
    pub fn open(setup: WorkSetup) -> Result<Self, WorkError> {
        let store = Arc::new(UnitStore::open(&setup.data_dir)?);
        let units = with_detached_jobs(&store, &setup.node, store.list()?);
        let (commands, rx) = mpsc::unbounded_channel();
        let core_config = CoreConfig {
            max_running: setup.config.max_running,
            keep_finished: setup.config.keep_finished,
            max_units_per_submitter: setup.config.max_units_per_submitter,
        };
        let work = Self {
            commands: commands.clone(),
            node: setup.node.clone(),
            store: store.clone(),
            max_payload: Arc::new(setup.config.max_payload.into()),
            free_space_floor: Arc::new(setup.config.free_space_floor.into()),
            data_dir: setup.data_dir.clone(),
            metrics: setup.config.metrics.clone(),
        };
        owner::spawn(owner::OwnerSetup {
            setup,
            core_config,
            store,
            commands,
            rx,
            recovered: units,
        });
        Ok(work)
    }

    /// This node's id.
    pub fn node(&self) -> &NodeId {
        &self.node
    }

    /// The largest payload accepted now, in bytes.
    pub fn max_payload(&self) -> u64 {
        self.max_payload.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether `node` (as an operator typed it) means this node: its id or `localhost`.
    pub fn is_local(&self, node: &str) -> bool {
        self.node.is_named_by(node)
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, WorkError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(command(reply))
            .map_err(|_| WorkError::Stopped)?;
        rx.await.map_err(|_| WorkError::Stopped)
    }

    /// Creates a unit (Pending, waiting for its payload): here, or as a mirror of a unit
    /// to run on another node.
    ///
    /// # Errors
    /// [`WorkError`]: an unoffered work type, bad parameters, no mesh for remote work.
    pub async fn create(&self, submission: Submission) -> Result<UnitId, WorkError> {
        let node = self.target(&submission.node)?;
        // A mirror's submission carries a nonce, recorded before it leaves.
        let nonce = if node == self.node {
            None
        } else {
            Some(SubmitNonce::random().map_err(WorkError::Random)?)
        };
        match self.create_unit(submission, node, nonce).await? {
            Created::New(id) | Created::Existing(id) => Ok(id),
        }
    }

    /// Creates a unit to run here for a peer's submission made under `nonce`: a second
    /// submission with the same key and nonce finds the unit the first made
    /// ([`Created::Existing`]) once that has its payload.
    ///
    /// # Errors
    /// As [`Work::create`].
    pub async fn create_submitted(
        &self,
        submission: Submission,
        nonce: Option<SubmitNonce>,
    ) -> Result<Created, WorkError> {
        let node = self.target(&submission.node)?;
        self.create_unit(submission, node, nonce).await
    }

    fn target(&self, node: &str) -> Result<NodeId, WorkError> {
        if self.is_local(node) {
            Ok(self.node.clone())
        } else {
            NodeId::new(node.to_owned()).map_err(|e| WorkError::BadParameters(e.to_string()))
        }
    }

    async fn create_unit(
        &self,
        submission: Submission,
        node: NodeId,
        nonce: Option<SubmitNonce>,
    ) -> Result<Created, WorkError> {
        self.check_room()?;
        let expires_at = submission
            .ttl
            .map(|ttl| crate::clock::now_ms().saturating_add(ttl.as_millis() as u64));
        loop {
            let id = UnitId::random().map_err(WorkError::Random)?;
            let unit = NewUnit {
                id,
                work_type: submission.work_type.clone(),
                params: submission.params.clone(),
                submitter: submission.submitter.clone(),
                node: node.clone(),
                expires_at,
                sign_work: submission.sign_work,
                nonce,
            };
            match self.ask(|reply| Command::Create { unit, reply }).await? {
                Err(WorkError::UnitIdTaken(_)) => continue,
                other => return other,
            }
        }
    }

    /// Refuses new units while the data dir's file system is below the free-space floor.
    fn check_room(&self) -> Result<(), WorkError> {
        self.check_room_for(0)
    }

    /// Refuses writing `bytes` more when that would take the data dir's file system below
    /// the free-space floor (a floor of 0 is not checked).
    ///
    /// # Errors
    /// [`WorkError::NoRoom`].
    pub fn check_room_for(&self, bytes: u64) -> Result<(), WorkError> {
        let floor = (self.free_space_floor).load(std::sync::atomic::Ordering::Relaxed);
        if floor == 0 {
            return Ok(());
        }
        crate::host::disk::has_room(&self.data_dir, floor.saturating_add(bytes)).map_err(|e| {
            WorkError::NoRoom {
                node: self.node.clone(),
                reason: e.to_string(),
            }
        })
    }

    /// Fails a unit still waiting for its payload, with `error` (a payload that could not
    /// be put together: the unit never runs).
    pub fn fail_payload(&self, id: UnitId, error: PayloadError) {
        let _ = self.commands.send(Command::PayloadStored {
            id,
            result: Err(error),
        });
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    /// The node's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Reads `payload` to EOF into the unit's stdin (at most the node's payload limit),
    /// then queues the unit, or submits it to its node and waits (briefly) for that node to
    /// take it. `digest` receives the payload's SHA-256 when asked for.
    ///
    /// # Errors
    /// [`WorkError::OverLimit`] for a payload over the limit (the unit fails);
    /// [`WorkError::RemoteFailed`] when the remote node refused it; store failures.
    pub async fn start(
        &self,
        id: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<Taken, WorkError> {
        self.start_checked(id, payload, |_| Ok(())).await
    }

    /// As [`Work::start`], with `check` judging the payload's SHA-256 before the unit is
    /// queued (signed work).
    ///
    /// # Errors
    /// As [`Work::start`], and whatever `check` refuses.
    pub async fn start_checked(
        &self,
        id: UnitId,
        payload: &mut (dyn AsyncRead + Unpin + Send),
        check: impl FnOnce(&[u8; 32]) -> Result<(), PayloadError>,
    ) -> Result<Taken, WorkError> {
        let limit = self.max_payload.load(std::sync::atomic::Ordering::Relaxed);
        let stored = store_payload(&self.store.stdin_path(id), payload, limit).await;
        let result = match stored {
            Ok((size, digest)) => check(&digest).map(|()| {
                self.metrics.payload_bytes(size);
                PayloadInfo { size }
            }),
            Err(CopyError::TooLarge) => Err(PayloadError::TooLarge {
                node: self.node.clone(),
                limit,
            }),
            Err(CopyError::Io(e)) => Err(PayloadError::Store(Arc::new(e))),
        };
        // The unit fails with the error, and the caller hears it too.
        let failed = result.as_ref().err().cloned();
        let _ = self.commands.send(Command::PayloadStored { id, result });
        if let Some(e) = failed {
            return Err(e.into());
        }
        let taken = self.ask(|reply| Command::WaitTaken { id, reply });
        let status = match tokio::time::timeout(SUBMIT_WAIT, taken).await {
            Ok(status) => status??,
            Err(_) => {
                let status = self.status(id, &Requester::Operator).await?;
                if status.node == self.node {
                    // Taken means on the disk: a node that crashed after saying so must
                    // come back with the unit. Only the disk is awaited here.
                    tracing::warn!(unit = %id, "the unit's status is not on the disk after {} s; the submitter waits for it", SUBMIT_WAIT.as_secs());
                    self.ask(|reply| Command::WaitTaken { id, reply }).await??
                } else {
                    status
                }
            }
        };
        if status.state == super::unit::UnitState::Failed && status.node != self.node {
            return Err(WorkError::RemoteFailed {
                node: status.node,
                detail: status.detail,
            });
        }
        Ok(Taken { status })
    }

    /// The unit's status; a running unit's `StdoutSize` is the live size.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit or `by` may not see it.
    pub async fn status(&self, id: UnitId, by: &Requester) -> Result<UnitStatus, WorkError> {
        let by = by.clone();
        self.ask(|reply| Command::Status { id, by, reply }).await?
    }

    /// Starts draining before a stop (see [`crate::work::core::Core::drain`]); the receiver counts the units
    /// still running here, and reaches 0 once all have ended.
    ///
    /// # Errors
    /// [`WorkError::Stopped`] when the work layer has stopped.
    pub async fn drain(&self) -> Result<watch::Receiver<usize>, WorkError> {
        self.ask(|reply| Command::Drain { reply }).await
    }

    /// Applies new limits and a new work signing key (a reload): `max_running`,
    /// `max_payload`, `keep_finished` and `mirror_output` of `config` (its metrics are
    /// kept; mirrors already following keep the cap they started with).
    ///
    /// # Errors
    /// [`WorkError::Stopped`] when the work layer has stopped.
    pub fn reconfigure(
        &self,
        config: &WorkConfig,
        signing_key: Option<SigningKeypair>,
    ) -> Result<(), WorkError> {
        (self.max_payload).store(config.max_payload, std::sync::atomic::Ordering::Relaxed);
        (self.free_space_floor).store(
            config.free_space_floor,
            std::sync::atomic::Ordering::Relaxed,
        );
        let core = CoreConfig {
            max_running: config.max_running,
            keep_finished: config.keep_finished,
            max_units_per_submitter: config.max_units_per_submitter,
        };
        (self.commands)
            .send(Command::Reconfigure {
                core,
                signing_key,
                mirror_output: config.mirror_output,
            })
            .map_err(|_| WorkError::Stopped)
    }

    /// Tests: the store's thread sleeps `time` before its next job.
    #[cfg(test)]
    pub(crate) fn stall_store(&self, time: Duration) {
        let _ = self.commands.send(Command::StallStore(time));
    }

    /// Stops the work layer as a node shuts down: every status write and release still
    /// queued, and every status the core held back behind a write in flight (a job's
    /// latest containment record), is committed to the disk and the store's thread joined
    /// before this returns.
    /// Requests made afterwards fail with [`WorkError::Stopped`].
    pub async fn shutdown(&self) {
        // An error means the owner is gone already, and with it the store's thread.
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }

    /// Every unit `by` may see, sorted by id.
    ///
    /// # Errors
    /// [`WorkError::Stopped`] when the work layer has stopped.
    pub async fn list(&self, by: &Requester) -> Result<Vec<(UnitId, UnitStatus)>, WorkError> {
        let by = by.clone();
        self.ask(|reply| Command::List { by, reply }).await
    }

    /// Results from `offset`, following live output; EOF once the unit has ended (in any
    /// terminal state) and everything was read.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit or `by` may not see it.
    pub async fn results(
        &self,
        id: UnitId,
        offset: u64,
        by: &Requester,
    ) -> Result<tokio::io::DuplexStream, WorkError> {
        let by = by.clone();
        let (path, progress) = self
            .ask(|reply| Command::Follow { id, by, reply })
            .await??;
        Ok(results::follow(path, offset, progress))
    }

    /// Cancels the unit: a waiting unit ends Canceled at once, a running one is asked to
    /// stop, a remote one is cancelled on its node.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`]; [`WorkError::Ticket`] when the running node did not
    /// cancel it.
    pub async fn cancel(&self, id: UnitId, by: &Requester) -> Result<(), WorkError> {
        let by = by.clone();
        self.ask(|reply| Command::Cancel { id, by, reply })
            .await?
            .map(|_| ())
    }

    /// Cancels the unit, waits for it to stop (unless `force`), and deletes it (a remote
    /// unit on its node too).
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`]; [`WorkError::Ticket`] with
    /// [`TicketError::ReleasePending`](super::core::TicketError::ReleasePending) when the
    /// running node could not be told (use `force` to drop it here anyway).
    pub async fn release(&self, id: UnitId, force: bool, by: &Requester) -> Result<(), WorkError> {
        let by = by.clone();
        self.ask(|reply| Command::Release {
            id,
            force,
            by,
            reply,
        })
        .await?
        .map(|_| ())
    }
}

/// Marks `Running` every unfinished local unit that has a detached job record, whatever its
/// status file says: the job may have started before its `Running` status reached the disk
/// (status writes are batched on the store thread), and a node killed in between must
/// still re-attach it rather than leave it running unowned.
fn with_detached_jobs(
    store: &UnitStore,
    me: &NodeId,
    mut units: Vec<(UnitId, UnitStatus)>,
) -> Vec<(UnitId, UnitStatus)> {
    use crate::host::contain::record::{DETACHED_DIR, JOB_FILE};
    for (id, status) in &mut units {
        let unit_dir = store.stdin_path(*id).with_file_name(DETACHED_DIR);
        if status.node == *me
            && status.state == super::unit::UnitState::Pending
            && unit_dir.join(JOB_FILE).is_file()
        {
            tracing::info!(unit = %id, "a detached job started before its status was written; re-attaching it");
            status.state = super::unit::UnitState::Running;
        }
    }
    units
}
