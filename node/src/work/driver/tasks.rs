//! What the owner task hands off: running a unit's handler, submitting a unit to the node
//! it runs on, following a remote unit's output, and telling a remote node to cancel or
//! release. Each reports its outcome to the owner as a [`Command`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::Command;
use super::results::{CappedSink, OverCap, Progress, ResultsSink, failure_of};
use crate::host::contain::UnitFiles;
use crate::host::contain::detached::Reattach;
use crate::host::disk::DiskQuota;
use crate::host::params::JobParams;
use crate::host::reattach::{job_duration, job_started};
use crate::host::registry::{ActiveHandler, Registry};
use crate::host::runner::{Host, Job, JobIo, Outcome};
use crate::id::NodeId;
use crate::keys::SigningKeypair;
use crate::work::client::{ClientError, Following, SubmitRequest, WorkClient};
use crate::work::core::recover::not_reattached;
use crate::work::core::{HandlerEnd, RemoteFailure};
use crate::work::protocol::WorkRefusal;
use crate::work::signature::Submission as SignedSubmission;
use crate::work::status::{Component, UnitStatus};
use crate::work::store::UnitStore;
use crate::work::unit::{UnitId, UnitState};

/// What every task needs.
#[derive(Clone)]
pub(super) struct TaskCtx {
    pub(super) store: Arc<UnitStore>,
    pub(super) host: Arc<Host>,
    pub(super) client: Option<WorkClient>,
    pub(super) signing_key: Option<Arc<SigningKeypair>>,
    pub(super) node: NodeId,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) metrics: crate::metrics::Metrics,
}

impl TaskCtx {
    fn report(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// The unit's files for the host: a detached program reads its payload and appends to
    /// its results directly (growth announced to the unit's followers through `progress`),
    /// and the host's record of the programs' containment becomes the unit's `ExtraData`
    /// through the owner (the core owns the status; the store thread writes it).
    fn unit_files(&self, id: UnitId, progress: watch::Sender<Progress>) -> UnitFiles {
        let payload = self.store.stdin_path(id);
        let results = self.store.stdout_path(id);
        let commands = self.commands.clone();
        let watched = results.clone();
        UnitFiles {
            dir: payload.parent().map(PathBuf::from).unwrap_or_default(),
            payload,
            results,
            on_output: Arc::new(move || {
                // A stat per announced write: the size is what followers and status show.
                if let Ok(meta) = std::fs::metadata(&watched) {
                    let size = meta.len();
                    progress.send_if_modified(|p| {
                        let grown = size > p.size;
                        p.size = p.size.max(size);
                        grown
                    });
                }
            }),
            on_extra_data: Arc::new(move |value| {
                let _ = commands.send(Command::ExtraData { id, value });
            }),
        }
    }

    fn ended(&self, id: UnitId, state: UnitState, detail: String) {
        let stdout_size = std::fs::metadata(self.store.stdout_path(id)).map_or(0, |m| m.len());
        self.metrics.result_bytes(stdout_size);
        self.report(Command::HandlerEnded {
            id,
            end: HandlerEnd {
                state,
                detail,
                stdout_size,
            },
        });
    }
}

/// Runs a local unit in its work type's current handler.
pub(super) async fn run_handler(
    ctx: TaskCtx,
    id: UnitId,
    status: UnitStatus,
    active: Option<Arc<ActiveHandler>>,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
) {
    let Some(active) = active else {
        let detail = format!("work type {} is no longer offered", status.work_type);
        return ctx.ended(id, UnitState::Failed, detail);
    };
    let info = &active.info;
    ctx.report(Command::HandlerStarted {
        id,
        component: Component {
            name: info.name.clone(),
            version: info.version.clone(),
            sha256: info.sha256_hex(),
        },
    });
    tracing::info!(unit = %id, work_type = %status.work_type, component = %info.name, version = %info.version, "unit started");
    let started = std::time::Instant::now();
    // Counted running until `finished`; an abort or an early return stops the count too.
    let running = ctx.metrics.unit_started(&status.work_type);
    let (io, failure) = match open_io(&ctx, id, progress).await {
        Ok(io) => io,
        Err(e) => {
            running.finished(UnitState::Failed, Some(started.elapsed()));
            return ctx.ended(id, UnitState::Failed, e.to_string());
        }
    };
    let submitted = &status.params;
    let params =
        match JobParams::from_submission(&status.work_type, submitted, active.allow_runtime_params)
        {
            Ok(params) => params,
            Err(e) => {
                running.finished(UnitState::Failed, Some(started.elapsed()));
                return ctx.ended(id, UnitState::Failed, e.to_string());
            }
        };
    let job = Job {
        id: id.to_string(),
        work_type: status.work_type.clone(),
        task: active.task.clone(),
        params,
    };
    let outcome = ctx
        .host
        .run(&active.handler, active.policy.clone(), job, io, stopped)
        .await;
    let (state, detail) = end_of(outcome, failure_of(&failure));
    running.finished(state, Some(started.elapsed()));
    ctx.ended(id, state, detail);
}

/// A unit's file (its job directory, payload or results) could not be opened for its job;
/// the unit fails with this as its detail.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
struct OpenIoError {
    /// The file or directory.
    path: PathBuf,
    /// What the OS said.
    #[source]
    source: std::io::Error,
}

impl OpenIoError {
    fn at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_owned(),
            source,
        }
    }
}

/// Payloads up to this size are read whole when a job's files are opened, in the same trip
/// to a blocking thread: the job then reads them from memory, not through a blocking-pool
/// round trip per read (two for a tiny payload: its bytes and the end). The size of the
/// payloads the store writes and syncs in one trip.
const INLINE_PAYLOAD_BYTES: u64 = 64 * 1024;

async fn open_io(
    ctx: &TaskCtx,
    id: UnitId,
    progress: watch::Sender<Progress>,
) -> Result<(JobIo, super::results::WriteFailure), OpenIoError> {
    let store = &ctx.store;
    let job_dir = store.job_dir(id);
    let files = ctx.unit_files(id, progress.clone());
    let paths = (job_dir.clone(), store.stdin_path(id), store.stdout_path(id));
    // One trip to a blocking thread for the job directory, the payload and the results.
    let opened = tokio::task::spawn_blocking(move || open_files(paths, progress)).await;
    let (payload, sink, failure) = opened.map_err(|e| OpenIoError {
        path: job_dir.clone(),
        source: std::io::Error::other(e),
    })??;
    Ok((
        JobIo {
            job_dir,
            payload,
            results: Box::new(sink),
            files: Some(files),
        },
        failure,
    ))
}

/// The payload as the job reads it, or as it is sent to the node that runs the unit.
type PayloadReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

/// Creates the job directory and opens the payload (read whole when it is small) and the
/// results; blocking file IO.
fn open_files(
    (job_dir, stdin, stdout): (PathBuf, PathBuf, PathBuf),
    progress: watch::Sender<Progress>,
) -> Result<(PayloadReader, ResultsSink, super::results::WriteFailure), OpenIoError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(&job_dir)
        .map_err(OpenIoError::at(&job_dir))?;
    let payload = open_payload_blocking(&stdin).map_err(OpenIoError::at(&stdin))?;
    let (sink, failure) =
        ResultsSink::open_blocking(&stdout, progress).map_err(OpenIoError::at(&stdout))?;
    Ok((payload, sink, failure))
}

/// Opens the payload at `path`, read whole when it is small (up to
/// [`INLINE_PAYLOAD_BYTES`]): its reader then takes no trip to the blocking pool per read.
/// Only a regular file is read, without following a link and without blocking in `open`
/// (a FIFO there would hold a blocking-pool thread until a writer came), and the inline
/// read stops at the bound whatever the size the file had when opened: a file that grows
/// is read on from the file. Blocking file IO.
fn open_payload_blocking(path: &std::path::Path) -> std::io::Result<PayloadReader> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use tokio::io::AsyncReadExt;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "the payload is not a regular file",
        ));
    }
    if meta.len() > INLINE_PAYLOAD_BYTES {
        return Ok(Box::new(tokio::fs::File::from_std(file)));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    (&mut file)
        .take(INLINE_PAYLOAD_BYTES + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 <= INLINE_PAYLOAD_BYTES {
        return Ok(Box::new(std::io::Cursor::new(bytes)));
    }
    // Grown past the bound since it was opened: the rest comes from the file.
    Ok(Box::new(AsyncReadExt::chain(
        std::io::Cursor::new(bytes),
        tokio::fs::File::from_std(file),
    )))
}

/// A unit that was running when the node stopped: its detached job is found again through
/// the host's job record and finished (its output keeps going to the unit's results, where
/// followers read it from wherever they are; a cancel or a release stops it, and its
/// directory is held to its work type's quota as a job started here is); a job that ended while the node
/// was down reports its recorded exit; with no record the unit fails and says why.
///
/// In the metrics the unit counts as started and re-attached here, and its duration runs
/// from its job's start as recorded (the supervisor's start time), not from the restart.
pub(super) async fn reattach(
    ctx: TaskCtx,
    id: UnitId,
    work_type: String,
    registry: watch::Receiver<Arc<Registry>>,
    stopped: watch::Receiver<bool>,
    progress: watch::Sender<Progress>,
) {
    let files = ctx.unit_files(id, progress);
    // What was written while the node was down counts before anyone follows.
    (files.on_output)();
    let host = ctx.host.clone();
    // Reads the job's record and /proc: small, but file IO, so off the async workers.
    let found = tokio::task::spawn_blocking(move || {
        let started = job_started(&files.dir);
        (host.reattach(files), started)
    })
    .await;
    // Counted running until `finished`: a task aborted before (the unit released and
    // dropped after RELEASE_WAIT while its job had not ended) stops the count on drop.
    let running = ctx.metrics.unit_reattached(&work_type);
    let (outcome, took) = match found {
        Ok((Reattach::Running(job), started)) => {
            tracing::info!(unit = %id, supervisor = ?job.record().supervisor, "re-attached a running job");
            let job_dir = ctx.store.job_dir(id);
            let host = &ctx.host;
            let quota = quota_of(registry, work_type.clone());
            let outcome = host.finish_reattached(*job, job_dir, quota, stopped).await;
            (outcome, job_duration(started, None, SystemTime::now()))
        }
        Ok((Reattach::Ended { outcome, exit }, started)) => {
            tracing::info!(unit = %id, status = ?exit.status, "job ended while the node was down");
            let ended = UNIX_EPOCH + Duration::from_millis(exit.ended_at_ms);
            (
                outcome,
                job_duration(started, Some(ended), SystemTime::now()),
            )
        }
        Ok((Reattach::Gone { detail }, _)) => {
            tracing::warn!(unit = %id, %detail, "unit was running when the node stopped; cannot re-attach");
            let detail = format!("{}: {detail}", not_reattached());
            (Outcome::failed(detail), None)
        }
        Err(e) => (Outcome::failed(format!("{}: {e}", not_reattached())), None),
    };
    let (state, detail) = end_of(outcome, None);
    running.finished(state, took);
    ctx.ended(id, state, detail);
}

/// The disk quota of `work_type` once this node offers it (ansible-runner is offered only
/// once it was probed, which may be after its units were re-attached); never while it is
/// not offered.
async fn quota_of(
    mut registry: watch::Receiver<Arc<Registry>>,
    work_type: String,
) -> Option<DiskQuota> {
    let offered = registry.wait_for(|r| r.get(&work_type).is_some()).await;
    let active = offered.ok()?.get(&work_type)?;
    active.policy.limits.disk
}

/// The unit's end from its handler's outcome and the first results write error, if any.
fn end_of(outcome: Outcome, write_error: Option<String>) -> (UnitState, String) {
    match (outcome, write_error) {
        // A results file that could not be written is a failed unit, whatever the handler
        // thought of it: its output is not all there.
        (Outcome::Canceled { detail }, _) => (UnitState::Canceled, detail),
        (_, Some(error)) => (UnitState::Failed, format!("writing results: {error}")),
        (Outcome::Succeeded, None) => (UnitState::Succeeded, "exit status 0".to_owned()),
        (Outcome::Failed { detail, .. }, None) => (UnitState::Failed, detail),
    }
}

/// Submits a remote unit's stored payload to its node under the unit's nonce, retrying
/// while the node cannot be reached (the core fails the unit at its expiry), and follows its
/// output into the local results on the same stream until it is finished.
pub(super) async fn submit(
    ctx: TaskCtx,
    id: UnitId,
    node: NodeId,
    status: UnitStatus,
    mirror: Mirror,
) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let Mirror { progress, cap } = mirror;
    let stdout = ctx.store.stdout_path(id);
    let mut sink = match ResultsSink::open(&stdout, progress.clone()).await {
        Ok((sink, _failure)) => CappedSink::new(sink, progress.borrow().size, cap),
        Err(e) => {
            let failure = RemoteFailure::OpenResults {
                path: stdout,
                source: e,
            };
            return ctx.report(Command::RemoteSubmitFailed { id, failure });
        }
    };
    let mut wait = Duration::from_millis(200);
    loop {
        // Output already here (a restart after it started) is not asked for again.
        let offset = progress.borrow().size;
        match submit_once(&ctx, &client, id, &node, &status, offset).await {
            Ok(mut session) => {
                let remote = session.unit;
                ctx.report(Command::RemoteStarted {
                    id,
                    node: node.clone(),
                    remote,
                    followed: true,
                });
                let result = client.keep_following(&mut session, &mut sink).await;
                let local_size = progress.borrow().size;
                let outcome = result.map_err(|e| mirror_failure(e, &node, remote));
                return ctx.report(Command::MirrorEnded {
                    id,
                    local_size,
                    outcome,
                });
            }
            Err((created, e))
                if e.is_transient() && (created.is_none() || status.submit_nonce.is_some()) =>
            {
                // Sent again under the same nonce, a submission cut short finds its unit
                // (or replaces one whose payload was cut).
                tracing::info!(unit = %id, %node, error = %e, "cannot submit yet; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
            Err((Some(remote), _)) => {
                // The unit exists there: following it tells what became of it.
                return ctx.report(Command::RemoteStarted {
                    id,
                    node,
                    remote,
                    followed: false,
                });
            }
            Err((None, e)) => {
                return ctx.report(Command::RemoteSubmitFailed {
                    id,
                    failure: RemoteFailure::Refused(e),
                });
            }
        }
    }
}

async fn submit_once(
    ctx: &TaskCtx,
    client: &WorkClient,
    id: UnitId,
    node: &NodeId,
    status: &UnitStatus,
    offset: u64,
) -> Result<Following, (Option<UnitId>, ClientError)> {
    let path = ctx.store.stdin_path(id);
    let signature = if status.sign_work {
        Some(
            sign(ctx, node, status, &path)
                .await
                .map_err(|e| (None, e))?,
        )
    } else {
        None
    };
    // One trip to a blocking thread opens (and, when it is small, reads) the payload.
    let opened = tokio::task::spawn_blocking(move || open_payload_blocking(&path)).await;
    let mut payload = opened
        .map_err(std::io::Error::other)
        .and_then(|opened| opened)
        .map_err(|e| (None, ClientError::Payload(e)))?;
    let request = SubmitRequest {
        work_type: status.work_type.clone(),
        params: status.params.clone(),
        signature,
    };
    let mut created = None;
    let commands = ctx.commands.clone();
    let request = (request, status.submit_nonce);
    let result = client
        .submit_following(node, request, offset, &mut *payload, |remote| {
            created = Some(remote);
            let _ = commands.send(Command::RemoteCreated { id, remote });
        })
        .await;
    result.map_err(|e| (created, e))
}

/// Where a mirror of a remote unit writes: the unit's progress (its followers' view) and
/// the most results bytes it may hold.
pub(super) struct Mirror {
    pub(super) progress: watch::Sender<Progress>,
    pub(super) cap: u64,
}

/// What a mirror's failure means for its unit.
fn mirror_failure(e: ClientError, node: &NodeId, remote: UnitId) -> RemoteFailure {
    match e {
        ClientError::Refused(WorkRefusal::UnknownUnit { .. }) => RemoteFailure::Gone {
            node: node.clone(),
            remote,
        },
        ClientError::Sink(e) => match OverCap::of(&e) {
            Some(OverCap { cap }) => RemoteFailure::OverCap {
                node: node.clone(),
                remote,
                cap,
            },
            None => RemoteFailure::WriteResults(e),
        },
        other => RemoteFailure::Refused(other),
    }
}

/// The submission's signature by this node's work signing key.
async fn sign(
    ctx: &TaskCtx,
    node: &NodeId,
    status: &UnitStatus,
    path: &std::path::Path,
) -> Result<crate::work::signature::WorkSignature, ClientError> {
    let Some(key) = &ctx.signing_key else {
        return Err(ClientError::Refused(WorkRefusal::Signature {
            node: ctx.node.clone(),
            reason:
                "signwork was asked for, but this node has no work signing key ([work] signing-key)"
                    .into(),
        }));
    };
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(ClientError::Payload)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = file.read(&mut buf).await.map_err(ClientError::Payload)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce)
        .map_err(|e| ClientError::Payload(std::io::Error::other(e.to_string())))?;
    let submission = SignedSubmission {
        target: node,
        submitter: &ctx.node,
        work_type: &status.work_type,
        params: &status.params,
    };
    Ok(submission.sign(key, hasher.finalize().into(), crate::clock::now_ms(), nonce))
}

/// Follows a remote unit's output into the local results until it is finished.
pub(super) async fn follow(
    ctx: TaskCtx,
    id: UnitId,
    (node, remote): (NodeId, UnitId),
    mirror: Mirror,
) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let Mirror { progress, cap } = mirror;
    let stdout = ctx.store.stdout_path(id);
    let mut sink = match ResultsSink::open(&stdout, progress.clone()).await {
        Ok((sink, _failure)) => CappedSink::new(sink, progress.borrow().size, cap),
        Err(e) => {
            return ctx.report(Command::MirrorEnded {
                id,
                local_size: 0,
                outcome: Err(RemoteFailure::OpenResults {
                    path: stdout,
                    source: e,
                }),
            });
        }
    };
    // What survived on disk is where output resumes: never behind an unflushed write.
    let offset = progress.borrow().size;
    let result = client.follow_from(&node, remote, offset, &mut sink).await;
    let local_size = progress.borrow().size;
    let outcome = result.map_err(|e| mirror_failure(e, &node, remote));
    ctx.report(Command::MirrorEnded {
        id,
        local_size,
        outcome,
    });
}

/// Asks a remote node to cancel its unit.
pub(super) async fn cancel_remote(ctx: TaskCtx, id: UnitId, node: NodeId, remote: UnitId) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let result = client.cancel(&node, remote).await;
    ctx.report(Command::RemoteCancelled { id, result });
}

/// Asks a remote node to release its unit.
pub(super) async fn release_remote(ctx: TaskCtx, id: UnitId, node: NodeId, remote: UnitId) {
    let Some(client) = ctx.client.clone() else {
        return;
    };
    let result = match client.release(&node, remote).await {
        // Gone there already: released as far as anyone can tell.
        Err(ClientError::Refused(WorkRefusal::UnknownUnit { .. })) => Ok(()),
        other => other,
    };
    ctx.report(Command::RemoteReleased { id, result });
}

#[cfg(test)]
#[path = "tasks_tests.rs"]
mod tests;
