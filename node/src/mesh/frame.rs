//! Length-prefixed framing, at two levels.
//!
//! On the TCP socket every Noise message (handshake or transport) travels behind a 2-byte
//! big-endian length, as the Noise spec suggests. Inside the encrypted byte stream, every mesh
//! message is a postcard frame behind a 4-byte big-endian length, so a message may span several
//! Noise messages ("large messages are chunked"). Decoders return `Ok(None)` until a frame is
//! whole. No IO.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest Noise message, by the Noise spec (and the reach of a 2-byte length).
pub const MAX_NOISE_MESSAGE_LEN: usize = 65_535;

/// Largest encoded mesh message. Stream data is cut into chunks far below this; adverts of a
/// mesh of thousands of nodes fit. A peer that announces more is broken or hostile.
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// A frame that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the named limit.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The announced length.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// A zero-length Noise message, which no sender produces.
    #[error("empty noise message")]
    Empty,
}

/// Appends one Noise message behind its 2-byte length.
///
/// # Errors
/// [`FrameError::TooLarge`] when `message` is longer than [`MAX_NOISE_MESSAGE_LEN`].
pub fn encode_noise(message: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    let len = u16::try_from(message.len()).map_err(|_| FrameError::TooLarge {
        len: message.len(),
        max: MAX_NOISE_MESSAGE_LEN,
    })?;
    out.reserve(2 + message.len());
    out.put_u16(len);
    out.put_slice(message);
    Ok(())
}

/// Takes one whole Noise message off the front of `buf`, or `Ok(None)` if it is not all there.
///
/// # Errors
/// [`FrameError::Empty`] for a zero length prefix.
pub fn decode_noise(buf: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let len = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < 2 + len {
        return Ok(None);
    }
    buf.advance(2);
    // Not frozen: the transport decrypts it where it lies.
    Ok(Some(buf.split_to(len)))
}

/// Appends one mesh frame (an encoded message) behind its 4-byte length.
///
/// # Errors
/// [`FrameError::TooLarge`] when `frame` is longer than [`MAX_FRAME_LEN`].
pub fn encode_frame(frame: &[u8], out: &mut BytesMut) -> Result<(), FrameError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len: frame.len(),
            max: MAX_FRAME_LEN,
        });
    }
    out.reserve(4 + frame.len());
    // Cannot truncate: MAX_FRAME_LEN fits in u32.
    out.put_u32(frame.len() as u32);
    out.put_slice(frame);
    Ok(())
}

/// Appends one mesh frame behind its 4-byte length, written by `encode` straight into `out`
/// (no buffer of its own). On any failure `out` is left as it was.
///
/// # Errors
/// `Some(`[`FrameError::TooLarge`]`)` when the frame is longer than [`MAX_FRAME_LEN`], `None`
/// when `encode` fails.
pub fn encode_frame_with<E>(
    out: &mut BytesMut,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<(), Option<FrameError>> {
    let start = out.len();
    out.put_u32(0);
    if encode(out).is_err() {
        out.truncate(start);
        return Err(None);
    }
    let len = out.len() - start - 4;
    if len > MAX_FRAME_LEN {
        out.truncate(start);
        return Err(Some(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        }));
    }
    // Cannot truncate: MAX_FRAME_LEN fits in u32.
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Takes one whole mesh frame off the front of `buf`, or `Ok(None)` if it is not all there.
///
/// # Errors
/// [`FrameError::TooLarge`] as soon as the length prefix announces more than
/// [`MAX_FRAME_LEN`], before any of the body is buffered.
pub fn decode_frame(buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn frame_round_trip_and_need_more() {
        let mut buf = BytesMut::new();
        encode_frame(b"hello", &mut buf).unwrap();
        encode_frame(b"", &mut buf).unwrap();
        let mut partial = BytesMut::from(&buf[..6]);
        assert_eq!(decode_frame(&mut partial).unwrap(), None);
        assert_eq!(decode_frame(&mut buf).unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(decode_frame(&mut buf).unwrap().unwrap(), &b""[..]);
        assert_eq!(decode_frame(&mut buf).unwrap(), None);
    }

    #[test]
    fn a_frame_written_in_place_matches_one_encoded_apart_or_leaves_nothing() {
        let mut apart = BytesMut::from(&b"x"[..]);
        encode_frame(b"hello", &mut apart).unwrap();
        let mut in_place = BytesMut::from(&b"x"[..]);
        encode_frame_with(&mut in_place, |out| {
            out.extend_from_slice(b"hello");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(apart, in_place);

        let failed = encode_frame_with(&mut in_place, |out| {
            out.extend_from_slice(b"half");
            Err(())
        });
        assert_eq!(failed, Err(None));
        let too_big = encode_frame_with(&mut in_place, |out| {
            out.resize(out.len() + MAX_FRAME_LEN + 1, 0);
            Ok::<(), ()>(())
        });
        assert_eq!(
            too_big,
            Err(Some(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            }))
        );
        assert_eq!(apart, in_place, "nothing left behind by either failure");
    }

    #[test]
    fn rejects_oversized_frame_from_prefix_alone() {
        let mut buf = BytesMut::new();
        buf.put_u32(MAX_FRAME_LEN as u32 + 1);
        assert_eq!(
            decode_frame(&mut buf),
            Err(FrameError::TooLarge {
                len: MAX_FRAME_LEN + 1,
                max: MAX_FRAME_LEN
            })
        );
        let big = vec![0; MAX_FRAME_LEN + 1];
        assert!(encode_frame(&big, &mut BytesMut::new()).is_err());
    }

    #[test]
    fn noise_round_trip_and_limits() {
        let mut buf = BytesMut::new();
        encode_noise(&[1, 2, 3], &mut buf).unwrap();
        assert_eq!(decode_noise(&mut buf).unwrap().unwrap(), &[1, 2, 3][..]);
        assert!(encode_noise(&vec![0; MAX_NOISE_MESSAGE_LEN + 1], &mut buf).is_err());
        let mut empty = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(decode_noise(&mut empty), Err(FrameError::Empty));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut a = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode_frame(&mut a) {}
            let mut b = BytesMut::from(&data[..]);
            while let Ok(Some(_)) = decode_noise(&mut b) {}
        }

        #[test]
        fn split_anywhere_reassembles(frames in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..100), 1..8), cut in 0usize..1000) {
            let mut wire = BytesMut::new();
            for f in &frames { encode_frame(f, &mut wire).unwrap(); }
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(f) = decode_frame(&mut buf).unwrap() { got.push(f.to_vec()); }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(f) = decode_frame(&mut buf).unwrap() { got.push(f.to_vec()); }
            prop_assert_eq!(got, frames);
        }
    }
}
