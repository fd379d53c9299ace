//! Circuits passing through this node: pinned to the two links their open used, and
//! forwarded only between those links.
//!
//! A packet of a relayed circuit is taken only from the link on its side of the circuit; a
//! live circuit is never re-pinned; circuits idle for [`RELAY_IDLE`] are dropped with a
//! reset to both ends. Caps bound how many circuits may be pinned here: in all, per
//! neighbour (the link an open arrived on, whose peer the link handshake proved), and per
//! opener behind that neighbour. The opener named in a circuit id is only a claim, so its
//! cap is counted per link: a neighbour claiming someone else's circuits uses up its own
//! share, never theirs. Relays see no content: opens and traffic are sealed end to end.
//! No IO.

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

/// Most circuits one neighbour may have relayed here at once (counted on the link their
/// opens arrived on): a quarter of [`MAX_RELAYED`], so no single neighbour can fill the
/// table and leave the others nothing.
pub const MAX_RELAYED_PER_LINK: usize = MAX_RELAYED / 4;

/// Most circuits one opener may have relayed here at once through one neighbour, so one
/// busy node behind a neighbour leaves room for the others behind it.
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
    /// Circuits pinned per link their open arrived on.
    per_link: HashMap<LinkId, usize>,
    /// Circuits pinned per (link their open arrived on, opener they claim).
    per_opener: HashMap<(LinkId, NodeId), usize>,
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

    /// The relayed circuits (for tests).
    #[cfg(test)]
    pub(crate) fn circuit_ids(&self) -> Vec<CircuitId> {
        self.circuits.keys().cloned().collect()
    }

    /// Whether `circuit` passes through here.
    pub fn contains(&self, circuit: &CircuitId) -> bool {
        self.circuits.contains_key(circuit)
    }

    /// An open passing through from `from` towards `acceptor` over `to`, counted against
    /// the caps of `from`.
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
        let opener = (from, circuit.opener.clone());
        let by_link = self.per_link.get(&from).copied().unwrap_or(0);
        let by_opener = self.per_opener.get(&opener).copied().unwrap_or(0);
        if self.circuits.len() >= MAX_RELAYED
            || by_link >= MAX_RELAYED_PER_LINK
            || by_opener >= MAX_RELAYED_PER_OPENER
        {
            return RelayVerdict::Refuse;
        }
        self.per_link.insert(from, by_link + 1);
        self.per_opener.insert(opener, by_opener + 1);
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
        decrement(&mut self.per_link, relay.opener_link);
        decrement(
            &mut self.per_opener,
            (relay.opener_link, circuit.opener.clone()),
        );
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

/// Takes one off `key`'s count, forgetting it at zero (the maps stay as small as the table).
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let Some(count) = counts.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            counts.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circuit(opener: &str, number: u64) -> CircuitId {
        CircuitId {
            opener: NodeId::new(opener).unwrap(),
            number,
        }
    }

    fn packet(c: &CircuitId, from_opener: bool, kind: StreamKind) -> StreamPacket {
        StreamPacket {
            circuit: c.clone(),
            from_opener,
            kind,
        }
    }

    #[test]
    fn a_live_circuit_is_never_re_pinned_and_only_its_links_may_speak() {
        let now = Instant::now();
        let mut relays = Relays::default();
        let (opener, acceptor, thief) = (LinkId(1), LinkId(2), LinkId(3));
        let c = circuit("a", 7);
        let b = NodeId::new("b").unwrap();
        assert_eq!(
            relays.pin(now, &c, &b, opener, acceptor),
            RelayVerdict::Forward(acceptor)
        );
        // A neighbour re-opening the live circuit from its own link is ignored.
        assert_eq!(relays.pin(now, &c, &b, thief, acceptor), RelayVerdict::Drop);
        let data = StreamKind::Sealed(bytes::Bytes::from_static(b"x"));
        assert_eq!(
            relays.route(now, thief, &packet(&c, false, data.clone())),
            RelayVerdict::Drop,
            "the acceptor's direction from another link"
        );
        assert_eq!(
            relays.route(
                now,
                thief,
                &packet(&c, true, StreamKind::Reset(ResetReason::Cancelled))
            ),
            RelayVerdict::Drop,
            "a reset from another link does not tear the circuit down"
        );
        assert_eq!(
            relays.route(now, acceptor, &packet(&c, false, data.clone())),
            RelayVerdict::Forward(opener)
        );
        assert_eq!(
            relays.route(now, opener, &packet(&c, true, data)),
            RelayVerdict::Forward(acceptor)
        );
    }

    #[test]
    fn an_idle_circuit_is_dropped_with_a_reset_to_both_ends() {
        let now = Instant::now();
        let mut relays = Relays::default();
        let c = circuit("a", 1);
        let b = NodeId::new("b").unwrap();
        relays.pin(now, &c, &b, LinkId(1), LinkId(2));
        let mut out = Vec::new();
        relays.expire(now + RELAY_IDLE - Duration::from_secs(1), &mut out);
        assert!(out.is_empty());
        relays.expire(now + RELAY_IDLE, &mut out);
        let resets: Vec<(LinkId, bool)> = out
            .iter()
            .filter(|o| o.packet.kind == StreamKind::Reset(ResetReason::Idle))
            .map(|o| (o.link, o.packet.from_opener))
            .collect();
        assert_eq!(resets, vec![(LinkId(1), false), (LinkId(2), true)]);
        assert!(relays.is_empty());
    }

    #[test]
    fn one_opener_cannot_pin_more_than_its_share() {
        let now = Instant::now();
        let mut relays = Relays::default();
        let b = NodeId::new("b").unwrap();
        for n in 0..MAX_RELAYED_PER_OPENER as u64 {
            let verdict = relays.pin(now, &circuit("greedy", n), &b, LinkId(1), LinkId(2));
            assert_eq!(verdict, RelayVerdict::Forward(LinkId(2)));
        }
        let over = relays.pin(now, &circuit("greedy", u64::MAX), &b, LinkId(1), LinkId(2));
        assert_eq!(over, RelayVerdict::Refuse);
        let other = relays.pin(now, &circuit("modest", 1), &b, LinkId(1), LinkId(2));
        assert_eq!(
            other,
            RelayVerdict::Forward(LinkId(2)),
            "others still get through"
        );
    }

    #[test]
    fn one_neighbour_cannot_fill_the_whole_table() {
        let now = Instant::now();
        let mut relays = Relays::default();
        let b = NodeId::new("b").unwrap();
        let (flooder, honest) = (LinkId(1), LinkId(3));
        // Every opener name it likes, each up to the per-opener cap, all from one link.
        let names = MAX_RELAYED / MAX_RELAYED_PER_OPENER + 1;
        for name in 0..names {
            for n in 0..MAX_RELAYED_PER_OPENER as u64 {
                relays.pin(
                    now,
                    &circuit(&format!("o{name}"), n),
                    &b,
                    flooder,
                    LinkId(2),
                );
            }
        }
        assert_eq!(relays.len(), MAX_RELAYED_PER_LINK, "the flooder's share");
        let other = relays.pin(now, &circuit("a", 1), &b, honest, LinkId(2));
        assert_eq!(other, RelayVerdict::Forward(LinkId(2)));
    }

    #[test]
    fn a_neighbour_claiming_an_opener_does_not_use_up_that_openers_share_elsewhere() {
        let now = Instant::now();
        let mut relays = Relays::default();
        let b = NodeId::new("b").unwrap();
        let (flooder, openers_link) = (LinkId(1), LinkId(3));
        for n in 0..MAX_RELAYED_PER_OPENER as u64 {
            relays.pin(now, &circuit("a", n), &b, flooder, LinkId(2));
        }
        let real = relays.pin(now, &circuit("a", u64::MAX), &b, openers_link, LinkId(2));
        assert_eq!(real, RelayVerdict::Forward(LinkId(2)));
    }
}
