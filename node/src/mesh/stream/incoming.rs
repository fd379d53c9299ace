//! What arrives for this node's own stream endpoints: opens for its services (replayed ones
//! dropped, per-peer and total caps applied; one that fails authentication is reported to
//! the caller, which may try the peer's other session or answer `NoSession`), and the
//! sealed data, credit and ends of its circuits; a peer that breaks the protocol has its
//! stream reset. No IO.

use std::time::Instant;

use bytes::Bytes;

use super::{
    Admission, DEFAULT_WINDOW, Endpoint, Inner, MAX_ACCEPTED_PER_PEER, MAX_ENDPOINTS,
    MAX_SEND_CREDIT, OpenAuth, Outbound, Outgoing, Reopen, StreamEvent, StreamId, Streams, reply,
};
use crate::id::{NodeId, ServiceName};
use crate::mesh::link::LinkId;
use crate::mesh::message::{CircuitId, ResetReason, StreamKind, StreamPacket};
use crate::mesh::session::Session;

impl Streams {
    /// An `Open` for one of our services arrived over `link` from the session's peer.
    /// Forged or replayed opens are dropped without a word. Returns whether the open
    /// authenticated under `session` ([`OpenAuth::Unauthentic`]: the caller may try another
    /// session of the peer's, or tell the opener its session is gone; [`OpenAuth::Unchecked`]:
    /// dropped before its seal was tried, so it proves nothing about `session`).
    #[allow(clippy::too_many_arguments)]
    pub fn handle_open(
        &mut self,
        now: Instant,
        link: LinkId,
        circuit: CircuitId,
        sealed: &[u8],
        session: &mut Session,
        admission: impl FnOnce(&ServiceName) -> Admission,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) -> OpenAuth {
        if circuit.opener != session.peer.node || self.by_circuit.contains_key(&circuit) {
            return OpenAuth::Unchecked;
        }
        let (sealer, mut opener) = session.secrets.circuit(&circuit);
        let Some(Inner::Open {
            service,
            window,
            seq,
            ..
        }) = opener.open(sealed).ok().and_then(|p| Inner::decode(&p))
        else {
            return OpenAuth::Unauthentic;
        };
        if !session.accept_open_seq(now, seq) {
            tracing::warn!(peer = %session.peer.node, seq, "dropped a replayed stream open");
            return OpenAuth::Authentic;
        }
        let peer = session.peer.clone();
        let refusal = match admission(&service) {
            Admission::NoService => Some(ResetReason::NoService),
            Admission::Accept if self.is_crowded(&peer.node) => Some(ResetReason::Busy),
            Admission::Accept => None,
        };
        if let Some(reason) = refusal {
            out.push(reply(link, peer.node, circuit, StreamKind::Reset(reason)));
            return OpenAuth::Authentic;
        }
        let id = self.allocate();
        *self.accepted_per_peer.entry(peer.node.clone()).or_default() += 1;
        let credit = u64::from(window).min(MAX_SEND_CREDIT);
        let tx = Outbound::new(sealer);
        let mut ep = Endpoint {
            accepted: true,
            send_credit: credit,
            ..Endpoint::new(circuit.clone(), peer.clone(), link, tx, opener, now)
        };
        let accept = Inner::Accept {
            window: DEFAULT_WINDOW,
        };
        ep.sealed(now, &accept, out);
        self.by_circuit.insert(circuit, id);
        self.endpoints.insert(id, ep);
        events.push(StreamEvent::Incoming {
            id,
            from: peer,
            service,
        });
        events.push(StreamEvent::Credit { id, bytes: credit });
        OpenAuth::Authentic
    }

    fn is_crowded(&self, peer: &NodeId) -> bool {
        self.endpoints.len() >= MAX_ENDPOINTS
            || self.accepted_per_peer.get(peer).copied().unwrap_or(0) >= MAX_ACCEPTED_PER_PEER
    }

    /// A non-`Open` packet of a circuit that ends here, arrived on `link`. Packets from any
    /// other link than the circuit's are dropped; so are seals that fail.
    pub fn handle_local(
        &mut self,
        now: Instant,
        link: LinkId,
        packet: StreamPacket,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
        reopen: &mut Vec<Reopen>,
    ) {
        let Some(&id) = self.by_circuit.get(&packet.circuit) else {
            return;
        };
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        if ep.link != link || packet.from_opener == ep.is_opener {
            return;
        }
        match packet.kind {
            StreamKind::Sealed(sealed) => {
                self.pool_used = true;
                let Some(inner) = ep
                    .opener
                    .open_pooled(sealed, &self.pool)
                    .ok()
                    .and_then(Inner::decode_owned)
                else {
                    tracing::debug!(stream = %id, "dropped a circuit packet that failed authentication");
                    return;
                };
                ep.last_rx = now;
                self.handle_inner(now, id, inner, events, out);
            }
            StreamKind::Reset(ResetReason::NoSession) if ep.is_opener && !ep.accepted => {
                if let Some(ep) = self.remove(id)
                    && let Some((from_service, service)) = ep.asked
                {
                    reopen.push(Reopen {
                        id,
                        to: ep.peer.node,
                        from_service,
                        service,
                    });
                }
            }
            StreamKind::Reset(reason) => {
                self.remove(id);
                events.push(StreamEvent::Reset { id, reason });
            }
            // An open for a live circuit of ours, or a close meant for relays.
            StreamKind::Open { .. } | StreamKind::Close => {}
        }
    }

    fn handle_inner(
        &mut self,
        now: Instant,
        id: StreamId,
        inner: Inner,
        events: &mut Vec<StreamEvent>,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(ep) = self.endpoints.get_mut(&id) else {
            return;
        };
        match inner {
            Inner::Accept { window } if ep.is_opener && !ep.accepted => {
                ep.accepted = true;
                ep.asked = None;
                let granted = ep.grant(window);
                events.push(StreamEvent::Opened { id });
                events.push(StreamEvent::Credit { id, bytes: granted });
            }
            Inner::Data(data) => self.handle_data(id, data, events, out),
            Inner::Credit(n) if ep.accepted => {
                let granted = ep.grant(n);
                events.push(StreamEvent::Credit { id, bytes: granted });
            }
            Inner::Fin if !ep.fin_received && ep.accepted => {
                ep.fin_received = true;
                events.push(StreamEvent::Finished { id });
                self.close_if_done(id, out);
            }
            Inner::Keepalive => {}
            // Duplicate Accept/Fin, an Open inside a live circuit: a broken peer.
            _ => self.violation(id, events, out),
        }
        let _ = now;
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
        if !ep.accepted || ep.fin_received || len > ep.recv_allowed {
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
}
