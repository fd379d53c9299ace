//! [`StreamData`]: bytes an application hands a stream, cut into chunks and laid out as the
//! plaintext of sealed `Inner::Data` messages as they are copied from the application's
//! buffer (into buffers of the node's [`ChunkPool`]), so sealing them takes no further copy
//! and no allocation. No IO.

use bytes::{BufMut, Bytes, BytesMut};

use super::MAX_CHUNK;
use super::inner::DATA_VARIANT;
use super::pool::ChunkPool;
use crate::mesh::seal::TAG_LEN;

/// Room for `Inner::Data`'s variant index and length (a varint of at most three bytes
/// for any chunk).
pub(super) const HEADER_ROOM: usize = 4;

/// Bytes for a stream, chunked and encoded for sealing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamData {
    /// Each chunk as `Inner::Data`'s encoding, with spare capacity for the tag, and the
    /// stream bytes it carries.
    chunks: Vec<(BytesMut, usize)>,
    len: usize,
}

impl StreamData {
    /// Copies `bytes`, cut into chunks of at most [`MAX_CHUNK`] bytes of about equal size
    /// (so a write a little over a chunk does not leave a sliver of a packet), into fresh
    /// buffers.
    pub fn copy_from(bytes: &[u8]) -> Self {
        Self::copy_pooled(bytes, &ChunkPool::new())
    }

    /// [`StreamData::copy_from`] into buffers of `pool`.
    pub fn copy_pooled(bytes: &[u8], pool: &ChunkPool) -> Self {
        let pieces = bytes.len().div_ceil(MAX_CHUNK).max(1);
        let size = bytes.len().div_ceil(pieces).max(1);
        let chunks = (bytes.chunks(size))
            .map(|c| (encode_data(c, pool), c.len()))
            .collect();
        Self {
            chunks,
            len: bytes.len(),
        }
    }

    /// Bytes of data carried.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no data is carried.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks alone (see [`StreamData::into_encoded_with_lens`]).
    #[cfg(test)]
    pub(crate) fn into_encoded(self) -> impl Iterator<Item = BytesMut> {
        self.chunks.into_iter().map(|(chunk, _)| chunk)
    }

    /// The chunks, each encoded as `Inner::Data` and ready to seal (capacity for the tag
    /// follows each, so sealing appends it in place), with the stream bytes each carries.
    pub(crate) fn into_encoded_with_lens(self) -> impl Iterator<Item = (BytesMut, usize)> {
        self.chunks.into_iter()
    }
}

impl From<Bytes> for StreamData {
    fn from(bytes: Bytes) -> Self {
        Self::copy_from(&bytes)
    }
}

impl From<&[u8]> for StreamData {
    fn from(bytes: &[u8]) -> Self {
        Self::copy_from(bytes)
    }
}

/// `Inner::Data(chunk)` as [`Inner::encode`] writes it, from a borrowed chunk. A chunk of
/// at least half the largest size goes in a buffer of `pool`, whose handle the pool keeps
/// for reuse; a smaller one gets a buffer of its own size, so queued small writes never pin
/// more memory than twice what they carry.
fn encode_data(chunk: &[u8], pool: &ChunkPool) -> BytesMut {
    let pooled = chunk.len() >= MAX_CHUNK / 2;
    let mut buf = if pooled {
        pool.take()
    } else {
        BytesMut::with_capacity(HEADER_ROOM + chunk.len() + TAG_LEN)
    };
    buf.put_u8(DATA_VARIANT);
    let mut n = chunk.len();
    while n >= 0x80 {
        // Cannot truncate: the low seven bits with the continuation bit.
        buf.put_u8((n as u8 & 0x7f) | 0x80);
        n >>= 7;
    }
    buf.put_u8(n as u8);
    buf.put_slice(chunk);
    // Split off with the tag's room, so the chunk's own capacity takes the tag.
    let len = buf.len();
    buf.put_bytes(0, TAG_LEN);
    let mut out = buf.split();
    out.truncate(len);
    if pooled {
        pool.keep(buf);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::inner::Inner;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_chunk_is_encoded_exactly_as_inner_data() {
        for len in [
            0usize,
            1,
            127,
            128,
            16_383,
            16_384,
            MAX_CHUNK,
            MAX_CHUNK + 1,
            128 * 1024,
        ] {
            let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let data = StreamData::copy_from(&bytes);
            assert_eq!(data.len(), len);
            let mut joined = Vec::new();
            for encoded in data.into_encoded() {
                let Some(Inner::Data(chunk)) = Inner::decode(&encoded) else {
                    panic!("a chunk of {len} bytes did not decode as data");
                };
                assert!(chunk.len() <= MAX_CHUNK);
                assert_eq!(&encoded[..], &Inner::Data(chunk.clone()).encode()[..]);
                assert!(
                    encoded.capacity() >= encoded.len() + TAG_LEN,
                    "no room for the tag"
                );
                joined.extend_from_slice(&chunk);
            }
            assert_eq!(joined, bytes);
        }
    }

    #[test]
    fn a_write_just_over_a_chunk_is_cut_in_two_even_halves() {
        let data = StreamData::copy_from(&vec![1u8; MAX_CHUNK + 2]);
        let sizes: Vec<usize> = data.into_encoded().map(|c| c.len()).collect();
        assert_eq!(sizes.len(), 2);
        assert_eq!(sizes[0], sizes[1]);
    }

    #[test]
    fn a_full_chunk_between_the_longest_node_ids_fits_one_link_message() {
        use crate::id::{MAX_NAME_LEN, NodeId};
        use crate::mesh::message::{
            CircuitId, Message, Packet, PacketBody, StreamKind, StreamPacket,
        };
        use crate::mesh::noise::MAX_PLAINTEXT_LEN;
        let longest = || NodeId::new("n".repeat(MAX_NAME_LEN)).unwrap();
        let encoded = StreamData::copy_from(&vec![0u8; MAX_CHUNK])
            .into_encoded()
            .next()
            .unwrap();
        let packet = Message::Packet(Packet {
            src: longest(),
            dst: longest(),
            hops_left: u8::MAX,
            body: PacketBody::Stream(StreamPacket {
                circuit: CircuitId {
                    opener: longest(),
                    number: u64::MAX,
                },
                from_opener: true,
                kind: StreamKind::Sealed(Bytes::from(vec![0u8; encoded.len() + TAG_LEN])),
            }),
        });
        // The frame's 4-byte length prefix travels in the same message.
        assert!(4 + packet.encoded_len().unwrap() <= MAX_PLAINTEXT_LEN);
    }

    proptest! {
        #[test]
        fn any_length_round_trips_in_chunks_within_the_limit(len in 0usize..300_000) {
            let bytes = vec![0x5au8; len];
            let data = StreamData::copy_from(&bytes);
            let mut total = 0;
            for encoded in data.into_encoded() {
                let Some(Inner::Data(chunk)) = Inner::decode(&encoded) else {
                    return Err(TestCaseError::fail("not data"));
                };
                prop_assert!(chunk.len() <= MAX_CHUNK);
                total += chunk.len();
            }
            prop_assert_eq!(total, len);
        }
    }
}
