//! The mesh wire messages: one postcard enum after the handshake, and the handshake's
//! payloads, versioned by the preamble of the first handshake message.
//!
//! Owns the shapes of everything a link carries after its handshake, and their encoding.
//! Decoding is total: any byte string either decodes or yields a [`MessageError`]. No IO.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::lsdb::{Advert, SummaryEntry};
use super::session::SessionMsg;
use crate::ca::SignedCertificate;
use crate::id::NodeId;
use crate::keys::SignedSuccession;

mod shared;

/// Version of the mesh protocol. The initiator states it in clear in the first handshake
/// message, so a responder of another version can name both versions in its refusal.
///
/// Version 2: hellos after authentication, certificates, signed adverts, end-to-end
/// sessions. Version 3: key successions in hellos and adverts (`warren keygen --rotate`).
pub const PROTOCOL_VERSION: u16 = 3;

/// Payload of handshake message 1, in clear: the initiator's protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preamble {
    /// The initiator's [`PROTOCOL_VERSION`].
    pub version: u16,
}

/// Payload of handshake message 2: the responder goes on, or refuses. It does not name itself
/// here: its hello waits until the initiator has been authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResponderPayload {
    /// Go on: send your hello.
    Continue,
    /// Refused before any identity was shown (a version mismatch).
    Refuse(CloseReason),
}

/// Who a node is. The initiator sends it in handshake message 3; the responder answers with
/// its own as the first transport frame, once it has accepted the initiator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's node id.
    pub node: NodeId,
    /// The sender's run epoch (start time, ms): a newer epoch on a new link means the peer
    /// restarted, so an old link to it is stale.
    pub epoch: u64,
    /// The sender's certificate, when it has one.
    pub cert: Option<SignedCertificate>,
    /// The sender's key successions, oldest first, ending at the key of this handshake: a
    /// peer that pinned an older key follows them (at most
    /// [`MAX_CHAIN`](crate::keys::succession::MAX_CHAIN)).
    pub successions: Vec<SignedSuccession>,
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
    #[error("mesh protocol version mismatch: v{sender} refused v{receiver}")]
    VersionMismatch {
        /// The version of the node that refused.
        sender: u16,
        /// The version it refused.
        receiver: u16,
    },
    /// The peer's certificate does not hold (expired, revoked, another node's, ...).
    #[error("certificate refused")]
    BadCertificate,
    /// Too many connections are handshaking; the oldest was dropped.
    #[error("too many unauthenticated connections")]
    TooManyHandshakes,
    /// The peer does not read fast enough; its send queue hit the cap.
    #[error("peer stopped reading (send queue full)")]
    SendQueueFull,
    /// The node is shutting down.
    #[error("node shutting down")]
    Shutdown,
    /// The peer was removed from the node's configuration (a reload).
    #[error("peer removed from the configuration")]
    Removed,
    /// The peer's key was retired by a key succession accepted here; its successor must
    /// be used.
    #[error("key was retired by a key rotation")]
    KeyRetired,
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
    /// The responder's identity: its first frame, and only there.
    Hello(Box<Hello>),
    /// A link-state advert being flooded (or sent on request).
    Advert(Advert),
    /// Which adverts the sender holds (part of its database; `last` on the final part):
    /// sent once when a link comes up, so each side asks for what it lacks.
    DbSummary {
        /// Origins and versions.
        entries: Vec<SummaryEntry>,
        /// Whether this is the last part.
        last: bool,
    },
    /// Please send these origins' adverts.
    DbRequest(Vec<NodeId>),
    /// The adverts asked for by the last request have been sent (those the sender holds).
    DbSent,
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
    /// A ping or traceroute probe.
    EchoRequest {
        /// Sender-chosen random id, echoed back.
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
    /// An end-to-end session handshake message.
    Session(SessionMsg),
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

/// Identifies a stream circuit mesh-wide: the opener and its random number for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CircuitId {
    /// The node that opened the stream.
    pub opener: NodeId,
    /// Random, so a circuit id is neither reused nor guessed.
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

/// Stream circuit operations, as relays see them: opens to pin, sealed traffic to forward,
/// and teardowns. What a circuit carries (its service, data, credit, end) is sealed end to
/// end under the endpoints' session (see `seal.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Opens the circuit: relays pin it to the link it came on and the next one.
    Open {
        /// The endpoints' session whose keys seal the circuit.
        session: u64,
        /// The sealed open (service, credit, sequence number).
        sealed: Bytes,
    },
    /// Sealed circuit traffic, opaque to relays.
    Sealed(Bytes),
    /// The sender is done with the circuit both ways: relays forget it. Carries nothing an
    /// endpoint acts on.
    Close,
    /// The circuit is dead, and why; both ends stop. Unauthenticated (a relay on the path
    /// sends it when a link breaks), so an endpoint never takes it for a clean end.
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
    /// The stream was not accepted in time.
    #[error("the stream was not accepted in time")]
    OpenTimeout,
    /// Nothing crossed the stream for too long.
    #[error("the stream was idle too long")]
    Idle,
    /// A node on the path or the target has too many streams.
    #[error("too many streams at a node on the path")]
    Busy,
    /// The target holds no session with us (it restarted): a new one is needed.
    #[error("no end-to-end session with the target")]
    NoSession,
    /// The end-to-end session could not be set up (the target refused our key, or did
    /// not answer).
    #[error("no end-to-end session could be set up with the target")]
    SessionFailed,
    /// The other end is no longer trusted (its certificate was revoked, or a reload
    /// removed what vouched for it).
    #[error("the other end is no longer trusted")]
    Untrusted,
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

    /// Length of the postcard encoding, found without writing it.
    ///
    /// # Errors
    /// [`MessageError`] if the message does not serialise.
    pub fn encoded_len(&self) -> Result<usize, MessageError> {
        Ok(postcard::serialize_with_flavor(
            self,
            postcard::ser_flavors::Size::default(),
        )?)
    }

    /// Appends the postcard encoding to `out`: the same bytes as [`Message::encode`], written
    /// where they will be sent instead of into a vector of their own.
    ///
    /// # Errors
    /// [`MessageError`] if the message does not serialise (`out` may hold part of it).
    pub fn encode_into(&self, out: &mut BytesMut) -> Result<(), MessageError> {
        postcard::serialize_with_flavor(self, AppendTo(out))?;
        Ok(())
    }

    /// Decodes postcard bytes.
    ///
    /// # Errors
    /// [`MessageError`] for bytes that are not an encoded message.
    pub fn decode(bytes: &[u8]) -> Result<Self, MessageError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// A postcard output that appends to a buffer, a slice at a time.
struct AppendTo<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for AppendTo<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// Encodes a handshake payload.
pub(crate) fn encode_payload<T: Serialize>(payload: &T) -> Vec<u8> {
    postcard::to_stdvec(payload).expect("invariant: handshake payloads always serialise")
}

/// Decodes a handshake payload.
///
/// # Errors
/// [`MessageError`] for bytes that are not an encoded payload.
pub(crate) fn decode_payload<T: for<'de> Deserialize<'de>>(
    bytes: &[u8],
) -> Result<T, MessageError> {
    Ok(postcard::from_bytes(bytes)?)
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
                kind: StreamKind::Sealed(Bytes::from_static(b"payload")),
            }),
        });
        assert_eq!(Message::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn encoding_in_place_writes_the_same_bytes_after_what_was_there() {
        let data = Bytes::from((0..70_000u32).map(|i| i as u8).collect::<Vec<u8>>());
        for msg in [
            Message::Keepalive,
            Message::Close(CloseReason::Shutdown),
            Message::Packet(Packet {
                src: id("a"),
                dst: id("c"),
                hops_left: 7,
                body: PacketBody::Stream(StreamPacket {
                    circuit: CircuitId {
                        opener: id("a"),
                        number: 42,
                    },
                    from_opener: false,
                    kind: StreamKind::Sealed(data.clone()),
                }),
            }),
        ] {
            let mut out = BytesMut::from(&b"before"[..]);
            msg.encode_into(&mut out).unwrap();
            assert_eq!(msg.encoded_len().unwrap(), out.len() - 6);
            assert_eq!(&out[..6], b"before");
            assert_eq!(out[6..], msg.encode().unwrap()[..]);
        }
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
        let hello = Hello {
            node: id("n1"),
            epoch: 7,
            cert: None,
            successions: Vec::new(),
        };
        assert_eq!(
            decode_payload::<Hello>(&encode_payload(&hello)).unwrap(),
            hello
        );
        let msg = Message::Hello(Box::new(hello));
        assert_eq!(Message::decode(&msg.encode().unwrap()).unwrap(), msg);
    }

    #[test]
    fn decoding_rejects_invalid_node_id() {
        // A hello whose node id has a space must not decode into a NodeId.
        let raw = postcard::to_stdvec(&("bad id", 1u64, 0u8)).unwrap();
        assert!(decode_payload::<Hello>(&raw).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&data);
            let _ = decode_payload::<Hello>(&data);
            let _ = decode_payload::<Preamble>(&data);
            let _ = decode_payload::<ResponderPayload>(&data);
        }
    }
}
