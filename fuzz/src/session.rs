//! A neighbour that also holds an end-to-end session with the node under test: the
//! library's own [`Sessions`] does the IK handshake from the harness's side, so inputs can
//! seal whatever circuit traffic they like under real session keys, and the node's own
//! session handshakes and stream opens towards the harness are answered.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use warren::id::{NodeId, ServiceName};
use warren::mesh::message::{CircuitId, Message, Packet, PacketBody, StreamKind, StreamPacket};
use warren::mesh::seal::Sealer;
use warren::mesh::session::{PeerIdentity, SessionMsg, Sessions};
use warren::mesh::trust::Binding;

use crate::mesh::{Harness, PeerState, advert, member};

/// The cast member the harness speaks as (pinned at the node).
pub const SPEAKER: u8 = 1;

/// The session id the harness starts with.
pub const FIRST_SESSION: u64 = 0x5E55_1011;

/// What circuits carry inside their seal, shaped as the library's (crate-private)
/// `mesh::stream::Inner`: the seeds are built from it, and the seed check proves the two
/// still agree (an open sealed from it must be accepted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamInner {
    /// Open a stream to `service`.
    Open {
        /// The opener's service.
        from_service: ServiceName,
        /// The service asked for.
        service: ServiceName,
        /// Credit offered.
        window: u32,
        /// The session's open sequence number.
        seq: u64,
    },
    /// The acceptor takes the stream.
    Accept {
        /// Credit offered.
        window: u32,
    },
    /// Stream bytes.
    Data(Bytes),
    /// More credit.
    Credit(u32),
    /// A clean end.
    Fin,
    /// Nothing.
    Keepalive,
}

impl StreamInner {
    /// Postcard bytes, as sealed.
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_stdvec(self).expect("stream messages encode")
    }
}

/// The harness's end of one circuit.
pub struct Circuit {
    /// Its id.
    pub id: CircuitId,
    /// Whether the harness opened it.
    pub ours: bool,
    /// Seals what the harness sends on it.
    pub sealer: Sealer,
}

/// A [`Harness`] whose link 0 is the harness's neighbour [`SPEAKER`], with a session.
pub struct SessionHarness {
    /// The node and its links.
    pub harness: Harness,
    /// The harness's sessions (as [`SPEAKER`]).
    pub sessions: Sessions,
    /// The current session's id.
    pub session: u64,
    /// Circuits, by when they were made.
    pub circuits: Vec<Circuit>,
    /// How many node-sent packets have been looked at.
    seen: usize,
}

impl SessionHarness {
    /// Links [`SPEAKER`] to a fresh node and sets up a session with it.
    ///
    /// # Panics
    /// If the link or the session cannot be set up: the harness no longer matches the
    /// library, and every input would test nothing.
    pub fn new() -> Self {
        let mut harness = Harness::new(false);
        let index = harness.connect(SPEAKER, Harness::hello(SPEAKER, 1, false));
        assert!(
            matches!(harness.links[index].state, PeerState::Up(_)),
            "harness setup: the node did not take the pinned neighbour's link"
        );
        // The node's next advert (debounced) lists the link: it routes its answers then.
        harness.advance(std::time::Duration::from_secs(1));
        let (me, keys) = member(SPEAKER);
        let mut this = Self {
            harness,
            sessions: Sessions::new(me, keys),
            session: 0,
            circuits: Vec::new(),
            seen: 0,
        };
        this.start_session(FIRST_SESSION);
        assert!(
            this.target_session().is_some(),
            "harness setup: the node did not accept the session"
        );
        this
    }

    fn target_session(&mut self) -> Option<&mut warren::mesh::session::Session> {
        self.sessions.established(&member(0).0)
    }

    /// Starts (or restarts) the session with id `id`.
    pub fn start_session(&mut self, id: u64) {
        let now = self.harness.clock.now();
        let (target, target_keys) = member(0);
        let own = advert(SPEAKER, 1, &[(0, 1000)]);
        let Ok(init) = self.sessions.initiate(
            now,
            &target,
            (
                target_keys.public(),
                Binding::Pinned {
                    anchor: target_keys.public(),
                },
            ),
            id,
            &own,
        ) else {
            return;
        };
        self.session = id;
        self.send_body(PacketBody::Session(init));
    }

    /// Sends a packet from the speaker to the node.
    pub fn send_body(&mut self, body: PacketBody) {
        let packet = Packet {
            src: member(SPEAKER).0,
            dst: member(0).0,
            hops_left: 30,
            body,
        };
        self.harness.message(0, &Message::Packet(packet));
        self.answer();
    }

    /// Sends a stream packet of circuit `index` (wrapping) with `kind`.
    pub fn send_stream(&mut self, index: u8, kind: StreamKind) {
        let Some(circuit) = self.circuit(index) else {
            return;
        };
        let packet = StreamPacket {
            circuit: circuit.id.clone(),
            from_opener: circuit.ours,
            kind,
        };
        self.send_body(PacketBody::Stream(packet));
    }

    /// Circuit `index` (wrapping), if any.
    pub fn circuit(&mut self, index: u8) -> Option<&mut Circuit> {
        let n = self.circuits.len();
        (n > 0).then(|| &mut self.circuits[usize::from(index) % n])
    }

    /// A new circuit of ours numbered `number`; returns its index.
    pub fn new_circuit(&mut self, number: u64) -> Option<u8> {
        let id = CircuitId {
            opener: member(SPEAKER).0,
            number,
        };
        self.add_circuit(id, true)
    }

    fn add_circuit(&mut self, id: CircuitId, ours: bool) -> Option<u8> {
        let (sealer, _) = self.target_session()?.secrets.circuit(&id);
        if let Some(i) = self.circuits.iter().position(|c| c.id == id) {
            self.circuits[i].sealer = sealer;
            return u8::try_from(i).ok();
        }
        if self.circuits.len() >= 200 {
            return None;
        }
        self.circuits.push(Circuit { id, ours, sealer });
        u8::try_from(self.circuits.len() - 1).ok()
    }

    /// Opens circuit `number` asking for `service` with the given open sequence number.
    pub fn open(&mut self, number: u64, service: &str, seq: u64) {
        let Some(index) = self.new_circuit(number) else {
            return;
        };
        let inner = StreamInner::Open {
            from_service: ServiceName::new("client").expect("valid service"),
            service: ServiceName::new(service).expect("valid service"),
            window: 1 << 20,
            seq,
        };
        self.open_sealed(index, &inner.encode());
    }

    /// Sends an open on circuit `index` whose sealed content is `plain`.
    pub fn open_sealed(&mut self, index: u8, plain: &[u8]) {
        let session = self.session;
        let Some(circuit) = self.circuit(index) else {
            return;
        };
        let sealed = circuit.sealer.seal(plain.to_vec());
        self.send_stream(
            index,
            StreamKind::Open {
                session,
                sealed: sealed.clone(),
            },
        );
    }

    /// Sends sealed traffic on circuit `index` whose content is `plain`.
    pub fn sealed(&mut self, index: u8, plain: &[u8]) {
        let Some(circuit) = self.circuit(index) else {
            return;
        };
        let sealed = circuit.sealer.seal(plain.to_vec());
        self.send_stream(index, StreamKind::Sealed(sealed));
    }

    /// Answers what the node sent since last time: its session handshakes towards the
    /// speaker (and its answers to ours), and its stream opens (accepted, as a listening application would).
    pub fn answer(&mut self) {
        loop {
            let Some(link) = self.harness.links.first() else {
                return;
            };
            let Some(message) = link.received.get(self.seen).cloned() else {
                return;
            };
            self.seen += 1;
            let Message::Packet(packet) = message else {
                continue;
            };
            match packet.body {
                PacketBody::Session(SessionMsg::Init { session, noise }) => {
                    self.accept_session(&packet.src, session, &noise);
                }
                PacketBody::Session(SessionMsg::Accept { session, noise }) => {
                    let now = self.harness.clock.now();
                    let _ = self.sessions.read_accept(now, &packet.src, session, &noise);
                }
                PacketBody::Stream(StreamPacket {
                    circuit,
                    kind: StreamKind::Open { .. },
                    ..
                }) => {
                    if let Some(index) = self.add_circuit(circuit, false) {
                        let accept = StreamInner::Accept { window: 1 << 20 }.encode();
                        self.sealed(index, &accept);
                    }
                }
                _ => {}
            }
        }
    }

    fn accept_session(&mut self, from: &NodeId, session: u64, noise: &[u8]) {
        let now = self.harness.clock.now();
        let Ok((key, _, pending)) = self.sessions.read_init(from, noise) else {
            return;
        };
        let peer = PeerIdentity {
            node: from.clone(),
            key,
            binding: Binding::Pinned { anchor: key },
        };
        if let Ok(Some(accept)) = self.sessions.accept(now, pending, session, peer) {
            self.session = session;
            self.send_body(PacketBody::Session(accept));
        }
    }

    /// Streams by number, for reports.
    pub fn circuit_numbers(&self) -> BTreeMap<u64, bool> {
        self.circuits
            .iter()
            .map(|c| (c.id.number, c.ours))
            .collect()
    }
}

impl Default for SessionHarness {
    fn default() -> Self {
        Self::new()
    }
}
