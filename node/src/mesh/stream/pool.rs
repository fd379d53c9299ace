//! [`ChunkPool`]: the buffers a node's stream writers lay outgoing chunks into, reused once
//! the chunk has been sealed and copied into its link's outbox.
//!
//! A chunk is a little over 64 KiB. A fresh one per chunk made the allocator hand memory
//! back to the kernel after every burst and fault it in again for the next (about an eighth
//! of a busy sender's time). The pool keeps the emptied handle of each buffer it lends;
//! once every view of a buffer is gone, the handle reclaims the whole allocation. A buffer
//! still in flight is simply skipped. At most [`MAX_SPARE`] handles are kept, so the pool
//! holds a bounded amount of memory however many streams share it. No IO.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::BytesMut;

use super::MAX_CHUNK;
use crate::mesh::seal::TAG_LEN;

/// Room for one chunk laid out for sealing: `Inner::Data`'s header, the bytes, the tag.
pub(crate) const CHUNK_ROOM: usize = super::data::HEADER_ROOM + MAX_CHUNK + TAG_LEN;

/// Handles kept: about 2 MiB, twice the default window, so a stream writing at full speed
/// finds a free buffer while a window's worth is queued towards the link.
pub(crate) const MAX_SPARE: usize = 32;

/// Reusable chunk buffers, shared by the writers of one node's streams.
#[derive(Debug, Clone, Default)]
pub struct ChunkPool {
    spare: Arc<Mutex<VecDeque<BytesMut>>>,
}

impl ChunkPool {
    /// An empty pool.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty buffer with room for one chunk: a reclaimed one when a lent buffer has come
    /// back, a fresh one otherwise.
    pub(crate) fn take(&self) -> BytesMut {
        let mut spare = self.lock();
        let free = spare.iter_mut().position(|b| b.try_reclaim(CHUNK_ROOM));
        match free.and_then(|i| spare.remove(i)) {
            Some(buf) => buf,
            None => BytesMut::with_capacity(CHUNK_ROOM),
        }
    }

    /// A copy of `bytes` (a received chunk, to be opened in place): in a buffer of the pool
    /// when it is about a chunk's size, in one of its own size otherwise (so small messages
    /// never pin a whole chunk's memory).
    pub(crate) fn copy(&self, bytes: &[u8]) -> BytesMut {
        if bytes.len() < MAX_CHUNK / 2 || bytes.len() > CHUNK_ROOM {
            return BytesMut::from(bytes);
        }
        let mut buf = self.take();
        buf.extend_from_slice(bytes);
        let lent = buf.split();
        self.keep(buf);
        lent
    }

    /// Keeps `handle`, the emptied handle of a buffer whose bytes were split off and lent
    /// out, for reuse once they are dropped. The oldest handle goes when the pool is full.
    pub(crate) fn keep(&self, handle: BytesMut) {
        debug_assert!(handle.is_empty(), "keeping a handle with bytes in it");
        let mut spare = self.lock();
        spare.push_back(handle);
        while spare.len() > MAX_SPARE {
            spare.pop_front();
        }
    }

    /// Lets go of every kept buffer (the node's streams are quiet).
    pub fn shrink(&self) {
        self.lock().clear();
    }

    /// Handles kept (for tests).
    #[cfg(test)]
    pub(crate) fn kept(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<BytesMut>> {
        // A queue of empty handles: a panic elsewhere cannot leave it inconsistent.
        self.spare.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// Lends one buffer: fills it with `len` bytes, splits them off, keeps the handle.
    fn lend(pool: &ChunkPool, len: usize) -> bytes::Bytes {
        let mut buf = pool.take();
        buf.put_bytes(7, len);
        let lent = buf.split().freeze();
        pool.keep(buf);
        lent
    }

    #[test]
    fn a_buffer_comes_back_once_its_bytes_are_dropped() {
        let pool = ChunkPool::new();
        let first = lend(&pool, CHUNK_ROOM);
        let at = first.as_ptr();
        // Still in flight: a second chunk gets other memory.
        let second = lend(&pool, CHUNK_ROOM);
        assert_ne!(second.as_ptr(), at);
        drop(first);
        let again = pool.take();
        assert_eq!(again.as_ptr(), at, "the dropped buffer was not reused");
        assert!(again.capacity() >= CHUNK_ROOM);
        assert!(again.is_empty());
    }

    #[test]
    fn a_copied_chunk_is_lent_from_the_pool_and_a_small_one_is_not() {
        let pool = ChunkPool::new();
        let big = vec![3u8; MAX_CHUNK];
        let copy = pool.copy(&big);
        assert_eq!(&copy[..], &big[..]);
        assert_eq!(pool.kept(), 1);
        let at = copy.as_ptr();
        drop(copy);
        assert_eq!(pool.take().as_ptr(), at, "the copy's buffer was not reused");
        let small = pool.copy(b"credit");
        assert_eq!(&small[..], b"credit");
        assert_eq!(small.capacity(), 6, "a small message took a chunk's buffer");
    }

    #[test]
    fn the_pool_keeps_at_most_max_spare_handles() {
        let pool = ChunkPool::new();
        let lent: Vec<_> = (0..MAX_SPARE + 10).map(|_| lend(&pool, 100)).collect();
        assert_eq!(pool.kept(), MAX_SPARE);
        drop(lent);
        pool.shrink();
        assert_eq!(pool.kept(), 0);
    }
}
