//! Shortest paths over a topology snapshot: link [`Cost`]s, the [`Topology`] graph and
//! [`shortest_paths`], a pure function with a deterministic tie-break.
//!
//! No IO, no clock and no state: the link-state database builds a [`Topology`], and the node
//! recomputes its next hops from it whenever it changes (never while holding anything else).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::id::NodeId;

/// Link cost in thousandths (config says 1.0 -> `Cost(1000)`); integer so routes are
/// deterministic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Cost(u32);

impl Cost {
    /// The cost of a link whose config gives none: 1.0, as in Receptor.
    pub const DEFAULT: Self = Self(1000);

    /// Largest cost a config may give one link. Small enough that the thousandths fit a
    /// `u32` with room to spare, far above any cost a real mesh uses.
    const MAX_F64: f64 = 1_000_000.0;

    /// Converts a config value (1.0 means [`Cost::DEFAULT`]), rounding to thousandths.
    ///
    /// Returns `None` for NaN, zero, negative values and values above 1,000,000.0. A positive
    /// value below 0.0005 becomes 0.001 rather than a free link.
    pub fn from_f64(v: f64) -> Option<Self> {
        if v.is_nan() || v <= 0.0 || v > Self::MAX_F64 {
            return None;
        }
        // In range, so the product is at most 1e9 and the cast cannot truncate.
        let millis = (v * 1000.0).round().max(1.0);
        Some(Self(millis as u32))
    }

    /// The cost as a config value (`Cost::DEFAULT` is 1.0).
    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / 1000.0
    }

    /// The cost of `m` thousandths.
    pub fn from_millis(m: u32) -> Self {
        Self(m)
    }

    /// The cost in thousandths.
    pub fn millis(self) -> u32 {
        self.0
    }
}

impl fmt::Display for Cost {
    /// Prints like Receptor's float costs: `1`, `2.5`, `0.001`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:03}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// Undirected weighted graph of usable links, built by lsdb (only links both ends advertise).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Both directions of every link are stored, so every neighbour is also a key.
    links: BTreeMap<NodeId, BTreeMap<NodeId, Cost>>,
}

impl Topology {
    /// An empty graph.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the undirected link `a`–`b`, replacing the cost of an existing one. A link from a
    /// node to itself is ignored: it can never lie on a shortest path.
    pub fn add_link(&mut self, a: &NodeId, b: &NodeId, cost: Cost) {
        if a == b {
            return;
        }
        self.links
            .entry(a.clone())
            .or_default()
            .insert(b.clone(), cost);
        self.links
            .entry(b.clone())
            .or_default()
            .insert(a.clone(), cost);
    }

    /// The neighbours of `n` and the cost of the link to each, in id order; none if `n` is
    /// not in the graph.
    pub fn neighbours<'a>(
        &'a self,
        n: &NodeId,
    ) -> impl Iterator<Item = (&'a NodeId, Cost)> + use<'a> {
        self.links
            .get(n)
            .into_iter()
            .flat_map(|peers| peers.iter().map(|(peer, cost)| (peer, *cost)))
    }

    /// Every node with at least one link, in id order.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.links.keys()
    }
}

/// How to reach one destination from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The neighbour to hand a message to.
    pub next_hop: NodeId,
    /// Total cost of the path (saturating at `u32::MAX` thousandths).
    pub cost: Cost,
    /// Number of links on the path (1 for a neighbour).
    pub hops: u32,
}

/// Dijkstra from `me`. Deterministic tie-break: lower total cost, then fewer hops, then the
/// smaller `next_hop` NodeId.
///
/// Returns a route to every node reachable from `me`, excluding `me` itself; unreachable
/// nodes are absent. Empty when `me` has no links.
pub fn shortest_paths(topology: &Topology, me: &NodeId) -> BTreeMap<NodeId, Route> {
    let graph = Graph::new(topology);
    let Some(&source) = graph.index.get(me) else {
        return BTreeMap::new();
    };
    dijkstra(&graph, source)
        .into_iter()
        .enumerate()
        .filter(|&(node, _)| node != source)
        .filter_map(|(node, label)| {
            let label = label?;
            let route = Route {
                next_hop: graph.ids[label.first].clone(),
                cost: Cost(u32::try_from(label.cost).unwrap_or(u32::MAX)),
                hops: label.hops,
            };
            Some((graph.ids[node].clone(), route))
        })
        .collect()
}

/// The best path found so far to a node. The derived order is the tie-break: cost, then
/// hops, then first hop. Node indices follow id order, so comparing `first` compares ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Label {
    /// Summed in 64 bits so that no realistic path saturates, which would break the strict
    /// growth of labels along a path that Dijkstra relies on.
    cost: u64,
    hops: u32,
    /// Index of the first hop from the source.
    first: usize,
}

/// The topology re-indexed for the search: nodes are `0..n` in id order and each node's
/// links sit in one contiguous slice (compressed sparse rows).
struct Graph<'a> {
    ids: Vec<&'a NodeId>,
    index: HashMap<&'a NodeId, usize>,
    /// Links of node `i` are `edges[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    /// `(peer index, cost in thousandths)`.
    edges: Vec<(usize, u32)>,
}

impl<'a> Graph<'a> {
    fn new(topology: &'a Topology) -> Self {
        let ids: Vec<&NodeId> = topology.links.keys().collect();
        let index: HashMap<&NodeId, usize> =
            ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        let mut offsets = Vec::with_capacity(ids.len() + 1);
        let mut edges = Vec::new();
        offsets.push(0);
        for peers in topology.links.values() {
            // Every peer is a key (add_link stores both directions), so nothing is dropped.
            let resolved = peers
                .iter()
                .filter_map(|(peer, cost)| index.get(peer).map(|&i| (i, cost.0)));
            edges.extend(resolved);
            offsets.push(edges.len());
        }
        Self {
            ids,
            index,
            offsets,
            edges,
        }
    }

    fn links(&self, node: usize) -> &[(usize, u32)] {
        &self.edges[self.offsets[node]..self.offsets[node + 1]]
    }
}

/// The best label of every node (indexed like `graph.ids`); `None` where unreachable.
fn dijkstra(graph: &Graph<'_>, source: usize) -> Vec<Option<Label>> {
    let mut best: Vec<Option<Label>> = vec![None; graph.ids.len()];
    let mut settled = vec![false; graph.ids.len()];
    let mut heap = BinaryHeap::new();
    let start = Label {
        cost: 0,
        hops: 0,
        first: source,
    };
    best[source] = Some(start);
    heap.push(Reverse((start, source)));
    while let Some(Reverse((label, node))) = heap.pop() {
        // Labels only grow along a path, so the first pop of a node is its best label;
        // later pops are stale entries left behind by improvements.
        if std::mem::replace(&mut settled[node], true) {
            continue;
        }
        for &(peer, cost) in graph.links(node) {
            let candidate = Label {
                cost: label.cost + u64::from(cost),
                hops: label.hops.saturating_add(1),
                first: if node == source { peer } else { label.first },
            };
            if best[peer].is_none_or(|known| candidate < known) {
                best[peer] = Some(candidate);
                heap.push(Reverse((candidate, peer)));
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str) -> NodeId {
        NodeId::new(s).unwrap()
    }

    fn graph(links: &[(&str, &str, u32)]) -> Topology {
        let mut t = Topology::new();
        for &(a, b, c) in links {
            t.add_link(&id(a), &id(b), Cost::from_millis(c));
        }
        t
    }

    fn route(next_hop: &str, cost: u32, hops: u32) -> Route {
        Route {
            next_hop: id(next_hop),
            cost: Cost::from_millis(cost),
            hops,
        }
    }

    #[test]
    fn cost_converts_config_values() {
        assert_eq!(Cost::from_f64(1.0), Some(Cost::DEFAULT));
        assert_eq!(Cost::from_f64(2.5), Some(Cost::from_millis(2500)));
        assert_eq!(Cost::from_f64(0.0001), Some(Cost::from_millis(1)));
        assert_eq!(
            Cost::from_f64(1_000_000.0),
            Some(Cost::from_millis(1_000_000_000))
        );
        for bad in [f64::NAN, 0.0, -1.0, 1_000_000.1, f64::INFINITY] {
            assert_eq!(Cost::from_f64(bad), None, "{bad}");
        }
        assert!((Cost::from_millis(2500).as_f64() - 2.5).abs() < f64::EPSILON);
        assert_eq!(Cost::from_millis(42).millis(), 42);
    }

    #[test]
    fn cost_displays_like_receptor() {
        assert_eq!(Cost::DEFAULT.to_string(), "1");
        assert_eq!(Cost::from_millis(2500).to_string(), "2.5");
        assert_eq!(Cost::from_millis(1).to_string(), "0.001");
        assert_eq!(Cost::from_millis(10_250).to_string(), "10.25");
    }

    #[test]
    fn routes_along_a_line() {
        let t = graph(&[("a", "b", 1000), ("b", "c", 2000), ("c", "d", 500)]);
        let routes = shortest_paths(&t, &id("a"));
        let expected = BTreeMap::from([
            (id("b"), route("b", 1000, 1)),
            (id("c"), route("b", 3000, 2)),
            (id("d"), route("b", 3500, 3)),
        ]);
        assert_eq!(routes, expected);
        let back = shortest_paths(&t, &id("d"));
        assert_eq!(back[&id("a")], route("c", 3500, 3));
    }

    #[test]
    fn reroutes_around_ring() {
        let ring = [
            ("n0", "n1"),
            ("n1", "n2"),
            ("n2", "n3"),
            ("n3", "n4"),
            ("n4", "n0"),
        ];
        let links: Vec<_> = ring.iter().map(|&(a, b)| (a, b, 1000)).collect();
        let routes = shortest_paths(&graph(&links), &id("n0"));
        assert_eq!(routes[&id("n2")], route("n1", 2000, 2));
        assert_eq!(routes[&id("n3")], route("n4", 2000, 2));

        // Cut n0-n1: everything goes the other way round.
        let cut: Vec<_> = links.into_iter().skip(1).collect();
        let routes = shortest_paths(&graph(&cut), &id("n0"));
        assert_eq!(routes[&id("n1")], route("n4", 4000, 4));
        assert_eq!(routes[&id("n2")], route("n4", 3000, 3));
    }

    #[test]
    fn ties_break_on_hops_then_next_hop_id() {
        // a-d costs 2 directly or via b or c; the direct link has fewer hops.
        let t = graph(&[
            ("a", "b", 1),
            ("b", "d", 1),
            ("a", "c", 1),
            ("c", "d", 1),
            ("a", "d", 2),
        ]);
        assert_eq!(shortest_paths(&t, &id("a"))[&id("d")], route("d", 2, 1));
        // Without it, b and c tie on cost and hops: the smaller id wins.
        let t = graph(&[("a", "c", 1), ("c", "d", 1), ("a", "b", 1), ("b", "d", 1)]);
        assert_eq!(shortest_paths(&t, &id("a"))[&id("d")], route("b", 2, 2));
    }

    #[test]
    fn result_does_not_depend_on_insertion_order() {
        let mut links = vec![
            ("a", "b", 1),
            ("b", "e", 2),
            ("a", "c", 2),
            ("c", "e", 1),
            ("a", "d", 1),
            ("d", "e", 2),
        ];
        let first = shortest_paths(&graph(&links), &id("a"));
        links.reverse();
        assert_eq!(shortest_paths(&graph(&links), &id("a")), first);
        assert_eq!(first[&id("e")], route("b", 3, 2));
    }

    #[test]
    fn unreachable_nodes_are_absent() {
        let t = graph(&[("a", "b", 1000), ("c", "d", 1000)]);
        let routes = shortest_paths(&t, &id("a"));
        assert_eq!(routes.keys().collect::<Vec<_>>(), [&id("b")]);
        assert!(shortest_paths(&t, &id("lonely")).is_empty());
    }

    #[test]
    fn ignores_self_links() {
        let t = graph(&[("a", "a", 1), ("a", "b", 1)]);
        assert_eq!(t.neighbours(&id("a")).count(), 1);
        assert_eq!(t.nodes().count(), 2);
    }

    #[test]
    fn routes_a_thousand_nodes() {
        // Ring plus one chord per node: average degree 4, every node reachable.
        let n = 1000;
        let name = |i: usize| id(&format!("n{i:04}"));
        let mut t = Topology::new();
        for i in 0..n {
            let cost = Cost::from_millis(1000 + (i as u32 * 7919) % 1000);
            t.add_link(&name(i), &name((i + 1) % n), cost);
            t.add_link(&name(i), &name((i * 37 + 11) % n), Cost::DEFAULT);
        }
        let routes = shortest_paths(&t, &name(0));
        assert_eq!(routes.len(), n - 1);
    }

    /// All-pairs (cost, hops) by Floyd–Warshall over lexicographic pairs.
    fn oracle(n: usize, edges: &BTreeMap<(usize, usize), u32>) -> Vec<Vec<Option<(u64, u32)>>> {
        let mut d = vec![vec![None; n]; n];
        for (i, row) in d.iter_mut().enumerate() {
            row[i] = Some((0, 0));
        }
        for (&(a, b), &c) in edges {
            d[a][b] = Some((u64::from(c), 1));
            d[b][a] = Some((u64::from(c), 1));
        }
        for k in 0..n {
            for i in 0..n {
                for j in 0..n {
                    if let (Some(ik), Some(kj)) = (d[i][k], d[k][j]) {
                        let via = (ik.0 + kj.0, ik.1 + kj.1);
                        if d[i][j].is_none_or(|cur| via < cur) {
                            d[i][j] = Some(via);
                        }
                    }
                }
            }
        }
        d
    }

    fn arb_graph() -> impl Strategy<Value = (usize, BTreeMap<(usize, usize), u32>)> {
        (1usize..12).prop_flat_map(|n| {
            // Small costs make equal-cost paths common, which exercises the tie-break.
            let edge = (0..n, 0..n, 1u32..6);
            let edges = proptest::collection::vec(edge, 0..n * 3).prop_map(|v| {
                v.into_iter()
                    .filter(|&(a, b, _)| a != b)
                    .map(|(a, b, c)| ((a.min(b), a.max(b)), c))
                    .collect::<BTreeMap<_, _>>()
            });
            (Just(n), edges)
        })
    }

    proptest! {
        #[test]
        fn matches_brute_force_oracle((n, edges) in arb_graph(), me in 0usize..12) {
            let me = me % n;
            let name = |i: usize| id(&format!("n{i:02}"));
            let mut t = Topology::new();
            for (&(a, b), &c) in &edges {
                t.add_link(&name(a), &name(b), Cost::from_millis(c));
            }
            let dist = oracle(n, &edges);
            let routes = shortest_paths(&t, &name(me));
            let reachable = (0..n).filter(|&j| j != me && dist[me][j].is_some()).count();
            prop_assert_eq!(routes.len(), reachable);
            for dst in (0..n).filter(|&j| j != me) {
                let Some(best) = dist[me][dst] else {
                    prop_assert!(!routes.contains_key(&name(dst)));
                    continue;
                };
                let r = &routes[&name(dst)];
                prop_assert_eq!(u64::from(r.cost.millis()), best.0);
                prop_assert_eq!(r.hops, best.1);
                // The expected next hop: the smallest neighbour on a best (cost, hops) path.
                let on_best_path = |nh: usize| {
                    let w = edges.get(&(me.min(nh), me.max(nh)))?;
                    let rest = dist[nh][dst]?;
                    (( u64::from(*w) + rest.0, 1 + rest.1) == best).then_some(nh)
                };
                let expected = (0..n).find_map(on_best_path);
                prop_assert_eq!(Some(r.next_hop.clone()), expected.map(name));
            }
        }
    }
}
