//! One job on a remote node, as Python sees it: [`start`] links (or reuses a shared node),
//! waits for the target and has it create the unit; then the Python half writes the
//! payload (ansible-runner's transmit stream) into [`Job::write`], reads the results
//! (ansible-runner's worker stream) with [`Job::readline`], and writes what they hold
//! through [`Job::write_event`] and [`Job::unpack_artifacts`], which never leave the
//! artifact dir. A task on the runtime moves the bytes (`WorkClient::submit_and_follow`:
//! resumed by offset when the path breaks) and gives up when the node stays unreachable.
//!
//! Every method that waits releases the GIL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warren::ansible::artifact_dir::{ArtifactDirs, receive_artifacts};
use warren::ansible::process::{MAX_LINE_LEN, ProcessConfig};
use warren::ansible::unpack::ArtifactLimits;
use warren::client::ClientOptions;
use warren::config::EndpointAddr;
use warren::id::NodeId;
use warren::mesh::driver::MeshHandle;
use warren::work::UnitId;
use warren::work::client::{ClientError as WorkError, SubmitRequest, WorkClient};
use warren::work::protocol::RemoteStatus;

use crate::errors::{self, Kind, native};
use crate::process;
use crate::shared::Lease;

/// The work type every job here runs.
pub(crate) const WORK_TYPE: &str = "ansible-runner";

/// Bytes in flight between Python and the mesh in each direction.
const PIPE_LEN: usize = 256 * 1024;

/// How often the target's reachability is checked while a job runs.
const REACH_EVERY: Duration = Duration::from_millis(500);

/// Why the bytes stopped moving.
#[derive(Debug)]
enum FollowError {
    /// The work protocol failed (a refusal, a sink or a protocol error).
    Work(WorkError),
    /// No route to the node for the whole allowed time.
    LostContact(String),
}

/// How a job's task ended: the unit's final state and detail, or why it was not followed
/// to the end.
type Ending = Result<(String, String), String>;

/// One unit on a remote node, submitted by [`start`].
#[pyclass(module = "warren._native", frozen)]
pub(crate) struct Job {
    /// Keeps the shared node linked while the job needs it.
    lease: Lease,
    node: NodeId,
    unit: UnitId,
    work: WorkClient,
    /// The payload's write end; `None` once closed (the unit starts then).
    payload: Mutex<Option<DuplexStream>>,
    /// The results' read end and the line being assembled.
    results: Mutex<Results>,
    /// The task moving the bytes; taken when its ending is read.
    task: Mutex<Option<JoinHandle<Result<RemoteStatus, FollowError>>>>,
    ending: Mutex<Option<Ending>>,
    /// The local artifact dir, held open (files are written beneath it only).
    dirs: ArtifactDirs,
    process: ProcessConfig,
    notices: Vec<String>,
}

struct Results {
    reader: BufReader<DuplexStream>,
    /// Bytes of a line not yet complete (a readline that timed out keeps them).
    line: Vec<u8>,
}

/// Links to `peer` (or reuses this process's node for it), waits up to `timeout` seconds
/// for a route to `node` offering ansible-runner, and has `node` create the unit: what
/// [`crate::link::link`] then [`crate::link::Link::start`] do, in one call. Results may be
/// unreachable for `lost_contact` seconds before the job gives up. Events and artifacts
/// land in `artifact_dir`.
///
/// Raises `NativeError(kind, message)`: `peer_unreachable`, `peer_refused`, `key_changed`,
/// `unknown_node`, `not_offered`, `submit_refused`, `identity`, `value`, `other`.
#[pyfunction]
#[pyo3(signature = (*, peer, node, artifact_dir, node_id = None, params = BTreeMap::new(), timeout = 15.0, lost_contact = 60.0))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn start(
    py: Python<'_>,
    peer: &str,
    node: &str,
    artifact_dir: PathBuf,
    node_id: Option<&str>,
    params: BTreeMap<String, String>,
    timeout: f64,
    lost_contact: f64,
) -> PyResult<Job> {
    let target = Target::parse(peer, node, node_id, timeout)?;
    let unit = UnitSpec::new(artifact_dir, params, lost_contact)?;
    py.detach(|| {
        process::block_on(async {
            let (lease, notices) = crate::link::connect(&target).await?;
            create(lease, target.node, unit, notices).await
        })
        .map_err(|e| errors::runtime_start(&e))?
    })
}

/// Where a job goes: the peer to link to, the node to run on, this client's node id.
pub(crate) struct Target {
    pub(crate) options: ClientOptions,
    pub(crate) node: NodeId,
}

impl Target {
    /// Checks the Python arguments (`NativeError('value', ...)` naming the bad one).
    pub(crate) fn parse(
        peer: &str,
        node: &str,
        node_id: Option<&str>,
        timeout: f64,
    ) -> PyResult<Self> {
        let peer = EndpointAddr::parse_peer(peer)
            .map_err(|e| native(Kind::Value, &format!("receptor_peer {peer:?}: {e}")))?;
        let node = NodeId::new(node.to_owned())
            .map_err(|e| native(Kind::Value, &format!("via_receptor {node:?}: {e}")))?;
        let node_id = node_id
            .map(|id| NodeId::new(id.to_owned()))
            .transpose()
            .map_err(|e| native(Kind::Value, &format!("receptor_node_id: {e}")))?;
        let options = ClientOptions {
            peer,
            node_id,
            identity: None,
            timeout: errors::seconds(timeout),
        };
        Ok(Self { options, node })
    }
}

/// What the unit is made with: its submission, where its results are written, and how
/// long its node may stay unreachable.
pub(crate) struct UnitSpec {
    request: SubmitRequest,
    process: ProcessConfig,
    lost_contact: Duration,
}

impl UnitSpec {
    /// Checks the Python arguments and the artifact caps (`WARREN_ARTIFACTS_MAX_*`).
    pub(crate) fn new(
        artifact_dir: PathBuf,
        params: BTreeMap<String, String>,
        lost_contact: f64,
    ) -> PyResult<Self> {
        let limits = ArtifactLimits::from_env().map_err(|e| native(Kind::Value, &e.to_string()))?;
        Ok(Self {
            request: SubmitRequest {
                work_type: WORK_TYPE.to_owned(),
                params,
                signature: None,
            },
            process: ProcessConfig {
                artifact_dir,
                quiet: true,
                skip_empty_stdout: false,
                json: false,
                limits,
            },
            lost_contact: errors::seconds(lost_contact),
        })
    }
}

/// Has `node` create the unit through the shared node `lease` holds, without the GIL.
pub(crate) async fn create(
    lease: Lease,
    node: NodeId,
    unit: UnitSpec,
    notices: Vec<String>,
) -> PyResult<Job> {
    let UnitSpec {
        request,
        process,
        lost_contact,
    } = unit;
    let dirs = ArtifactDirs::create(&process.artifact_dir, process.limits)
        .map_err(|e| native(Kind::Other, &errors::chain(&e)))?;
    let work = WorkClient::new(lease.mesh().clone());
    let (payload_in, payload_out) = tokio::io::duplex(PIPE_LEN);
    let (results_in, results_out) = tokio::io::duplex(PIPE_LEN);
    let (created_tx, created_rx) = oneshot::channel();
    let mut task = tokio::spawn(follow(
        Follow {
            work: work.clone(),
            mesh: lease.mesh().clone(),
            node: node.clone(),
            lost_contact,
        },
        request,
        payload_in,
        results_out,
        created_tx,
    ));
    let Ok(unit) = created_rx.await else {
        // The task ended before the node created the unit: it says why.
        return Err(match (&mut task).await {
            Ok(Err(FollowError::Work(e))) => errors::submit(&e),
            Ok(Err(FollowError::LostContact(why))) => native(Kind::UnknownNode, &why),
            Ok(Ok(_)) => native(Kind::Other, "the node ended the unit before creating it"),
            Err(join) => native(Kind::Other, &format!("the job's task failed: {join}")),
        });
    };
    Ok(Job {
        lease,
        node,
        unit,
        work,
        payload: Mutex::new(Some(payload_out)),
        results: Mutex::new(Results {
            reader: BufReader::with_capacity(PIPE_LEN, results_in),
            line: Vec::new(),
        }),
        task: Mutex::new(Some(task)),
        ending: Mutex::new(None),
        dirs,
        process,
        notices,
    })
}

/// What the task needs besides its pipes.
struct Follow {
    work: WorkClient,
    mesh: MeshHandle,
    node: NodeId,
    lost_contact: Duration,
}

/// Submits, sends the payload, follows the results into `results` (resuming by offset),
/// unless the node stays unreachable for the allowed time. Ends `results` either way.
async fn follow(
    job: Follow,
    request: SubmitRequest,
    mut payload: DuplexStream,
    mut results: DuplexStream,
    created: oneshot::Sender<UnitId>,
) -> Result<RemoteStatus, FollowError> {
    let submitted = job.work.submit_and_follow(
        &job.node,
        request,
        &mut payload,
        move |unit| {
            let _ = created.send(unit);
        },
        &mut results,
    );
    let ended = tokio::select! {
        done = submitted => done.map(|(_, status)| status).map_err(FollowError::Work),
        why = lost_contact(&job.mesh, &job.node, job.lost_contact) => Err(FollowError::LostContact(why)),
    };
    let _ = results.shutdown().await;
    ended
}

/// Returns once `node` has had no route for `allowed` without a break.
async fn lost_contact(mesh: &MeshHandle, node: &NodeId, allowed: Duration) -> String {
    let mut unreachable_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(REACH_EVERY).await;
        let reachable = match mesh.status().await {
            Ok(status) => {
                status.routes.contains_key(node) || status.links.iter().any(|l| &l.peer == node)
            }
            Err(_) => return "the embedded node stopped".to_owned(),
        };
        if reachable {
            unreachable_since = None;
            continue;
        }
        let since = *unreachable_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= allowed {
            return format!(
                "lost contact with {node}: no route to it for {} s",
                allowed.as_secs_f64()
            );
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn runtime_error(e: &std::io::Error) -> PyErr {
    PyOSError::new_err(format!("Warren's client runtime: {e}"))
}

#[pymethods]
impl Job {
    /// The unit's id on the target node.
    #[getter]
    fn unit(&self) -> String {
        self.unit.to_string()
    }

    /// The target node.
    #[getter]
    fn node(&self) -> String {
        self.node.to_string()
    }

    /// This client node's id: the submitter the target sees.
    #[getter]
    fn client_id(&self) -> String {
        self.lease.id().to_string()
    }

    /// What linking noted (an identity created, a peer's key remembered).
    #[getter]
    fn notices(&self) -> Vec<String> {
        self.notices.clone()
    }

    /// Sends payload bytes (blocks while the node is slower than the writer).
    fn write(&self, py: Python<'_>, data: &[u8]) -> PyResult<()> {
        py.detach(|| {
            let mut payload = lock(&self.payload);
            let Some(pipe) = payload.as_mut() else {
                return Err(PyValueError::new_err("the payload is already closed"));
            };
            process::block_on(pipe.write_all(data))
                .map_err(|e| runtime_error(&e))?
                .map_err(|e| PyOSError::new_err(format!("sending the payload: {e}")))
        })
    }

    /// Ends the payload: the node queues the unit to run.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let pipe = lock(&self.payload).take();
            if let Some(mut pipe) = pipe {
                // A task that already ended has dropped the other end: nothing to tell.
                let _ = process::block_on(pipe.shutdown()).map_err(|e| runtime_error(&e))?;
            }
            Ok(())
        })
    }

    /// The next line of the results, newline included; the last bytes without one at the
    /// end; `b""` once they are over; `None` if `timeout` seconds pass first.
    #[pyo3(signature = (timeout = None))]
    fn readline<'py>(
        &self,
        py: Python<'py>,
        timeout: Option<f64>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let line = py.detach(|| {
            let mut results = lock(&self.results);
            let results = &mut *results;
            let read = read_line(&mut results.reader, &mut results.line);
            let done = match timeout {
                None => process::block_on(read).map(Some),
                Some(secs) => process::block_on(async {
                    tokio::time::timeout(errors::seconds(secs), read).await.ok()
                }),
            };
            match done.map_err(|e| runtime_error(&e))? {
                None => Ok(None),
                Some(Ok(())) => Ok(Some(std::mem::take(&mut results.line))),
                Some(Err(e)) => Err(PyOSError::new_err(e.to_string())),
            }
        })?;
        Ok(line.map(|line| PyBytes::new(py, &line)))
    }

    /// Reads the artifacts zip (`zip_len` bytes, base64 in the results) and unpacks it
    /// into the artifact dir: within the caps (`WARREN_ARTIFACTS_MAX_*`), never outside.
    fn unpack_artifacts(&self, py: Python<'_>, zip_len: u64) -> PyResult<()> {
        py.detach(|| {
            let mut results = lock(&self.results);
            if !results.line.is_empty() {
                return Err(PyValueError::new_err("a results line is half read"));
            }
            process::block_on(receive_artifacts(
                &mut results.reader,
                zip_len,
                &self.process,
            ))
            .map_err(|e| runtime_error(&e))?
            .map_err(|e| PyOSError::new_err(errors::chain(&e)))
        })
    }

    /// Writes `job_events/<file_name>` (mode 0600) with `data`; `file_name` must be one
    /// plain component.
    fn write_event(&self, py: Python<'_>, file_name: &str, data: &[u8]) -> PyResult<()> {
        py.detach(|| {
            process::block_on(self.dirs.write_event_file(file_name, data.to_vec()))
                .map_err(|e| runtime_error(&e))?
                .map_err(|e| PyOSError::new_err(errors::chain(&e)))
        })
    }

    /// The job's exit code from the artifacts' `rc` file, if there is a readable one.
    fn read_rc(&self, py: Python<'_>) -> PyResult<Option<i32>> {
        py.detach(|| process::block_on(self.dirs.read_rc()).map_err(|e| runtime_error(&e)))
    }

    /// Asks the node to cancel the unit (its results then end).
    fn cancel(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            process::block_on(self.work.cancel(&self.node, self.unit))
                .map_err(|e| runtime_error(&e))?
                .map_err(|e| native(Kind::Other, &e.to_string()))
        })
    }

    /// Asks the node to delete the unit and its files.
    fn release(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            process::block_on(self.work.release(&self.node, self.unit))
                .map_err(|e| runtime_error(&e))?
                .map_err(|e| native(Kind::Other, &e.to_string()))
        })
    }

    /// How the unit ended, `(state, detail)`, once its results are over (waiting up to
    /// `timeout` seconds; `None` if they are not). Raises `NativeError` with the reason if
    /// they were not followed to the end (lost contact, a refusal).
    #[pyo3(signature = (timeout = None))]
    fn outcome(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<(String, String)>> {
        let ending = py.detach(|| self.ending(timeout.map(errors::seconds)))?;
        match ending {
            None => Ok(None),
            Some(Ok(done)) => Ok(Some(done)),
            Some(Err(why)) => Err(native(Kind::Other, &why)),
        }
    }

    /// Stops following the results (the unit on the node is left as it is).
    fn abort(&self) {
        if let Some(task) = lock(&self.task).as_ref() {
            task.abort();
        }
    }
}

impl Job {
    /// The task's ending, waiting up to `timeout` (for ever when `None`) for it.
    fn ending(&self, timeout: Option<Duration>) -> PyResult<Option<Ending>> {
        if let Some(ending) = lock(&self.ending).as_ref() {
            return Ok(Some(ending.clone()));
        }
        let mut task = lock(&self.task);
        let Some(handle) = task.as_mut() else {
            return Ok(lock(&self.ending).clone());
        };
        let joined = process::block_on(async {
            match timeout {
                None => Some(handle.await),
                Some(wait) => tokio::time::timeout(wait, handle).await.ok(),
            }
        })
        .map_err(|e| runtime_error(&e))?;
        let Some(joined) = joined else {
            return Ok(None);
        };
        *task = None;
        let ending = match joined {
            Ok(Ok(status)) => Ok((
                status.state.to_string(),
                warren::terminal::one_line(&status.detail).into_owned(),
            )),
            Ok(Err(FollowError::Work(e))) => Err(format!("{}: {e}", self.node)),
            Ok(Err(FollowError::LostContact(why))) => Err(format!(
                "{why}; unit {} may still be running there",
                self.unit
            )),
            Err(join) if join.is_cancelled() => Err("following the results was stopped".into()),
            Err(join) => Err(format!("the job's task failed: {join}")),
        };
        *lock(&self.ending) = Some(ending.clone());
        Ok(Some(ending))
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).as_ref() {
            task.abort();
        }
    }
}

/// Appends to `line` up to and including the next newline; returns at the end of input
/// with what there was. Cancel-safe: bytes read before a timeout stay in `line`.
async fn read_line(
    reader: &mut BufReader<DuplexStream>,
    line: &mut Vec<u8>,
) -> std::io::Result<()> {
    loop {
        let buffered = reader.fill_buf().await?;
        if buffered.is_empty() {
            return Ok(());
        }
        let (taken, complete) = match buffered.iter().position(|&b| b == b'\n') {
            Some(at) => (at + 1, true),
            None => (buffered.len(), false),
        };
        line.extend_from_slice(&buffered[..taken]);
        reader.consume(taken);
        if line.len() > MAX_LINE_LEN {
            return Err(std::io::Error::other(format!(
                "a worker stream line exceeds {MAX_LINE_LEN} bytes"
            )));
        }
        if complete {
            return Ok(());
        }
    }
}
