//! [`Outbound`]: one direction of a circuit as its sender sees it — the circuit's
//! [`Sealer`] and the sealed messages the node has not yet put on the link, behind one lock.
//!
//! The stream's writer (the application's task) seals its own data here, so sealing runs on
//! the writer's core rather than on the node's; the node seals its control messages (open,
//! accept, credit, fin, keepalive) here too, and takes queued messages off in order to send
//! them on the circuit's one pinned link.
//!
//! Why no nonce is ever used twice, and why the peer sees them in order, under any
//! interleaving of writer and node:
//! - The nonce is the sealer's counter, and the sealer exists only inside this lock: no
//!   one can seal without holding it, and each seal takes the counter and advances it.
//! - A message is queued in the same critical section that sealed it, so the queue's order
//!   is the counter's order; the node drains it front first, so the link (ordered) carries
//!   the messages in counter order, which is what the peer's opener expects.
//! - The key is the circuit's own, derived from the session's secret and the circuit's id
//!   (`seal.rs`), so two circuits never share a nonce space. A replaced session (a restart,
//!   a reopen) means new secrets and new keys; an end-to-end session has no rekey. The
//!   link's own Noise rekeying is a different cipher, owned by the node's link alone.
//! - Once the stream ends ([`Outbound::close`]) nothing more is sealed and what is queued
//!   is dropped.
//!
//! Memory: the writer seals data only within its credit (at most `MAX_SEND_CREDIT` per
//! stream), and the node drains its own control messages as soon as it seals them. No IO.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::{Bytes, BytesMut};

use crate::mesh::seal::Sealer;

/// A sealed message waiting for the link, and the stream bytes it carries (zero for
/// control messages), which the node counts against the peer's credit.
#[derive(Debug)]
pub(crate) struct Queued {
    pub(crate) sealed: Bytes,
    pub(crate) data_len: usize,
}

#[derive(Debug)]
struct State {
    sealer: Sealer,
    queue: VecDeque<Queued>,
    closed: bool,
}

/// The sealing side of one circuit direction, shared by the stream's writer and the node.
#[derive(Debug, Clone)]
pub struct Outbound {
    state: Arc<Mutex<State>>,
}

/// The stream has ended: nothing more may be sealed on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the stream has ended")]
pub struct Closed;

impl Outbound {
    /// The sending side of a circuit whose messages `sealer` seals.
    pub(crate) fn new(sealer: Sealer) -> Self {
        let state = State {
            sealer,
            queue: VecDeque::new(),
            closed: false,
        };
        Self {
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Seals each chunk (encoded `Inner::Data`, with room for the tag) and queues it, in
    /// one critical section; `lens` are the stream bytes each carries. Returns whether the
    /// queue was empty before, i.e. whether the node must be told to drain it.
    ///
    /// # Errors
    /// [`Closed`] once the stream has ended (nothing is sealed then).
    pub(crate) fn seal_data(
        &self,
        chunks: impl Iterator<Item = (BytesMut, usize)>,
    ) -> Result<bool, Closed> {
        let mut state = self.lock();
        if state.closed {
            return Err(Closed);
        }
        let was_empty = state.queue.is_empty();
        for (chunk, data_len) in chunks {
            let sealed = state.sealer.seal_chunk(chunk);
            state.queue.push_back(Queued { sealed, data_len });
        }
        Ok(was_empty)
    }

    /// Seals a control message (no stream bytes) and queues it behind everything sealed
    /// before it. Does nothing once closed.
    pub(crate) fn seal_control(&self, plaintext: Vec<u8>) {
        let mut state = self.lock();
        if state.closed {
            return;
        }
        let sealed = state.sealer.seal(plaintext);
        state.queue.push_back(Queued {
            sealed,
            data_len: 0,
        });
    }

    /// Takes every queued message, oldest (lowest nonce) first.
    pub(crate) fn drain(&self) -> VecDeque<Queued> {
        std::mem::take(&mut self.lock().queue)
    }

    /// Ends the stream's sending: later seals are refused, queued messages dropped.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section seals and queues, or drains: a panic in one (there is no
        // path to one) would at worst leave a message unqueued, and the peer would reset.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::super::data::StreamData;
    use super::super::inner::Inner;
    use super::*;
    use crate::id::NodeId;
    use crate::mesh::message::CircuitId;
    use crate::mesh::seal::{Opener, SessionSecrets};

    fn pair(number: u64) -> (Outbound, Opener) {
        let circuit = CircuitId {
            opener: NodeId::new("a").unwrap(),
            number,
        };
        let secrets = |we_initiated| SessionSecrets {
            id: 3,
            initiator_to_responder: [4; 32],
            responder_to_initiator: [5; 32],
            we_initiated,
        };
        let (sealer, _) = secrets(true).circuit(&circuit);
        let (_, opener) = secrets(false).circuit(&circuit);
        (Outbound::new(sealer), opener)
    }

    fn data(tag: u8, len: usize) -> impl Iterator<Item = (BytesMut, usize)> {
        StreamData::copy_from(&vec![tag; len]).into_encoded_with_lens()
    }

    /// Writers on several threads and a node sealing control messages and draining, all on
    /// one circuit at once: every message opens, in drain order, with the next nonce — so
    /// no nonce was used twice and the wire order is the nonce order. (Sealing outside the
    /// lock, or queueing in a second step, fails this: the opener would meet a message
    /// sealed under another counter than the one it expects.)
    #[test]
    fn concurrent_writers_and_node_never_reuse_or_reorder_a_nonce() {
        let (out, mut opener) = pair(1);
        const WRITERS: u8 = 4;
        const WRITES: usize = 200;
        let stop = AtomicBool::new(false);
        // The writers start once the node has sealed, so the node seals while they write
        // however the threads are scheduled (on a loaded machine the writers could finish
        // before the node's thread first ran).
        let node_sealed = AtomicBool::new(false);
        let mut sent = Vec::new();
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let out = out.clone();
                let node_sealed = &node_sealed;
                s.spawn(move || {
                    while !node_sealed.load(Ordering::Acquire) {
                        std::thread::yield_now();
                    }
                    for i in 0..WRITES {
                        out.seal_data(data(w, 1 + (i * 37) % 5000)).unwrap();
                    }
                });
            }
            let node = out.clone();
            let (stop, node_sealed) = (&stop, &node_sealed);
            let node = s.spawn(move || {
                let mut got = Vec::new();
                loop {
                    node.seal_control(Inner::Credit(7).encode());
                    node_sealed.store(true, Ordering::Release);
                    got.extend(node.drain());
                    if stop.load(Ordering::Relaxed) {
                        return got;
                    }
                }
            });
            // Let the writers finish (each holds a clone until then), then stop the node.
            while Arc::strong_count(&out.state) > 2 {
                std::thread::yield_now();
            }
            stop.store(true, Ordering::Relaxed);
            sent = node.join().unwrap();
        });
        sent.extend(out.drain());
        let mut per_writer = [0usize; WRITERS as usize];
        let mut credits = 0;
        for q in &sent {
            let plain = opener
                .open(&q.sealed)
                .expect("each message opens with the next nonce, in drain order");
            match Inner::decode(&plain) {
                Some(Inner::Data(d)) => {
                    assert_eq!(d.len(), q.data_len);
                    let firsts: HashSet<u8> = d.iter().copied().collect();
                    assert_eq!(firsts.len(), 1);
                    per_writer[usize::from(d[0])] += 1;
                }
                Some(Inner::Credit(7)) => credits += 1,
                other => panic!("unexpected message {other:?}"),
            }
        }
        assert_eq!(per_writer, [WRITES; WRITERS as usize], "a write was lost");
        assert!(credits > 0, "the node never sealed while writers ran");
    }

    /// The same interleaving with the sealing and the queueing in two critical sections
    /// (what a shared counter without the queue would do) breaks the order: the test above
    /// would catch such a change.
    #[test]
    fn sealing_apart_from_queueing_is_caught_by_the_opener() {
        let (out, mut opener) = pair(2);
        let first = out.lock().sealer.seal(Inner::Credit(1).encode());
        let second = out.lock().sealer.seal(Inner::Credit(2).encode());
        // Another thread queued the second seal before the first one.
        assert!(opener.open(&second).is_err());
        assert!(opener.open(&first).is_ok());
    }

    #[test]
    fn a_closed_outbound_seals_nothing_and_drops_its_queue() {
        let (out, _) = pair(3);
        assert_eq!(out.seal_data(data(1, 10)), Ok(true));
        assert_eq!(
            out.seal_data(data(1, 10)),
            Ok(false),
            "queue already non-empty"
        );
        out.close();
        assert_eq!(out.seal_data(data(1, 10)), Err(Closed));
        out.seal_control(Inner::Fin.encode());
        assert!(out.drain().is_empty());
    }
}
