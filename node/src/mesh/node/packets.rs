//! The node's packet plane: forwarding by the routing table, the hop limit, unreachable
//! notices, probes (ping and traceroute), and the glue between stream circuits and links
//! (relaying with pinned circuits, delivering to local endpoints).

use std::time::{Duration, Instant};

use super::{Event, MeshNode, Probe, ProbeFailure, ProbeId};
use crate::id::NodeId;
use crate::mesh::link::LinkId;
use crate::mesh::message::{
    Message, Packet, PacketBody, ResetReason, StreamKind, StreamPacket, Unreachable,
};
use crate::mesh::session::{OpenRefusal, SessionMsg};
use crate::mesh::stream::{Admission, Outgoing, RelayVerdict, Reopen, StreamEvent, Streams};

/// A circuit open that arrived for one of our services.
struct IncomingOpen<'a> {
    link: LinkId,
    /// The packet's source: unproven until the open authenticates.
    src: &'a NodeId,
    packet: &'a StreamPacket,
    session: u64,
    sealed: &'a [u8],
}

impl MeshNode {
    /// The up link that leads towards `dst`, if any.
    pub(super) fn next_link(&mut self, dst: &NodeId) -> Option<LinkId> {
        if let Some(link) = self.neighbours.get(dst) {
            return Some(*link);
        }
        let hop = self.routes().get(dst)?.next_hop.clone();
        self.neighbours.get(&hop).copied()
    }

    pub(super) fn send_on(&mut self, link: LinkId, packet: Packet) {
        if let Some(slot) = self.links.get_mut(&link)
            && let Err(e) = slot.link.send(&Message::Packet(packet))
        {
            tracing::debug!(%link, error = %e, "dropped packet");
        }
    }

    pub(super) fn packet_to(&self, dst: NodeId, body: PacketBody) -> Packet {
        Packet {
            src: self.config.id.clone(),
            dst,
            hops_left: self.config.max_hops,
            body,
        }
    }

    /// Sends a packet of ours towards `dst` by the routing table; false without a route.
    pub(super) fn route_packet(&mut self, dst: &NodeId, body: PacketBody) -> bool {
        let packet = self.packet_to(dst.clone(), body);
        match self.next_link(dst) {
            Some(link) => {
                self.send_on(link, packet);
                true
            }
            None => false,
        }
    }

    /// A packet arrived on `link`.
    pub(super) fn handle_packet(&mut self, now: Instant, link: LinkId, mut packet: Packet) {
        if packet.dst == self.config.id {
            self.deliver(now, link, packet);
            return;
        }
        // A sender cannot make a packet live longer than our own limit allows.
        packet.hops_left = packet.hops_left.min(self.config.max_hops);
        if packet.hops_left == 0 {
            self.unreachable(now, Some(link), &packet, Unreachable::HopLimit);
            return;
        }
        packet.hops_left -= 1;
        if let PacketBody::Stream(sp) = &packet.body {
            let sp = sp.clone();
            self.relay_stream(now, link, packet, &sp);
            return;
        }
        match self.next_link(&packet.dst) {
            Some(next) => self.send_on(next, packet),
            None => self.unreachable(now, Some(link), &packet, Unreachable::NoRoute),
        }
    }

    fn relay_stream(&mut self, now: Instant, link: LinkId, packet: Packet, sp: &StreamPacket) {
        let verdict = if let StreamKind::Open { .. } = sp.kind {
            if !sp.from_opener {
                // Only an opener opens. An open claiming the acceptor's side would be pinned
                // with its sides swapped, so the acceptor's reset, arriving as the opener's
                // direction on the acceptor's link, would be dropped and the circuit held
                // for RELAY_IDLE: a free way to fill this relay's table.
                tracing::debug!(%link, circuit = ?sp.circuit, "dropped an open from the acceptor's side");
                return;
            }
            let Some(next) = self.next_link(&packet.dst) else {
                self.unreachable(now, Some(link), &packet, Unreachable::NoRoute);
                return;
            };
            if next == link {
                // Routing would send it back where it came from: a loop, not a path.
                self.unreachable(now, Some(link), &packet, Unreachable::NoRoute);
                return;
            }
            self.streams
                .pin_relay(now, &sp.circuit, &packet.dst, link, next)
        } else {
            self.streams.relay_route(now, link, sp)
        };
        match verdict {
            RelayVerdict::Forward(next) => self.send_on(next, packet),
            RelayVerdict::Drop => {
                tracing::debug!(%link, circuit = ?sp.circuit, "dropped a circuit packet from the wrong link");
            }
            RelayVerdict::Unknown => {
                if let Some(out) =
                    Streams::reset_unknown(link, packet.src, sp, ResetReason::PathBroken)
                {
                    self.send_stream(out);
                }
            }
            RelayVerdict::Refuse => {
                if let Some(out) = Streams::reset_unknown(link, packet.src, sp, ResetReason::Busy) {
                    self.send_stream(out);
                }
            }
        }
    }

    /// `failed` cannot go further: tell its sender (or ourselves, if we sent it).
    fn unreachable(
        &mut self,
        now: Instant,
        arrived_on: Option<LinkId>,
        failed: &Packet,
        reason: Unreachable,
    ) {
        let probe = match &failed.body {
            PacketBody::Unreachable { .. } | PacketBody::EchoReply { .. } => return,
            PacketBody::Stream(sp) => {
                self.stream_unreachable(arrived_on, failed, sp, reason);
                return;
            }
            PacketBody::EchoRequest { probe } => Some(*probe),
            PacketBody::Session(_) => None,
        };
        if arrived_on.is_none() {
            if let Some(p) = probe {
                self.fail_probe(now, ProbeId(p), Some(self.config.id.clone()), reason);
            }
            return;
        }
        let body = PacketBody::Unreachable {
            reason,
            probe,
            target: failed.dst.clone(),
        };
        self.route_packet(&failed.src.clone(), body);
    }

    /// A stream packet that cannot go on resets its circuit back the way it came. (Our own
    /// streams never get here: `open_stream` checks the route first and later packets
    /// follow the pinned link.)
    fn stream_unreachable(
        &mut self,
        arrived_on: Option<LinkId>,
        failed: &Packet,
        sp: &StreamPacket,
        reason: Unreachable,
    ) {
        let reason = match reason {
            Unreachable::NoRoute => ResetReason::NoRoute,
            Unreachable::HopLimit => ResetReason::HopLimit,
        };
        let Some(link) = arrived_on else {
            return;
        };
        if let Some(out) = Streams::reset_unknown(link, failed.src.clone(), sp, reason) {
            self.send_stream(out);
        }
    }

    fn deliver(&mut self, now: Instant, link: LinkId, packet: Packet) {
        let src = packet.src;
        match packet.body {
            PacketBody::EchoRequest { probe } => {
                self.route_packet(&src, PacketBody::EchoReply { probe });
            }
            PacketBody::EchoReply { probe } => self.probe_answered(now, ProbeId(probe), src),
            PacketBody::Unreachable {
                reason,
                probe,
                target,
            } => match probe {
                Some(p) => self.fail_probe(now, ProbeId(p), Some(src), reason),
                None => {
                    // Unauthenticated: it may explain a session handshake that times out,
                    // never end one early.
                    if self.sessions.is_initiating(&target) {
                        self.unreachable_hints.insert(target.clone(), reason);
                    }
                    self.events.push_back(Event::Undeliverable {
                        target,
                        reporter: src,
                        reason,
                    });
                }
            },
            PacketBody::Session(msg @ SessionMsg::Init { .. }) => {
                if self.may_read_init(now, link) {
                    self.handle_session(now, src, msg);
                }
            }
            PacketBody::Session(msg) => self.handle_session(now, src, msg),
            PacketBody::Stream(sp) => self.deliver_stream(now, link, src, sp),
        }
    }

    /// Whether a session `Init` that arrived on `link` may be read (see `init_budget`).
    fn may_read_init(&mut self, now: Instant, link: LinkId) -> bool {
        let Some(slot) = self.links.get_mut(&link) else {
            return false;
        };
        if slot.inits.take(now) {
            return true;
        }
        self.inits_dropped += 1;
        if self.inits_dropped.is_power_of_two() {
            tracing::warn!(%link, dropped = self.inits_dropped, "dropped session handshakes beyond a link's budget");
        }
        false
    }

    fn deliver_stream(&mut self, now: Instant, link: LinkId, src: NodeId, sp: StreamPacket) {
        let mut events = Vec::new();
        let mut out = Vec::new();
        let mut reopen = Vec::new();
        match &sp.kind {
            StreamKind::Open { session, sealed } if sp.from_opener => {
                let open = IncomingOpen {
                    link,
                    src: &src,
                    packet: &sp,
                    session: *session,
                    sealed,
                };
                self.open_incoming(now, &open, &mut events, &mut out);
            }
            _ if self.streams.is_local(&sp.circuit) => {
                self.streams
                    .handle_local(now, link, sp, &mut events, &mut out, &mut reopen);
            }
            _ => out.extend(Streams::reset_unknown(
                link,
                src,
                &sp,
                ResetReason::PathBroken,
            )),
        }
        self.emit_stream(events, out);
        for r in reopen {
            self.reopen(now, r);
        }
    }

    /// An open for one of our services: under the session it names (the established one
    /// first, then one held aside), else answered `NoSession` so the opener sets up a new
    /// session.
    fn open_incoming(
        &mut self,
        now: Instant,
        open: &IncomingOpen<'_>,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let (streams, listening) = (&mut self.streams, &self.listening);
        let opened = self.sessions.open_with(open.src, open.session, |s| {
            streams.handle_open(
                now,
                open.link,
                open.packet.circuit.clone(),
                open.sealed,
                s,
                |service| {
                    if listening.contains(service) {
                        Admission::Accept
                    } else {
                        Admission::NoService
                    }
                },
                events,
                out,
            )
        });
        let answer = match opened {
            Ok(()) => false,
            // We restarted, or dropped the session: the opener must set up a new one.
            Err(OpenRefusal::NoSession) => true,
            // Our session of that id has keys the opener does not hold (we accepted a copy of
            // its old handshake after losing the real session), or the open is forged: the
            // same answer, but bounded, since the source is unproven.
            Err(OpenRefusal::Unauthentic) => {
                tracing::debug!(peer = %open.src, "an open failed authentication under its session");
                self.sessions.may_answer_unauthentic(now, open.src)
            }
        };
        if answer {
            out.extend(Streams::reset_unknown(
                open.link,
                open.src.clone(),
                open.packet,
                ResetReason::NoSession,
            ));
        }
    }

    /// Our open reached a target that no longer holds our session: start a new session and
    /// open again, once.
    fn reopen(&mut self, now: Instant, r: Reopen) {
        self.sessions.forget(&r.to);
        if self.retried.insert(r.id) {
            self.queue_open(now, r.id, r.to, r.from_service, r.service);
        } else {
            self.events.push_back(Event::Stream(StreamEvent::Reset {
                id: r.id,
                reason: ResetReason::NoSession,
            }));
        }
    }

    pub(super) fn send_stream(&mut self, out: Outgoing) {
        let packet = self.packet_to(out.to, PacketBody::Stream(out.packet));
        self.send_on(out.link, packet);
    }

    pub(super) fn emit_stream(&mut self, events: Vec<StreamEvent>, out: Vec<Outgoing>) {
        for o in out {
            self.send_stream(o);
        }
        for event in events {
            if let StreamEvent::Reset { id, .. } | StreamEvent::Opened { id } = &event {
                self.retried.remove(id);
            }
            self.events.push_back(Event::Stream(event));
        }
    }

    /// Sends an echo probe to `dst` that relays drop after `hops` hops (`None`: the hop
    /// limit). `ProbeReply` or `ProbeFailed` follows as an event.
    pub fn probe(&mut self, now: Instant, dst: &NodeId, hops: Option<u8>) -> ProbeId {
        // Random ids: an answer cannot be forged by guessing the next one.
        let id = ProbeId(self.rng.next_u64());
        self.probes.insert(
            id,
            Probe {
                sent: now,
                dst: dst.clone(),
            },
        );
        if dst == &self.config.id {
            self.probes.remove(&id);
            self.events.push_back(Event::ProbeReply {
                probe: id,
                from: dst.clone(),
                rtt: Duration::ZERO,
            });
            return id;
        }
        let mut packet = self.packet_to(dst.clone(), PacketBody::EchoRequest { probe: id.0 });
        packet.hops_left = hops.unwrap_or(self.config.max_hops);
        match self.next_link(dst) {
            Some(link) => self.send_on(link, packet),
            None => self.unreachable(now, None, &packet, Unreachable::NoRoute),
        }
        id
    }

    fn probe_answered(&mut self, now: Instant, probe: ProbeId, from: NodeId) {
        // Only the node probed answers an echo; anyone else's "reply" is ignored.
        if self.probes.get(&probe).is_none_or(|p| p.dst != from) {
            return;
        }
        if let Some(p) = self.probes.remove(&probe) {
            self.events.push_back(Event::ProbeReply {
                probe,
                from,
                rtt: now.saturating_duration_since(p.sent),
            });
        }
    }

    fn fail_probe(&mut self, now: Instant, probe: ProbeId, from: Option<NodeId>, why: Unreachable) {
        if let Some(p) = self.probes.remove(&probe) {
            self.events.push_back(Event::ProbeFailed {
                probe,
                from,
                reason: ProbeFailure::Unreachable(why),
                elapsed: now.saturating_duration_since(p.sent),
            });
        }
    }

    pub(super) fn next_probe_deadline(&self) -> Option<Instant> {
        let timeout = self.config.probe_timeout;
        self.probes.values().map(|p| p.sent + timeout).min()
    }

    pub(super) fn expire_probes(&mut self, now: Instant) {
        let timeout = self.config.probe_timeout;
        let expired: Vec<ProbeId> = self
            .probes
            .iter()
            .filter(|(_, p)| p.sent + timeout <= now)
            .map(|(id, _)| *id)
            .collect();
        for probe in expired {
            self.probes.remove(&probe);
            self.events.push_back(Event::ProbeFailed {
                probe,
                from: None,
                reason: ProbeFailure::Timeout,
                elapsed: timeout,
            });
        }
    }
}
