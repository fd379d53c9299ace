//! The node-to-node work protocol: typed, versioned messages on a mesh stream to the
//! `work` service, separate from the operator's control protocol.
//!
//! Each message is a postcard frame behind a 4-byte length. A `Submit` is followed by the
//! payload's raw bytes up to the submitter's half-close; a `Results` request is answered
//! by the unit's raw output from the asked offset up to the unit's end, then a close. No
//! IO here beyond reading and writing frames on a stream.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::unit::{UnitId, UnitState};

/// The mesh service that takes remote work.
pub const WORK_SERVICE: &str = "work";

/// Version of this protocol; a node answers a request of another version with an error.
pub const WORK_PROTOCOL_VERSION: u16 = 1;

/// Largest encoded message (requests and replies are small; payloads travel raw).
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// What a submitting node asks of the node that runs its work.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Create a unit of `work_type`; its payload follows this frame until half-close.
    Submit {
        /// The work type.
        work_type: String,
        /// The submission's parameters.
        params: BTreeMap<String, String>,
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
    /// A unit's status.
    Status(RemoteStatus),
    /// Done.
    Ok,
    /// Refused, and why (shown to the operator).
    Error(String),
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
pub async fn write<T: Serialize, W: AsyncWrite + Unpin>(
    out: &mut W,
    body: &T,
) -> Result<(), ProtocolError> {
    let bytes = postcard::to_stdvec(&Envelope {
        version: WORK_PROTOCOL_VERSION,
        body,
    })?;
    let len = u32::try_from(bytes.len()).map_err(|_| ProtocolError::TooLarge(bytes.len()))?;
    out.write_all(&len.to_be_bytes()).await?;
    out.write_all(&bytes).await?;
    out.flush().await?;
    Ok(())
}

/// Reads one message.
///
/// # Errors
/// [`ProtocolError`] for a failed stream, an oversized or undecodable frame, or another
/// protocol version.
pub async fn read<T: for<'de> Deserialize<'de>, R: AsyncRead + Unpin>(
    input: &mut R,
) -> Result<T, ProtocolError> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_MESSAGE_LEN {
        return Err(ProtocolError::TooLarge(len));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes).await?;
    let envelope: Envelope<T> = postcard::from_bytes(&bytes)?;
    if envelope.version != WORK_PROTOCOL_VERSION {
        return Err(ProtocolError::Version(envelope.version));
    }
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
        a.write_all(&[0, 0, 0, 3, 9, 9, 9]).await.unwrap();
        assert!(read::<Request, _>(&mut b).await.is_err());
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(
            read::<Request, _>(&mut b).await,
            Err(ProtocolError::TooLarge(_))
        ));
    }
}
