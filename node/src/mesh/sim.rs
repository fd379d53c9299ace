//! A deterministic simulation of a whole mesh, for tests only: N real [`MeshNode`]s with
//! fixed keys, wired by virtual TCP connections, under a virtual clock.
//!
//! Owns the nodes, the virtual network ([`net`]) and the clock. It drives every node by the
//! contract in the `node` module doc (after each call: transmits, then the timer, then
//! events) and never sleeps: [`Sim::step`] jumps virtual time to the earliest in-flight chunk
//! or timer. Real Noise runs on every link, so framing and crypto are exercised too.
//! The assertion helpers live in `check`, stream delivery in `deliver`.

mod check;
mod deliver;
mod net;
mod wiring;

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use net::{End, Net, Payload};

use super::node::{Event, MeshConfig, MeshNode, Transmit};
use super::peers::{PeerSlotId, Rng};
use super::route::Cost;
use super::trust::TrustEntry;
use crate::id::NodeId;
use crate::keys::{LinkKeypair, PublicKey};

/// A node's handle in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeIdx(pub(crate) usize);

/// Wall clock of virtual time zero, in ms since the UNIX epoch (for node epochs).
const BASE_EPOCH_MS: u64 = 1_700_000_000_000;

/// One-way latency of a connection unless given.
pub(crate) const DEFAULT_LATENCY: Duration = Duration::from_millis(1);

/// The mesh is idle when nothing is in flight and no timer falls within this horizon.
/// Longer than the advert debounce and the first redial backoff, shorter than keepalives.
pub(crate) const IDLE_HORIZON: Duration = Duration::from_secs(1);

/// Keys trusted by every node unless [`Sim::with_capacity`] says otherwise.
const DEFAULT_CAPACITY: usize = 64;

/// The step budget ran out before the condition held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Livelock {
    pub(crate) steps: u64,
    pub(crate) seed: u64,
}

struct SimNode {
    /// The config to (re)start with; `trust` is filled in from the pool at start.
    config: MeshConfig,
    node: Option<MeshNode>,
    incarnation: u32,
    /// The node's pending timer, mirrored into `Sim::timers`.
    timer: Option<Instant>,
    /// Peer slots of this incarnation, by the connection they dial.
    slots: HashMap<PeerSlotId, usize>,
    /// Every event the node ever emitted, across restarts.
    events: Vec<Event>,
    /// Shares another node's id: left out of the oracle.
    duplicate: bool,
}

/// A configured connection: `from` dials `to`.
#[derive(Debug, Clone)]
struct Conn {
    from: NodeIdx,
    to: NodeIdx,
    cost: Cost,
    latency: Duration,
}

/// The simulated mesh. See the module doc.
pub(crate) struct Sim {
    seed: u64,
    base: Instant,
    now: Instant,
    pub(crate) rng: Rng,
    nodes: Vec<SimNode>,
    /// Public keys every node trusts, by key index.
    pool: Vec<PublicKey>,
    conns: Vec<Conn>,
    /// Cut pairs (smaller index first): dials between them fail.
    cut: BTreeSet<(NodeIdx, NodeIdx)>,
    net: Net,
    /// `(deadline, node, incarnation)`; stale entries are skipped when popped.
    timers: BinaryHeap<Reverse<(Instant, NodeIdx, u32)>>,
    steps: u64,
}

impl Drop for Sim {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "mesh sim failed: seed {} at virtual time {:?} after {} steps",
                self.seed,
                self.elapsed(),
                self.steps
            );
        }
    }
}

/// The private key of key index `i`: `[i; 32]` below 256, distinct bytes beyond.
fn private_key(i: usize) -> [u8; 32] {
    let mut key = [u8::try_from(i % 256).expect("invariant: below 256"); 32];
    if i >= 256 {
        key[..8].copy_from_slice(&(i as u64).to_le_bytes());
    }
    key
}

/// A key no node trusts.
fn untrusted_key(i: usize) -> [u8; 32] {
    let mut key = private_key(i);
    key[31] = 0xEE;
    key[30] = 0xEE;
    key
}

impl Sim {
    /// An empty mesh whose nodes trust the first 64 key indices.
    pub(crate) fn new(seed: u64) -> Self {
        Self::with_capacity(seed, DEFAULT_CAPACITY)
    }

    /// An empty mesh whose nodes trust the first `capacity` key indices.
    pub(crate) fn with_capacity(seed: u64, capacity: usize) -> Self {
        let base = Instant::now();
        Self {
            seed,
            base,
            now: base,
            rng: Rng::new(seed),
            nodes: Vec::new(),
            pool: (0..capacity)
                .map(|i| LinkKeypair::from_private(private_key(i)).public())
                .collect(),
            conns: Vec::new(),
            cut: BTreeSet::new(),
            net: Net::default(),
            timers: BinaryHeap::new(),
            steps: 0,
        }
    }

    /// The virtual clock.
    pub(crate) fn now(&self) -> Instant {
        self.now
    }

    /// Virtual time since the start.
    pub(crate) fn elapsed(&self) -> Duration {
        self.now - self.base
    }

    /// Steps taken so far.
    pub(crate) fn steps(&self) -> u64 {
        self.steps
    }

    fn wall_ms(&self) -> u64 {
        BASE_EPOCH_MS + u64::try_from(self.elapsed().as_millis()).expect("virtual time fits")
    }

    /// Adds a node with default config.
    pub(crate) fn add_node(&mut self, name: &str) -> NodeIdx {
        self.add_node_with(name, |_| {})
    }

    /// Adds a node, letting `configure` adjust its config (trust is set from the pool).
    pub(crate) fn add_node_with(
        &mut self,
        name: &str,
        configure: impl FnOnce(&mut MeshConfig),
    ) -> NodeIdx {
        let key = private_key(self.nodes.len());
        self.add_with_key(name, key, configure)
    }

    /// Adds a node with the id of an existing one but its own (trusted) key.
    pub(crate) fn add_duplicate(&mut self, name: &str) -> NodeIdx {
        assert!(
            self.nodes.iter().any(|n| n.config.id.as_str() == name),
            "no node {name} to duplicate"
        );
        let idx = self.add_node(name);
        self.nodes[idx.0].duplicate = true;
        idx
    }

    /// Adds a node whose key no other node trusts (it trusts everyone).
    pub(crate) fn add_untrusted(&mut self, name: &str) -> NodeIdx {
        let key = untrusted_key(self.nodes.len());
        self.add_with_key(name, key, |_| {})
    }

    /// Adds a node with the given private key (trusting everyone, as every sim node does),
    /// letting `configure` adjust its config.
    pub(crate) fn add_with_key(
        &mut self,
        name: &str,
        key: [u8; 32],
        configure: impl FnOnce(&mut MeshConfig),
    ) -> NodeIdx {
        let idx = NodeIdx(self.nodes.len());
        assert!(
            idx.0 < self.pool.len(),
            "sim capacity {} exceeded",
            self.pool.len()
        );
        let id = NodeId::new(name).expect("valid node name");
        let mut config = MeshConfig::new(id, LinkKeypair::from_private(key), Default::default(), 0);
        configure(&mut config);
        self.nodes.push(SimNode {
            config,
            node: None,
            incarnation: 0,
            timer: None,
            slots: HashMap::new(),
            events: Vec::new(),
            duplicate: false,
        });
        self.start(idx);
        idx
    }

    /// Starts a new incarnation of `idx` with a newer epoch and redials its connections.
    fn start(&mut self, idx: NodeIdx) {
        let wall = self.wall_ms();
        let n = &mut self.nodes[idx.0];
        let mut config = n.config.clone();
        config.epoch_ms = wall.max(n.config.epoch_ms + 1);
        config.rng_seed = self.seed ^ config.epoch_ms ^ ((idx.0 as u64) << 32);
        n.config.epoch_ms = config.epoch_ms;
        config.trust.entries = self
            .pool
            .iter()
            .map(|key| TrustEntry {
                key: *key,
                node: None,
            })
            .collect();
        n.node = Some(MeshNode::new(config, self.now));
        n.incarnation += 1;
        n.slots.clear();
        n.timer = None;
        let mine: Vec<usize> = (0..self.conns.len())
            .filter(|&c| self.conns[c].from == idx)
            .collect();
        for conn in mine {
            self.add_slot(idx, conn);
        }
        self.drain(idx);
    }

    fn add_slot(&mut self, idx: NodeIdx, conn: usize) {
        let now = self.now;
        let n = &mut self.nodes[idx.0];
        if let Some(node) = n.node.as_mut() {
            let slot = node.add_peer(now);
            n.slots.insert(slot, conn);
        }
    }

    /// Whether `idx` runs.
    pub(crate) fn is_alive(&self, idx: NodeIdx) -> bool {
        self.nodes[idx.0].node.is_some()
    }

    /// The node ids of the simulation.
    pub(crate) fn id(&self, idx: NodeIdx) -> NodeId {
        self.nodes[idx.0].config.id.clone()
    }

    /// The epoch of the node's current run.
    pub(crate) fn epoch(&self, idx: NodeIdx) -> u64 {
        self.nodes[idx.0].config.epoch_ms
    }

    /// Every node index.
    pub(crate) fn indices(&self) -> impl Iterator<Item = NodeIdx> + use<> {
        (0..self.nodes.len()).map(NodeIdx)
    }

    /// The live node. Calls that change it must go through [`Sim::with_node`].
    ///
    /// # Panics
    /// When the node is dead.
    pub(crate) fn node(&mut self, idx: NodeIdx) -> &mut MeshNode {
        self.nodes[idx.0].node.as_mut().expect("node is alive")
    }

    /// Calls into a live node at the current time, then drives it by the contract.
    pub(crate) fn with_node<R>(
        &mut self,
        idx: NodeIdx,
        f: impl FnOnce(&mut MeshNode, Instant) -> R,
    ) -> R {
        let now = self.now;
        let r = f(self.node(idx), now);
        self.drain(idx);
        r
    }

    /// Every event the node emitted so far.
    pub(crate) fn events(&self, idx: NodeIdx) -> &[Event] {
        &self.nodes[idx.0].events
    }

    /// Drives a node after a call: transmits, then its timer, then its events.
    fn drain(&mut self, idx: NodeIdx) {
        let now = self.now;
        let inc = self.nodes[idx.0].incarnation;
        loop {
            let Some(node) = self.nodes[idx.0].node.as_mut() else {
                return;
            };
            let Some(transmit) = node.poll_transmit(now) else {
                break;
            };
            self.transmit(idx, inc, transmit);
        }
        let n = &mut self.nodes[idx.0];
        let Some(node) = n.node.as_mut() else {
            return;
        };
        let timer = node.poll_timeout().map(|t| t.max(now));
        if timer != n.timer {
            n.timer = timer;
            if let Some(t) = timer {
                self.timers.push(Reverse((t, idx, inc)));
            }
        }
        while let Some(event) = self.nodes[idx.0]
            .node
            .as_mut()
            .and_then(MeshNode::poll_event)
        {
            self.on_event(idx, inc, &event);
            self.nodes[idx.0].events.push(event);
        }
    }

    fn transmit(&mut self, idx: NodeIdx, inc: u32, transmit: Transmit) {
        match transmit {
            Transmit::Data { link, bytes } => {
                if let Some((wire, side)) = self.net.find(idx, inc, link) {
                    self.net.send(self.now, wire, side, Payload::Bytes(bytes));
                }
            }
            Transmit::Close { link } => {
                if let Some((wire, side)) = self.net.find(idx, inc, link) {
                    self.net.close_end(self.now, wire, side);
                }
            }
        }
    }

    fn on_event(&mut self, idx: NodeIdx, inc: u32, event: &Event) {
        let up = match event {
            Event::Dial(slot) => {
                self.dial(idx, *slot);
                return;
            }
            Event::LinkUp { link, .. } => Some((*link, true)),
            Event::LinkDown { link, .. } => Some((*link, false)),
            _ => None,
        };
        if let Some((link, up)) = up
            && let Some((wire, side)) = self.net.find(idx, inc, link)
            && let Some(w) = self.net.wire_mut(wire)
        {
            w.ends[side].up = up;
        }
    }

    /// The earliest live timer.
    fn next_timer(&mut self) -> Option<(Instant, NodeIdx)> {
        while let Some(&Reverse((at, idx, inc))) = self.timers.peek() {
            let n = &self.nodes[idx.0];
            if n.incarnation == inc && n.node.is_some() && n.timer == Some(at) {
                return Some((at, idx));
            }
            self.timers.pop();
        }
        None
    }

    /// When the next thing happens.
    pub(crate) fn next_at(&mut self) -> Option<Instant> {
        let timer = self.next_timer().map(|(t, _)| t);
        [self.net.next_at(), timer].into_iter().flatten().min()
    }

    /// Delivers the earliest chunk or fires the earliest timer, jumping the clock to it.
    /// Returns false when nothing at all is pending.
    pub(crate) fn step(&mut self) -> bool {
        let timer = self.next_timer();
        let chunk_at = self.net.next_at();
        self.steps += 1;
        let chunk_first = match (chunk_at, timer) {
            (Some(c), Some((t, _))) => c <= t,
            (chunk, _) => chunk.is_some(),
        };
        if chunk_first {
            let chunk = self.net.pop().expect("invariant: peeked");
            self.now = self.now.max(chunk.at);
            self.deliver_chunk(chunk);
        } else if let Some((at, idx)) = timer {
            self.timers.pop();
            self.now = self.now.max(at);
            self.nodes[idx.0].timer = None;
            self.with_node(idx, MeshNode::handle_timeout);
        } else {
            return false;
        }
        true
    }

    fn deliver_chunk(&mut self, chunk: net::Chunk) {
        let Some(wire) = self.net.wire(chunk.wire) else {
            return;
        };
        let end = wire.ends[chunk.to].clone();
        if !end.open {
            return;
        }
        let n = &self.nodes[end.node.0];
        if n.incarnation != end.incarnation || n.node.is_none() {
            return;
        }
        match chunk.payload {
            Payload::Bytes(bytes) => {
                self.with_node(end.node, |node, now| {
                    node.handle_link_bytes(now, end.link, &bytes)
                });
            }
            Payload::Eof => {
                self.net.mark_closed(chunk.wire, chunk.to);
                self.socket_closed(&end, "eof");
            }
        }
    }

    /// Steps until `done` holds (checked before every step).
    ///
    /// # Errors
    /// [`Livelock`] when `max_steps` steps did not get there (or nothing was left to do).
    pub(crate) fn run_until(
        &mut self,
        mut done: impl FnMut(&mut Self) -> bool,
        max_steps: u64,
    ) -> Result<u64, Livelock> {
        for taken in 0..max_steps {
            if done(self) {
                return Ok(taken);
            }
            if !self.step() {
                break;
            }
        }
        if done(self) {
            return Ok(max_steps);
        }
        Err(Livelock {
            steps: max_steps,
            seed: self.seed,
        })
    }

    /// Whether nothing is in flight and no timer falls within [`IDLE_HORIZON`].
    pub(crate) fn is_idle(&mut self) -> bool {
        let horizon = self.now + IDLE_HORIZON;
        self.net.is_quiet() && self.next_timer().is_none_or(|(t, _)| t > horizon)
    }

    /// Steps until [`Sim::is_idle`].
    ///
    /// # Errors
    /// [`Livelock`] when `max_steps` steps did not get there.
    pub(crate) fn run_until_idle(&mut self, max_steps: u64) -> Result<u64, Livelock> {
        self.run_until(Self::is_idle, max_steps)
    }

    /// Runs everything due within `d` of virtual time, then sets the clock to its end.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        while self.next_at().is_some_and(|t| t <= end) {
            self.step();
        }
        self.now = end;
    }
}
