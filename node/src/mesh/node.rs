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
mod event;
pub(crate) mod init_budget;
mod links;
mod packets;
mod reconfig;
mod sessions;
mod successions;

pub use adverts::AdvertCounts;
pub use event::{Event, ProbeFailure, ProbeId, Transmit};
pub use successions::RotateError;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::link::{Link, LinkConfig, LinkId};
use super::lsdb::{Advert, Lsdb, LsdbLimits};
use super::message::Unreachable;
use super::peers::{BackoffConfig, PeerSlotId, Peers, Rng};
use super::route::{Cost, Route};
use super::session::Sessions;
use super::stream::{StreamId, Streams};
use super::trust::{Binding, TrustPolicy};
use crate::ca::SignedCertificate;
use crate::id::{NodeId, ServiceName};
use crate::keys::{LinkKeypair, PublicKey, SignedSuccession};

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// No route to the node.
    #[error("node {0} is not reachable")]
    NoRoute(NodeId),
    /// Streams to ourselves are not carried by the mesh.
    #[error("cannot open a mesh stream to this node itself")]
    ToSelf,
    /// No key is known for the node (no pin, no verified advert).
    #[error("no key is known for node {0}")]
    NoKey(NodeId),
    /// Nothing this node configured binds the target's key to its id: it is known only by
    /// the first key seen for it, which any node of the mesh could have claimed first.
    #[error(
        "node {0} is known here only by the first key seen for it, which nothing this node \
         configured binds to that id: refusing to send it work or open streams to it; pin it \
         (`--trust {0}=TOKEN`, its token from `warren keygen --show` on its key file) or give it a \
         certificate from a mesh authority this node trusts (`--ca`)"
    )]
    Unverified(NodeId),
}

/// How often stream and session timers are swept. Longer than the simulation's idle
/// horizon, short enough for open timeouts to be prompt.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Connections still handshaking (unauthenticated) allowed at once; beyond it the oldest is
/// dropped. A handshake takes one round trip, so this is generous for honest peers.
pub const DEFAULT_MAX_HANDSHAKING: usize = 128;

/// Handshaking connections allowed from one source address.
pub const DEFAULT_MAX_HANDSHAKING_PER_SOURCE: usize = 16;

/// Everything a node needs to know to run the mesh protocol.
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// This node's id.
    pub id: NodeId,
    /// This node's static link key pair.
    pub keys: LinkKeypair,
    /// Whom to believe: trusted keys, pins and authorities.
    pub trust: TrustPolicy,
    /// This node's certificate, shown to peers in hellos, adverts and sessions.
    pub cert: Option<SignedCertificate>,
    /// This node's key successions (oldest first, ending at `keys`), shown in hellos and
    /// adverts so that peers which pinned an older key follow it.
    pub successions: Vec<SignedSuccession>,
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
    /// The link-state database's caps and the age after which a silent node is forgotten
    /// (Receptor never forgets).
    pub lsdb: LsdbLimits,
    /// Forget an end-to-end session unused for this long.
    pub session_idle: Duration,
    /// Unauthenticated connections allowed at once (the oldest is dropped beyond).
    pub max_handshaking: usize,
    /// Unauthenticated connections allowed from one source address.
    pub max_handshaking_per_source: usize,
    /// Give up on a ping or traceroute probe after this long.
    pub probe_timeout: Duration,
    /// Redial backoff.
    pub backoff: BackoffConfig,
    /// Accept a peer whose key is not in `trust` when we dialled it: for a short-lived
    /// client node that remembers the key it first saw and checks it itself (like SSH's
    /// known_hosts). Nodes never set it.
    pub trust_first_contact: bool,
    /// Open streams to far nodes whose key only [`Binding::FirstSeen`] binds: for a client
    /// node that checks those keys itself (`warren run`'s `known_nodes`). A node that sends
    /// work onwards never sets it: the first key seen for an id may be anyone's.
    pub first_seen_targets: bool,
    /// Seed for jitter.
    pub rng_seed: u64,
    /// This run's epoch: wall-clock milliseconds at start. A restart advertises a newer one.
    pub epoch_ms: u64,
}

impl MeshConfig {
    /// Defaults for everything but identity and trust.
    pub fn new(id: NodeId, keys: LinkKeypair, trust: TrustPolicy, epoch_ms: u64) -> Self {
        Self {
            id,
            keys,
            trust,
            cert: None,
            successions: Vec::new(),
            link: LinkConfig::default(),
            link_costs: BTreeMap::new(),
            max_hops: DEFAULT_MAX_HOPS,
            advert_debounce: Duration::from_millis(50),
            refresh_interval: Duration::from_secs(30),
            lsdb: LsdbLimits::new(Duration::from_secs(95)),
            session_idle: Duration::from_secs(30 * 60),
            max_handshaking: DEFAULT_MAX_HANDSHAKING,
            max_handshaking_per_source: DEFAULT_MAX_HANDSHAKING_PER_SOURCE,
            probe_timeout: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
            trust_first_contact: false,
            first_seen_targets: false,
            rng_seed: epoch_ms,
            epoch_ms,
        }
    }
}

/// Default hop limit: far beyond any sensible mesh diameter, small enough to end loops fast.
pub const DEFAULT_MAX_HOPS: u8 = 30;

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
    /// What became of the adverts received so far.
    pub advert_counts: AdvertCounts,
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
    /// Where an accepted connection came from (for the per-source handshake cap).
    source: Option<IpAddr>,
    /// When the connection was made (the oldest handshaking one is dropped first).
    opened: Instant,
    /// How the peer's key is bound to its id.
    binding: Option<Binding>,
    /// The certificate the peer showed in its hello (judged again on a trust change).
    peer_cert: Option<SignedCertificate>,
    /// Session handshakes this link may still bring us.
    inits: init_budget::InitBudget,
}

#[derive(Debug)]
struct Probe {
    sent: Instant,
    dst: NodeId,
}

/// A stream waiting for its session's handshake.
#[derive(Debug)]
struct PendingOpen {
    id: StreamId,
    from_service: ServiceName,
    service: ServiceName,
}

/// At most one log line per interval for a kind of event a peer can cause in bulk.
#[derive(Debug, Default)]
struct LogLimiter {
    last: Option<Instant>,
}

impl LogLimiter {
    fn allow(&mut self, now: Instant) -> bool {
        let allowed = self
            .last
            .is_none_or(|t| now.saturating_duration_since(t) >= Duration::from_secs(1));
        if allowed {
            self.last = Some(now);
        }
        allowed
    }
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
    sessions: Sessions,
    /// Streams waiting for the session with their target, by target.
    pending_opens: HashMap<NodeId, Vec<PendingOpen>>,
    /// Streams already re-opened once after a `NoSession` reset.
    retried: HashSet<StreamId>,
    /// Session `Init`s dropped beyond their link's budget, since start.
    inits_dropped: u64,
    /// Why a node we are starting a session with was reported unreachable (unauthenticated:
    /// only the reason a timed-out handshake is reported with).
    unreachable_hints: HashMap<NodeId, Unreachable>,
    /// Incremental database sync per new link.
    syncs: HashMap<LinkId, adverts::SyncState>,
    probes: HashMap<ProbeId, Probe>,
    /// Probe ids, circuit numbers, session ids, signature nonce seeds.
    rng: Rng,
    peers: Peers,
    advert_due: Option<Instant>,
    /// When an advert of ours last went to a neighbour: the next waits the debounce delay.
    last_flooded: Option<Instant>,
    refresh_due: Instant,
    sweep_due: Instant,
    advert_counts: AdvertCounts,
    refusal_log: LogLimiter,
    handshake_log: LogLimiter,
    version_log: LogLimiter,
    succession_log: LogLimiter,
    events: VecDeque<Event>,
}

impl MeshNode {
    /// A node with no links, advertising only itself.
    pub fn new(config: MeshConfig, now: Instant) -> Self {
        let lsdb = Lsdb::new(config.id.clone(), config.keys.public(), config.lsdb.clone());
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
            streams: Streams::new(),
            sessions: Sessions::new(config.id.clone(), config.keys.clone()),
            pending_opens: HashMap::new(),
            retried: HashSet::new(),
            inits_dropped: 0,
            unreachable_hints: HashMap::new(),
            syncs: HashMap::new(),
            probes: HashMap::new(),
            rng: Rng::new(config.rng_seed ^ 0x5EED_1D5E_55F0_0D00),
            peers: Peers::new(config.backoff.clone(), config.rng_seed),
            advert_due: None,
            last_flooded: None,
            refresh_due: now + config.refresh_interval,
            sweep_due: now + SWEEP_INTERVAL,
            advert_counts: AdvertCounts::default(),
            refusal_log: LogLimiter::default(),
            handshake_log: LogLimiter::default(),
            version_log: LogLimiter::default(),
            succession_log: LogLimiter::default(),
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
            self.sessions.next_handshake_deadline(),
            (self.streams.has_timers() || !self.sessions.is_empty()).then_some(self.sweep_due),
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
        if self
            .sessions
            .next_handshake_deadline()
            .is_some_and(|t| t <= now)
        {
            self.expire_sessions(now);
        }
        if self.sweep_due <= now {
            self.sweep(now);
        }
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
            advert_counts: self.advert_counts.clone(),
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

    fn streams_link_down(&mut self, link: LinkId) {
        let mut events = Vec::new();
        let mut out = Vec::new();
        self.streams.handle_link_down(link, &mut events, &mut out);
        self.emit_stream(events, out);
    }

    /// Stream timers (open timeouts, idle streams, keepalives, idle relayed circuits) and
    /// idle sessions.
    fn sweep(&mut self, now: Instant) {
        self.sweep_due = now + SWEEP_INTERVAL;
        let mut events = Vec::new();
        let mut out = Vec::new();
        let unanswered = self.streams.handle_timeout(now, &mut events, &mut out);
        self.emit_stream(events, out);
        for peer in unanswered {
            // The next open to them sets up a new session, which they hold aside until an
            // open under it authenticates, whatever they hold now.
            if self.sessions.established(&peer).is_some() {
                tracing::debug!(%peer, "an open went unanswered: the next one sets up a new session");
                self.sessions.forget(&peer);
            }
        }
        self.expire_sessions(now);
    }

    /// Number of end-to-end sessions and stream endpoints, relayed circuits: for status.
    pub fn stream_counts(&self) -> (usize, usize, usize) {
        let (endpoints, relayed) = self.streams.counts();
        (self.sessions.len(), endpoints, relayed)
    }
}

/// What tests need of a node beyond its API: a hostile node's raw voice, and a look inside.
#[cfg(test)]
impl MeshNode {
    /// Sends `message` to neighbour `peer` over the link to it, bypassing every rule of this
    /// node (so a test can play a malicious node with a real, trusted link).
    pub(crate) fn inject(&mut self, peer: &NodeId, message: &super::message::Message) -> bool {
        let Some(&link) = self.neighbours.get(peer) else {
            return false;
        };
        self.links
            .get_mut(&link)
            .is_some_and(|slot| slot.link.send(message).is_ok())
    }

    /// The circuits this node relays.
    pub(crate) fn relayed_circuits(&self) -> Vec<super::message::CircuitId> {
        self.streams.relayed_circuits()
    }

    /// The circuits that end at this node.
    #[cfg(test)]
    pub(crate) fn local_circuits(&self) -> Vec<super::message::CircuitId> {
        self.streams.local_circuits()
    }

    /// Session `Init`s dropped beyond their link's budget.
    pub(crate) fn inits_dropped(&self) -> u64 {
        self.inits_dropped
    }

    /// The id of the end-to-end session with `peer`.
    pub(crate) fn session_id(&self, peer: &NodeId) -> Option<u64> {
        self.sessions.id_with(peer)
    }

    /// Adverts refused so far.
    pub(crate) fn adverts_refused(&self) -> u64 {
        self.advert_counts.refused_total()
    }

    /// Origins stored first-seen.
    pub(crate) fn first_seen_len(&self) -> usize {
        self.lsdb.first_seen_len()
    }

    /// Number of adverts stored.
    pub(crate) fn lsdb_len(&self) -> usize {
        self.lsdb.len()
    }
}
