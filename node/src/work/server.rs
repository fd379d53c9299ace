//! The mesh `work` service: other nodes submit, follow, cancel and release units here.
//!
//! Every request is judged by the stream's proven peer (its end-to-end session): submitting
//! needs an allow rule for the work type (and, where this node requires it, a valid work
//! signature); a unit belongs to its submitter, so any other peer without control rights is
//! told "unknown unit" and learns nothing of its existence. Refusals and every mutating
//! request are logged at info with the peer's identity.

mod contents;

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::core::{PayloadError, Requester};
use super::driver::{Created, Submission, Work};
use super::error::WorkError;
use super::protocol::{
    self, ProtocolError, RESULTS_CHUNK, RemoteStatus, Reply, Request, ResultsFrame,
    WORK_PROTOCOL_VERSION, WORK_SERVICE, WorkRefusal,
};
use super::readbuf::ReadBuf;
use super::signature::{self, Submission as Signed, Verifier, WorkSignature};
use super::unit::UnitId;
use crate::access::{AccessPolicy, Act};
use crate::id::ServiceName;
use crate::mesh::driver::{MeshHandle, MeshStream, PeerIdentity};

/// What the service enforces besides the access policy.
pub struct ServerSetup {
    /// Who may do what (replaced on reload).
    pub access: watch::Receiver<Arc<AccessPolicy>>,
    /// Which work signatures are required and trusted (replaced on reload).
    pub signed: watch::Receiver<SignedWork>,
    /// The content cache for content-addressed submissions (`None`: off, such submissions
    /// are told to send their payload whole).
    pub contents: Option<Arc<super::cache::ContentCache>>,
}

/// The node's rule for signed work.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignedWork {
    /// Whether submissions must be signed by one of `keys`.
    pub required: bool,
    /// The keys whose work signatures are trusted.
    pub keys: Vec<crate::host::signing::SignerKey>,
}

/// How long a results session waits, after its last frame, for the peer to close: the
/// session counts as in flight until the peer has everything (a draining node waits for it).
const RESULTS_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

struct Server {
    work: Work,
    /// Results sessions in flight (a draining node lets them finish).
    results_in_flight: watch::Sender<usize>,
    access: watch::Receiver<Arc<AccessPolicy>>,
    signed: watch::Receiver<SignedWork>,
    /// Remembers the nonces seen; its keys follow `signed`.
    verifier: Mutex<Verifier>,
    contents: Option<Arc<super::cache::ContentCache>>,
}

/// Serves the `work` mesh service until the mesh stops. The receiver counts the results
/// sessions in flight: a session ends once its peer has read the unit's end.
pub fn serve(work: Work, mesh: &MeshHandle, setup: ServerSetup) -> watch::Receiver<usize> {
    let (results_in_flight, sessions) = watch::channel(0);
    let service = ServiceName::new(WORK_SERVICE).expect("invariant: valid service name");
    let Ok(mut incoming) = mesh.listen(&service) else {
        return sessions;
    };
    let server = Arc::new(Server {
        work,
        results_in_flight,
        access: setup.access,
        verifier: Mutex::new(Verifier::new(Vec::new())),
        signed: setup.signed,
        contents: setup.contents,
    });
    tokio::spawn(async move {
        while let Some(stream) = incoming.recv().await {
            let server = server.clone();
            tokio::spawn(async move {
                let peer = stream.identity().clone();
                if let Err(e) = server.answer(stream).await {
                    tracing::debug!(peer = %peer.node, error = %e, "work session ended");
                }
            });
        }
    });
    sessions
}

/// Counts one session in flight while it lives.
struct InFlight<'a>(&'a watch::Sender<usize>);

impl<'a> InFlight<'a> {
    fn enter(count: &'a watch::Sender<usize>) -> Self {
        count.send_modify(|n| *n += 1);
        Self(count)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Server {
    fn node(&self) -> &crate::id::NodeId {
        self.work.node()
    }

    async fn answer(&self, mut stream: MeshStream) -> Result<(), ProtocolError> {
        let peer = stream.identity().clone();
        let request: Request = match protocol::read(&mut stream).await {
            Ok(request) => request,
            Err(ProtocolError::Version(theirs)) => {
                let refusal = WorkRefusal::Version {
                    node: self.node().clone(),
                    ours: WORK_PROTOCOL_VERSION,
                    theirs,
                };
                return finish(&mut stream, &Reply::Refused(refusal)).await;
            }
            Err(e) => return Err(e),
        };
        if request.is_mutating() {
            tracing::info!(peer = %peer.node, key = %peer.key, request = %describe(&request), "work request");
        }
        let access = self.access.borrow().clone();
        let by = if access.may_control(&peer) {
            Requester::Operator
        } else {
            Requester::Peer(peer.owner())
        };
        match request {
            Request::Submit {
                work_type,
                params,
                signature,
                follow,
                nonce,
            } => {
                let submit = SubmitRequest {
                    work_type,
                    params,
                    signature: signature.map(|s| *s),
                    follow,
                    nonce,
                };
                self.submit(&mut stream, &peer, &access, &by, submit).await
            }
            Request::SubmitManifest {
                work_type,
                params,
                follow,
            } => {
                let submit = SubmitRequest {
                    work_type,
                    params,
                    signature: None,
                    follow,
                    nonce: None,
                };
                (self.submit_manifest(&mut stream, &peer, &access, &by, submit)).await
            }
            Request::Results { unit, offset } => self.results(&mut stream, unit, offset, &by).await,
            Request::Status { unit } => {
                let reply = match self.work.status(unit, &by).await {
                    Ok(s) => Reply::Status(RemoteStatus {
                        state: s.state,
                        detail: s.detail,
                        stdout_size: s.stdout_size,
                    }),
                    Err(e) => self.refuse(&peer, &e),
                };
                finish(&mut stream, &reply).await
            }
            Request::Cancel { unit } => {
                let reply = self.done(&peer, self.work.cancel(unit, &by).await);
                finish(&mut stream, &reply).await
            }
            Request::Release { unit } => {
                let reply = self.done(&peer, self.work.release(unit, false, &by).await);
                finish(&mut stream, &reply).await
            }
        }
    }

    fn refuse(&self, peer: &PeerIdentity, e: &WorkError) -> Reply {
        tracing::info!(peer = %peer.node, key = %peer.key, refusal = %e, "work request refused");
        Reply::Refused(e.to_refusal(self.node()))
    }

    fn done(&self, peer: &PeerIdentity, result: Result<(), WorkError>) -> Reply {
        match result {
            Ok(()) => Reply::Ok,
            Err(e) => self.refuse(peer, &e),
        }
    }

    async fn submit(
        &self,
        stream: &mut MeshStream,
        peer: &PeerIdentity,
        access: &AccessPolicy,
        by: &Requester,
        request: SubmitRequest,
    ) -> Result<(), ProtocolError> {
        if let Err(e) = self.admit(peer, access, &request) {
            let reply = self.refuse(peer, &e);
            return finish(stream, &reply).await;
        }
        let submission = Submission {
            node: self.node().to_string(),
            work_type: request.work_type.clone(),
            params: request.params.clone(),
            submitter: (peer.node.clone(), Some(peer.owner())),
            ttl: None,
            sign_work: false,
        };
        let unit = match self.work.create_submitted(submission, request.nonce).await {
            Ok(Created::New(unit)) => unit,
            Ok(Created::Existing(unit)) => {
                // The payload sent again is not needed: read it away first (no more than a
                // payload may hold), so the results that follow never wait on a submitter
                // still sending.
                let limit = self.work.max_payload().saturating_add(1);
                tokio::io::copy(&mut (&mut *stream).take(limit), &mut tokio::io::sink()).await?;
                protocol::write(stream, &Reply::Existing { unit }).await?;
                if let Some(offset) = request.follow {
                    return self.results(stream, unit, offset, by).await;
                }
                stream.shutdown().await?;
                return Ok(());
            }
            Err(e) => {
                let reply = self.refuse(peer, &e);
                return finish(stream, &reply).await;
            }
        };
        protocol::write(stream, &Reply::Created { unit }).await?;
        let node = self.node().clone();
        let signature = request.signature.clone();
        let check = move |digest: &[u8; 32]| match &signature {
            Some(sig) => signature::check_payload(sig, digest)
                .map_err(|source| PayloadError::Signature { node, source }),
            None => Ok(()),
        };
        let reply = match self.work.start_checked(unit, stream, check).await {
            Ok(_) => Reply::Started,
            Err(e) => self.refuse(peer, &e),
        };
        let started = reply == Reply::Started;
        protocol::write(stream, &reply).await?;
        if let (true, Some(offset)) = (started, request.follow) {
            return self.results(stream, unit, offset, by).await;
        }
        stream.shutdown().await?;
        Ok(())
    }

    /// The access policy and the work signature.
    fn admit(
        &self,
        peer: &PeerIdentity,
        access: &AccessPolicy,
        request: &SubmitRequest,
    ) -> Result<(), WorkError> {
        access.check(self.node(), peer, Act::Submit(&request.work_type))?;
        let signature_error = |source| WorkError::Signature {
            node: self.node().clone(),
            source,
        };
        let rule = self.signed.borrow().clone();
        match &request.signature {
            None if rule.required => Err(signature_error(signature::SignatureError::Missing)),
            None => Ok(()),
            Some(sig) => {
                let signed = Signed {
                    target: self.node(),
                    submitter: &peer.node,
                    work_type: &request.work_type,
                    params: &request.params,
                };
                let mut verifier = self
                    .verifier
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                verifier.trust(rule.keys);
                verifier
                    .check(&signed, sig, crate::clock::now_ms())
                    .map_err(signature_error)
            }
        }
    }

    /// Streams the unit's output from `offset`, then its final status.
    async fn results(
        &self,
        stream: &mut MeshStream,
        unit: UnitId,
        offset: u64,
        by: &Requester,
    ) -> Result<(), ProtocolError> {
        let _in_flight = InFlight::enter(&self.results_in_flight);
        let mut reader = match self.work.results(unit, offset, by).await {
            Ok(reader) => reader,
            Err(e) => {
                let refusal = e.to_refusal(self.node());
                return finish_results(stream, &ResultsFrame::Refused(refusal)).await;
            }
        };
        // Small first: most units' results are a few bytes (see `readbuf`).
        let mut buf = ReadBuf::new(RESULTS_CHUNK);
        loop {
            let n = reader.read(buf.space()).await?;
            if n == 0 {
                break;
            }
            let frame = ResultsFrame::Data(bytes::Bytes::copy_from_slice(buf.filled(n)));
            protocol::write(stream, &frame).await?;
            buf.read_done(n);
        }
        let end = match self.work.status(unit, by).await {
            Ok(s) => ResultsFrame::End(RemoteStatus {
                state: s.state,
                detail: s.detail,
                stdout_size: s.stdout_size,
            }),
            Err(e) => ResultsFrame::Refused(e.to_refusal(self.node())),
        };
        finish_results(stream, &end).await
    }
}

/// A submission as the service sees it.
struct SubmitRequest {
    work_type: String,
    params: std::collections::BTreeMap<String, String>,
    signature: Option<WorkSignature>,
    follow: Option<u64>,
    nonce: Option<crate::work::unit::SubmitNonce>,
}

async fn finish(stream: &mut MeshStream, reply: &Reply) -> Result<(), ProtocolError> {
    protocol::write(stream, reply).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Writes the last frame and waits (at most [`RESULTS_LINGER`]) for the peer to close, so
/// the session ends only once the peer has read everything.
async fn finish_results(
    stream: &mut MeshStream,
    frame: &ResultsFrame,
) -> Result<(), ProtocolError> {
    protocol::write(stream, frame).await?;
    stream.shutdown().await?;
    let mut rest = [0u8; 256];
    let until_closed = async { while stream.read(&mut rest).await.is_ok_and(|n| n > 0) {} };
    let _ = tokio::time::timeout(RESULTS_LINGER, until_closed).await;
    Ok(())
}

/// A request for the log, without its parameters (they may hold secrets).
fn describe(request: &Request) -> String {
    match request {
        Request::Submit {
            work_type,
            signature,
            ..
        } => format!(
            "submit {work_type}{}",
            if signature.is_some() { " (signed)" } else { "" }
        ),
        Request::SubmitManifest { work_type, .. } => format!("submit {work_type} (manifest)"),
        Request::Results { unit, offset } => format!("results {unit} from {offset}"),
        Request::Status { unit } => format!("status {unit}"),
        Request::Cancel { unit } => format!("cancel {unit}"),
        Request::Release { unit } => format!("release {unit}"),
    }
}
