//! The node-to-node work protocol: typed, versioned messages on a mesh stream to the `work`
//! service, separate from the operator's control protocol.
//!
//! Each message is a postcard frame behind a 4-byte length. A `Submit` is answered with
//! `Created`; the payload's raw bytes follow up to the submitter's half-close (the submitter
//! sends them right behind the `Submit`, without waiting for `Created`), then `Started` (or
//! a refusal). A `Submit` whose nonce the node has seen before from the same
//! key, for a unit that has its payload, is answered with `Existing` instead and no payload
//! follows. `Results` (and a `Submit` asked to follow) are answered with
//! [`ResultsFrame`]s: output from the asked offset, then the unit's final status. Refusals are
//! typed, so a client can tell "unknown unit" (permanent) from a broken path (retry). The
//! peer is whoever the stream's end-to-end session proved, never a field of a message. No IO
//! here beyond reading and writing frames on a stream.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::signature::WorkSignature;
use super::unit::{SubmitNonce, UnitId, UnitState};
use crate::access::Refusal;
pub use crate::ansible::transmit::manifest::MAX_MANIFEST_LEN;
use crate::id::NodeId;

/// The mesh service that takes remote work.
pub const WORK_SERVICE: &str = "work";

/// Version of this protocol; a node answers a request of another version with a refusal
/// naming both.
pub const WORK_PROTOCOL_VERSION: u16 = 3;

/// Largest encoded message (requests and replies are small; payloads travel raw, results in
/// chunks of at most [`RESULTS_CHUNK`]).
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// Output bytes per results frame.
pub const RESULTS_CHUNK: usize = 64 * 1024;

/// What a submitting node asks of the node that runs its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create a unit of `work_type`; its payload follows `Created` until half-close.
    Submit {
        /// The work type.
        work_type: String,
        /// The submission's parameters.
        params: BTreeMap<String, String>,
        /// The submitting node's signature, when it signs work (receptorctl's `signwork`).
        signature: Option<Box<WorkSignature>>,
        /// Stream the unit's results on this stream once started, from this offset (saves a
        /// second stream).
        follow: Option<u64>,
        /// The submitter's name for this submission (see [`SubmitNonce`]): sent again after
        /// a restart, it finds the unit the first one made.
        nonce: Option<SubmitNonce>,
    },
    /// Send the unit's output from `offset` until the unit is finished.
    Results {
        /// The unit on the running node.
        unit: UnitId,
        /// Bytes already received.
        offset: u64,
    },
    /// The unit's status.
    Status {
        /// The unit.
        unit: UnitId,
    },
    /// Cancel the unit.
    Cancel {
        /// The unit.
        unit: UnitId,
    },
    /// Cancel and delete the unit.
    Release {
        /// The unit.
        unit: UnitId,
    },
    /// Create a unit of `work_type` whose payload is a transmit stream the node assembles
    /// from a manifest (the next frame, at most [`MAX_MANIFEST_LEN`] bytes) and its content
    /// cache. Answered with `Lacking`, then the contents it lacks and the inline ones follow
    /// raw, in manifest order, up to the submitter's half-close; then `Started` (or a
    /// refusal). A node without a content cache refuses with `ContentCacheOff` before
    /// making a unit: the submitter sends the stream whole instead.
    SubmitManifest {
        /// The work type.
        work_type: String,
        /// The submission's parameters.
        params: BTreeMap<String, String>,
        /// As for `Submit`.
        follow: Option<u64>,
    },
}

impl Request {
    /// Whether the request changes something (logged with the requester's identity).
    pub fn is_mutating(&self) -> bool {
        matches!(
            self,
            Self::Submit { .. }
                | Self::SubmitManifest { .. }
                | Self::Cancel { .. }
                | Self::Release { .. }
        )
    }
}

/// A unit's state as the running node reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteStatus {
    /// Its state.
    pub state: UnitState,
    /// Its detail.
    pub detail: String,
    /// Bytes of output so far.
    pub stdout_size: u64,
}

/// The running node's answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The unit exists; send the payload.
    Created {
        /// Its id on the running node.
        unit: UnitId,
    },
    /// The payload arrived and the unit is queued to run.
    Started,
    /// This submission's nonce was seen before: the unit made then has its payload (send
    /// none); it runs, or ran, as usual.
    Existing {
        /// Its id on the running node.
        unit: UnitId,
    },
    /// A unit's status.
    Status(RemoteStatus),
    /// Done.
    Ok,
    /// Refused, and why.
    Refused(WorkRefusal),
    /// The unit for a `SubmitManifest` exists; send the contents of these entries (indices
    /// into the manifest) and every inline one.
    Lacking {
        /// Its id on the running node.
        unit: UnitId,
        /// The entries whose contents the node does not hold, ascending.
        lacking: Vec<u32>,
    },
}

/// One frame of a results stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResultsFrame {
    /// Output bytes, in order.
    Data(Bytes),
    /// The unit is finished and every byte of its output was sent: its final status.
    End(RemoteStatus),
    /// The request was refused (no such unit, not yours).
    Refused(WorkRefusal),
}

/// Why a node refused a work request. `Display` is the operator's message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum WorkRefusal {
    /// No such unit, or not one the requester may see.
    #[error("unknown work unit {unit}")]
    UnknownUnit {
        /// The unit asked for.
        unit: UnitId,
    },
    /// The access policy does not allow it.
    #[error(transparent)]
    NotAllowed(#[from] Refusal),
    /// The node does not offer the work type.
    #[error("node {node} does not offer work type {work_type}")]
    UnknownWorkType {
        /// The node.
        node: NodeId,
        /// The work type.
        work_type: String,
    },
    /// A limit of the node was exceeded.
    #[error("{what} exceeds node {node}'s limit of {limit}")]
    OverLimit {
        /// The node.
        node: NodeId,
        /// What ("the payload (bytes)").
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The parameters are not acceptable for the work type.
    #[error("bad parameters: {reason}")]
    BadParameters {
        /// Why.
        reason: String,
    },
    /// The node requires signed work and the submission's signature is missing or invalid.
    #[error("node {node} requires signed work: {reason}")]
    Signature {
        /// The node.
        node: NodeId,
        /// What is wrong with the signature.
        reason: String,
    },
    /// The node could not do it (its disk, for example).
    #[error("node {node} failed: {reason}")]
    Internal {
        /// The node.
        node: NodeId,
        /// What failed.
        reason: String,
    },
    /// The node's disk is below its free-space floor.
    #[error("node {node} refuses new work: {reason} (the floor is [work] free-space-floor-mb)")]
    NoRoom {
        /// The node.
        node: NodeId,
        /// How much is free, against the floor.
        reason: String,
    },
    /// The node is draining before it stops and takes no new units.
    #[error(
        "node {node} is draining (it stops once its running units end) and takes no new work; submit again once it has restarted, or to another node"
    )]
    Draining {
        /// The node.
        node: NodeId,
    },
    /// The node takes no content-addressed submission now: it keeps no content cache
    /// (`[work] content-cache-mb = 0`), or as many are being assembled as it allows. Send
    /// the payload whole.
    #[error(
        "node {node} takes no content-addressed submission now (its [work] content-cache-mb is 0, or it is assembling as many as it allows): send the payload whole"
    )]
    ContentCacheOff {
        /// The node.
        node: NodeId,
    },
    /// A content-addressed submission's manifest or contents were refused.
    #[error("node {node} refused the submission's manifest: {reason}")]
    Manifest {
        /// The node.
        node: NodeId,
        /// What was wrong.
        reason: String,
    },
    /// The peer speaks another version of this protocol.
    #[error("work protocol version mismatch: node {node} speaks v{ours}, the request v{theirs}")]
    Version {
        /// The node.
        node: NodeId,
        /// Its version.
        ours: u16,
        /// The request's version.
        theirs: u16,
    },
}

/// A message with its protocol version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope<T> {
    version: u16,
    body: T,
}

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The stream failed.
    #[error("work stream: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length is over [`MAX_MESSAGE_LEN`].
    #[error("work message of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A frame did not decode.
    #[error("undecodable work message: {0}")]
    Decode(#[from] postcard::Error),
    /// The peer speaks another version.
    #[error("peer speaks work protocol v{0}, this node v{WORK_PROTOCOL_VERSION}")]
    Version(u16),
}

/// Writes one message.
///
/// # Errors
/// [`ProtocolError`] when the stream fails.
pub async fn write<T: Serialize, W: AsyncWrite + Unpin + ?Sized>(
    out: &mut W,
    body: &T,
) -> Result<(), ProtocolError> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: WORK_PROTOCOL_VERSION,
        body,
    })?;
    let len = u32::try_from(bytes.len()).map_err(|_| ProtocolError::TooLarge(bytes.len()))?;
    let mut frame = Vec::with_capacity(4 + bytes.len());
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&bytes);
    out.write_all(&frame).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one message.
///
/// # Errors
/// [`ProtocolError`] for a failed stream, an oversized or undecodable frame, or another
/// protocol version.
pub async fn read<T: for<'de> Deserialize<'de>, R: AsyncRead + Unpin + ?Sized>(
    input: &mut R,
) -> Result<T, ProtocolError> {
    read_limited(input, MAX_MESSAGE_LEN).await
}

/// Reads one message of at most `limit` bytes (a manifest's limit is its own).
///
/// # Errors
/// As [`read`].
pub async fn read_limited<T: for<'de> Deserialize<'de>, R: AsyncRead + Unpin + ?Sized>(
    input: &mut R,
    limit: usize,
) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes).await?;
    // The version comes first: a message of another version is named as such, not as
    // garbage, even if its body would not decode.
    let (version, _) = postcard::take_from_bytes::<u16>(&bytes)?;
    if version != WORK_PROTOCOL_VERSION {
        return Err(ProtocolError::Version(version));
    }
    let envelope: Envelope<T> = postcard::from_bytes(&bytes)?;
    Ok(envelope.body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn messages_round_trip_and_garbage_is_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let request = Request::Results {
            unit: "Ab3xYz09".parse().unwrap(),
            offset: 42,
        };
        write(&mut a, &request).await.unwrap();
        assert_eq!(read::<Request, _>(&mut b).await.unwrap(), request);
        a.write_all(&[0, 0, 0, 3, 2, 9, 9]).await.unwrap();
        assert!(read::<Request, _>(&mut b).await.is_err());
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read::<Request, _>(&mut b).await,
            Err(ProtocolError::TooLarge(_))
        ));
    }

    #[tokio::test]
    async fn another_version_is_named() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        // Version 1's envelope: a u16 1 then anything.
        a.write_all(&[0, 0, 0, 3, 1, 0, 0]).await.unwrap();
        assert!(matches!(
            read::<Request, _>(&mut b).await,
            Err(ProtocolError::Version(1))
        ));
    }
}
