//! Circuits passing through this node: pinned to the two links their open used, and
//! forwarded only between those links.
//!
//! A packet of a relayed circuit is taken only from the link on its side of the circuit; a
//! live circuit is never re-pinned; circuits idle for [`RELAY_IDLE`] are dropped with a
//! reset to both ends; and caps bound how many circuits one opener (and everyone) may pin
//! here. Relays see no content: opens and traffic are sealed end to end. No IO.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::Outgoing;
use crate::id::NodeId;
use crate::mesh::link::LinkId;
use crate::mesh::message::{CircuitId, ResetReason, StreamKind, StreamPacket};

/// A relayed circuit with no traffic for this long is dropped (endpoints send keepalives
/// far more often).
pub const RELAY_IDLE: Duration = Duration::from_secs(15 * 60);

/// Most circuits relayed at once.
pub const MAX_RELAYED: usize = 65_536;

/// Most circuits one opener may have relayed here at once.
pub const MAX_RELAYED_PER_OPENER: usize = 4_096;

#[derive(Debug)]
struct Relay {
    acceptor: NodeId,
    opener_link: LinkId,
    acceptor_link: LinkId,
    last_active: Instant,
}

/// What to do with a packet of a relayed circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayVerdict {
    /// Forward it on this link.
    Forward(LinkId),
    /// Drop it silently: it came from the wrong link, or it re-opens a live circuit.
    Drop,
    /// No such circuit here: tell the sender (unless it was a teardown).
    Unknown,
    /// The circuit cannot be pinned (caps): reset it back towards the opener.
    Refuse,
}

/// The circuits relayed by this node.
#[derive(Debug, Default)]
pub struct Relays {
    circuits: HashMap<CircuitId, Relay>,
    per_opener: HashMap<NodeId, usize>,
}

impl Relays {
    /// Number of relayed circuits.
    pub fn len(&self) -> usize {
        self.circuits.len()
    }

    /// Whether nothing is relayed.
    pub fn is_empty(&self) -> bool {
        self.circuits.is_empty()
    }

    /// Whether `circuit` passes through here.
    pub fn contains(&self, circuit: &CircuitId) -> bool {
        self.circuits.contains_key(circuit)
    }

    /// An open passing through from `from` towards `acceptor` over `to`.
    pub fn pin(
        &mut self,
        now: Instant,
        circuit: &CircuitId,
        acceptor: &NodeId,
        from: LinkId,
        to: LinkId,
    ) -> RelayVerdict {
        if self.circuits.contains_key(circuit) {
            // Never re-pin a live circuit: that is how a neighbour would steal one.
            return RelayVerdict::Drop;
        }
        let count = self.per_opener.get(&circuit.opener).copied().unwrap_or(0);
        if self.circuits.len() >= MAX_RELAYED || count >= MAX_RELAYED_PER_OPENER {
            return RelayVerdict::Refuse;
        }
        self.per_opener.insert(circuit.opener.clone(), count + 1);
        self.circuits.insert(
            circuit.clone(),
            Relay {
                acceptor: acceptor.clone(),
                opener_link: from,
                acceptor_link: to,
                last_active: now,
            },
        );
        RelayVerdict::Forward(to)
    }

    /// A non-open packet of a circuit, arrived on `link`.
    pub fn route(&mut self, now: Instant, link: LinkId, packet: &StreamPacket) -> RelayVerdict {
        let Some(relay) = self.circuits.get_mut(&packet.circuit) else {
            return RelayVerdict::Unknown;
        };
        let (expected_from, next) = if packet.from_opener {
            (relay.opener_link, relay.acceptor_link)
        } else {
            (relay.acceptor_link, relay.opener_link)
        };
        if link != expected_from {
            return RelayVerdict::Drop;
        }
        relay.last_active = now;
        if matches!(packet.kind, StreamKind::Reset(_) | StreamKind::Close) {
            self.remove(&packet.circuit);
        }
        RelayVerdict::Forward(next)
    }

    fn remove(&mut self, circuit: &CircuitId) -> Option<Relay> {
        let relay = self.circuits.remove(circuit)?;
        if let Some(count) = self.per_opener.get_mut(&circuit.opener) {
            *count -= 1;
            if *count == 0 {
                self.per_opener.remove(&circuit.opener);
            }
        }
        Some(relay)
    }

    /// Drops every circuit that used `link`, resetting the other side.
    pub fn handle_link_down(&mut self, link: LinkId, out: &mut Vec<Outgoing>) {
        let broken: Vec<CircuitId> = self
            .circuits
            .iter()
            .filter(|(_, r)| r.opener_link == link || r.acceptor_link == link)
            .map(|(c, _)| c.clone())
            .collect();
        for circuit in broken {
            self.drop_circuit(&circuit, Some(link), ResetReason::PathBroken, out);
        }
    }

    /// Drops circuits idle since `now - RELAY_IDLE`, resetting both ends.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<Outgoing>) {
        let idle: Vec<CircuitId> = self
            .circuits
            .iter()
            .filter(|(_, r)| now.saturating_duration_since(r.last_active) >= RELAY_IDLE)
            .map(|(c, _)| c.clone())
            .collect();
        for circuit in idle {
            self.drop_circuit(&circuit, None, ResetReason::Idle, out);
        }
    }

    /// Forgets `circuit` and resets it towards both ends but the side of `dead_link`.
    fn drop_circuit(
        &mut self,
        circuit: &CircuitId,
        dead_link: Option<LinkId>,
        reason: ResetReason,
        out: &mut Vec<Outgoing>,
    ) {
        let Some(relay) = self.remove(circuit) else {
            return;
        };
        if Some(relay.opener_link) != dead_link {
            out.push(Outgoing {
                link: relay.opener_link,
                to: circuit.opener.clone(),
                packet: StreamPacket {
                    circuit: circuit.clone(),
                    from_opener: false,
                    kind: StreamKind::Reset(reason),
                },
            });
        }
        if Some(relay.acceptor_link) != dead_link {
            out.push(Outgoing {
                link: relay.acceptor_link,
                to: relay.acceptor,
                packet: StreamPacket {
                    circuit: circuit.clone(),
                    from_opener: true,
                    kind: StreamKind::Reset(reason),
                },
            });
        }
    }
}
