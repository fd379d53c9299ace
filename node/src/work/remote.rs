//! Remote work over the mesh: the submitting node keeps a local unit that mirrors the
//! remote one (state and output spooled to its own files), and the running node serves the
//! `work` service.
//!
//! Output is fetched by offset: when the path to the running node breaks, the mirror asks
//! again from the bytes it already has once a route is back, so nothing is lost or
//! duplicated.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::manager::{Work, WorkError};
use super::protocol::{self, RemoteStatus, Reply, Request, WORK_SERVICE};
use super::unit::{UnitId, UnitState};
use crate::id::{NodeId, ServiceName};
use crate::mesh::driver::{MeshHandle, MeshStream};

/// First wait before asking a lost remote node again; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);

/// Longest wait between attempts to reach a remote node.
const RETRY_MAX: Duration = Duration::from_secs(5);

fn service() -> ServiceName {
    ServiceName::new(WORK_SERVICE).expect("invariant: valid service name")
}

async fn connect(mesh: &MeshHandle, node: &NodeId) -> Result<MeshStream, String> {
    mesh.connect(node, &service())
        .await
        .map_err(|e| format!("node {node} is not reachable: {e}"))
}

/// One request, one reply.
async fn ask(mesh: &MeshHandle, node: &NodeId, request: &Request) -> Result<Reply, String> {
    let mut stream = connect(mesh, node).await?;
    protocol::write(&mut stream, request)
        .await
        .map_err(|e| e.to_string())?;
    stream.shutdown().await.map_err(|e| e.to_string())?;
    protocol::read(&mut stream).await.map_err(|e| e.to_string())
}

/// Submits the payload in `payload` as a unit on `node`; returns its id there once started.
pub async fn submit(
    mesh: &MeshHandle,
    node: &NodeId,
    work_type: &str,
    params: std::collections::BTreeMap<String, String>,
    payload: &mut (dyn AsyncRead + Unpin + Send),
) -> Result<UnitId, String> {
    let mut stream = connect(mesh, node).await?;
    let request = Request::Submit {
        work_type: work_type.to_owned(),
        params,
    };
    protocol::write(&mut stream, &request)
        .await
        .map_err(|e| e.to_string())?;
    let unit = match protocol::read(&mut stream)
        .await
        .map_err(|e| e.to_string())?
    {
        Reply::Created { unit } => unit,
        Reply::Error(message) => return Err(message),
        other => return Err(format!("unexpected reply {other:?}")),
    };
    tokio::io::copy(payload, &mut stream)
        .await
        .map_err(|e| format!("sending the payload to {node}: {e}"))?;
    stream.shutdown().await.map_err(|e| e.to_string())?;
    match protocol::read(&mut stream)
        .await
        .map_err(|e| e.to_string())?
    {
        Reply::Started => Ok(unit),
        Reply::Error(message) => Err(message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// The remote unit's status.
pub async fn status(
    mesh: &MeshHandle,
    node: &NodeId,
    unit: UnitId,
) -> Result<RemoteStatus, String> {
    match ask(mesh, node, &Request::Status { unit }).await? {
        Reply::Status(status) => Ok(status),
        Reply::Error(message) => Err(message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Asks the remote node to cancel or release its unit.
pub async fn tell(mesh: &MeshHandle, node: &NodeId, request: Request) -> Result<(), String> {
    match ask(mesh, node, &request).await? {
        Reply::Ok => Ok(()),
        Reply::Error(message) => Err(message),
        other => Err(format!("unexpected reply {other:?}")),
    }
}

/// Mirrors a remote unit into local unit `local` until the remote one is finished:
/// appends its output from where the local copy ends, reconnecting after failures.
pub(super) async fn mirror(
    work: Work,
    mesh: MeshHandle,
    node: NodeId,
    local: UnitId,
    remote: UnitId,
) {
    let mut wait = RETRY_MIN;
    loop {
        match fetch_once(&work, &mesh, &node, local, remote).await {
            Ok(Some(status)) => {
                let state = status.state;
                if let Err(e) = work.finish_mirror(local, state, status.detail) {
                    tracing::error!(unit = %local, error = %e, "cannot record the end of a remote unit");
                }
                return;
            }
            Ok(None) => wait = RETRY_MIN,
            Err(e) => {
                tracing::info!(unit = %local, %node, error = %e, "remote unit unreachable; will resume from the local offset");
                if work.is_released(local) {
                    return;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

/// One results session: copies output from the local size on; returns the final status if
/// the unit is finished and everything was copied, `None` if the stream ended early.
async fn fetch_once(
    work: &Work,
    mesh: &MeshHandle,
    node: &NodeId,
    local: UnitId,
    remote: UnitId,
) -> Result<Option<RemoteStatus>, String> {
    let offset = work.local_stdout_size(local);
    let mut stream = connect(mesh, node).await?;
    protocol::write(
        &mut stream,
        &Request::Results {
            unit: remote,
            offset,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut file = work
        .open_stdout_append(local)
        .await
        .map_err(|e| e.to_string())?;
    tokio::io::copy(&mut stream, &mut file)
        .await
        .map_err(|e| format!("results from {node}: {e}"))?;
    file.flush().await.map_err(|e| e.to_string())?;
    let status = status(mesh, node, remote).await?;
    let have = work.local_stdout_size(local);
    if status.state.is_terminal() && have >= status.stdout_size {
        return Ok(Some(status));
    }
    if status.state == UnitState::Running {
        work.note_mirror_running(local);
    }
    Ok(None)
}

/// Follows remote unit `unit` on `node` into `out` until it is finished: output from the
/// first byte, resumed from the bytes already written after any failure of the path (so
/// nothing is lost or repeated). Returns the unit's final status.
///
/// # Errors
/// A message when `out` fails; unreachable nodes are retried, not errors.
pub async fn follow(
    mesh: &MeshHandle,
    node: &NodeId,
    unit: UnitId,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<RemoteStatus, String> {
    let mut offset = 0u64;
    let mut wait = RETRY_MIN;
    loop {
        match follow_once(mesh, node, unit, &mut offset, out).await {
            Ok(Some(status)) => return Ok(status),
            Ok(None) => wait = RETRY_MIN,
            Err(FollowError::Sink(e)) => return Err(e),
            Err(FollowError::Path(e)) => {
                tracing::info!(%node, %unit, error = %e, offset, "results interrupted; resuming");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            }
        }
    }
}

enum FollowError {
    /// The mesh path failed: retry.
    Path(String),
    /// Our own output failed: give up.
    Sink(String),
}

async fn follow_once(
    mesh: &MeshHandle,
    node: &NodeId,
    unit: UnitId,
    offset: &mut u64,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<Option<RemoteStatus>, FollowError> {
    use tokio::io::AsyncReadExt;
    let mut stream = connect(mesh, node).await.map_err(FollowError::Path)?;
    let request = Request::Results {
        unit,
        offset: *offset,
    };
    protocol::write(&mut stream, &request)
        .await
        .map_err(|e| FollowError::Path(e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = stream
            .read(&mut buf)
            .await
            .map_err(|e| FollowError::Path(e.to_string()))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .await
            .map_err(|e| FollowError::Sink(e.to_string()))?;
        *offset += n as u64;
    }
    out.flush()
        .await
        .map_err(|e| FollowError::Sink(e.to_string()))?;
    let status = status(mesh, node, unit).await.map_err(FollowError::Path)?;
    Ok((status.state.is_terminal() && *offset >= status.stdout_size).then_some(status))
}

/// Serves the `work` mesh service: remote nodes submit, follow, cancel and release units.
pub fn serve(work: Work, mesh: &MeshHandle) {
    let Ok(mut incoming) = mesh.listen(&service()) else {
        return;
    };
    tokio::spawn(async move {
        while let Some(stream) = incoming.recv().await {
            let work = work.clone();
            tokio::spawn(async move {
                let peer = stream.peer().clone();
                if let Err(e) = answer(work, peer.clone(), stream).await {
                    tracing::debug!(%peer, error = %e, "work session ended");
                }
            });
        }
    });
}

async fn answer<S: AsyncRead + AsyncWrite + Unpin + Send>(
    work: Work,
    peer: NodeId,
    mut stream: S,
) -> Result<(), protocol::ProtocolError> {
    let request: Request = protocol::read(&mut stream).await?;
    let reply = match request {
        Request::Submit { work_type, params } => {
            return answer_submit(work, peer, stream, &work_type, params).await;
        }
        Request::Results { unit, offset } => {
            if let Ok(mut results) = work.results(unit, offset).await {
                tokio::io::copy(&mut results, &mut stream).await?;
            }
            stream.shutdown().await?;
            return Ok(());
        }
        Request::Status { unit } => match work.status(unit).await {
            Ok(s) => Reply::Status(RemoteStatus {
                state: s.state,
                detail: s.detail,
                stdout_size: s.stdout_size,
            }),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::Cancel { unit } => done(work.cancel(unit).await),
        Request::Release { unit } => done(work.release(unit, false).await),
    };
    protocol::write(&mut stream, &reply).await?;
    stream.shutdown().await?;
    Ok(())
}

fn done(result: Result<(), WorkError>) -> Reply {
    result.map_or_else(|e| Reply::Error(e.to_string()), |()| Reply::Ok)
}

async fn answer_submit<S: AsyncRead + AsyncWrite + Unpin + Send>(
    work: Work,
    peer: NodeId,
    mut stream: S,
    work_type: &str,
    params: std::collections::BTreeMap<String, String>,
) -> Result<(), protocol::ProtocolError> {
    let unit = match work.create(work_type, params, peer).await {
        Ok(unit) => unit,
        Err(e) => {
            protocol::write(&mut stream, &Reply::Error(e.to_string())).await?;
            return Ok(());
        }
    };
    protocol::write(&mut stream, &Reply::Created { unit }).await?;
    let reply = match work.start(unit, &mut stream).await {
        Ok(()) => Reply::Started,
        Err(e) => Reply::Error(e.to_string()),
    };
    protocol::write(&mut stream, &reply).await?;
    stream.shutdown().await?;
    Ok(())
}
