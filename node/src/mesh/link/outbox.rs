//! The bytes a link has queued for its socket: handshake messages, and mesh frames written
//! straight into the buffer the socket takes, grouped into Noise transport messages that end
//! on frame boundaries and are sealed where they lie (no plaintext staging buffer, no copy
//! into the wire buffer).
//!
//! The bytes on the wire are the same Noise messages of the same frame stream as ever; only
//! where messages end differs, which receivers never relied on. A frame too large for one
//! message (a big advert) still spans several. No IO.

use std::collections::VecDeque;

use bytes::{BufMut, Bytes, BytesMut};

use super::SendError;
use crate::mesh::frame::{self, FrameError, MAX_FRAME_LEN};
use crate::mesh::message::Message;
use crate::mesh::noise::{CipherError, MAX_PLAINTEXT_LEN, TAG_LEN, Transport};

/// Bytes of a frame's length prefix.
const FRAME_PREFIX: usize = 4;

/// Bytes of a Noise message's length prefix.
const NOISE_PREFIX: usize = 2;

/// Room a transport message may need: prefix, largest plaintext, tag.
const MESSAGE_ROOM: usize = NOISE_PREFIX + MAX_PLAINTEXT_LEN + TAG_LEN;

/// Room taken for queued bytes at a time. A buffer is never grown (which would copy what it
/// holds); a full one goes to the socket and a spare one is reused once the socket is done
/// with it, since fresh memory per burst costs more in page faults than the copies saved.
const BLOCK: usize = 2 * MESSAGE_ROOM;

/// Spare buffers kept for reuse: enough for the bursts a busy link has in flight towards its
/// socket (with two, most were still in flight and fresh memory was taken anyway). At most
/// about 1 MiB per busy link; dropped when the link goes quiet, see [`Outbox::shrink`].
const MAX_SPARE: usize = 8;

/// Queued wire bytes and the transport message being filled.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    /// Full blocks of sealed messages, oldest first.
    ready: VecDeque<Bytes>,
    /// The block being filled: sealed messages, then the open one.
    wire: BytesMut,
    /// Where the open (not yet sealed) message's length prefix sits in `wire`.
    open: Option<usize>,
    /// Empty handles on buffers handed to the socket: reusable once it has dropped them.
    spare: VecDeque<BytesMut>,
    /// Buffers allocated so far (for tests).
    #[cfg(test)]
    pub(super) allocated: usize,
}

impl Outbox {
    /// Bytes queued, sealed or not.
    pub(super) fn len(&self) -> usize {
        self.wire.len() + self.ready.iter().map(Bytes::len).sum::<usize>()
    }

    /// Whether frames wait to be sealed.
    pub(super) fn has_open(&self) -> bool {
        self.open.is_some()
    }

    /// Queues a handshake message (no transport yet, so nothing is open).
    pub(super) fn push_noise(&mut self, message: &[u8]) {
        debug_assert!(self.open.is_none(), "handshake after transport frames");
        frame::encode_noise(message, &mut self.wire)
            .expect("invariant: handshake messages fit a noise frame");
    }

    /// Appends `message` as one frame. A frame that does not fit the open transport message
    /// seals it and starts the next; one larger than any message is sealed at once across
    /// as many as it needs. On error nothing is queued.
    pub(super) fn push_frame(
        &mut self,
        transport: &mut Transport,
        message: &Message,
    ) -> Result<(), SendError> {
        let body = message
            .encoded_len()
            .map_err(|_| SendError::Frame(FrameError::Empty))?;
        if body > MAX_FRAME_LEN {
            return Err(SendError::Frame(FrameError::TooLarge {
                len: body,
                max: MAX_FRAME_LEN,
            }));
        }
        let len = FRAME_PREFIX + body;
        if len > MAX_PLAINTEXT_LEN {
            return self.push_spanning(transport, message);
        }
        if let Some(start) = self.open
            && self.wire.len() - start - NOISE_PREFIX + len > MAX_PLAINTEXT_LEN
        {
            self.seal(transport)?;
        }
        if self.open.is_none() {
            self.make_room();
            self.open = Some(self.wire.len());
            self.wire.put_u16(0);
        }
        frame::encode_frame_with(&mut self.wire, |out| message.encode_into(out))
            .map_err(|e| SendError::Frame(e.unwrap_or(FrameError::Empty)))
    }

    /// A frame larger than one transport message: encoded apart, then sealed into as many
    /// full messages as it takes (the last one partly full).
    fn push_spanning(
        &mut self,
        transport: &mut Transport,
        message: &Message,
    ) -> Result<(), SendError> {
        let mut frame = BytesMut::new();
        frame::encode_frame_with(&mut frame, |out| message.encode_into(out))
            .map_err(|e| SendError::Frame(e.unwrap_or(FrameError::Empty)))?;
        self.seal(transport)?;
        for chunk in frame.chunks(MAX_PLAINTEXT_LEN) {
            transport.encrypt(chunk, &mut self.wire)?;
        }
        Ok(())
    }

    /// Makes room for a whole transport message in `wire` (nothing is open): a full buffer
    /// moves to `ready` and a fresh one starts, rather than the buffer growing by copying.
    fn make_room(&mut self) {
        if self.wire.capacity() - self.wire.len() >= MESSAGE_ROOM {
            return;
        }
        if !self.wire.is_empty() {
            self.ready.push_back(self.wire.split().freeze());
        }
        self.spare.push_back(std::mem::take(&mut self.wire));
        let free = (self.spare.iter_mut()).position(|b| b.try_reclaim(MESSAGE_ROOM));
        self.wire = match free.and_then(|i| self.spare.remove(i)) {
            Some(block) => block,
            None => {
                #[cfg(test)]
                {
                    self.allocated += 1;
                }
                BytesMut::with_capacity(BLOCK)
            }
        };
        while self.spare.len() > MAX_SPARE {
            self.spare.pop_front();
        }
    }

    /// Lets go of spare buffers (the link is quiet).
    pub(super) fn shrink(&mut self) {
        self.spare.clear();
    }

    /// Seals the open transport message, if any (an empty one is dropped).
    pub(super) fn seal(&mut self, transport: &mut Transport) -> Result<(), CipherError> {
        let Some(start) = self.open.take() else {
            return Ok(());
        };
        if self.wire.len() == start + NOISE_PREFIX {
            self.wire.truncate(start);
            return Ok(());
        }
        if let Err(e) = transport.seal_tail(&mut self.wire, start) {
            self.wire.truncate(start);
            return Err(e);
        }
        Ok(())
    }

    /// The oldest block of sealed messages, for the socket (call [`Outbox::seal`] first).
    pub(super) fn take(&mut self) -> Option<Bytes> {
        debug_assert!(self.open.is_none(), "taking an unsealed message");
        if let Some(block) = self.ready.pop_front() {
            return Some(block);
        }
        if self.wire.is_empty() {
            return None;
        }
        Some(self.wire.split().freeze())
    }
}

impl From<CipherError> for SendError {
    fn from(e: CipherError) -> Self {
        Self::Cipher(e)
    }
}
