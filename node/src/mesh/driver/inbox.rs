//! [`Inbox`]: what a stream received and its reader has not taken yet, and the owner
//! task's end of it ([`Delivery`]).
//!
//! Flow control bounds the bytes waiting here to the window we granted, but not the
//! number of messages that carry them: a peer that sends its window one byte per message
//! would make a queue of one item (and one allocation) per byte, about a hundred times the
//! window. So data shorter than [`GATHER_BELOW`] is copied onto the end of the last queued
//! item when that one is a gathering of small data with room, and the queue holds at most
//! a few dozen items per window whatever the message sizes: longer data is at least
//! [`GATHER_BELOW`] bytes per item, and a gathering fills up to [`GATHER_UP_TO`] before the
//! next one starts. A reader that keeps up finds one item at a time, as before.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Bytes, BytesMut};

use crate::mesh::message::ResetReason;
use crate::mesh::stream::MAX_CHUNK;

/// Data shorter than this is gathered: half the largest chunk, below which a received
/// chunk has a buffer of its own size (`ChunkPool::copy`), so what is kept as it came
/// pins at most about twice its bytes, in at most one item per half chunk.
pub(super) const GATHER_BELOW: usize = MAX_CHUNK / 2;

/// A gathering takes small data until it holds this much: a chunk's worth, so a window of
/// small messages is a few dozen items.
pub(super) const GATHER_UP_TO: usize = MAX_CHUNK;

/// What the reader takes off the queue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Bytes, in order.
    Data(Bytes),
    /// The peer finished sending.
    Fin,
    /// The stream died.
    Reset(ResetReason),
}

/// One queued item.
#[derive(Debug)]
enum Item {
    /// Data kept as it arrived.
    Data(Bytes),
    /// Small data copied together (see [`GATHER_BELOW`]).
    Gathered(BytesMut),
    Fin,
    Reset(ResetReason),
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Item>,
    /// The reader waiting for an item.
    waker: Option<Waker>,
    /// The owner's end is gone: nothing more will come.
    closed: bool,
}

impl Queue {
    fn push(&mut self, item: Item) {
        self.items.push_back(item);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Appends `data` to the last item when that is a gathering with room for it.
    fn gather(&mut self, data: &[u8]) -> bool {
        match self.items.back_mut() {
            Some(Item::Gathered(buf)) if buf.len() + data.len() <= GATHER_UP_TO => {
                buf.extend_from_slice(data);
                true
            }
            _ => false,
        }
    }
}

/// A new inbox: the owner's end and the reader's.
pub(super) fn inbox() -> (Delivery, Inbox) {
    let queue = Arc::new(Mutex::new(Queue::default()));
    (Delivery(queue.clone()), Inbox(queue))
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // Items and a flag: a panic elsewhere cannot leave them inconsistent.
    queue.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The owner task's end: delivers what arrives. Dropping it ends the reader's queue.
#[derive(Debug)]
pub(super) struct Delivery(Arc<Mutex<Queue>>);

impl Delivery {
    /// Queues `data`, gathered with the small data before it when it is small.
    pub(super) fn data(&self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        let mut queue = lock(&self.0);
        if data.len() >= GATHER_BELOW {
            queue.push(Item::Data(data));
        } else if !queue.gather(&data) {
            // A copy of its own size: the message's buffer goes, and later small data
            // grows this one.
            queue.push(Item::Gathered(BytesMut::from(&data[..])));
        }
    }

    /// Queues the peer's end of sending.
    pub(super) fn fin(&self) {
        lock(&self.0).push(Item::Fin);
    }

    /// Queues the stream's death.
    pub(super) fn reset(&self, reason: ResetReason) {
        lock(&self.0).push(Item::Reset(reason));
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        let mut queue = lock(&self.0);
        queue.closed = true;
        if let Some(waker) = queue.waker.take() {
            waker.wake();
        }
    }
}

/// The reader's end.
#[derive(Debug)]
pub(super) struct Inbox(Arc<Mutex<Queue>>);

impl Inbox {
    /// The next item; `Ready(None)` once the owner's end is gone and all was taken.
    pub(super) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Chunk>> {
        let mut queue = lock(&self.0);
        match queue.items.pop_front() {
            Some(item) => Poll::Ready(Some(item.into())),
            None if queue.closed => Poll::Ready(None),
            None => {
                queue.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// The next item if one is queued.
    pub(super) fn try_recv(&mut self) -> Option<Chunk> {
        lock(&self.0).items.pop_front().map(Chunk::from)
    }

    /// Whether nothing is queued.
    pub(super) fn is_empty(&self) -> bool {
        lock(&self.0).items.is_empty()
    }

    /// Items queued (for tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.0).items.len()
    }
}

impl From<Item> for Chunk {
    fn from(item: Item) -> Self {
        match item {
            Item::Data(data) => Self::Data(data),
            Item::Gathered(buf) => Self::Data(buf.freeze()),
            Item::Fin => Self::Fin,
            Item::Reset(reason) => Self::Reset(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn drain(inbox: &mut Inbox) -> (Vec<u8>, Vec<Chunk>) {
        let mut bytes = Vec::new();
        let mut ends = Vec::new();
        while let Some(chunk) = inbox.try_recv() {
            match chunk {
                Chunk::Data(data) => bytes.extend_from_slice(&data),
                other => ends.push(other),
            }
        }
        (bytes, ends)
    }

    #[test]
    fn a_window_of_one_byte_messages_is_a_few_dozen_items() {
        let (delivery, inbox) = inbox();
        for i in 0..crate::mesh::stream::DEFAULT_WINDOW {
            delivery.data(Bytes::copy_from_slice(&[i as u8]));
        }
        let most = (crate::mesh::stream::DEFAULT_WINDOW as usize).div_ceil(GATHER_UP_TO);
        assert_eq!(inbox.len(), most);
    }

    #[test]
    fn small_data_between_chunks_is_kept_in_order_and_the_end_comes_last() {
        let (delivery, mut inbox) = inbox();
        let big = Bytes::from(vec![2u8; GATHER_BELOW]);
        delivery.data(Bytes::from_static(b"a"));
        delivery.data(Bytes::from_static(b"b"));
        delivery.data(big.clone());
        delivery.data(Bytes::from_static(b"c"));
        delivery.fin();
        // The big chunk is queued as it came, between two gatherings.
        assert_eq!(inbox.len(), 4);
        let (bytes, ends) = drain(&mut inbox);
        let mut expected = b"ab".to_vec();
        expected.extend_from_slice(&big);
        expected.push(b'c');
        assert_eq!(bytes, expected);
        assert_eq!(ends, vec![Chunk::Fin]);
    }

    #[test]
    fn the_reader_learns_the_owner_is_gone_after_taking_what_was_queued() {
        let (delivery, mut inbox) = inbox();
        delivery.data(Bytes::from_static(b"last"));
        drop(delivery);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(
            inbox.poll_recv(&mut cx),
            Poll::Ready(Some(Chunk::Data(Bytes::from_static(b"last"))))
        );
        assert_eq!(inbox.poll_recv(&mut cx), Poll::Ready(None));
    }

    proptest! {
        #[test]
        fn any_sizes_read_back_in_order_in_few_items(
            sizes in proptest::collection::vec(0usize..3 * GATHER_BELOW, 1..60),
            read_every in 1usize..10,
        ) {
            let (delivery, mut inbox) = inbox();
            let mut sent = Vec::new();
            let mut got = Vec::new();
            for (i, &size) in sizes.iter().enumerate() {
                let data: Vec<u8> = (0..size).map(|j| (i * 7 + j) as u8).collect();
                sent.extend_from_slice(&data);
                delivery.data(Bytes::from(data));
                if i % read_every == 0 {
                    got.extend(drain(&mut inbox).0);
                }
            }
            // Items left: each either a chunk of at least GATHER_BELOW bytes, or a gathering
            // followed by one, or full, or the last.
            let queued: usize = sizes.iter().sum::<usize>();
            prop_assert!(inbox.len() <= 2 * queued.div_ceil(GATHER_BELOW) + 1);
            got.extend(drain(&mut inbox).0);
            prop_assert_eq!(got, sent);
        }
    }
}
