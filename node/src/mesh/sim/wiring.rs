//! Connections between simulated nodes and the faults on them: dialling, cuts and heals,
//! kills and restarts. Each end learns of a fault the way a driver would report it.

use std::time::Duration;

use super::net::End;
use super::{Conn, DEFAULT_LATENCY, NodeIdx, Sim};
use crate::mesh::peers::PeerSlotId;
use crate::mesh::route::Cost;

impl Sim {
    /// `a` dials `b` now and redials after every loss, at `cost` and the default latency.
    pub(crate) fn connect(&mut self, a: NodeIdx, b: NodeIdx, cost: Cost) {
        self.connect_with_latency(a, b, cost, DEFAULT_LATENCY);
    }

    /// [`Sim::connect`] with a one-way latency.
    pub(crate) fn connect_with_latency(
        &mut self,
        a: NodeIdx,
        b: NodeIdx,
        cost: Cost,
        latency: Duration,
    ) {
        self.conns.push(Conn {
            from: a,
            to: b,
            cost,
            latency,
        });
        self.add_slot(a, self.conns.len() - 1);
        self.drain(a);
    }

    /// The peer slots through which `a` dials `b`.
    pub(crate) fn slots_to(&self, a: NodeIdx, b: NodeIdx) -> Vec<PeerSlotId> {
        (self.nodes[a.0].slots.iter())
            .filter(|(_, conn)| self.conns[**conn].to == b)
            .map(|(slot, _)| *slot)
            .collect()
    }

    fn pair(a: NodeIdx, b: NodeIdx) -> (NodeIdx, NodeIdx) {
        (a.min(b), a.max(b))
    }

    /// Cuts every connection between `a` and `b`: both sides see their sockets fail at once,
    /// and redials fail until [`Sim::heal`].
    pub(crate) fn cut(&mut self, a: NodeIdx, b: NodeIdx) {
        self.cut.insert(Self::pair(a, b));
        let doomed: Vec<u64> = self
            .net
            .wires()
            .filter(|(_, w)| Self::pair(w.ends[0].node, w.ends[1].node) == Self::pair(a, b))
            .map(|(id, _)| id)
            .collect();
        for id in doomed {
            let Some(wire) = self.net.remove_wire(id) else {
                continue;
            };
            for end in wire.ends.iter().filter(|e| e.open) {
                self.socket_closed(end, "connection reset (cut)");
            }
        }
    }

    /// Lets `a` and `b` connect again (redials succeed).
    pub(crate) fn heal(&mut self, a: NodeIdx, b: NodeIdx) {
        self.cut.remove(&Self::pair(a, b));
    }

    /// Whether `a`–`b` is cut.
    pub(crate) fn is_cut(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.cut.contains(&Self::pair(a, b))
    }

    /// Whether a wire between `a` and `b` is up at both ends.
    pub(crate) fn is_linked(&self, a: NodeIdx, b: NodeIdx) -> bool {
        self.net.wires().any(|(_, w)| {
            Self::pair(w.ends[0].node, w.ends[1].node) == Self::pair(a, b)
                && w.ends.iter().all(|e| e.up && e.open)
        })
    }

    /// Stops `idx` abruptly: its peers see EOF after the bytes in flight.
    pub(crate) fn kill(&mut self, idx: NodeIdx) {
        self.stop(idx, true);
    }

    /// Stops `idx` with no EOF (power loss): its peers' sockets stay open, and what they
    /// send vanishes, until their idle timeout closes them.
    pub(crate) fn crash(&mut self, idx: NodeIdx) {
        self.stop(idx, false);
    }

    fn stop(&mut self, idx: NodeIdx, eof: bool) {
        let n = &mut self.nodes[idx.0];
        if n.node.take().is_none() {
            return;
        }
        n.timer = None;
        let inc = n.incarnation;
        let ends: Vec<(u64, usize)> = self
            .net
            .wires()
            .flat_map(|(id, w)| (0..2).map(move |s| (id, s, w)))
            .filter(|(_, s, w)| {
                let e = &w.ends[*s];
                e.node == idx && e.incarnation == inc && e.open
            })
            .map(|(id, s, _)| (id, s))
            .collect();
        for (id, side) in ends {
            if eof {
                self.net.close_end(self.now, id, side);
            } else {
                self.net.mark_closed(id, side);
            }
        }
    }

    /// Restarts `idx` (killing it first if alive): same id and key, newer epoch.
    pub(crate) fn restart(&mut self, idx: NodeIdx) {
        self.kill(idx);
        self.start(idx);
    }

    /// Carries out a dial: fails when the target is dead or the pair is cut.
    pub(super) fn dial(&mut self, a: NodeIdx, slot: PeerSlotId) {
        let now = self.now;
        let Some(&conn) = self.nodes[a.0].slots.get(&slot) else {
            return;
        };
        let Conn {
            to: b,
            cost,
            latency,
            ..
        } = self.conns[conn].clone();
        if !self.is_alive(b) || self.is_cut(a, b) {
            self.with_node(a, |n, now| n.handle_dial_failed(now, slot));
            return;
        }
        let la = self.node(a).handle_dialed(now, slot, cost);
        let lb = self.node(b).handle_accepted(now, cost, None);
        let end = |sim: &Self, node: NodeIdx, link| End {
            node,
            incarnation: sim.nodes[node.0].incarnation,
            link,
            open: true,
            up: false,
        };
        let ends = [end(self, a, la), end(self, b, lb)];
        self.net.add_wire(now, ends, latency, cost);
        self.drain(a);
        self.drain(b);
    }

    /// The socket of `end` failed (a cut).
    pub(super) fn socket_closed(&mut self, end: &End, why: &str) {
        let n = &self.nodes[end.node.0];
        if n.incarnation != end.incarnation || n.node.is_none() {
            return;
        }
        let link = end.link;
        self.with_node(end.node, |node, now| {
            node.handle_link_socket_closed(now, link, why)
        });
    }
}
