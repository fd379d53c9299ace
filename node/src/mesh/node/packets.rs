//! The node's packet plane: forwarding by the routing table, the hop limit, unreachable
//! notices, probes (ping and traceroute), datagrams, and the glue between stream circuits
//! and links.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{Event, MeshNode, Probe, ProbeFailure, ProbeId};
use crate::id::{NodeId, ServiceName};
use crate::mesh::link::LinkId;
use crate::mesh::message::{
    Message, Packet, PacketBody, ResetReason, StreamKind, StreamPacket, Unreachable,
};
use crate::mesh::stream::{Admission, Outgoing, StreamError, StreamEvent, StreamId, Streams};

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No route to the node.
    #[error("node {0} is not reachable")]
    NoRoute(NodeId),
    /// Streams to ourselves are not carried by the mesh.
    #[error("cannot open a mesh stream to this node itself")]
    ToSelf,
}

impl MeshNode {
    /// The up link that leads towards `dst`, if any.
    fn next_link(&mut self, dst: &NodeId) -> Option<LinkId> {
        if let Some(link) = self.neighbours.get(dst) {
            return Some(*link);
        }
        let hop = self.routes().get(dst)?.next_hop.clone();
        self.neighbours.get(&hop).copied()
    }

    fn send_on(&mut self, link: LinkId, packet: Packet) {
        if let Some(slot) = self.links.get_mut(&link)
            && let Err(e) = slot.link.send(&Message::Packet(packet))
        {
            tracing::debug!(%link, error = %e, "dropped packet");
        }
    }

    fn packet_to(&self, dst: NodeId, body: PacketBody) -> Packet {
        Packet {
            src: self.config.id.clone(),
            dst,
            hops_left: self.config.max_hops,
            body,
        }
    }

    /// A packet arrived on `link`.
    pub(super) fn handle_packet(&mut self, now: Instant, link: LinkId, mut packet: Packet) {
        if packet.dst == self.config.id {
            self.deliver(now, link, packet);
            return;
        }
        if packet.hops_left == 0 {
            self.unreachable(now, Some(link), &packet, Unreachable::HopLimit);
            return;
        }
        packet.hops_left -= 1;
        if let PacketBody::Stream(sp) = &packet.body {
            self.relay_stream(now, link, packet.clone(), sp.clone());
            return;
        }
        match self.next_link(&packet.dst) {
            Some(next) => self.send_on(next, packet),
            None => self.unreachable(now, Some(link), &packet, Unreachable::NoRoute),
        }
    }

    fn relay_stream(&mut self, now: Instant, link: LinkId, packet: Packet, sp: StreamPacket) {
        if let StreamKind::Open { .. } = sp.kind {
            match self.next_link(&packet.dst) {
                Some(next) => {
                    self.streams
                        .pin_relay(sp.circuit, packet.dst.clone(), link, next);
                    self.send_on(next, packet);
                }
                None => self.unreachable(now, Some(link), &packet, Unreachable::NoRoute),
            }
            return;
        }
        match self.streams.relay_next_link(&sp) {
            Some(next) => self.send_on(next, packet),
            None => {
                if let Some(out) =
                    Streams::reset_unknown(link, packet.src, &sp, ResetReason::PathBroken)
                {
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
            PacketBody::Datagram { .. } => None,
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
        let notice = self.packet_to(failed.src.clone(), body);
        if let Some(next) = self.next_link(&failed.src) {
            self.send_on(next, notice);
        }
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
            PacketBody::Datagram {
                from_service,
                to_service,
                data,
            } => self.events.push_back(Event::Datagram {
                from: src,
                from_service,
                service: to_service,
                data,
            }),
            PacketBody::EchoRequest { probe } => {
                let reply = self.packet_to(src.clone(), PacketBody::EchoReply { probe });
                if let Some(next) = self.next_link(&src) {
                    self.send_on(next, reply);
                }
            }
            PacketBody::EchoReply { probe } => {
                if let Some(p) = self.probes.remove(&ProbeId(probe)) {
                    self.events.push_back(Event::ProbeReply {
                        probe: ProbeId(probe),
                        from: src,
                        rtt: now.saturating_duration_since(p.sent),
                    });
                }
            }
            PacketBody::Unreachable {
                reason,
                probe,
                target,
            } => match probe {
                Some(p) => self.fail_probe(now, ProbeId(p), Some(src), reason),
                None => self.events.push_back(Event::Undeliverable {
                    target,
                    reporter: src,
                    reason,
                }),
            },
            PacketBody::Stream(sp) => self.deliver_stream(now, link, src, sp),
        }
    }

    fn deliver_stream(&mut self, now: Instant, link: LinkId, src: NodeId, sp: StreamPacket) {
        let mut events = Vec::new();
        let mut out = Vec::new();
        match &sp.kind {
            StreamKind::Open { service, .. } if sp.from_opener => {
                let admission = if self.listening.contains(service) {
                    Admission::Accept
                } else {
                    Admission::NoService
                };
                self.streams
                    .handle_open(src, link, sp, admission, &mut events, &mut out);
            }
            _ if self.streams.is_local(&sp.circuit) => {
                self.streams.handle_local(sp, &mut events, &mut out);
            }
            _ => {
                if let Some(o) = Streams::reset_unknown(link, src, &sp, ResetReason::PathBroken) {
                    out.push(o);
                }
            }
        }
        self.emit_stream(now, events, out);
    }

    fn send_stream(&mut self, out: Outgoing) {
        let packet = self.packet_to(out.to, PacketBody::Stream(out.packet));
        self.send_on(out.link, packet);
    }

    pub(super) fn emit_stream(
        &mut self,
        _now: Instant,
        events: Vec<StreamEvent>,
        out: Vec<Outgoing>,
    ) {
        for o in out {
            self.send_stream(o);
        }
        self.events.extend(events.into_iter().map(Event::Stream));
    }

    /// Opens a stream to `service` on `dst`. `Opened` or `Reset` follows as an event.
    ///
    /// # Errors
    /// [`OpenError`] when `dst` is us or unreachable.
    pub fn open_stream(
        &mut self,
        now: Instant,
        dst: &NodeId,
        service: ServiceName,
        from_service: ServiceName,
    ) -> Result<StreamId, OpenError> {
        if dst == &self.config.id {
            return Err(OpenError::ToSelf);
        }
        let link = self
            .next_link(dst)
            .ok_or_else(|| OpenError::NoRoute(dst.clone()))?;
        let me = self.config.id.clone();
        let (id, out) = self
            .streams
            .open(&me, dst.clone(), link, from_service, service);
        self.emit_stream(now, Vec::new(), vec![out]);
        Ok(id)
    }

    /// Sends bytes on a stream (at most the credit granted so far).
    ///
    /// # Errors
    /// [`StreamError`] for an unknown or finished stream, or data beyond the credit.
    pub fn stream_send(
        &mut self,
        now: Instant,
        id: StreamId,
        data: Bytes,
    ) -> Result<(), StreamError> {
        let mut out = Vec::new();
        self.streams.send(id, data, &mut out)?;
        self.emit_stream(now, Vec::new(), out);
        Ok(())
    }

    /// The application consumed `n` received bytes of `id`.
    pub fn stream_consumed(&mut self, now: Instant, id: StreamId, n: usize) {
        let mut out = Vec::new();
        self.streams.consumed(id, n, &mut out);
        self.emit_stream(now, Vec::new(), out);
    }

    /// We will send no more on `id`.
    pub fn stream_finish(&mut self, now: Instant, id: StreamId) {
        let mut out = Vec::new();
        self.streams.finish(id, &mut out);
        self.emit_stream(now, Vec::new(), out);
    }

    /// Sends a datagram to `service` on `dst`. It may be lost; a node that cannot route it
    /// sends an unreachable notice back ([`Event::Undeliverable`]).
    pub fn send_datagram(
        &mut self,
        dst: &NodeId,
        service: ServiceName,
        from_service: ServiceName,
        data: Bytes,
    ) {
        if dst == &self.config.id {
            self.events.push_back(Event::Datagram {
                from: dst.clone(),
                from_service,
                service,
                data,
            });
            return;
        }
        let body = PacketBody::Datagram {
            from_service,
            to_service: service,
            data,
        };
        let packet = self.packet_to(dst.clone(), body);
        match self.next_link(dst) {
            Some(link) => self.send_on(link, packet),
            None => tracing::debug!(node = %dst, "datagram dropped: no route"),
        }
    }

    /// Sends an echo probe to `dst` that relays drop after `hops` hops (`None`: the hop
    /// limit). `ProbeReply` or `ProbeFailed` follows as an event.
    pub fn probe(&mut self, now: Instant, dst: &NodeId, hops: Option<u8>) -> ProbeId {
        self.next_probe += 1;
        let id = ProbeId(self.next_probe);
        self.probes.insert(id, Probe { sent: now });
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
