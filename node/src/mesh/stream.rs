//! Reliable, ordered, flow-controlled byte streams between `(node, service)` endpoints,
//! sealed end to end.
//!
//! A stream is a *circuit*: its `Open` is routed like any packet, and every node on the way
//! pins the circuit to the two links it used (see `relay.rs`). Later packets follow the
//! pinned path, so a stream never silently reroutes: when a link on the path dies, the nodes
//! beside it reset the circuit towards both ends with [`ResetReason::PathBroken`], and
//! resuming is the job of the layer above. Links are reliable and ordered, so the circuit is
//! too.
//!
//! Everything an endpoint acts on — the service asked for, data, credit, the clean end — is
//! sealed with keys of the two endpoints' session (`seal.rs`), so relays forward ciphertext
//! they can neither read nor forge, and the stream's peer is the node that holds the
//! session: never a packet header. Only resets travel in clear, and an endpoint never takes
//! one for a clean end.
//!
//! Flow control is end to end: a sender may have at most the receiver's granted credit in
//! flight, and the receiver grants more only as its application consumes bytes. A relay
//! therefore holds at most one window per stream, whatever the speeds on either side.
//! No IO; time is passed in.

mod data;
mod endpoint;
mod incoming;
mod inner;
mod outbound;
mod pool;
mod relay;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

pub use data::StreamData;
use endpoint::Endpoint;
pub(crate) use inner::Inner;
pub use outbound::{Closed, Outbound};
pub use pool::ChunkPool;
pub use relay::{
    MAX_RELAYED, MAX_RELAYED_PER_LINK, MAX_RELAYED_PER_OPENER, RELAY_IDLE, RelayVerdict, Relays,
};

use super::link::LinkId;
use super::message::{CircuitId, ResetReason, StreamKind, StreamPacket};
use super::session::{PeerIdentity, Session};
use crate::id::{NodeId, ServiceName};

/// Credit each end grants at the start: the most a relay holds per stream direction.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// Most credit a sender keeps, however much its peer grants: what a stream may have queued
/// locally. An honest peer grants at most its window; a hostile one cannot make us buffer
/// more than this per stream.
pub const MAX_SEND_CREDIT: u64 = 4 * DEFAULT_WINDOW as u64;

/// Largest data chunk per packet: small enough to interleave streams on a link, large enough
/// that per-packet costs vanish, and small enough that a data packet between nodes with the
/// longest ids still fits one link transport message (65,519 bytes of plaintext).
pub const MAX_CHUNK: usize = 64 * 1024 - 512;

/// An opened stream not accepted within this long is reset.
pub const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// An endpoint that hears nothing on a stream for this long resets it.
pub const STREAM_IDLE: Duration = Duration::from_secs(10 * 60);

/// An endpoint that has sent nothing for this long sends a keepalive, far inside
/// [`STREAM_IDLE`] and [`RELAY_IDLE`], so a job quiet for hours keeps its results stream.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(2 * 60);

/// Most streams one peer may have open to this node at once.
pub const MAX_ACCEPTED_PER_PEER: usize = 256;

/// Most stream endpoints on this node.
pub const MAX_ENDPOINTS: usize = 16_384;

/// A stream's handle on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}", self.0)
    }
}

/// What streams tell the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamEvent {
    /// A peer opened a stream to one of our services (already accepted).
    Incoming {
        /// Its handle.
        id: StreamId,
        /// The node that opened it, as its session proved it.
        from: PeerIdentity,
        /// The service it asked for.
        service: ServiceName,
    },
    /// A stream we opened was accepted.
    Opened {
        /// Its handle.
        id: StreamId,
    },
    /// Bytes arrived, in order. Call `stream_consumed` as they are used to grant credit.
    Data {
        /// Its handle.
        id: StreamId,
        /// The bytes.
        data: Bytes,
    },
    /// The peer may receive this many more bytes.
    Credit {
        /// Its handle.
        id: StreamId,
        /// Additional bytes that may be sent.
        bytes: u64,
    },
    /// The peer finished sending.
    Finished {
        /// Its handle.
        id: StreamId,
    },
    /// The stream is dead.
    Reset {
        /// Its handle.
        id: StreamId,
        /// Why.
        reason: ResetReason,
    },
}

/// Why a stream operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream (never existed, or already closed).
    #[error("no such stream {0}")]
    Unknown(StreamId),
    /// More bytes than the peer granted.
    #[error("stream {id}: {len} bytes exceed the {credit} bytes of credit")]
    NoCredit {
        /// The stream.
        id: StreamId,
        /// Bytes offered.
        len: usize,
        /// Credit left.
        credit: u64,
    },
    /// Data after `finish`, or before the stream was accepted.
    #[error("stream {0} is not open for sending")]
    NotWritable(StreamId),
}

/// A stream packet to send on a given link, addressed to `to`.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The pinned link.
    pub link: LinkId,
    /// The node at the far end of the circuit (the packet's destination).
    pub to: NodeId,
    /// The packet.
    pub packet: StreamPacket,
}

/// An open of ours that the target's session no longer knows (it restarted): the caller
/// sets up a new session and opens again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reopen {
    /// The stream's handle, kept across the retry.
    pub id: StreamId,
    /// The target.
    pub to: NodeId,
    /// Our service.
    pub from_service: ServiceName,
    /// Its service.
    pub service: ServiceName,
}

/// Every stream endpoint and relayed circuit on this node.
#[derive(Debug, Default)]
pub struct Streams {
    endpoints: HashMap<StreamId, Endpoint>,
    by_circuit: HashMap<CircuitId, StreamId>,
    accepted_per_peer: HashMap<NodeId, usize>,
    relays: Relays,
    next_id: u64,
    /// Buffers received chunks are opened in, until the application has read them.
    pool: ChunkPool,
    /// Whether a chunk was opened since the last timer sweep: when none was, the pool lets
    /// its buffers go.
    pool_used: bool,
}

/// Whether an arriving open was sealed under the session it was tried with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenAuth {
    /// It was, and has been dealt with (accepted, refused, or dropped as a replay).
    Authentic,
    /// It was not: nothing was done.
    Unauthentic,
    /// It was dropped before its seal was tried (a circuit not the peer's, or one already
    /// open). It proves nothing about the session, so it confirms no session held aside;
    /// and no other session need try it.
    Unchecked,
}

/// What an arriving open needs from the node besides the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A listener exists: accept.
    Accept,
    /// Nobody listens on the service.
    NoService,
}

impl Streams {
    /// No streams yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of endpoints and relayed circuits, for status and tests.
    pub fn counts(&self) -> (usize, usize) {
        (self.endpoints.len(), self.relays.len())
    }

    /// A handle for a stream about to be opened (possibly after a session handshake).
    pub fn allocate(&mut self) -> StreamId {
        self.next_id += 1;
        StreamId(self.next_id)
    }

    /// Opens stream `id` from us to `to` over `link` inside `session`, on circuit number
    /// `number`; returns the sealed `Open`.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        now: Instant,
        id: StreamId,
        me: &NodeId,
        number: u64,
        link: LinkId,
        session: &mut Session,
        from_service: ServiceName,
        service: ServiceName,
    ) -> Outgoing {
        let circuit = CircuitId {
            opener: me.clone(),
            number,
        };
        let (mut sealer, opener) = session.secrets.circuit(&circuit);
        let open = Inner::Open {
            from_service: from_service.clone(),
            service: service.clone(),
            window: DEFAULT_WINDOW,
            seq: session.next_open_seq(now),
        };
        // The circuit's first message, sealed before anyone else can hold its sealer.
        let sealed = sealer.seal(open.encode());
        let tx = Outbound::new(sealer);
        let to = session.peer.node.clone();
        self.by_circuit.insert(circuit.clone(), id);
        self.endpoints.insert(
            id,
            Endpoint {
                is_opener: true,
                asked: Some((from_service, service)),
                ..Endpoint::new(circuit.clone(), session.peer.clone(), link, tx, opener, now)
            },
        );
        Outgoing {
            link,
            to,
            packet: StreamPacket {
                circuit,
                from_opener: true,
                kind: StreamKind::Open {
                    session: session.secrets.id,
                    sealed,
                },
            },
        }
    }

    /// Queues `data` (at most the credit left) as sealed data packets, one per chunk. (The
    /// driver's streams seal their data on the writer's task instead, see [`Outbound`], and
    /// the node only sends what they queued: [`Streams::flush`].)
    ///
    /// # Errors
    /// [`StreamError`] for an unknown stream, one not open for sending, or too little credit.
    pub fn send(
        &mut self,
        now: Instant,
        id: StreamId,
        data: StreamData,
        out: &mut Vec<Outgoing>,
    ) -> Result<(), StreamError> {
        let ep = self
            .endpoints
            .get_mut(&id)
            .ok_or(StreamError::Unknown(id))?;
        if !ep.accepted || ep.fin_sent {
            return Err(StreamError::NotWritable(id));
        }
        if data.len() as u64 > ep.send_credit {
            return Err(StreamError::NoCredit {
                id,
                len: data.len(),
                credit: ep.send_credit,
            });
        }
        let chunks = data.into_encoded_with_lens();
        // Only the node closes it, and not while it is in `endpoints`.
        let _ = ep.tx.seal_data(chunks);
        ep.flush(now, out);
        Ok(())
    }

    /// Sends what stream `id`'s writer has sealed and queued since the last flush, counting
    /// its bytes against the credit.
    pub fn flush(&mut self, now: Instant, id: StreamId, out: &mut Vec<Outgoing>) {
        if let Some(ep) = self.endpoints.get_mut(&id) {
            ep.flush(now, out);
        }
    }

    /// The sending side of stream `id`, for its writer to seal data on (once accepted).
    pub fn outbound(&self, id: StreamId) -> Option<Outbound> {
        self.endpoints.get(&id).map(|ep| ep.tx.clone())
    }

    /// The application used `n` more received bytes: grant credit when enough has piled up.
    pub fn consumed(&mut self, now: Instant, id: StreamId, n: usize, out: &mut Vec<Outgoing>) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        ep.recv_unacked += n as u64;
        // Grant in batches of a quarter window: few credit packets, no stalls.
        if ep.recv_unacked >= u64::from(ep.window / 4) && !ep.fin_received {
            let grant = u32::try_from(ep.recv_unacked).unwrap_or(u32::MAX);
            ep.recv_unacked -= u64::from(grant);
            ep.recv_allowed += u64::from(grant);
            ep.sealed(now, &Inner::Credit(grant), out);
        }
    }

    /// We will send no more on `id`.
    pub fn finish(&mut self, now: Instant, id: StreamId, out: &mut Vec<Outgoing>) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if !ep.fin_sent {
            ep.fin_sent = true;
            ep.sealed(now, &Inner::Fin, out);
        }
        self.close_if_done(id, out);
    }

    /// Abandons `id`, telling the peer why.
    pub fn reset(&mut self, id: StreamId, reason: ResetReason, out: &mut Vec<Outgoing>) {
        if let Some(ep) = self.remove(id) {
            out.push(ep.clear(StreamKind::Reset(reason)));
        }
    }

    fn remove(&mut self, id: StreamId) -> Option<Endpoint> {
        let ep = self.endpoints.remove(&id)?;
        ep.tx.close();
        self.by_circuit.remove(&ep.circuit);
        if self.endpoints.is_empty() {
            // No stream left to receive on (buffers still being read stay with their data).
            self.pool.shrink();
        }
        if !ep.is_opener
            && let Some(count) = self.accepted_per_peer.get_mut(&ep.peer.node)
        {
            *count -= 1;
            if *count == 0 {
                self.accepted_per_peer.remove(&ep.peer.node);
            }
        }
        Some(ep)
    }

    /// Forgets a stream finished both ways, telling relays to forget it too.
    fn close_if_done(&mut self, id: StreamId, out: &mut Vec<Outgoing>) {
        if self
            .endpoints
            .get(&id)
            .is_some_and(|ep| ep.fin_sent && ep.fin_received)
            && let Some(ep) = self.remove(id)
        {
            out.push(ep.clear(StreamKind::Close));
        }
    }

    /// Whether `circuit` ends here (we are one of its endpoints).
    pub fn is_local(&self, circuit: &CircuitId) -> bool {
        self.by_circuit.contains_key(circuit)
    }

    /// An `Open` passing through from `from` towards `acceptor` over `to`.
    pub fn pin_relay(
        &mut self,
        now: Instant,
        circuit: &CircuitId,
        acceptor: &NodeId,
        from: LinkId,
        to: LinkId,
    ) -> RelayVerdict {
        self.relays.pin(now, circuit, acceptor, from, to)
    }

    /// Where a relayed packet arriving on `link` goes next.
    pub fn relay_route(
        &mut self,
        now: Instant,
        link: LinkId,
        packet: &StreamPacket,
    ) -> RelayVerdict {
        self.relays.route(now, link, packet)
    }

    /// `link` went down: reset every stream that used it, at both ends.
    pub fn handle_link_down(
        &mut self,
        link: LinkId,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let dead: Vec<StreamId> = self
            .endpoints
            .iter()
            .filter(|(_, ep)| ep.link == link)
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.remove(id);
            events.push(StreamEvent::Reset {
                id,
                reason: ResetReason::PathBroken,
            });
        }
        self.relays.handle_link_down(link, out);
    }

    /// Resets every stream with `peer` at both ends (it is no longer trusted).
    pub fn drop_peer(
        &mut self,
        peer: &NodeId,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let ids: Vec<StreamId> = (self.endpoints.iter())
            .filter(|(_, ep)| &ep.peer.node == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(ep) = self.remove(id) {
                out.push(ep.clear(StreamKind::Reset(ResetReason::Untrusted)));
                events.push(StreamEvent::Reset {
                    id,
                    reason: ResetReason::Untrusted,
                });
            }
        }
    }

    /// Sweeps timers: unaccepted opens, idle streams, keepalives, idle relayed circuits.
    /// Returns the peers an open of ours went unanswered by for [`OPEN_TIMEOUT`]: whatever
    /// the reason (the path, or a peer that holds no session of ours and whose `NoSession`
    /// answers were used up by forgers), the session with them is not to be trusted to work.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) -> Vec<NodeId> {
        let mut dead = Vec::new();
        let mut unanswered = Vec::new();
        for (&id, ep) in &mut self.endpoints {
            if !ep.accepted && now.saturating_duration_since(ep.opened_at) >= OPEN_TIMEOUT {
                dead.push((id, ResetReason::OpenTimeout));
                if ep.is_opener && !unanswered.contains(&ep.peer.node) {
                    unanswered.push(ep.peer.node.clone());
                }
            } else if now.saturating_duration_since(ep.last_rx) >= STREAM_IDLE {
                dead.push((id, ResetReason::Idle));
            } else if ep.accepted && now.saturating_duration_since(ep.last_tx) >= STREAM_KEEPALIVE {
                ep.sealed(now, &Inner::Keepalive, out);
            }
        }
        for (id, reason) in dead {
            self.reset(id, reason, out);
            events.push(StreamEvent::Reset { id, reason });
        }
        self.relays.expire(now, out);
        if !std::mem::take(&mut self.pool_used) {
            self.pool.shrink();
        }
        unanswered
    }

    /// Whether any endpoint or relayed circuit has timers to sweep.
    pub fn has_timers(&self) -> bool {
        !self.endpoints.is_empty() || !self.relays.is_empty()
    }

    /// A stream packet reached a node that neither ends nor relays its circuit (the node
    /// restarted, or the circuit was already torn down): reset it back towards `sender`.
    pub fn reset_unknown(
        link: LinkId,
        sender: NodeId,
        packet: &StreamPacket,
        reason: ResetReason,
    ) -> Option<Outgoing> {
        if matches!(packet.kind, StreamKind::Reset(_) | StreamKind::Close) {
            return None;
        }
        let mut out = reply(
            link,
            sender,
            packet.circuit.clone(),
            StreamKind::Reset(reason),
        );
        out.packet.from_opener = !packet.from_opener;
        Some(out)
    }

    /// The circuits relayed here (for tests).
    #[cfg(test)]
    pub(crate) fn relayed_circuits(&self) -> Vec<CircuitId> {
        self.relays.circuit_ids()
    }

    /// The circuits that end here (for tests).
    #[cfg(test)]
    pub(crate) fn local_circuits(&self) -> Vec<CircuitId> {
        self.by_circuit.keys().cloned().collect()
    }

    /// The peer of stream `id`, for logs and status.
    pub fn peer(&self, id: StreamId) -> Option<&PeerIdentity> {
        self.endpoints.get(&id).map(|ep| &ep.peer)
    }
}

/// A packet from the acceptor side back towards the opener.
fn reply(link: LinkId, to: NodeId, circuit: CircuitId, kind: StreamKind) -> Outgoing {
    Outgoing {
        link,
        to,
        packet: StreamPacket {
            circuit,
            from_opener: false,
            kind,
        },
    }
}
