//! The simulated network: virtual TCP connections ("wires") between node links, and the
//! bytes in flight on them, ordered by delivery time.
//!
//! Owns wires and in-flight chunks only; it never calls a node. Bytes on one direction of a
//! wire are delivered in order, `latency` after they were sent.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::NodeIdx;
use crate::mesh::link::LinkId;
use crate::mesh::route::Cost;

/// A wire's handle.
pub(crate) type WireId = u64;

/// One end of a wire: a link of one node incarnation.
#[derive(Debug, Clone)]
pub(crate) struct End {
    pub(crate) node: NodeIdx,
    /// The node's incarnation (a restart gets a new one, and new link ids).
    pub(crate) incarnation: u32,
    pub(crate) link: LinkId,
    /// The socket on this side is still open (it can receive).
    pub(crate) open: bool,
    /// The node reported `LinkUp` for this link (and no `LinkDown` since).
    pub(crate) up: bool,
}

/// A virtual TCP connection.
#[derive(Debug, Clone)]
pub(crate) struct Wire {
    /// `ends[0]` dialled, `ends[1]` accepted.
    pub(crate) ends: [End; 2],
    pub(crate) latency: Duration,
    pub(crate) cost: Cost,
    /// Latest delivery time scheduled towards each end, so that delivery stays in order.
    last: [Instant; 2],
}

/// What arrives at an end.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Bytes(Bytes),
    /// The other side closed its socket.
    Eof,
}

/// Bytes in flight towards `ends[to]` of `wire`.
#[derive(Debug)]
pub(crate) struct Chunk {
    pub(crate) at: Instant,
    seq: u64,
    pub(crate) wire: WireId,
    pub(crate) to: usize,
    pub(crate) payload: Payload,
}

impl PartialEq for Chunk {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Chunk {}
impl PartialOrd for Chunk {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Chunk {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// Every wire and every chunk in flight.
#[derive(Debug, Default)]
pub(crate) struct Net {
    wires: BTreeMap<WireId, Wire>,
    by_end: HashMap<(NodeIdx, u32, LinkId), (WireId, usize)>,
    queue: BinaryHeap<Reverse<Chunk>>,
    next_wire: WireId,
    next_seq: u64,
}

impl Net {
    /// Connects two links.
    pub(crate) fn add_wire(
        &mut self,
        now: Instant,
        ends: [End; 2],
        latency: Duration,
        cost: Cost,
    ) -> WireId {
        self.next_wire += 1;
        let id = self.next_wire;
        for (side, end) in ends.iter().enumerate() {
            self.by_end
                .insert((end.node, end.incarnation, end.link), (id, side));
        }
        let wire = Wire {
            ends,
            latency,
            cost,
            last: [now; 2],
        };
        self.wires.insert(id, wire);
        id
    }

    /// The wire and side of a node's link, while its socket is open.
    pub(crate) fn find(
        &self,
        node: NodeIdx,
        incarnation: u32,
        link: LinkId,
    ) -> Option<(WireId, usize)> {
        self.by_end.get(&(node, incarnation, link)).copied()
    }

    pub(crate) fn wire(&self, id: WireId) -> Option<&Wire> {
        self.wires.get(&id)
    }

    pub(crate) fn wire_mut(&mut self, id: WireId) -> Option<&mut Wire> {
        self.wires.get_mut(&id)
    }

    pub(crate) fn wires(&self) -> impl Iterator<Item = (WireId, &Wire)> {
        self.wires.iter().map(|(id, w)| (*id, w))
    }

    /// Sends from side `from` towards the other side, if that side is still open.
    pub(crate) fn send(&mut self, now: Instant, id: WireId, from: usize, payload: Payload) {
        let Some(wire) = self.wires.get_mut(&id) else {
            return;
        };
        let to = 1 - from;
        if !wire.ends[to].open {
            return;
        }
        let at = (now + wire.latency).max(wire.last[to]);
        wire.last[to] = at;
        self.next_seq += 1;
        self.queue.push(Reverse(Chunk {
            at,
            seq: self.next_seq,
            wire: id,
            to,
            payload,
        }));
    }

    /// Side `side` closed its socket: it receives nothing more, and the peer gets EOF after
    /// the bytes already in flight. The wire goes once both sides are closed.
    pub(crate) fn close_end(&mut self, now: Instant, id: WireId, side: usize) {
        let Some(wire) = self.wires.get_mut(&id) else {
            return;
        };
        if !wire.ends[side].open {
            return;
        }
        wire.ends[side].open = false;
        wire.ends[side].up = false;
        let end = wire.ends[side].clone();
        self.by_end.remove(&(end.node, end.incarnation, end.link));
        self.send(now, id, side, Payload::Eof);
        self.remove_if_closed(id);
    }

    /// The EOF (or a cut) reached side `side`.
    pub(crate) fn mark_closed(&mut self, id: WireId, side: usize) {
        if let Some(wire) = self.wires.get_mut(&id) {
            wire.ends[side].open = false;
            wire.ends[side].up = false;
            let end = wire.ends[side].clone();
            self.by_end.remove(&(end.node, end.incarnation, end.link));
        }
        self.remove_if_closed(id);
    }

    fn remove_if_closed(&mut self, id: WireId) {
        if self
            .wires
            .get(&id)
            .is_some_and(|w| w.ends.iter().all(|e| !e.open))
        {
            self.wires.remove(&id);
        }
    }

    /// Drops a wire at once with everything in flight on it (a cut cable); returns it.
    pub(crate) fn remove_wire(&mut self, id: WireId) -> Option<Wire> {
        let wire = self.wires.remove(&id)?;
        for end in &wire.ends {
            self.by_end.remove(&(end.node, end.incarnation, end.link));
        }
        Some(wire)
    }

    /// When the next chunk arrives.
    pub(crate) fn next_at(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse(c)| c.at)
    }

    /// The earliest chunk.
    pub(crate) fn pop(&mut self) -> Option<Chunk> {
        self.queue.pop().map(|Reverse(c)| c)
    }

    /// Whether nothing is in flight.
    pub(crate) fn is_quiet(&self) -> bool {
        self.queue.is_empty()
    }
}
