//! What a circuit carries inside its seal: the endpoints' side of the stream protocol,
//! which relays never see. No IO.

use bytes::{Buf, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::id::ServiceName;

/// One sealed circuit message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Inner {
    /// The opener asks the target's `service` for a stream, offering `window` bytes of
    /// credit; `seq` numbers the session's opens, so a replayed open is refused.
    Open {
        from_service: ServiceName,
        service: ServiceName,
        window: u32,
        seq: u64,
    },
    /// The acceptor takes the stream, offering `window` bytes of credit.
    Accept { window: u32 },
    /// Bytes of the stream, in order.
    Data(Bytes),
    /// The receiver consumed this many more bytes; the sender may send as many more.
    Credit(u32),
    /// The sender will send no more data (a clean end, unlike a reset).
    Fin,
    /// Nothing to say; keeps relays and the peer from idling the circuit out.
    Keepalive,
}

impl Inner {
    /// Encodes for sealing, leaving room for the tag.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_hint() + super::super::seal::TAG_LEN);
        postcard::to_io(self, &mut out).expect("invariant: circuit messages serialise");
        out
    }

    fn encoded_hint(&self) -> usize {
        match self {
            Self::Data(d) => d.len() + 8,
            _ => 64,
        }
    }

    /// Decodes an opened seal.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }

    /// Decodes an opened seal it may keep: the bytes of `Data` are taken from `buf` rather
    /// than copied out of it. Decodes exactly as [`Inner::decode`] does.
    pub(crate) fn decode_owned(mut buf: BytesMut) -> Option<Self> {
        // postcard writes `Data(bytes)` as its variant index, the length and the bytes, the
        // two numbers as LEB128 varints. Anything unusual takes the general path.
        if buf.first() == Some(&DATA_VARIANT)
            && let Some((len, header)) = short_varint(&buf[1..])
            && len <= buf.len() - 1 - header
        {
            buf.advance(1 + header);
            // Like postcard, ignore whatever follows the value.
            buf.truncate(len);
            return Some(Self::Data(buf.freeze()));
        }
        Self::decode(&buf)
    }
}

/// `Inner::Data`'s variant index, as postcard writes it (a one-byte varint).
pub(super) const DATA_VARIANT: u8 = 2;

/// A canonical LEB128 varint of one to three bytes (below 2 MiB, far above any chunk) at the
/// start of `bytes`: its value and length.
fn short_varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, &byte) in bytes.iter().take(3).enumerate() {
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            // A zero last byte after the first is a longer spelling of a smaller number.
            return (i == 0 || byte != 0).then_some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_is_taken_from_the_buffer_and_decodes_as_the_general_path_does() {
        for len in [0usize, 1, 127, 128, 32 * 1024, 70_000] {
            let data = Bytes::from(vec![7u8; len]);
            let encoded = Inner::Data(data.clone()).encode();
            let buf = BytesMut::from(&encoded[..]);
            let start = buf.as_ptr() as usize;
            let Some(Inner::Data(got)) = Inner::decode_owned(buf) else {
                panic!("data of {len} bytes did not decode");
            };
            assert_eq!(got, data);
            if len > 0 {
                // No copy: the bytes still sit in the buffer they arrived in.
                let at = got.as_ptr() as usize;
                assert!(
                    at > start && at < start + encoded.len(),
                    "copied ({len} bytes)"
                );
            }
        }
        let fin = Inner::Fin.encode();
        assert_eq!(
            Inner::decode_owned(BytesMut::from(&fin[..])),
            Some(Inner::Fin)
        );
    }

    proptest! {
        #[test]
        fn any_bytes_decode_alike_both_ways(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let general = Inner::decode(&bytes);
            let owned = Inner::decode_owned(BytesMut::from(&bytes[..]));
            prop_assert_eq!(general, owned);
        }

        #[test]
        fn data_headers_decode_alike_both_ways(
            header in proptest::collection::vec(any::<u8>(), 0..4),
            tail in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut bytes = vec![DATA_VARIANT];
            bytes.extend(header);
            bytes.extend(tail);
            let general = Inner::decode(&bytes);
            let owned = Inner::decode_owned(BytesMut::from(&bytes[..]));
            prop_assert_eq!(general, owned);
        }
    }
}
