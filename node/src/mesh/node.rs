//! The mesh node state machine: the only API the driver calls.
//!
//! Owns every link, the link-state database, the routing table, stream endpoints and relayed
//! circuits, outstanding probes and the dial schedule of configured peers. No IO: the driver
//! feeds socket bytes and timer expiries in, and takes bytes, dials and events out.
//!
//! # Driving contract
//!
//! After every `handle_*` call (and every application call such as [`MeshNode::stream_send`])
//! the driver must drain, in this order:
//! 1. [`MeshNode::poll_transmit`] until `None`, writing each [`Transmit`] to its socket;
//! 2. [`MeshNode::poll_timeout`], re-arming its single timer;
//! 3. [`MeshNode::poll_event`] until `None`.
//!
//! When the timer fires it calls [`MeshNode::handle_timeout`].

mod adverts;
mod packets;

pub use packets::OpenError;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::link::{Link, LinkConfig, LinkEnd, LinkEvent, LinkId};
use super::lsdb::{Advert, Lsdb};
use super::message::{CloseReason, Message, ResetReason, Unreachable};
use super::noise::Role;
use super::peers::{BackoffConfig, PeerSlotId, Peers};
use super::route::{Cost, Route};
use super::stream::{StreamEvent, StreamId, Streams};
use super::trust::{self, TrustDecision, TrustEntry};
use crate::id::{NodeId, ServiceName};
use crate::keys::{LinkKeypair, PublicKey};

/// Everything a node needs to know to run the mesh protocol.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's id.
    pub id: NodeId,
    /// This node's static link key pair.
    pub keys: LinkKeypair,
    /// Whom to accept as peers.
    pub trust: Vec<TrustEntry>,
    /// Link timing.
    pub link: LinkConfig,
    /// Per-neighbour link cost overrides.
    pub link_costs: BTreeMap<NodeId, Cost>,
    /// Hop limit of routed packets.
    pub max_hops: u8,
    /// Delay that batches several changes into one advert.
    pub advert_debounce: Duration,
    /// Re-advertise this often even without changes.
    pub refresh_interval: Duration,
    /// Forget a node whose adverts stop for this long (Receptor never forgets).
    pub max_age: Duration,
    /// Give up on a ping or traceroute probe after this long.
    pub probe_timeout: Duration,
    /// Redial backoff.
    pub backoff: BackoffConfig,
    /// Accept a peer whose key is not in `trust` when we dialled it: for a short-lived
    /// client node that remembers the key it first saw and checks it itself (like SSH's
    /// known_hosts). Nodes never set it.
    pub trust_first_contact: bool,
    /// Seed for jitter.
    pub rng_seed: u64,
    /// This run's epoch: wall-clock milliseconds at start. A restart advertises a newer one.
    pub epoch_ms: u64,
}

impl MeshConfig {
    /// Defaults for everything but identity and trust.
    pub fn new(id: NodeId, keys: LinkKeypair, trust: Vec<TrustEntry>, epoch_ms: u64) -> Self {
        Self {
            id,
            keys,
            trust,
            link: LinkConfig::default(),
            link_costs: BTreeMap::new(),
            max_hops: DEFAULT_MAX_HOPS,
            advert_debounce: Duration::from_millis(50),
            refresh_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(95),
            probe_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            trust_first_contact: false,
            rng_seed: epoch_ms,
            epoch_ms,
        }
    }
}

/// Default hop limit: far beyond any sensible mesh diameter, small enough to end loops fast.
pub const DEFAULT_MAX_HOPS: u8 = 30;

/// Bytes for the driver to write, or a socket to close.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// Write these bytes to the link's socket.
    Data {
        /// The link.
        link: LinkId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The link is finished: close its socket after the bytes before.
    Close {
        /// The link.
        link: LinkId,
    },
}

/// A probe's handle (ping and traceroute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

/// Why a probe got no echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// A node on the way could not deliver it.
    #[error("{0}")]
    Unreachable(Unreachable),
    /// No answer in time.
    #[error("timeout")]
    Timeout,
}

/// What the node tells the driver and the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Dial the peer in this slot; report with `handle_dialed` or `handle_dial_failed`.
    Dial(PeerSlotId),
    /// A link came up.
    LinkUp {
        /// The link.
        link: LinkId,
        /// The peer.
        peer: NodeId,
    },
    /// A link went down (or was refused).
    LinkDown {
        /// The link.
        link: LinkId,
        /// The peer, when it had identified itself.
        peer: Option<NodeId>,
        /// How it ended.
        end: LinkEnd,
    },
    /// A stream event.
    Stream(StreamEvent),
    /// A datagram for one of our services.
    Datagram {
        /// Sender node.
        from: NodeId,
        /// Sender service.
        from_service: ServiceName,
        /// Our service.
        service: ServiceName,
        /// The bytes.
        data: Bytes,
    },
    /// A probe's echo came back.
    ProbeReply {
        /// The probe.
        probe: ProbeId,
        /// Who answered.
        from: NodeId,
        /// Round trip time.
        rtt: Duration,
    },
    /// A probe failed.
    ProbeFailed {
        /// The probe.
        probe: ProbeId,
        /// Who reported the failure (a relay, or us).
        from: Option<NodeId>,
        /// Why.
        reason: ProbeFailure,
        /// Time until the failure was known.
        elapsed: Duration,
    },
    /// A packet we sent (not a probe) could not be delivered; `reporter` said why.
    Undeliverable {
        /// The node the packet was for.
        target: NodeId,
        /// The node that reported it.
        reporter: NodeId,
        /// Why.
        reason: Unreachable,
    },
    /// Another node uses our node id, or two nodes share one.
    DuplicateNodeId {
        /// The contested id.
        id: NodeId,
        /// The other key seen with it.
        key: PublicKey,
    },
}

/// A link as shown in status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    /// The link.
    pub link: LinkId,
    /// The neighbour.
    pub peer: NodeId,
    /// The neighbour's static key, proven by the handshake.
    pub key: PublicKey,
    /// Its cost.
    pub cost: Cost,
}

/// A snapshot for `status`.
#[derive(Debug, Clone)]
pub struct MeshStatus {
    /// Our id.
    pub id: NodeId,
    /// Links that are up.
    pub links: Vec<LinkStatus>,
    /// Next hop and cost to every reachable node.
    pub routes: BTreeMap<NodeId, Route>,
    /// Every node's latest advert, ours included.
    pub adverts: Vec<Advert>,
}

#[derive(Debug)]
struct LinkSlot {
    link: Link,
    peer: Option<(NodeId, PublicKey)>,
    /// The peer's run epoch, from its hello.
    peer_epoch: u64,
    cost: Cost,
    slot: Option<PeerSlotId>,
    /// Set once the link was reported up (so its loss changes the topology).
    up: bool,
}

#[derive(Debug)]
struct Probe {
    sent: Instant,
}

/// The mesh node state machine. See the module doc for the driving contract.
#[derive(Debug)]
pub struct MeshNode {
    config: MeshConfig,
    start: Instant,
    links: BTreeMap<LinkId, LinkSlot>,
    next_link: u64,
    /// Up links by neighbour: at most one per pair of nodes.
    neighbours: HashMap<NodeId, LinkId>,
    lsdb: Lsdb,
    seq: u64,
    routes: BTreeMap<NodeId, Route>,
    routes_dirty: bool,
    listening: BTreeSet<ServiceName>,
    work_types: Vec<String>,
    streams: Streams,
    probes: HashMap<ProbeId, Probe>,
    next_probe: u64,
    peers: Peers,
    advert_due: Option<Instant>,
    refresh_due: Instant,
    events: VecDeque<Event>,
}

impl MeshNode {
    /// A node with no links, advertising only itself.
    pub fn new(config: MeshConfig, now: Instant) -> Self {
        let lsdb = Lsdb::new(config.id.clone(), config.keys.public(), config.max_age);
        let mut node = Self {
            start: now,
            links: BTreeMap::new(),
            next_link: 0,
            neighbours: HashMap::new(),
            lsdb,
            seq: 0,
            routes: BTreeMap::new(),
            routes_dirty: true,
            listening: BTreeSet::new(),
            work_types: Vec::new(),
            streams: Streams::new(config.epoch_ms),
            probes: HashMap::new(),
            next_probe: 0,
            peers: Peers::new(config.backoff.clone(), config.rng_seed),
            advert_due: None,
            refresh_due: now + config.refresh_interval,
            events: VecDeque::new(),
            config,
        };
        node.originate(now);
        node
    }

    /// This node's id.
    pub fn id(&self) -> &NodeId {
        &self.config.id
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &MeshConfig {
        &self.config
    }

    /// Adds a configured peer to dial now and after every loss.
    pub fn add_peer(&mut self, now: Instant) -> PeerSlotId {
        self.peers.add(now)
    }

    /// A dial for `slot` connected; returns the new link's handle.
    pub fn handle_dialed(&mut self, now: Instant, slot: PeerSlotId, cost: Cost) -> LinkId {
        let id = self.add_link(now, Role::Initiator, cost, Some(slot));
        self.peers.handle_dialed(slot, id);
        id
    }

    /// A dial for `slot` failed.
    pub fn handle_dial_failed(&mut self, now: Instant, slot: PeerSlotId) {
        self.peers.handle_failed(now, slot);
    }

    /// A connection was accepted on a listener of the given cost.
    pub fn handle_accepted(&mut self, now: Instant, cost: Cost) -> LinkId {
        self.add_link(now, Role::Responder, cost, None)
    }

    fn add_link(
        &mut self,
        now: Instant,
        role: Role,
        cost: Cost,
        slot: Option<PeerSlotId>,
    ) -> LinkId {
        self.next_link += 1;
        let id = LinkId(self.next_link);
        let (keys, me, lc) = (&self.config.keys, &self.config.id, self.config.link.clone());
        let link = match role {
            Role::Initiator => Link::initiator(now, keys, me, self.config.epoch_ms, lc),
            Role::Responder => Link::responder(now, keys, me, self.config.epoch_ms, lc),
        }
        .expect("invariant: our own key pair is valid for Noise");
        self.links.insert(
            id,
            LinkSlot {
                link,
                peer: None,
                peer_epoch: 0,
                cost,
                slot,
                up: false,
            },
        );
        id
    }

    /// Bytes arrived on a link's socket.
    pub fn handle_link_bytes(&mut self, now: Instant, link: LinkId, bytes: &[u8]) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.handle_bytes(now, bytes);
            self.process_link_events(now, link);
        }
    }

    /// A link's socket reached EOF or failed.
    pub fn handle_link_socket_closed(&mut self, now: Instant, link: LinkId, why: &str) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.handle_socket_closed(why);
            self.process_link_events(now, link);
        }
    }

    /// Closes a link, telling the peer why.
    pub fn close_link(&mut self, now: Instant, link: LinkId, reason: CloseReason) {
        if let Some(slot) = self.links.get_mut(&link) {
            slot.link.close(reason);
            self.process_link_events(now, link);
        }
    }

    /// Closes every link (for shutdown).
    pub fn close_all(&mut self, now: Instant) {
        let ids: Vec<LinkId> = self.links.keys().copied().collect();
        for id in ids {
            self.close_link(now, id, CloseReason::Shutdown);
        }
    }

    fn process_link_events(&mut self, now: Instant, id: LinkId) {
        while let Some(event) = self.links.get_mut(&id).and_then(|s| s.link.poll_event()) {
            match event {
                LinkEvent::Identified { node, key, epoch } => {
                    self.judge_peer(now, id, node, key, epoch);
                }
                LinkEvent::Up => self.handle_link_up(now, id),
                LinkEvent::Message(Message::Advert(advert)) => {
                    self.handle_advert(now, id, advert);
                }
                LinkEvent::Message(Message::Packet(packet)) => {
                    self.handle_packet(now, id, packet);
                }
                // Keepalive, Rekey and Close are consumed by the link itself.
                LinkEvent::Message(_) => {}
                LinkEvent::Closed(end) => self.handle_link_closed(now, id, end),
            }
        }
    }

    /// Decides whether the identified peer may link: trust, duplicate ids, one link per pair.
    fn judge_peer(&mut self, now: Instant, id: LinkId, node: NodeId, key: PublicKey, epoch: u64) {
        let verdict = self.verdict(id, &node, &key, epoch);
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        slot.peer = Some((node.clone(), key));
        slot.peer_epoch = epoch;
        match verdict {
            Ok(()) => slot.link.accept(now),
            Err(reason) => {
                match reason {
                    CloseReason::UntrustedKey => tracing::warn!(
                        link = %id, peer = %node, key = %key,
                        "refused link: untrusted key; to trust it add `--trust {node}={key}`"
                    ),
                    CloseReason::DuplicateLink => {
                        tracing::debug!(link = %id, peer = %node, "surplus link to an existing peer")
                    }
                    _ => {
                        tracing::warn!(link = %id, peer = %node, key = %key, %reason, "refused link")
                    }
                }
                if reason == CloseReason::DuplicateLink
                    && let Some(ps) = slot.slot
                {
                    self.peers.handle_satisfied(ps, node);
                    slot.slot = None;
                }
                slot.link.refuse(reason);
            }
        }
    }

    fn verdict(
        &self,
        id: LinkId,
        node: &NodeId,
        key: &PublicKey,
        epoch: u64,
    ) -> Result<(), CloseReason> {
        if node == &self.config.id {
            return Err(CloseReason::DuplicateNodeId);
        }
        match trust::decide(&self.config.trust, key, node) {
            TrustDecision::Trusted => {}
            TrustDecision::Untrusted
                if self.config.trust_first_contact
                    && self.links[&id].link.role() == Role::Initiator => {}
            TrustDecision::Untrusted => return Err(CloseReason::UntrustedKey),
            TrustDecision::PinnedToOther { .. } => return Err(CloseReason::KeyPinnedToOtherNode),
            TrustDecision::IdPinnedToOtherKey => return Err(CloseReason::IdPinnedToOtherKey),
        }
        let Some(existing) = self.other_link_to(node, id) else {
            return Ok(());
        };
        let old = &self.links[&existing];
        if old.peer.as_ref().is_some_and(|(_, k)| k != key) || epoch < old.peer_epoch {
            return Err(CloseReason::DuplicateNodeId);
        }
        // A newer run of the peer: the old link is a leftover of a crash (its idle timeout
        // has not noticed yet). The new link replaces it when it comes up.
        if epoch > old.peer_epoch {
            return Ok(());
        }
        if self.keeps(node, existing, id) == existing {
            return Err(CloseReason::DuplicateLink);
        }
        Ok(())
    }

    /// A live link other than `except` whose peer identified as `peer`.
    fn other_link_to(&self, peer: &NodeId, except: LinkId) -> Option<LinkId> {
        self.links
            .iter()
            .find(|(id, slot)| {
                **id != except
                    && !slot.link.is_closed()
                    && slot.peer.as_ref().is_some_and(|(n, _)| n == peer)
            })
            .map(|(id, _)| *id)
    }

    /// Of two links to `peer`, the one to keep. Both ends must choose the same connection:
    /// keep the one dialled by the smaller node id; if one side dialled both, the older.
    fn keeps(&self, peer: &NodeId, x: LinkId, y: LinkId) -> LinkId {
        let role = |l: LinkId| self.links.get(&l).map(|s| s.link.role());
        let (rx, ry) = (role(x), role(y));
        if rx == ry {
            return x.min(y);
        }
        let keep_ours = self.config.id < *peer;
        if (rx == Some(Role::Initiator)) == keep_ours {
            x
        } else {
            y
        }
    }

    fn handle_link_up(&mut self, now: Instant, id: LinkId) {
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        let Some((peer, _)) = slot.peer.clone() else {
            return;
        };
        if let Some(cost) = self.config.link_costs.get(&peer) {
            slot.cost = *cost;
        }
        slot.up = true;
        if let Some(ps) = slot.slot {
            self.peers.handle_up(ps, &peer);
        }
        if let Some(&old) = self.neighbours.get(&peer) {
            let restarted = self
                .links
                .get(&old)
                .is_some_and(|o| o.peer_epoch < self.links[&id].peer_epoch);
            if !restarted && self.keeps(&peer, old, id) == old {
                self.close_link(now, id, CloseReason::DuplicateLink);
                return;
            }
            self.neighbours.insert(peer.clone(), id);
            self.close_link(now, old, CloseReason::DuplicateLink);
        }
        self.neighbours.insert(peer.clone(), id);
        self.peers.handle_peer_reached(&peer);
        tracing::info!(link = %id, %peer, "link up");
        self.events.push_back(Event::LinkUp {
            link: id,
            peer: peer.clone(),
        });
        // The first advert after a link comes up goes at once, so that short-lived nodes
        // (the CLI's) are routable within milliseconds; then the new peer gets our database.
        self.originate(now);
        self.sync_database(id);
    }

    fn handle_link_closed(&mut self, now: Instant, id: LinkId, end: LinkEnd) {
        let Some(slot) = self.links.get_mut(&id) else {
            return;
        };
        let peer = slot.peer.as_ref().map(|(n, _)| n.clone());
        let was_up = std::mem::replace(&mut slot.up, false);
        if let Some(ps) = slot.slot.take() {
            let surplus = matches!(
                end,
                LinkEnd::ByUs(CloseReason::DuplicateLink)
                    | LinkEnd::ByPeer(CloseReason::DuplicateLink)
            );
            match &peer {
                Some(p) if surplus && self.other_link_to(p, id).is_some() => {
                    self.peers.handle_satisfied(ps, p.clone());
                }
                // A refusal is a failed dial: back off rather than redial at once forever.
                _ if was_up && !is_refusal(&end) => self.peers.handle_link_lost(now, ps),
                _ => self.peers.handle_failed(now, ps),
            }
        }
        if let LinkEnd::ByPeer(
            CloseReason::UntrustedKey
            | CloseReason::KeyPinnedToOtherNode
            | CloseReason::IdPinnedToOtherKey,
        ) = end
        {
            tracing::warn!(
                link = %id, peer = ?peer, %end,
                "peer refused our key; to be trusted, the peer's operator must add `--trust {}={}`",
                self.config.id, self.config.keys.public()
            );
        } else if was_up {
            tracing::info!(link = %id, peer = ?peer, %end, "link down");
        } else {
            tracing::debug!(link = %id, peer = ?peer, %end, "link ended before it came up");
        }
        if let Some(p) = &peer
            && self.neighbours.get(p) == Some(&id)
        {
            self.neighbours.remove(p);
            self.peers.handle_peer_lost(now, p);
            self.schedule_advert(now);
        }
        self.streams_link_down(now, id);
        self.events.push_back(Event::LinkDown {
            link: id,
            peer,
            end,
        });
    }

    /// Starts listening for streams on `service` (advertised).
    pub fn listen(&mut self, now: Instant, service: ServiceName) {
        if self.listening.insert(service) {
            self.schedule_advert(now);
        }
    }

    /// Sets the work types this node offers (advertised).
    pub fn set_work_types(&mut self, now: Instant, mut work_types: Vec<String>) {
        work_types.sort();
        work_types.dedup();
        if work_types != self.work_types {
            self.work_types = work_types;
            self.schedule_advert(now);
        }
    }

    /// Bytes for a socket, or a socket to close. Drain until `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let mut finished = None;
        for (&id, slot) in &mut self.links {
            if let Some(bytes) = slot.link.poll_transmit(now) {
                return Some(Transmit::Data { link: id, bytes });
            }
            if slot.link.is_closed() {
                finished = Some(id);
                break;
            }
        }
        let id = finished?;
        self.links.remove(&id);
        Some(Transmit::Close { link: id })
    }

    /// When `handle_timeout` must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let links = self.links.values().filter_map(|s| s.link.poll_timeout());
        [
            self.advert_due,
            Some(self.refresh_due),
            self.lsdb.next_expiry(),
            self.peers.next_due(),
            self.next_probe_deadline(),
        ]
        .into_iter()
        .flatten()
        .chain(links)
        .min()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Fires every timer that is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, s)| s.link.poll_timeout().is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            if let Some(slot) = self.links.get_mut(&id) {
                slot.link.handle_timeout(now);
            }
            self.process_link_events(now, id);
        }
        if self.advert_due.is_some_and(|t| t <= now) || self.refresh_due <= now {
            self.originate(now);
        }
        self.expire_adverts(now);
        self.expire_probes(now);
        while let Some(slot) = self.peers.poll_dial(now) {
            self.events.push_back(Event::Dial(slot));
        }
    }

    /// A status snapshot.
    pub fn status(&mut self) -> MeshStatus {
        let links = self
            .neighbours
            .iter()
            .filter_map(|(peer, &link)| {
                let slot = self.links.get(&link)?;
                Some(LinkStatus {
                    link,
                    peer: peer.clone(),
                    key: slot.peer.as_ref()?.1,
                    cost: slot.cost,
                })
            })
            .collect::<Vec<_>>();
        let mut links = links;
        links.sort_by(|a, b| a.peer.cmp(&b.peer));
        MeshStatus {
            id: self.config.id.clone(),
            links,
            routes: self.routes().clone(),
            adverts: self.lsdb.adverts().cloned().collect(),
        }
    }

    /// The current routing table.
    pub fn routes(&mut self) -> &BTreeMap<NodeId, Route> {
        if self.routes_dirty {
            self.routes = super::route::shortest_paths(&self.lsdb.topology(), &self.config.id);
            self.routes_dirty = false;
        }
        &self.routes
    }

    /// The latest advert of `node`, if known (what it offers).
    pub fn advert(&self, node: &NodeId) -> Option<&Advert> {
        self.lsdb.get(node)
    }

    /// Whether `node` is currently reachable.
    pub fn is_reachable(&mut self, node: &NodeId) -> bool {
        node == &self.config.id
            || self.neighbours.contains_key(node)
            || self.routes().contains_key(node)
    }

    fn wall_ms(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        self.config.epoch_ms + u64::try_from(elapsed).unwrap_or(u64::MAX)
    }

    fn streams_link_down(&mut self, now: Instant, link: LinkId) {
        let mut events = Vec::new();
        let mut out = Vec::new();
        self.streams.handle_link_down(link, &mut events, &mut out);
        self.emit_stream(now, events, out);
    }

    /// Resets a stream from our side.
    pub fn stream_reset(&mut self, now: Instant, id: StreamId, reason: ResetReason) {
        let mut out = Vec::new();
        self.streams.reset(id, reason, &mut out);
        self.emit_stream(now, Vec::new(), out);
    }
}

/// Whether the peer turned the link away as soon as it was up, so redialling at once cannot
/// help: it refuses who we are, or still holds a link from us that we have lost (we
/// restarted and it has not yet noticed).
fn is_refusal(end: &LinkEnd) -> bool {
    matches!(
        end,
        LinkEnd::ByPeer(
            CloseReason::DuplicateLink
                | CloseReason::UntrustedKey
                | CloseReason::KeyPinnedToOtherNode
                | CloseReason::IdPinnedToOtherKey
                | CloseReason::DuplicateNodeId
                | CloseReason::VersionMismatch
        )
    )
}
