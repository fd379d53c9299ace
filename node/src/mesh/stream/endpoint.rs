//! [`Endpoint`]: this node's end of one stream — its circuit, peer and pinned link, both
//! directions' sealing state and flow-control counters — and the packets it sends. No IO.

use std::time::Instant;

use super::{DEFAULT_WINDOW, Inner, MAX_SEND_CREDIT, Outbound, Outgoing};
use crate::id::ServiceName;
use crate::mesh::link::LinkId;
use crate::mesh::message::{CircuitId, StreamKind, StreamPacket};
use crate::mesh::seal::Opener;
use crate::mesh::session::PeerIdentity;

/// One stream as its endpoint node holds it.
#[derive(Debug)]
pub(super) struct Endpoint {
    pub(super) circuit: CircuitId,
    /// True when we opened the stream.
    pub(super) is_opener: bool,
    pub(super) peer: PeerIdentity,
    pub(super) link: LinkId,
    /// Our direction's sealer and the messages sealed on it, shared with the stream's writer.
    pub(super) tx: Outbound,
    pub(super) opener: Opener,
    /// (Opener, until accepted.) What was asked, to open again on a new session.
    pub(super) asked: Option<(ServiceName, ServiceName)>,
    pub(super) accepted: bool,
    pub(super) send_credit: u64,
    pub(super) fin_sent: bool,
    pub(super) fin_received: bool,
    /// Bytes the peer may still send before we grant more.
    pub(super) recv_allowed: u64,
    /// Bytes consumed by the application and not yet granted back.
    pub(super) recv_unacked: u64,
    pub(super) window: u32,
    pub(super) opened_at: Instant,
    pub(super) last_rx: Instant,
    pub(super) last_tx: Instant,
}

impl Endpoint {
    /// A new endpoint of `circuit` with `peer` over `link`: not yet accepted, no credit to
    /// send, our default window offered, nothing sent or received.
    pub(super) fn new(
        circuit: CircuitId,
        peer: PeerIdentity,
        link: LinkId,
        tx: Outbound,
        opener: Opener,
        now: Instant,
    ) -> Self {
        Self {
            circuit,
            is_opener: false,
            peer,
            link,
            tx,
            opener,
            asked: None,
            accepted: false,
            send_credit: 0,
            fin_sent: false,
            fin_received: false,
            recv_allowed: u64::from(DEFAULT_WINDOW),
            recv_unacked: 0,
            window: DEFAULT_WINDOW,
            opened_at: now,
            last_rx: now,
            last_tx: now,
        }
    }

    /// Adds credit the peer granted, up to [`MAX_SEND_CREDIT`]; returns what was added.
    pub(super) fn grant(&mut self, n: u32) -> u64 {
        let before = self.send_credit;
        self.send_credit = (before + u64::from(n)).min(MAX_SEND_CREDIT);
        self.send_credit - before
    }

    /// Seals `inner` behind whatever the writer has queued, and sends all of it.
    pub(super) fn sealed(&mut self, now: Instant, inner: &Inner, out: &mut Vec<Outgoing>) {
        self.tx.seal_control(inner.encode());
        self.flush(now, out);
    }

    /// Sends every queued sealed message, in nonce order.
    pub(super) fn flush(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let queued = self.tx.drain();
        if queued.is_empty() {
            return;
        }
        self.last_tx = now;
        for q in queued {
            // The writer took the same credit from its copy of the count.
            self.send_credit = self.send_credit.saturating_sub(q.data_len as u64);
            out.push(self.clear(StreamKind::Sealed(q.sealed)));
        }
    }

    pub(super) fn clear(&self, kind: StreamKind) -> Outgoing {
        Outgoing {
            link: self.link,
            to: self.peer.node.clone(),
            packet: StreamPacket {
                circuit: self.circuit.clone(),
                from_opener: self.is_opener,
                kind,
            },
        }
    }
}
