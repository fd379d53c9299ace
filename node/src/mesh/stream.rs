//! Reliable, ordered, flow-controlled byte streams between `(node, service)` endpoints.
//!
//! A stream is a *circuit*: its `Open` is routed like any packet, and every node on the way
//! pins the circuit to the two links it used. Later packets follow the pinned path, so a
//! stream never silently reroutes: when a link on the path dies, the nodes beside it reset
//! the circuit towards both ends with [`ResetReason::PathBroken`], and resuming is the job of
//! the layer above. Links are reliable and ordered (TCP), so the circuit is too.
//!
//! Flow control is end to end: a sender may have at most the receiver's granted credit in
//! flight, and the receiver grants more only as its application consumes bytes. A relay
//! therefore holds at most one window per stream, whatever the speeds on either side.
//!
//! Relays see only circuit headers; stream bytes are opaque to them, so an end-to-end
//! encrypted session between the endpoints can be layered on later without changing relays.
//! No IO.

use std::collections::HashMap;

use bytes::Bytes;

use super::link::LinkId;
use super::message::{CircuitId, ResetReason, StreamKind, StreamPacket};
use crate::id::{NodeId, ServiceName};

/// Credit each end grants at the start: the most a relay holds per stream direction.
pub const DEFAULT_WINDOW: u32 = 1 << 20;

/// Most credit a sender keeps, however much its peer grants: what a stream may have queued
/// locally. An honest peer grants at most its window; a hostile one cannot make us buffer
/// more than this per stream.
pub const MAX_SEND_CREDIT: u64 = 4 * DEFAULT_WINDOW as u64;

/// Largest data chunk per packet: small enough to interleave streams on a link, large enough
/// that per-packet costs vanish.
pub const MAX_CHUNK: usize = 32 * 1024;

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
        /// The node that opened it.
        from: NodeId,
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

#[derive(Debug)]
struct Endpoint {
    circuit: CircuitId,
    /// True when we opened the stream.
    is_opener: bool,
    peer: NodeId,
    link: LinkId,
    accepted: bool,
    send_credit: u64,
    fin_sent: bool,
    fin_received: bool,
    /// Bytes the peer may still send before we grant more.
    recv_allowed: u64,
    /// Bytes consumed by the application and not yet granted back.
    recv_unacked: u64,
    window: u32,
}

#[derive(Debug)]
struct Relay {
    opener: NodeId,
    acceptor: NodeId,
    opener_link: LinkId,
    acceptor_link: LinkId,
    fin_forward: bool,
    fin_backward: bool,
}

/// Every stream endpoint and relayed circuit on this node.
#[derive(Debug, Default)]
pub struct Streams {
    endpoints: HashMap<StreamId, Endpoint>,
    by_circuit: HashMap<CircuitId, StreamId>,
    relays: HashMap<CircuitId, Relay>,
    next_id: u64,
    /// Mixed into circuit numbers so a restarted node never reuses a live circuit's id.
    epoch: u64,
    next_number: u64,
}

/// The decision for an `Open` that reached its destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A listener exists: accept.
    Accept,
    /// Nobody listens on the service.
    NoService,
}

impl Streams {
    /// Streams for a node run that started at `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    /// Number of endpoints and relayed circuits, for status and tests.
    pub fn counts(&self) -> (usize, usize) {
        (self.endpoints.len(), self.relays.len())
    }

    /// Starts a stream from us to `to` over `link`; returns its handle and the `Open`.
    pub fn open(
        &mut self,
        me: &NodeId,
        to: NodeId,
        link: LinkId,
        from_service: ServiceName,
        service: ServiceName,
    ) -> (StreamId, Outgoing) {
        self.next_number += 1;
        let circuit = CircuitId {
            opener: me.clone(),
            number: self.epoch.wrapping_shl(20) ^ self.next_number,
        };
        let id = self.insert(Endpoint {
            circuit: circuit.clone(),
            is_opener: true,
            peer: to.clone(),
            link,
            accepted: false,
            send_credit: 0,
            fin_sent: false,
            fin_received: false,
            recv_allowed: u64::from(DEFAULT_WINDOW),
            recv_unacked: 0,
            window: DEFAULT_WINDOW,
        });
        let kind = StreamKind::Open {
            from_service,
            service,
            window: DEFAULT_WINDOW,
        };
        let out = Outgoing {
            link,
            to,
            packet: StreamPacket {
                circuit,
                from_opener: true,
                kind,
            },
        };
        (id, out)
    }

    fn insert(&mut self, endpoint: Endpoint) -> StreamId {
        self.next_id += 1;
        let id = StreamId(self.next_id);
        self.by_circuit.insert(endpoint.circuit.clone(), id);
        self.endpoints.insert(id, endpoint);
        id
    }

    /// Queues `data` (at most the credit left) as data packets.
    ///
    /// # Errors
    /// [`StreamError`] for an unknown stream, one not open for sending, or too little credit.
    pub fn send(
        &mut self,
        id: StreamId,
        data: Bytes,
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
        ep.send_credit -= data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let chunk = rest.split_to(rest.len().min(MAX_CHUNK));
            out.push(ep.packet(StreamKind::Data(chunk)));
        }
        Ok(())
    }

    /// The application used `n` more received bytes: grant credit when enough has piled up.
    pub fn consumed(&mut self, id: StreamId, n: usize, out: &mut Vec<Outgoing>) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        ep.recv_unacked += n as u64;
        // Grant in batches of a quarter window: few credit packets, no stalls.
        if ep.recv_unacked >= u64::from(ep.window / 4) && !ep.fin_received {
            let grant = u32::try_from(ep.recv_unacked).unwrap_or(u32::MAX);
            ep.recv_unacked -= u64::from(grant);
            ep.recv_allowed += u64::from(grant);
            out.push(ep.packet(StreamKind::Credit(grant)));
        }
    }

    /// We will send no more on `id`.
    pub fn finish(&mut self, id: StreamId, out: &mut Vec<Outgoing>) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if !ep.fin_sent {
            ep.fin_sent = true;
            out.push(ep.packet(StreamKind::Fin));
        }
        self.remove_if_done(id);
    }

    /// Abandons `id`, telling the peer why.
    pub fn reset(&mut self, id: StreamId, reason: ResetReason, out: &mut Vec<Outgoing>) {
        if let Some(ep) = self.remove(id) {
            out.push(ep.packet(StreamKind::Reset(reason)));
        }
    }

    fn remove(&mut self, id: StreamId) -> Option<Endpoint> {
        let ep = self.endpoints.remove(&id)?;
        self.by_circuit.remove(&ep.circuit);
        Some(ep)
    }

    fn remove_if_done(&mut self, id: StreamId) {
        if self
            .endpoints
            .get(&id)
            .is_some_and(|ep| ep.fin_sent && ep.fin_received)
        {
            self.remove(id);
        }
    }

    /// Whether `circuit` ends here (we are one of its endpoints).
    pub fn is_local(&self, circuit: &CircuitId) -> bool {
        self.by_circuit.contains_key(circuit)
    }

    /// Whether `circuit` passes through here.
    pub fn is_relayed(&self, circuit: &CircuitId) -> bool {
        self.relays.contains_key(circuit)
    }

    /// An `Open` for one of our services arrived over `link` from `from`.
    pub fn handle_open(
        &mut self,
        from: NodeId,
        link: LinkId,
        packet: StreamPacket,
        admission: Admission,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let StreamKind::Open {
            service, window, ..
        } = packet.kind
        else {
            return;
        };
        let circuit = packet.circuit;
        if admission == Admission::NoService || self.by_circuit.contains_key(&circuit) {
            out.push(reply(
                link,
                from,
                circuit,
                StreamKind::Reset(ResetReason::NoService),
            ));
            return;
        }
        let id = self.insert(Endpoint {
            circuit: circuit.clone(),
            is_opener: false,
            peer: from.clone(),
            link,
            accepted: true,
            send_credit: u64::from(window).min(MAX_SEND_CREDIT),
            fin_sent: false,
            fin_received: false,
            recv_allowed: u64::from(DEFAULT_WINDOW),
            recv_unacked: 0,
            window: DEFAULT_WINDOW,
        });
        out.push(reply(
            link,
            from.clone(),
            circuit,
            StreamKind::Accept {
                window: DEFAULT_WINDOW,
            },
        ));
        events.push(StreamEvent::Incoming { id, from, service });
        events.push(StreamEvent::Credit {
            id,
            bytes: u64::from(window).min(MAX_SEND_CREDIT),
        });
    }

    /// A non-`Open` packet of a circuit that ends here.
    pub fn handle_local(
        &mut self,
        packet: StreamPacket,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(&id) = self.by_circuit.get(&packet.circuit) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        match packet.kind {
            StreamKind::Accept { window } if ep.is_opener && !ep.accepted => {
                ep.accepted = true;
                let granted = ep.grant(window);
                events.push(StreamEvent::Opened { id });
                events.push(StreamEvent::Credit { id, bytes: granted });
            }
            StreamKind::Data(data) => self.handle_data(id, data, events, out),
            StreamKind::Credit(n) => {
                let granted = ep.grant(n);
                events.push(StreamEvent::Credit { id, bytes: granted });
            }
            StreamKind::Fin if !ep.fin_received => {
                ep.fin_received = true;
                events.push(StreamEvent::Finished { id });
                self.remove_if_done(id);
            }
            StreamKind::Reset(reason) => {
                self.remove(id);
                events.push(StreamEvent::Reset { id, reason });
            }
            // Duplicate Accept/Fin, or an Open for an existing circuit: a broken peer.
            _ => self.violation(id, events, out),
        }
    }

    fn handle_data(
        &mut self,
        id: StreamId,
        data: Bytes,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        let len = data.len() as u64;
        if ep.fin_received || len > ep.recv_allowed {
            self.violation(id, events, out);
            return;
        }
        ep.recv_allowed -= len;
        events.push(StreamEvent::Data { id, data });
    }

    fn violation(&mut self, id: StreamId, events: &mut Vec<StreamEvent>, out: &mut Vec<Outgoing>) {
        self.reset(id, ResetReason::ProtocolViolation, out);
        events.push(StreamEvent::Reset {
            id,
            reason: ResetReason::ProtocolViolation,
        });
    }

    /// An `Open` passing through: pin the circuit to `from_link` and `to_link`.
    pub fn pin_relay(
        &mut self,
        circuit: CircuitId,
        acceptor: NodeId,
        from_link: LinkId,
        to_link: LinkId,
    ) {
        self.relays.insert(
            circuit.clone(),
            Relay {
                opener: circuit.opener,
                acceptor,
                opener_link: from_link,
                acceptor_link: to_link,
                fin_forward: false,
                fin_backward: false,
            },
        );
    }

    /// Where a relayed packet goes next: the pinned link on the far side. Forgets the
    /// circuit once it is reset or finished both ways.
    pub fn relay_next_link(&mut self, packet: &StreamPacket) -> Option<LinkId> {
        let relay = self.relays.get_mut(&packet.circuit)?;
        let next = if packet.from_opener {
            relay.acceptor_link
        } else {
            relay.opener_link
        };
        let done = match packet.kind {
            StreamKind::Reset(_) => true,
            StreamKind::Fin => {
                if packet.from_opener {
                    relay.fin_forward = true;
                } else {
                    relay.fin_backward = true;
                }
                relay.fin_forward && relay.fin_backward
            }
            _ => false,
        };
        if done {
            self.relays.remove(&packet.circuit);
        }
        Some(next)
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
        let broken: Vec<CircuitId> = self
            .relays
            .iter()
            .filter(|(_, r)| r.opener_link == link || r.acceptor_link == link)
            .map(|(c, _)| c.clone())
            .collect();
        for circuit in broken {
            let Some(relay) = self.relays.remove(&circuit) else {
                continue;
            };
            let reset = StreamKind::Reset(ResetReason::PathBroken);
            if relay.opener_link != link {
                out.push(reply(
                    relay.opener_link,
                    relay.opener,
                    circuit.clone(),
                    reset.clone(),
                ));
            }
            if relay.acceptor_link != link {
                let mut to_acceptor = reply(relay.acceptor_link, relay.acceptor, circuit, reset);
                to_acceptor.packet.from_opener = true;
                out.push(to_acceptor);
            }
        }
    }

    /// A stream packet reached a node that neither ends nor relays its circuit (the node
    /// restarted, or the circuit was already torn down): reset it back towards `sender`.
    pub fn reset_unknown(
        link: LinkId,
        sender: NodeId,
        packet: &StreamPacket,
        reason: ResetReason,
    ) -> Option<Outgoing> {
        if matches!(packet.kind, StreamKind::Reset(_)) {
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

    /// The peer of stream `id`, for logs and status.
    pub fn peer(&self, id: StreamId) -> Option<&NodeId> {
        self.endpoints.get(&id).map(|ep| &ep.peer)
    }
}

impl Endpoint {
    /// Adds credit the peer granted, up to [`MAX_SEND_CREDIT`]; returns what was added.
    fn grant(&mut self, n: u32) -> u64 {
        let before = self.send_credit;
        self.send_credit = (before + u64::from(n)).min(MAX_SEND_CREDIT);
        self.send_credit - before
    }

    fn packet(&self, kind: StreamKind) -> Outgoing {
        Outgoing {
            link: self.link,
            to: self.peer.clone(),
            packet: StreamPacket {
                circuit: self.circuit.clone(),
                from_opener: self.is_opener,
                kind,
            },
        }
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
