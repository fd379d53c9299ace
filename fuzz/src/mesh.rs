//! A hostile neighbour for a [`MeshNode`]: a cast of fixed identities (some trusted, some
//! pinned, one certified, one stranger), real Noise handshakes done by hand through the
//! library's own [`Handshake`], and a [`Wire`] per link that encrypts whatever plaintext an
//! input asks for. The node under test is driven through its public sans-IO API only,
//! drained after every call in the documented order (transmit, timeout, events), as the
//! tokio driver does.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use warren::ca::{Authorities, CERT_VERSION, Certificate, SignedCertificate};
use warren::id::{NodeId, ServiceName};
use warren::keys::{LinkKeypair, SignatureBytes, SigningKeypair};
use warren::mesh::frame::{decode_frame, decode_noise, encode_frame, encode_noise};
use warren::mesh::link::LinkId;
use warren::mesh::lsdb::Advert;
use warren::mesh::message::{Hello, Message};
use warren::mesh::node::{Event, MeshConfig, MeshNode, Transmit};
use warren::mesh::noise::{Handshake, HandshakeOutput, MAX_PLAINTEXT_LEN, Transport};
use warren::mesh::route::Cost;
use warren::mesh::stream::{StreamEvent, StreamId};
use warren::mesh::trust::{TrustEntry, TrustPolicy};

/// The node under test's id.
pub const TARGET: &str = "target";

/// The service the node under test listens on.
pub const SERVICE: &str = "svc";

/// The node's wall clock at the start (ms): certificates and epochs are judged against it.
pub const EPOCH_MS: u64 = 1_700_000_000_000;

/// Most timer firings one `advance` may cause: a node whose timers stay due after
/// `handle_timeout` would spin its driver, which this bound turns into a finding.
const MAX_TIMER_ROUNDS: usize = 64;

/// How a cast member stands with the node under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Its key is pinned to its id.
    Pinned,
    /// Its key is trusted unpinned.
    Trusted,
    /// A certificate of the node's authority binds it (when the authority is configured).
    Certified,
    /// Nothing vouches for it.
    Stranger,
}

/// The identities an input can speak as: neighbours first, then far nodes. Index 0 is the
/// node under test itself (a peer claiming its id, or its key, is a case worth having).
pub const CAST: [(&str, Standing); 9] = [
    (TARGET, Standing::Pinned),
    ("p0", Standing::Pinned),
    ("p1", Standing::Pinned),
    ("c2", Standing::Certified),
    ("t3", Standing::Trusted),
    ("x4", Standing::Stranger),
    ("far5", Standing::Pinned),
    ("far6", Standing::Certified),
    ("far7", Standing::Stranger),
];

/// The cast member at `index` (wrapping).
pub fn member(index: u8) -> (NodeId, LinkKeypair) {
    let i = usize::from(index) % CAST.len();
    let id = NodeId::new(CAST[i].0).expect("cast ids are valid");
    (id, LinkKeypair::from_private(private_key(index)))
}

/// The private link key of cast member `index` (wrapping), for Noise driven by hand.
pub fn private_key(index: u8) -> [u8; 32] {
    [(usize::from(index) % CAST.len()) as u8 + 1; 32]
}

/// The mesh authority some inputs configure.
pub fn authority() -> SigningKeypair {
    SigningKeypair::from_private([0xCA; 32])
}

/// The certificate of cast member `index`, issued by [`authority`].
pub fn certificate(index: u8) -> SignedCertificate {
    let (node, keys) = member(index);
    Certificate {
        version: CERT_VERSION,
        serial: u64::from(index) + 100,
        node,
        key: keys.public(),
        groups: Vec::new(),
        not_before_ms: EPOCH_MS - 1000,
        not_after_ms: EPOCH_MS + 86_400_000,
        issuer: authority().public(),
    }
    .sign(&authority())
}

/// What the node under test trusts: pins and trusted keys of the cast, and the authority
/// when `with_authority`.
pub fn trust(with_authority: bool) -> TrustPolicy {
    let entries = (0..CAST.len() as u8)
        .filter_map(|i| {
            let (id, keys) = member(i);
            match CAST[usize::from(i)].1 {
                Standing::Pinned => Some(TrustEntry {
                    key: keys.public(),
                    node: Some(id),
                }),
                Standing::Trusted => Some(TrustEntry {
                    key: keys.public(),
                    node: None,
                }),
                Standing::Certified | Standing::Stranger => None,
            }
        })
        .collect();
    TrustPolicy {
        entries,
        authorities: if with_authority {
            Authorities::new([authority().public()])
        } else {
            Authorities::default()
        },
        successions: Default::default(),
    }
}

/// An advert of cast member `index`, signed by its key.
pub fn advert(index: u8, seq: u64, links: &[(u8, u32)]) -> Advert {
    let (origin, keys) = member(index);
    let standing = CAST[usize::from(index) % CAST.len()].1;
    Advert {
        origin,
        key: keys.public(),
        epoch: EPOCH_MS,
        seq,
        issued_at_ms: EPOCH_MS.saturating_add(seq),
        links: links
            .iter()
            .map(|&(peer, cost)| warren::mesh::lsdb::AdvertLink {
                peer: member(peer).0,
                cost: Cost::from_millis(cost),
            })
            .collect(),
        services: vec![ServiceName::new(SERVICE).expect("valid service")],
        work_types: vec!["command".to_owned()],
        cert: (standing == Standing::Certified).then(|| Box::new(certificate(index))),
        successions: Vec::new(),
        signature: SignatureBytes([0; 64]),
    }
    .sign(&keys, &[7; 64])
}

/// Virtual time: a fixed start plus what the input advanced.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    start: Instant,
    elapsed: Duration,
}

impl Clock {
    /// Time zero.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Duration::ZERO,
        }
    }

    /// Now.
    pub fn now(&self) -> Instant {
        self.start + self.elapsed
    }

    /// How far time moved since the start.
    pub fn elapsed(&self) -> Duration {
        self.elapsed
    }

    /// Moves time on.
    pub fn advance(&mut self, by: Duration) {
        self.elapsed += by;
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// One direction pair of an established link, seen from the harness's side.
pub struct Wire {
    transport: Transport,
    rx_wire: BytesMut,
    rx_plain: BytesMut,
}

impl Wire {
    /// Wraps a finished handshake's transport.
    pub fn new(transport: Transport) -> Self {
        Self {
            transport,
            rx_wire: BytesMut::new(),
            rx_plain: BytesMut::new(),
        }
    }

    /// Encrypts `plain` (in as many Noise messages as it takes) for the socket.
    pub fn seal_plain(&mut self, plain: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        for chunk in plain.chunks(MAX_PLAINTEXT_LEN) {
            if self.transport.encrypt(chunk, &mut out).is_err() {
                break;
            }
        }
        out
    }

    /// Frames and encrypts one encoded message.
    pub fn seal_frame(&mut self, frame: &[u8]) -> BytesMut {
        let mut plain = BytesMut::new();
        if encode_frame(frame, &mut plain).is_err() {
            return BytesMut::new();
        }
        self.seal_plain(&plain)
    }

    /// Frames and encrypts one message; after a `Rekey`, switches to the next key as the
    /// node will.
    pub fn seal_message(&mut self, message: &Message) -> BytesMut {
        let encoded = message.encode().expect("messages encode");
        let out = self.seal_frame(&encoded);
        if matches!(message, Message::Rekey) {
            self.transport.rekey_outgoing();
        }
        out
    }

    /// Reads what the node sent: the whole messages it completes.
    pub fn receive(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.rx_wire.extend_from_slice(bytes);
        let mut messages = Vec::new();
        while let Ok(Some(noise)) = decode_noise(&mut self.rx_wire) {
            if self.transport.decrypt(&noise, &mut self.rx_plain).is_err() {
                return messages;
            }
            while let Ok(Some(frame)) = decode_frame(&mut self.rx_plain) {
                let Ok(message) = Message::decode(&frame) else {
                    continue;
                };
                if matches!(message, Message::Rekey) {
                    self.transport.rekey_incoming();
                }
                messages.push(message);
            }
        }
        messages
    }
}

/// Where one link of the node under test stands, from the harness's side.
pub enum PeerState {
    /// Bytes only, as the input gives them.
    Raw,
    /// Our handshake message 1 is out; message 2 is awaited.
    Handshaking(Box<Handshake>, Box<Hello>),
    /// Message 3 is out: we can speak.
    Up(Box<Wire>),
    /// The node closed the link.
    Closed,
}

/// One link of the node under test.
pub struct PeerLink {
    /// The node's handle for it.
    pub id: LinkId,
    /// The harness's side.
    pub state: PeerState,
    /// Bytes the node sent that the harness has not read.
    inbox: BytesMut,
    /// Messages the node sent on it, decrypted (for the targets that answer them).
    pub received: Vec<Message>,
}

/// The node under test, its links and its streams, driven by one input.
pub struct Harness {
    /// The node.
    pub node: MeshNode,
    /// Virtual time.
    pub clock: Clock,
    /// Its links, in the order they were made.
    pub links: Vec<PeerLink>,
    /// Streams the node reported (incoming or opened), for application-side steps.
    pub streams: Vec<StreamId>,
    /// Counts of what happened, for the seed checks.
    pub report: Report,
}

/// What one input made the node do: the seed checks assert these, so a seed that stops
/// reaching what it was made for is noticed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Links that came up.
    pub links_up: usize,
    /// Stream events, by kind.
    pub stream_events: BTreeMap<&'static str, usize>,
    /// Messages the node sent to the harness, by kind.
    pub sent: BTreeMap<&'static str, usize>,
    /// Routes the node had at the end.
    pub routes: usize,
    /// Adverts the node stored at the end (its own included).
    pub adverts: usize,
    /// Links the node closed.
    pub links_closed: usize,
}

impl Harness {
    /// A node with the cast's trust (and the authority when `with_authority`), listening
    /// on [`SERVICE`].
    pub fn new(with_authority: bool) -> Self {
        let (id, keys) = member(0);
        let mut config = MeshConfig::new(id, keys, trust(with_authority), EPOCH_MS);
        config.rng_seed = 7;
        let clock = Clock::new();
        let mut node = MeshNode::new(config, clock.now());
        node.listen(
            clock.now(),
            ServiceName::new(SERVICE).expect("valid service"),
        );
        let mut harness = Self {
            node,
            clock,
            links: Vec::new(),
            streams: Vec::new(),
            report: Report::default(),
        };
        harness.drain();
        harness
    }

    /// The link at `index` (wrapping), if any.
    pub fn link(&mut self, index: u8) -> Option<&mut PeerLink> {
        let n = self.links.len();
        (n > 0).then(|| &mut self.links[usize::from(index) % n])
    }

    /// A new accepted connection from `source` (last octet), raw.
    pub fn accept(&mut self, source: u8) -> usize {
        let now = self.clock.now();
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, source));
        let id = self
            .node
            .handle_accepted(now, Cost::from_millis(1000), Some(ip));
        self.links.push(PeerLink {
            id,
            state: PeerState::Raw,
            inbox: BytesMut::new(),
            received: Vec::new(),
        });
        self.drain();
        self.links.len() - 1
    }

    /// A new accepted connection on which cast member `speaker` runs a real handshake,
    /// claiming `hello`. Returns the link's index; it is `Up` if the node took it.
    pub fn connect(&mut self, speaker: u8, hello: Hello) -> usize {
        let index = self.accept(speaker);
        let (_, keys) = member(speaker);
        let Ok((handshake, first)) = Handshake::initiator(&keys) else {
            return index;
        };
        self.links[index].state = PeerState::Handshaking(Box::new(handshake), Box::new(hello));
        let mut wire = BytesMut::new();
        encode_noise(&first, &mut wire).expect("message 1 fits");
        self.bytes(index, &wire);
        index
    }

    /// A hello of cast member `claim`, with its certificate when it has one and `cert`.
    pub fn hello(claim: u8, epoch: u64, cert: bool) -> Hello {
        let (node, _) = member(claim);
        let certified = CAST[usize::from(claim) % CAST.len()].1 == Standing::Certified;
        Hello {
            node,
            epoch,
            cert: (cert && certified).then(|| certificate(claim)),
            successions: Vec::new(),
        }
    }

    /// Feeds bytes to the node on link `index`.
    pub fn bytes(&mut self, index: usize, bytes: &[u8]) {
        let Some(link) = self.links.get(index) else {
            return;
        };
        let (id, now) = (link.id, self.clock.now());
        self.node.handle_link_bytes(now, id, bytes);
        self.drain();
    }

    /// Sends plaintext on link `index` if it is up (else nothing).
    pub fn plain(&mut self, index: usize, plain: &[u8]) {
        if let Some(PeerLink {
            state: PeerState::Up(wire),
            ..
        }) = self.links.get_mut(index)
        {
            let bytes = wire.seal_plain(plain);
            self.bytes(index, &bytes);
        }
    }

    /// Sends one frame (any bytes, framed) on link `index` if it is up.
    pub fn frame(&mut self, index: usize, frame: &[u8]) {
        if let Some(PeerLink {
            state: PeerState::Up(wire),
            ..
        }) = self.links.get_mut(index)
        {
            let bytes = wire.seal_frame(frame);
            self.bytes(index, &bytes);
        }
    }

    /// Sends one message on link `index` if it is up.
    pub fn message(&mut self, index: usize, message: &Message) {
        if let Some(PeerLink {
            state: PeerState::Up(wire),
            ..
        }) = self.links.get_mut(index)
        {
            let bytes = wire.seal_message(message);
            self.bytes(index, &bytes);
        }
    }

    /// Moves time on by `by` and fires every timer that falls due, as the driver does.
    ///
    /// # Panics
    /// When the node's timers stay due after [`MeshNode::handle_timeout`] round after round:
    /// its driver would spin.
    pub fn advance(&mut self, by: Duration) {
        self.clock.advance(by);
        let now = self.clock.now();
        for _ in 0..MAX_TIMER_ROUNDS {
            match self.node.poll_timeout() {
                Some(due) if due <= now => {
                    self.node.handle_timeout(now);
                    self.drain();
                }
                _ => return,
            }
        }
        panic!("the node's timers stay due after {MAX_TIMER_ROUNDS} rounds of handle_timeout");
    }

    /// Drains the node in the documented order (transmit, timeout, events), routes its
    /// bytes to the links' inboxes, and plays the harness's side of pending handshakes.
    pub fn drain(&mut self) {
        loop {
            let now = self.clock.now();
            let mut progressed = false;
            while let Some(transmit) = self.node.poll_transmit(now) {
                progressed = true;
                self.deliver(transmit);
            }
            let _ = self.node.poll_timeout();
            while let Some(event) = self.node.poll_event() {
                progressed = true;
                self.handle_event(event);
            }
            if !self.read_inboxes() && !progressed {
                return;
            }
        }
    }

    fn deliver(&mut self, transmit: Transmit) {
        match transmit {
            Transmit::Data { link, bytes } => {
                if let Some(l) = self.links.iter_mut().find(|l| l.id == link) {
                    l.inbox.extend_from_slice(&bytes);
                }
            }
            Transmit::Close { link } => {
                if let Some(l) = self.links.iter_mut().find(|l| l.id == link) {
                    l.state = PeerState::Closed;
                    self.report.links_closed += 1;
                }
            }
        }
    }

    fn handle_event(&mut self, event: Event) {
        let now = self.clock.now();
        match event {
            Event::LinkUp { .. } => self.report.links_up += 1,
            Event::Stream(event) => {
                let (kind, id) = match &event {
                    StreamEvent::Incoming { id, .. } => ("incoming", *id),
                    StreamEvent::Opened { id } => ("opened", *id),
                    StreamEvent::Data { id, .. } => ("data", *id),
                    StreamEvent::Credit { id, .. } => ("credit", *id),
                    StreamEvent::Finished { id } => ("finished", *id),
                    StreamEvent::Reset { id, .. } => ("reset", *id),
                };
                *self.report.stream_events.entry(kind).or_default() += 1;
                match event {
                    StreamEvent::Incoming { id, .. } | StreamEvent::Opened { id } => {
                        self.streams.push(id);
                    }
                    // An application consumes what it reads, which grants credit back.
                    StreamEvent::Data { id, data } => {
                        self.node.stream_consumed(now, id, data.len());
                    }
                    _ => {}
                }
                let _ = id;
            }
            _ => {}
        }
    }

    /// Reads every inbox: finishes handshakes, decrypts what up links carry. Whether
    /// anything was sent back to the node.
    fn read_inboxes(&mut self) -> bool {
        let mut replies: Vec<(usize, BytesMut)> = Vec::new();
        for (index, link) in self.links.iter_mut().enumerate() {
            if link.inbox.is_empty() {
                continue;
            }
            match &mut link.state {
                PeerState::Raw | PeerState::Closed => link.inbox.clear(),
                PeerState::Handshaking(..) => {
                    if let Some(reply) = finish_handshake(link) {
                        replies.push((index, reply));
                    }
                }
                PeerState::Up(wire) => {
                    let inbox = link.inbox.split();
                    for message in wire.receive(&inbox) {
                        *self.report.sent.entry(kind(&message)).or_default() += 1;
                        link.received.push(message);
                    }
                }
            }
        }
        let any = !replies.is_empty();
        for (index, reply) in replies {
            self.bytes(index, &reply);
        }
        any
    }

    /// Ends the input: status and routes, as `warren status` asks for them.
    pub fn finish(mut self) -> Report {
        let status = self.node.status();
        self.report.routes = status.routes.len();
        self.report.adverts = status.adverts.len();
        let _ = self.node.stream_counts();
        self.report
    }
}

/// Reads message 2 off a handshaking link's inbox and answers with message 3.
fn finish_handshake(link: &mut PeerLink) -> Option<BytesMut> {
    let message = match decode_noise(&mut link.inbox) {
        Ok(Some(message)) => message,
        Ok(None) => return None,
        Err(_) => {
            link.state = PeerState::Closed;
            return None;
        }
    };
    let PeerState::Handshaking(mut handshake, hello) =
        std::mem::replace(&mut link.state, PeerState::Closed)
    else {
        return None;
    };
    let Ok(HandshakeOutput::ResponderKey(_)) = handshake.read(&message) else {
        return None;
    };
    let (last, transport) = handshake.finish_initiator(&hello).ok()?;
    let mut out = BytesMut::new();
    encode_noise(&last, &mut out).ok()?;
    let mut wire = Wire::new(transport);
    // Whatever followed message 2 is already transport.
    let rest = link.inbox.split();
    link.received.extend(wire.receive(&rest));
    link.state = PeerState::Up(Box::new(wire));
    Some(out)
}

/// A message's kind, for reports.
pub fn kind(message: &Message) -> &'static str {
    match message {
        Message::Keepalive => "keepalive",
        Message::Rekey => "rekey",
        Message::Close(_) => "close",
        Message::Hello(_) => "hello",
        Message::Advert(_) => "advert",
        Message::DbSummary { .. } => "summary",
        Message::DbRequest(_) => "request",
        Message::DbSent => "sent",
        Message::Packet(_) => "packet",
    }
}

/// Bytes as a `Bytes`.
pub fn bytes(data: &[u8]) -> Bytes {
    Bytes::copy_from_slice(data)
}
