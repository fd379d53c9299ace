//! The mesh wire messages: one postcard enum, versioned by the handshake prologue and the
//! hello payload.
//!
//! Owns the shapes of everything a link carries after its handshake, and their encoding.
//! Decoding is total: any byte string either decodes or yields a [`MessageError`]. No IO.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::lsdb::Advert;
use crate::id::{NodeId, ServiceName};

/// Version of the mesh protocol. It is part of the Noise prologue, so nodes of different
/// versions fail the handshake instead of misreading each other, and it is repeated in the
/// hello so the failure can be explained.
pub const PROTOCOL_VERSION: u16 = 1;

/// Payload of the handshake messages that carry one (XX messages 2 and 3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HandshakePayload {
    /// "I am this node, speaking this protocol version."
    Hello {
        /// The sender's node id.
        node: NodeId,
        /// The sender's [`PROTOCOL_VERSION`].
        version: u16,
        /// The sender's run epoch (start time, ms): a newer epoch on a new link means the
        /// peer restarted, so an old link to it is stale.
        epoch: u64,
    },
    /// The initiator refuses the responder's identity (sent in message 3 instead of a hello).
    Refuse(CloseReason),
}

/// Why a link was closed or refused. Sent to the peer and logged on both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum CloseReason {
    /// The peer's static key is not in the trust list.
    #[error("untrusted key")]
    UntrustedKey,
    /// The peer's key is trusted only as another node id.
    #[error("key is pinned to another node id")]
    KeyPinnedToOtherNode,
    /// The peer claims a node id that is pinned to another key.
    #[error("node id is pinned to another key")]
    IdPinnedToOtherKey,
    /// The peer claims our own node id.
    #[error("peer claims our own node id")]
    DuplicateNodeId,
    /// Another link to the same peer won; this one is surplus.
    #[error("a link to this peer already exists")]
    DuplicateLink,
    /// Nothing was heard from the peer within the idle timeout.
    #[error("idle timeout")]
    IdleTimeout,
    /// The handshake did not finish in time.
    #[error("handshake timeout")]
    HandshakeTimeout,
    /// The peer sent something that is not valid protocol.
    #[error("protocol violation")]
    ProtocolViolation,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch")]
    VersionMismatch,
    /// The peer does not read fast enough; its send queue hit the cap.
    #[error("peer stopped reading (send queue full)")]
    SendQueueFull,
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
}

/// A message on an established link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// Sent when the link has been quiet for the keepalive interval.
    Keepalive,
    /// The last message under the old sending key; the receiver rekeys its receiving side.
    Rekey,
    /// The sender is closing the link, and why.
    Close(CloseReason),
    /// A link-state advert being flooded.
    Advert(Advert),
    /// A packet routed hop by hop towards `dst`.
    Packet(Packet),
}

/// A routed packet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Packet {
    /// The node that sent it.
    pub src: NodeId,
    /// The node it is for.
    pub dst: NodeId,
    /// Relays left before the packet expires; a relay that would forward it at 0 answers
    /// with [`Unreachable::HopLimit`] instead (which traceroute relies on).
    pub hops_left: u8,
    /// What it carries.
    pub body: PacketBody,
}

/// What a routed packet carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PacketBody {
    /// An unreliable datagram between services.
    Datagram {
        /// The sending service.
        from_service: ServiceName,
        /// The receiving service.
        to_service: ServiceName,
        /// The bytes.
        data: Bytes,
    },
    /// A ping or traceroute probe.
    EchoRequest {
        /// Sender-chosen id, echoed back.
        probe: u64,
    },
    /// The answer to [`PacketBody::EchoRequest`].
    EchoReply {
        /// The request's id.
        probe: u64,
    },
    /// A packet (or probe) could not be delivered.
    Unreachable {
        /// Why.
        reason: Unreachable,
        /// The probe id, when the failed packet was a probe.
        probe: Option<u64>,
        /// The node the failed packet was for.
        target: NodeId,
    },
    /// A packet of a stream circuit.
    Stream(StreamPacket),
}

/// Why a packet could not be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Unreachable {
    /// A node on the way has no route to the target.
    #[error("no route")]
    NoRoute,
    /// The packet ran out of hops.
    #[error("hop limit exceeded")]
    HopLimit,
}

/// Identifies a stream circuit mesh-wide: the opener and its number for the stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CircuitId {
    /// The node that opened the stream.
    pub opener: NodeId,
    /// The opener's number for it, unique per opener run (the run's epoch is mixed in).
    pub number: u64,
}

/// A packet of a stream circuit; relays forward it along the circuit's pinned path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamPacket {
    /// The circuit.
    pub circuit: CircuitId,
    /// True when travelling from the opener to the acceptor.
    pub from_opener: bool,
    /// What happens.
    pub kind: StreamKind,
}

/// Stream circuit operations.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Opener asks the target's `service` for a stream, offering `window` bytes of credit.
    Open {
        /// The opener's local service name (informational, like a source port).
        from_service: ServiceName,
        /// The service asked for.
        service: ServiceName,
        /// Bytes the acceptor may send before further credit.
        window: u32,
    },
    /// The acceptor takes the stream, offering `window` bytes of credit.
    Accept {
        /// Bytes the opener may send before further credit.
        window: u32,
    },
    /// Bytes of the stream, in order.
    Data(Bytes),
    /// The receiver consumed this many more bytes; the sender may send as many more.
    Credit(u32),
    /// The sender will send no more data.
    Fin,
    /// The stream is dead, and why; both ends stop.
    Reset(ResetReason),
}

/// Why a stream was reset. Resuming is the job of the layer above.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ResetReason {
    /// A link on the stream's path went down.
    #[error("a link on the stream's path went down")]
    PathBroken,
    /// No route to the target node.
    #[error("no route to the target node")]
    NoRoute,
    /// The target node has no listener for the service.
    #[error("no such service on the target node")]
    NoService,
    /// An endpoint closed the stream without finishing it.
    #[error("stream cancelled by the other end")]
    Cancelled,
    /// The peer broke the protocol (for example sent past its credit).
    #[error("stream protocol violation")]
    ProtocolViolation,
    /// The packet exceeded the hop limit.
    #[error("hop limit exceeded")]
    HopLimit,
}

/// A message that could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("undecodable mesh message: {0}")]
pub struct MessageError(#[from] postcard::Error);

impl Message {
    /// Encodes to postcard bytes.
    ///
    /// # Errors
    /// [`MessageError`] only if serialisation itself fails (it does not for these types).
    pub fn encode(&self) -> Result<Vec<u8>, MessageError> {
        Ok(postcard::to_stdvec(self)?)
    }

    /// Decodes postcard bytes.
    ///
    /// # Errors
    /// [`MessageError`] for bytes that are not an encoded message.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

impl HandshakePayload {
    /// Encodes to postcard bytes.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("invariant: handshake payloads always serialise")
    }

    /// Decodes postcard bytes.
    ///
    /// # Errors
    /// [`MessageError`] for bytes that are not an encoded payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    #[test]
    fn packet_round_trips() {
        let msg = Message::Packet(Packet {
            src: id("a"),
            dst: id("c"),
            hops_left: 7,
            body: PacketBody::Stream(StreamPacket {
                circuit: CircuitId {
                    opener: id("a"),
                    number: 42,
                },
                from_opener: true,
                kind: StreamKind::Data(Bytes::from_static(b"payload")),
            }),
        });
        assert_eq!(Message::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn close_reasons_round_trip() {
        for reason in [CloseReason::UntrustedKey, CloseReason::Shutdown] {
            let msg = Message::Close(reason);
            assert_eq!(Message::decode(&msg.encode().unwrap()).unwrap(), msg);
        }
    }

    #[test]
    fn hello_round_trips() {
        let hello = HandshakePayload::Hello {
            node: id("n1"),
            version: PROTOCOL_VERSION,
            epoch: 7,
        };
        assert_eq!(HandshakePayload::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn decoding_rejects_invalid_node_id() {
        // A hello whose node id has a space must not decode into a NodeId.
        let raw = postcard::to_stdvec(&(0u32, "bad id", 1u16)).unwrap();
        assert!(HandshakePayload::decode(&raw).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&data);
            let _ = HandshakePayload::decode(&data);
        }
    }
}
