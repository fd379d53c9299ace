//! Decoding a received frame without copying the payload of the packets that carry nearly
//! all bytes — sealed stream traffic — out of it: the payload becomes a view of the frame,
//! so a relay copies each byte once (into the next link's outgoing buffer) instead of twice.
//!
//! Everything around the payload is decoded by postcard with the message's own types, so
//! the result is exactly what [`Message::decode`] gives; anything else takes that general
//! path. No IO.

use bytes::Bytes;

use super::{CircuitId, Message, MessageError, Packet, PacketBody, StreamKind, StreamPacket};
use crate::id::NodeId;

/// `Message::Packet`'s variant index, as postcard writes it (a one-byte varint).
const PACKET_VARIANT: u8 = 8;
/// `PacketBody::Stream`'s variant index.
const STREAM_BODY: u8 = 4;
/// `StreamKind::Sealed`'s variant index.
const SEALED_KIND: u8 = 1;

impl Message {
    /// Decodes a received frame as [`Message::decode`] does, except that the sealed payload
    /// of a stream packet is a view of `frame` rather than a copy.
    ///
    /// # Errors
    /// [`MessageError`] for bytes that are not an encoded message.
    pub fn decode_shared(frame: &Bytes) -> Result<Self, MessageError> {
        match sealed_packet(frame) {
            Some(message) => Ok(message),
            None => Self::decode(frame),
        }
    }
}

/// A `Packet` whose body is `Stream` of kind `Sealed`, its payload taken from `frame`.
fn sealed_packet(frame: &Bytes) -> Option<Message> {
    let rest = frame.strip_prefix(&[PACKET_VARIANT])?;
    let ((src, dst, hops_left), rest) =
        postcard::take_from_bytes::<(NodeId, NodeId, u8)>(rest).ok()?;
    let rest = rest.strip_prefix(&[STREAM_BODY])?;
    let ((circuit, from_opener), rest) =
        postcard::take_from_bytes::<(CircuitId, bool)>(rest).ok()?;
    let rest = rest.strip_prefix(&[SEALED_KIND])?;
    // Like postcard's own decoding, whatever follows the value is ignored.
    let (sealed, _) = postcard::take_from_bytes::<&[u8]>(rest).ok()?;
    Some(Message::Packet(Packet {
        src,
        dst,
        hops_left,
        body: PacketBody::Stream(StreamPacket {
            circuit,
            from_opener,
            kind: StreamKind::Sealed(frame.slice_ref(sealed)),
        }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn packet(kind: StreamKind) -> Message {
        Message::Packet(Packet {
            src: NodeId::new("src-node").unwrap(),
            dst: NodeId::new("d").unwrap(),
            hops_left: 200,
            body: PacketBody::Stream(StreamPacket {
                circuit: CircuitId {
                    opener: NodeId::new("opener").unwrap(),
                    number: u64::MAX - 3,
                },
                from_opener: true,
                kind,
            }),
        })
    }

    #[test]
    fn a_sealed_payload_is_a_view_of_the_frame_and_decodes_as_the_general_path_does() {
        for len in [0usize, 1, 127, 128, 16_384, 65_000] {
            let message = packet(StreamKind::Sealed(Bytes::from(vec![9u8; len])));
            let frame = Bytes::from(message.encode().unwrap());
            let got = Message::decode_shared(&frame).unwrap();
            assert_eq!(got, message);
            let Message::Packet(Packet {
                body:
                    PacketBody::Stream(StreamPacket {
                        kind: StreamKind::Sealed(sealed),
                        ..
                    }),
                ..
            }) = got
            else {
                unreachable!("compared equal above");
            };
            if len > 0 {
                let (at, start) = (sealed.as_ptr() as usize, frame.as_ptr() as usize);
                assert!(at > start && at + len <= start + frame.len(), "copied");
            }
        }
        // Other kinds and messages go the general way, with the same result.
        for message in [
            packet(StreamKind::Close),
            packet(StreamKind::Open {
                session: 7,
                sealed: Bytes::from_static(b"open"),
            }),
            Message::Keepalive,
        ] {
            let frame = Bytes::from(message.encode().unwrap());
            assert_eq!(Message::decode_shared(&frame).unwrap(), message);
        }
    }

    /// Bytes that look like a sealed stream packet up to `cut`, then anything.
    fn near_packet(cut: usize, tail: &[u8]) -> Vec<u8> {
        let message = packet(StreamKind::Sealed(Bytes::from_static(b"0123456789")));
        let mut bytes = message.encode().unwrap();
        bytes.truncate(cut.min(bytes.len()));
        bytes.extend_from_slice(tail);
        bytes
    }

    fn same_both_ways(bytes: &[u8]) -> Result<(), TestCaseError> {
        let general = Message::decode(bytes).ok();
        let shared = Message::decode_shared(&Bytes::copy_from_slice(bytes)).ok();
        prop_assert_eq!(general, shared);
        Ok(())
    }

    proptest! {
        #[test]
        fn any_bytes_decode_alike_both_ways(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            same_both_ways(&bytes)?;
        }

        #[test]
        fn cut_or_corrupted_packets_decode_alike_both_ways(
            cut in 0usize..60,
            tail in proptest::collection::vec(any::<u8>(), 0..40),
            flip in (0usize..60, any::<u8>()),
        ) {
            let mut bytes = near_packet(cut, &tail);
            same_both_ways(&bytes)?;
            if let Some(b) = bytes.get_mut(flip.0) {
                *b ^= flip.1;
            }
            same_both_ways(&bytes)?;
        }
    }
}
