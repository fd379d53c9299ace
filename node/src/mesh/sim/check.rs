//! Mesh-wide invariants (receptor `LibMesh`'s, made exact): routing tables equal the oracle
//! computed from the simulation's own wires, link-state databases agree within each
//! connected part, and following next hops never loops.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{NodeIdx, Sim};
use crate::id::NodeId;
use crate::mesh::route::{self, Route, Topology};

impl Sim {
    /// Live nodes that count for the oracle (duplicates of another id do not).
    fn counted(&self) -> Vec<NodeIdx> {
        self.indices()
            .filter(|&i| self.is_alive(i) && !self.nodes[i.0].duplicate)
            .collect()
    }

    /// The true topology: every wire that both ends report up, between counted nodes.
    pub(crate) fn true_topology(&self) -> Topology {
        let mut topology = Topology::new();
        for (_, wire) in self.net.wires() {
            let [a, b] = &wire.ends;
            let counted = |e: &super::End| {
                let n = &self.nodes[e.node.0];
                e.up && e.open && !n.duplicate && n.node.is_some() && n.incarnation == e.incarnation
            };
            if counted(a) && counted(b) {
                topology.add_link(&self.id(a.node), &self.id(b.node), wire.cost);
            }
        }
        topology
    }

    /// What is wrong with convergence, if anything.
    pub(crate) fn convergence_error(&mut self) -> Option<String> {
        let topology = self.true_topology();
        let mut tables = BTreeMap::new();
        for i in self.counted() {
            let id = self.id(i);
            let oracle = route::shortest_paths(&topology, &id);
            let table = self.node(i).routes().clone();
            if table != oracle {
                return Some(format!(
                    "routes of {id} differ from the oracle:\n  node:   {table:?}\n  oracle: {oracle:?}"
                ));
            }
            tables.insert(id, oracle);
        }
        self.lsdb_error(&tables)
    }

    /// Within each connected part every node holds every member's current advert, and all
    /// members know the same set of nodes.
    fn lsdb_error(&mut self, tables: &BTreeMap<NodeId, BTreeMap<NodeId, Route>>) -> Option<String> {
        let mut current = HashMap::new();
        for i in self.counted() {
            let id = self.id(i);
            let own = self.node(i).advert(&id).map(|a| (a.epoch, a.seq));
            let own = own.expect("invariant: a node holds its own advert");
            current.insert(id, own);
        }
        let mut known: BTreeMap<NodeId, BTreeSet<NodeId>> = BTreeMap::new();
        for i in self.counted() {
            let id = self.id(i);
            let status = self.node(i).status();
            let versions = status
                .adverts
                .iter()
                .map(|a| (a.origin.clone(), (a.epoch, a.seq)));
            let versions: BTreeMap<NodeId, (u64, u64)> = versions.collect();
            for member in tables[&id].keys() {
                let Some(theirs) = current.get(member) else {
                    return Some(format!("{id} routes to {member}, which is not running"));
                };
                if versions.get(member) != Some(theirs) {
                    return Some(format!(
                        "{id} holds advert {:?} of {member}, which is at {theirs:?}",
                        versions.get(member)
                    ));
                }
            }
            known.insert(id, versions.into_keys().collect());
        }
        for (id, table) in tables {
            // The smallest id of the part stands for it.
            let rep = table.keys().next().filter(|m| *m < id).unwrap_or(id);
            if known[rep] != known[id] {
                return Some(format!(
                    "{id} and {rep} know different nodes:\n  {:?}\n  {:?}",
                    known[id], known[rep]
                ));
            }
        }
        None
    }

    /// Whether every routing table equals the oracle and the lsdbs agree.
    pub(crate) fn is_converged(&mut self) -> bool {
        self.convergence_error().is_none()
    }

    /// Panics with what differs unless [`Sim::is_converged`].
    pub(crate) fn assert_converged(&mut self) {
        if let Some(e) = self.convergence_error() {
            panic!("mesh not converged at {:?}: {e}", self.elapsed());
        }
    }

    /// A loop or black hole found by following next hops, if any.
    pub(crate) fn loop_error(&mut self) -> Option<String> {
        let topology = self.true_topology();
        let mut tables = HashMap::new();
        for i in self.counted() {
            let table = self.node(i).routes().clone();
            tables.insert(self.id(i), table);
        }
        let limit = tables.len();
        for (src, table) in &tables {
            for dst in table.keys() {
                let mut at = src;
                let mut hops = 0;
                while at != dst {
                    let Some(route) = tables.get(at).and_then(|t| t.get(dst)) else {
                        return Some(format!("{src} -> {dst}: {at} has no route"));
                    };
                    if !topology.neighbours(at).any(|(n, _)| n == &route.next_hop) {
                        return Some(format!(
                            "{src} -> {dst}: {at} hands to non-neighbour {}",
                            route.next_hop
                        ));
                    }
                    at = &route.next_hop;
                    hops += 1;
                    if hops > limit {
                        return Some(format!("{src} -> {dst}: loop through {at}"));
                    }
                }
            }
        }
        None
    }

    /// Panics unless following next hops from every node reaches every destination.
    pub(crate) fn assert_no_loops(&mut self) {
        if let Some(e) = self.loop_error() {
            panic!("routing loop at {:?}: {e}", self.elapsed());
        }
    }
}
