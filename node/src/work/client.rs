//! The one client of the node-to-node work protocol: submit, follow results from an offset,
//! status, cancel, release — over a [`MeshHandle`], knowing nothing of the local unit store.
//! `warren run`, the mirror of a remote unit, and the Python package use it.
//!
//! Results resume by offset: when the path to the running node breaks, [`WorkClient::
//! follow_from`] asks again from the bytes already written, so nothing is lost or repeated. A
//! typed refusal (no such unit, not allowed) ends it at once; only a broken path is retried.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::protocol::{
    self, ProtocolError, RemoteStatus, Reply, Request, ResultsFrame, WORK_SERVICE, WorkRefusal,
};
use super::signature::WorkSignature;
use super::unit::{SubmitNonce, UnitId};
use crate::ansible::transmit::manifest::Manifest;
use crate::id::{NodeId, ServiceName};
use crate::mesh::driver::{ConnectError, MeshHandle, MeshStream};
use crate::mesh::node::OpenError;

/// First wait before asking an unreachable node again; it doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_millis(200);

/// Longest wait between attempts to reach a node.
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Why a work request to another node failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached, or the path broke: worth retrying.
    #[error("node {node} is not reachable: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Why.
        reason: String,
    },
    /// Nothing this node configured binds the target's key to its id (it is known only
    /// first-seen): retrying will not help until it is pinned or certified.
    #[error(transparent)]
    Unverified(OpenError),
    /// The node refused: retrying will not help.
    #[error(transparent)]
    Refused(#[from] WorkRefusal),
    /// The node answered something this protocol does not allow at that point.
    #[error("node {node} broke the work protocol: {reason}")]
    Protocol {
        /// The node.
        node: NodeId,
        /// What happened.
        reason: String,
    },
    /// Writing the results here failed.
    #[error("writing the results: {0}")]
    Sink(std::io::Error),
    /// Reading the payload here failed.
    #[error("reading the payload: {0}")]
    Payload(std::io::Error),
}

impl ClientError {
    /// Whether trying again (after the path heals) can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. })
    }

    fn from_protocol(node: &NodeId, e: ProtocolError) -> Self {
        match e {
            ProtocolError::Io(e) => Self::Unreachable {
                node: node.clone(),
                reason: e.to_string(),
            },
            other => Self::Protocol {
                node: node.clone(),
                reason: other.to_string(),
            },
        }
    }
}

/// A submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitRequest {
    /// The work type.
    pub work_type: String,
    /// Its parameters.
    pub params: BTreeMap<String, String>,
    /// The submitting node's signature, for nodes that require signed work.
    pub signature: Option<WorkSignature>,
}

/// A started submission whose output is being read (see [`WorkClient::submit_following`]).
#[derive(Debug)]
pub struct Following {
    node: NodeId,
    /// The unit's id on the running node.
    pub unit: UnitId,
    /// Output bytes received so far (and where reading resumes).
    pub offset: u64,
    /// The submission's stream, until it is read or broken.
    stream: Option<MeshStream>,
}

/// A content-addressed submission the node has answered (see
/// [`WorkClient::offer_manifest`]).
#[derive(Debug)]
pub struct Offered {
    node: NodeId,
    /// The unit's id on the running node.
    pub unit: UnitId,
    /// The manifest entries whose contents the node lacks.
    pub lacking: Vec<u32>,
    stream: MeshStream,
}

/// Talks to other nodes' `work` service.
#[derive(Debug, Clone)]
pub struct WorkClient {
    mesh: MeshHandle,
}

fn service() -> ServiceName {
    ServiceName::new(WORK_SERVICE).expect("invariant: valid service name")
}

impl WorkClient {
    /// A client over `mesh`.
    pub fn new(mesh: MeshHandle) -> Self {
        Self { mesh }
    }

    async fn connect(&self, node: &NodeId) -> Result<MeshStream, ClientError> {
        self.mesh
            .connect(node, &service())
            .await
            .map_err(|e| match e {
                ConnectError::Open(e @ OpenError::Unverified(_)) => ClientError::Unverified(e),
                other => ClientError::Unreachable {
                    node: node.clone(),
                    reason: other.to_string(),
                },
            })
    }

    /// One request, one reply.
    async fn ask(&self, node: &NodeId, request: &Request) -> Result<Reply, ClientError> {
        let mut stream = self.connect(node).await?;
        protocol::write(&mut stream, request)
            .await
            .map_err(|e| ClientError::from_protocol(node, e))?;
        let _ = stream.shutdown().await;
        match protocol::read(&mut stream).await {
            Ok(Reply::Refused(refusal)) => Err(refusal.into()),
            Ok(reply) => Ok(reply),
            Err(e) => Err(ClientError::from_protocol(node, e)),
        }
    }

    fn unexpected(node: &NodeId, reply: &Reply) -> ClientError {
        ClientError::Protocol {
            node: node.clone(),
            reason: format!("unexpected reply {reply:?}"),
        }
    }

    /// Submits `payload` as a unit on `node`; `created` learns the unit's id there as soon
    /// as the node has made it (before the payload is sent). Returns the id once started.
    ///
    /// # Errors
    /// [`ClientError`]; after `created` was called the unit exists there whatever the error.
    pub async fn submit(
        &self,
        node: &NodeId,
        request: SubmitRequest,
        payload: &mut (dyn AsyncRead + Unpin + Send),
        created: impl FnOnce(UnitId),
    ) -> Result<UnitId, ClientError> {
        let mut stream = self.connect(node).await?;
        let unit = self
            .send_submit(&mut stream, node, (request, None), None, payload, created)
            .await?;
        let _ = stream.shutdown().await;
        Ok(unit)
    }

    /// Submits and follows on one stream: the unit's output goes to `sink` as it runs. A
    /// broken path after the start is resumed from the bytes already written. Returns the
    /// unit's id and final status.
    ///
    /// # Errors
    /// [`ClientError`] for a refusal, a sink that fails, or a path that breaks before the
    /// unit started.
    pub async fn submit_and_follow(
        &self,
        node: &NodeId,
        request: SubmitRequest,
        payload: &mut (dyn AsyncRead + Unpin + Send),
        created: impl FnOnce(UnitId),
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(UnitId, RemoteStatus), ClientError> {
        let mut session = self
            .submit_following(node, (request, None), 0, payload, created)
            .await?;
        let status = self.keep_following(&mut session, sink).await?;
        Ok((session.unit, status))
    }

    /// Submits `payload` as a unit on `node`, named by `nonce` when given, and asks for its
    /// output from byte `offset` on the same stream; returns once the unit has started
    /// (then read its output with [`WorkClient::keep_following`]). A submission sent again
    /// with the same nonce (after a restart here) finds the unit the first one made, if that
    /// one has its payload, instead of making another; `offset` then skips what was already
    /// received.
    ///
    /// # Errors
    /// As [`WorkClient::submit`].
    pub async fn submit_following(
        &self,
        node: &NodeId,
        request: (SubmitRequest, Option<SubmitNonce>),
        offset: u64,
        payload: &mut (dyn AsyncRead + Unpin + Send),
        created: impl FnOnce(UnitId),
    ) -> Result<Following, ClientError> {
        let mut stream = self.connect(node).await?;
        let unit = self
            .send_submit(&mut stream, node, request, Some(offset), payload, created)
            .await?;
        Ok(Following {
            node: node.clone(),
            unit,
            offset,
            stream: Some(stream),
        })
    }

    /// Reads a started unit's output into `sink` until it is finished, on the submission's
    /// stream and, should that path break, from the bytes already written on a new one.
    /// Returns the unit's final status.
    ///
    /// # Errors
    /// As [`WorkClient::follow_from`].
    pub async fn keep_following(
        &self,
        session: &mut Following,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<RemoteStatus, ClientError> {
        if let Some(mut stream) = session.stream.take() {
            match read_results(&mut stream, &session.node, &mut session.offset, sink).await {
                Err(e) if e.is_transient() => {}
                done => return done,
            }
        }
        (self.follow_from(&session.node, session.unit, session.offset, sink)).await
    }

    /// Offers a content-addressed submission to `node`: sends `manifest` and returns the
    /// unit the node made and the entries whose contents it lacks. Finish it with
    /// [`WorkClient::finish_offer`].
    ///
    /// # Errors
    /// [`ClientError`]; [`ClientError::Refused`] with [`WorkRefusal::ContentCacheOff`]
    /// (no unit exists then) when the node keeps no content cache or does not know this
    /// request: send the payload whole instead.
    pub async fn offer_manifest(
        &self,
        node: &NodeId,
        (work_type, params): (String, BTreeMap<String, String>),
        manifest: &Manifest,
    ) -> Result<Offered, ClientError> {
        let proto = |e| ClientError::from_protocol(node, e);
        let mut stream = self.connect(node).await?;
        let submit = Request::SubmitManifest {
            work_type,
            params,
            follow: Some(0),
        };
        protocol::write(&mut stream, &submit).await.map_err(proto)?;
        protocol::write(&mut stream, manifest)
            .await
            .map_err(proto)?;
        match protocol::read(&mut stream).await {
            Ok(Reply::Lacking { unit, lacking }) => Ok(Offered {
                node: node.clone(),
                unit,
                lacking,
                stream,
            }),
            Ok(Reply::Refused(refusal)) => Err(refusal.into()),
            Ok(other) => Err(Self::unexpected(node, &other)),
            // A node that does not know the request closes the stream unanswered.
            Err(ProtocolError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                Err(WorkRefusal::ContentCacheOff { node: node.clone() }.into())
            }
            Err(e) => Err(proto(e)),
        }
    }

    /// Sends `contents` (the lacking entries' bytes and the inline ones, in manifest order)
    /// to its end, then follows the unit's output into `sink` as
    /// [`WorkClient::submit_and_follow`] does.
    ///
    /// # Errors
    /// As [`WorkClient::submit_and_follow`]; a refusal of the contents (a hash mismatch)
    /// is read even when it cut the sending short.
    pub async fn finish_offer(
        &self,
        offered: Offered,
        contents: &mut (dyn AsyncRead + Unpin + Send),
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<(UnitId, RemoteStatus), ClientError> {
        let Offered {
            node,
            unit,
            mut stream,
            ..
        } = offered;
        let proto = |e| ClientError::from_protocol(&node, e);
        let sent = send_payload(contents, &mut stream, &node).await;
        if let Err(e @ ClientError::Payload(_)) = sent {
            return Err(e);
        }
        match (protocol::read(&mut stream).await, sent) {
            (Ok(Reply::Refused(refusal)), _) => return Err(refusal.into()),
            (_, Err(e)) => return Err(e),
            (Ok(Reply::Started), Ok(())) => {}
            (Ok(other), Ok(())) => return Err(Self::unexpected(&node, &other)),
            (Err(e), Ok(())) => return Err(proto(e)),
        }
        let mut session = Following {
            node,
            unit,
            offset: 0,
            stream: Some(stream),
        };
        let status = self.keep_following(&mut session, sink).await?;
        Ok((unit, status))
    }

    async fn send_submit(
        &self,
        stream: &mut MeshStream,
        node: &NodeId,
        (request, nonce): (SubmitRequest, Option<SubmitNonce>),
        follow: Option<u64>,
        payload: &mut (dyn AsyncRead + Unpin + Send),
        created: impl FnOnce(UnitId),
    ) -> Result<UnitId, ClientError> {
        let proto = |e| ClientError::from_protocol(node, e);
        let submit = Request::Submit {
            work_type: request.work_type,
            params: request.params,
            signature: request.signature.map(Box::new),
            follow,
            nonce,
        };
        let named = nonce.is_some();
        protocol::write(stream, &submit).await.map_err(proto)?;
        // A submission named by a nonce sends its payload at once, without waiting a round
        // trip for `Created` (the node reads it once the unit exists, or drops it with its
        // refusal): the unit can be found through the nonce, so its id may come last. One
        // without learns the id first, so that its caller can cancel it while the payload
        // is still on its way.
        let (first, sent) = if named {
            let sent = send_payload(payload, stream, node).await;
            (protocol::read(stream).await, Some(sent))
        } else {
            (protocol::read(stream).await, None)
        };
        let unit = match first {
            Ok(Reply::Created { unit }) => unit,
            Ok(Reply::Existing { unit }) => {
                // Made by this submission before, with its payload: it runs (or ran).
                created(unit);
                return Ok(unit);
            }
            Ok(Reply::Refused(refusal)) => return Err(refusal.into()),
            Ok(other) => return Err(Self::unexpected(node, &other)),
            Err(e) => return Err(sent.and_then(Result::err).unwrap_or_else(|| proto(e))),
        };
        created(unit);
        let sent = match sent {
            Some(sent) => sent,
            None => send_payload(payload, stream, node).await,
        };
        if let Err(e @ ClientError::Payload(_)) = sent {
            // Our side failed: the node waits for bytes that will not come.
            return Err(e);
        }
        // A refusal of the payload (over the limit, a bad signature) is read even when it
        // cut the sending short.
        match (protocol::read(stream).await, sent) {
            (Ok(Reply::Refused(refusal)), _) => Err(refusal.into()),
            (_, Err(e)) => Err(e),
            (Ok(Reply::Started), Ok(())) => Ok(unit),
            (Ok(other), Ok(())) => Err(Self::unexpected(node, &other)),
            (Err(e), Ok(())) => Err(proto(e)),
        }
    }

    /// Follows `unit` on `node` into `sink` from byte `offset` until it is finished,
    /// resuming from the bytes already written after any failure of the path. Returns the
    /// unit's final status.
    ///
    /// # Errors
    /// [`ClientError::Refused`] (the unit is gone, or not ours) and [`ClientError::Sink`];
    /// an unreachable node is retried, not an error.
    pub async fn follow_from(
        &self,
        node: &NodeId,
        unit: UnitId,
        mut offset: u64,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<RemoteStatus, ClientError> {
        let mut wait = RETRY_MIN;
        loop {
            let before = offset;
            match self.follow_once(node, unit, &mut offset, sink).await {
                Ok(status) => return Ok(status),
                Err(e) if e.is_transient() => {
                    tracing::info!(%node, %unit, error = %e, offset, "results interrupted; resuming");
                    if offset > before {
                        wait = RETRY_MIN;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_MAX);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One results session from `*offset` (advanced by what is written to `sink`).
    ///
    /// # Errors
    /// As [`WorkClient::follow_from`], and [`ClientError::Unreachable`] when the path breaks.
    pub async fn follow_once(
        &self,
        node: &NodeId,
        unit: UnitId,
        offset: &mut u64,
        sink: &mut (dyn AsyncWrite + Unpin + Send),
    ) -> Result<RemoteStatus, ClientError> {
        let mut stream = self.connect(node).await?;
        let request = Request::Results {
            unit,
            offset: *offset,
        };
        protocol::write(&mut stream, &request)
            .await
            .map_err(|e| ClientError::from_protocol(node, e))?;
        let _ = stream.shutdown().await;
        read_results(&mut stream, node, offset, sink).await
    }

    /// The unit's status on `node`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn status(&self, node: &NodeId, unit: UnitId) -> Result<RemoteStatus, ClientError> {
        match self.ask(node, &Request::Status { unit }).await? {
            Reply::Status(status) => Ok(status),
            other => Err(Self::unexpected(node, &other)),
        }
    }

    /// Asks `node` to cancel `unit`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn cancel(&self, node: &NodeId, unit: UnitId) -> Result<(), ClientError> {
        self.ok(node, &Request::Cancel { unit }).await
    }

    /// Asks `node` to cancel and delete `unit`.
    ///
    /// # Errors
    /// [`ClientError`].
    pub async fn release(&self, node: &NodeId, unit: UnitId) -> Result<(), ClientError> {
        self.ok(node, &Request::Release { unit }).await
    }

    async fn ok(&self, node: &NodeId, request: &Request) -> Result<(), ClientError> {
        match self.ask(node, request).await? {
            Reply::Ok => Ok(()),
            other => Err(Self::unexpected(node, &other)),
        }
    }
}

/// Sends the whole payload, then half-closes.
async fn send_payload(
    payload: &mut (dyn AsyncRead + Unpin + Send),
    stream: &mut MeshStream,
    node: &NodeId,
) -> Result<(), ClientError> {
    copy_payload(payload, stream, node).await?;
    stream
        .shutdown()
        .await
        .map_err(|e| ClientError::Unreachable {
            node: node.clone(),
            reason: e.to_string(),
        })
}

async fn copy_payload(
    payload: &mut (dyn AsyncRead + Unpin + Send),
    stream: &mut MeshStream,
    node: &NodeId,
) -> Result<(), ClientError> {
    use tokio::io::AsyncReadExt;
    // Small first: most payloads are short (see `readbuf`).
    let mut buf = crate::work::readbuf::ReadBuf::new(256 * 1024);
    loop {
        let n = payload
            .read(buf.space())
            .await
            .map_err(ClientError::Payload)?;
        if n == 0 {
            return Ok(());
        }
        stream
            .write_all(buf.filled(n))
            .await
            .map_err(|e| ClientError::Unreachable {
                node: node.clone(),
                reason: e.to_string(),
            })?;
        buf.read_done(n);
    }
}

/// Reads results frames into `sink` until the end frame.
async fn read_results(
    stream: &mut MeshStream,
    node: &NodeId,
    offset: &mut u64,
    sink: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<RemoteStatus, ClientError> {
    loop {
        let frame = protocol::read(stream)
            .await
            .map_err(|e| ClientError::from_protocol(node, e))?;
        match frame {
            ResultsFrame::Data(data) => {
                sink.write_all(&data).await.map_err(ClientError::Sink)?;
                *offset += data.len() as u64;
            }
            ResultsFrame::End(status) => {
                sink.flush().await.map_err(ClientError::Sink)?;
                return Ok(status);
            }
            ResultsFrame::Refused(refusal) => return Err(refusal.into()),
        }
    }
}
