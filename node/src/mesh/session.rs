//! End-to-end sessions: one Noise IK handshake per pair of nodes, whose keys seal every
//! circuit between them, so relays forward ciphertext only and a stream's peer is the node
//! that proved its key here — never whatever a packet header says.
//!
//! The initiator knows the responder's key before it starts (from a pin, a known-nodes
//! record, or the responder's signed advert), so IK takes one round trip: message 1 carries
//! the initiator's static key and its latest signed advert (so the responder can check the
//! binding of key to node id even if the advert had not reached it yet), message 2 ends it.
//! The prologue binds both node ids, so a handshake meant for one node is useless at another.
//!
//! IK message 1 carries nothing fresh, so a copy of it (taken by any relay on the path)
//! verifies again at the responder for as long as its key stays the same, and yields a
//! session whose keys nobody else holds. A session accepted while one is established with
//! that peer is therefore held aside, never put in its place: it replaces the established
//! one only once a circuit open under it authenticates (WireGuard keeps its current keypair
//! until the next one is confirmed the same way), and the caller tries the established
//! session first. An open that no session authenticates is answered `NoSession` by the
//! caller, at most [`UNAUTHENTIC_REPLIES`] times per [`UNAUTHENTIC_REPLY_PERIOD`] per peer,
//! so an opener whose session the responder lost to a copied handshake (after a restart)
//! sets up a new one instead of timing out on it for good. Forged opens can use those
//! answers up, so an opener also drops its session with a peer that left one of its opens
//! unanswered for the open timeout (the node's sweep): its next open sets up a new session,
//! which the responder holds aside and confirms by that open. Only an open whose seal
//! opened confirms a session held aside; one dropped before its seal was tried (a circuit
//! of another node's, or one already open) proves nothing.
//!
//! Owns the per-peer table (initiating, or established with perhaps a session held aside),
//! session ids, the replay window of circuit opens, and key derivation. Judging whether a
//! key may speak for a node id is the caller's (it holds the link-state database and the
//! trust policy). No IO; time is passed in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use snow::HandshakeState;

use super::lsdb::Advert;
use super::message::{decode_payload, encode_payload};
use super::seal::SessionSecrets;
use super::stream::OpenAuth;
use super::trust::Binding;
use crate::id::{GroupName, NodeId};
use crate::keys::{LinkKeypair, PublicKey};

/// The session handshake. AES-GCM for the same reason as links (see `noise.rs`).
pub const SESSION_PARAMS: &str = "Noise_IK_25519_AESGCM_SHA256";

/// How long an initiated session may wait for its answer.
pub const SESSION_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most `NoSession` answers to opens that fail authentication, per peer and period: the
/// answer goes to a packet source nobody proved, so it must not become a reflector.
pub const UNAUTHENTIC_REPLIES: u32 = 8;

/// The period [`UNAUTHENTIC_REPLIES`] counts over.
pub const UNAUTHENTIC_REPLY_PERIOD: Duration = Duration::from_secs(10);

/// How far back a circuit open's sequence number may be and still be accepted (opens of one
/// session can take different paths after a route change, so they may arrive out of order).
const OPEN_WINDOW: u64 = 64;

/// A session message, routed between the two nodes like any packet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionMsg {
    /// IK message 1.
    Init {
        /// The session's id, chosen by the initiator.
        session: u64,
        /// The Noise message.
        noise: Bytes,
    },
    /// IK message 2.
    Accept {
        /// The session's id.
        session: u64,
        /// The Noise message.
        noise: Bytes,
    },
    /// The responder refuses the initiator (unauthenticated: a hint, never trusted as more).
    Refuse {
        /// The session's id.
        session: u64,
        /// Why.
        reason: SessionRefusal,
    },
}

/// Why a responder refused a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum SessionRefusal {
    /// Nothing binds the initiator's key to its node id here.
    #[error("the target does not accept this node's key for its node id")]
    UntrustedKey,
    /// The handshake did not verify.
    #[error("the session handshake failed at the target")]
    BadHandshake,
}

/// Payload of IK message 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitPayload {
    /// The initiator's latest signed advert.
    pub advert: Advert,
}

/// Who is at the other end of a session, as proven by its handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node.
    pub node: NodeId,
    /// Its static key, proven by the handshake.
    pub key: PublicKey,
    /// What binds the key to the node id here.
    pub binding: Binding,
}

impl PeerIdentity {
    /// The node's groups (from its certificate).
    pub fn groups(&self) -> &[GroupName] {
        self.binding.groups()
    }

    /// The key the node's work is held under here: for a pinned node that rotated its key,
    /// the pinned key its current one succeeded (a rotation is the same submitter, and
    /// keeps its units, its count and its cache); otherwise its key.
    pub fn owner(&self) -> PublicKey {
        match &self.binding {
            Binding::Pinned { anchor } => *anchor,
            _ => self.key,
        }
    }
}

/// Why a session message could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Noise rejected the handshake message.
    #[error("session handshake failed: {0}")]
    Noise(String),
    /// An answer to no session we started.
    #[error("no session {0:x} is being initiated with that node")]
    NotInitiating(u64),
    /// The initiator's advert does not match its key or node id.
    #[error("the session initiator's advert is not its own")]
    AdvertMismatch,
}

/// Why no session could take a circuit open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenRefusal {
    /// No session with that peer has the open's session id (we restarted, or dropped it).
    #[error("no session with that id")]
    NoSession,
    /// A session of that id exists but the open did not authenticate under it (it was
    /// sealed under keys we do not hold, such as after a replayed handshake, or forged).
    #[error("the open did not authenticate under the session")]
    Unauthentic,
}

impl From<snow::Error> for SessionError {
    fn from(e: snow::Error) -> Self {
        Self::Noise(e.to_string())
    }
}

/// A session both ends hold.
#[derive(Debug)]
pub struct Session {
    /// Its keys.
    pub secrets: SessionSecrets,
    /// The other end.
    pub peer: PeerIdentity,
    next_open: u64,
    seen_max: Option<u64>,
    seen_bits: u64,
    /// Last time a circuit was opened on it (sessions idle out).
    pub last_used: Instant,
}

impl Session {
    fn new(now: Instant, peer: PeerIdentity, secrets: SessionSecrets) -> Self {
        Self {
            secrets,
            peer,
            next_open: 0,
            seen_max: None,
            seen_bits: 0,
            last_used: now,
        }
    }

    /// The sequence number for the next circuit we open.
    pub fn next_open_seq(&mut self, now: Instant) -> u64 {
        self.last_used = now;
        let seq = self.next_open;
        self.next_open += 1;
        seq
    }

    /// Whether a circuit open from the peer with `seq` is fresh; records it. A replayed
    /// open, or one far behind the newest, is refused.
    pub fn accept_open_seq(&mut self, now: Instant, seq: u64) -> bool {
        let fresh = match self.seen_max {
            None => {
                self.seen_max = Some(seq);
                self.seen_bits = 1;
                true
            }
            Some(max) if seq > max => {
                let shift = seq - max;
                self.seen_bits = if shift >= OPEN_WINDOW {
                    1
                } else {
                    (self.seen_bits << shift) | 1
                };
                self.seen_max = Some(seq);
                true
            }
            Some(max) => {
                let back = max - seq;
                let bit = 1u64.checked_shl(u32::try_from(back).unwrap_or(u32::MAX));
                match bit {
                    Some(bit) if self.seen_bits & bit == 0 => {
                        self.seen_bits |= bit;
                        true
                    }
                    _ => false,
                }
            }
        };
        if fresh {
            self.last_used = now;
        }
        fresh
    }
}

enum Slot {
    Initiating {
        handshake: Box<HandshakeState>,
        id: u64,
        key: PublicKey,
        /// How the caller bound `key` to the peer's id when it started.
        binding: Binding,
        started: Instant,
    },
    Established {
        /// The session used for our opens and tried first for the peer's.
        current: Box<Session>,
        /// A session accepted since `current`, held aside until an open under it
        /// authenticates (it may come from a replayed message 1).
        next: Option<Box<Session>>,
        /// `NoSession` answers to unauthentic opens, bounded per period.
        replies: ReplyBudget,
    },
}

/// How many answers may still go out in the current period.
#[derive(Debug, Clone, Copy)]
struct ReplyBudget {
    period_start: Instant,
    sent: u32,
}

impl ReplyBudget {
    fn new(now: Instant) -> Self {
        Self {
            period_start: now,
            sent: 0,
        }
    }

    /// Whether one more answer may go out now; counts it.
    fn take(&mut self, now: Instant) -> bool {
        if now.saturating_duration_since(self.period_start) >= UNAUTHENTIC_REPLY_PERIOD {
            *self = Self::new(now);
        }
        if self.sent >= UNAUTHENTIC_REPLIES {
            return false;
        }
        self.sent += 1;
        true
    }
}

/// Every session of this node, one per peer node.
pub struct Sessions {
    me: NodeId,
    keys: LinkKeypair,
    table: HashMap<NodeId, Slot>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("me", &self.me)
            .field("peers", &self.table.len())
            .finish_non_exhaustive()
    }
}

fn prologue(initiator: &NodeId, responder: &NodeId) -> Vec<u8> {
    let mut p = b"warren session v1\0".to_vec();
    p.extend_from_slice(initiator.as_str().as_bytes());
    p.push(0);
    p.extend_from_slice(responder.as_str().as_bytes());
    p
}

fn builder<'a>(
    keys: &'a LinkKeypair,
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, snow::Error> {
    let params = SESSION_PARAMS
        .parse()
        .expect("invariant: SESSION_PARAMS is valid");
    snow::Builder::new(params)
        .local_private_key(keys.private_bytes())?
        .prologue(prologue)
}

impl Sessions {
    /// No sessions yet.
    pub fn new(me: NodeId, keys: LinkKeypair) -> Self {
        Self {
            me,
            keys,
            table: HashMap::new(),
        }
    }

    /// Uses `keys` for sessions started or accepted from now on (a key rotation);
    /// established sessions and handshakes under way keep the key they began with.
    pub fn set_keys(&mut self, keys: LinkKeypair) {
        self.keys = keys;
    }

    /// The established session with `peer` (the one our opens use).
    pub fn established(&mut self, peer: &NodeId) -> Option<&mut Session> {
        match self.table.get_mut(peer) {
            Some(Slot::Established { current, .. }) => Some(current),
            _ => None,
        }
    }

    /// Runs `open` on the session with `peer` whose id is `id`: the established one first,
    /// then the one held aside. `open` says whether the open authenticated under the session
    /// it is given. A held-aside session replaces the established one only when an open
    /// authenticated under it (the peer proved it holds its keys): an open dropped before
    /// its seal was tried ([`OpenAuth::Unchecked`], such as one naming another node's
    /// circuit) proves nothing, and is all a forger without the keys can produce.
    ///
    /// # Errors
    /// [`OpenRefusal`]: no session has the id, or none authenticated the open.
    pub fn open_with(
        &mut self,
        peer: &NodeId,
        id: u64,
        mut open: impl FnMut(&mut Session) -> OpenAuth,
    ) -> Result<(), OpenRefusal> {
        let Some(Slot::Established { current, next, .. }) = self.table.get_mut(peer) else {
            return Err(OpenRefusal::NoSession);
        };
        let mut known = false;
        if current.secrets.id == id {
            known = true;
            match open(current) {
                OpenAuth::Authentic | OpenAuth::Unchecked => return Ok(()),
                OpenAuth::Unauthentic => {}
            }
        }
        if let Some(held) = next.as_mut().filter(|n| n.secrets.id == id) {
            known = true;
            match open(held) {
                OpenAuth::Authentic => {
                    if let Some(confirmed) = next.take() {
                        *current = confirmed;
                    }
                    return Ok(());
                }
                OpenAuth::Unchecked => return Ok(()),
                OpenAuth::Unauthentic => {}
            }
        }
        Err(if known {
            OpenRefusal::Unauthentic
        } else {
            OpenRefusal::NoSession
        })
    }

    /// Whether an open from `peer` that failed authentication may be answered now (see
    /// [`UNAUTHENTIC_REPLIES`]); counts the answer.
    pub fn may_answer_unauthentic(&mut self, now: Instant, peer: &NodeId) -> bool {
        match self.table.get_mut(peer) {
            Some(Slot::Established { replies, .. }) => replies.take(now),
            _ => false,
        }
    }

    /// Whether a handshake with `peer` is under way.
    pub fn is_initiating(&self, peer: &NodeId) -> bool {
        matches!(self.table.get(peer), Some(Slot::Initiating { .. }))
    }

    /// Starts a session with `peer`, whose static key is `key` (bound to its id by
    /// `binding`); returns message 1.
    ///
    /// # Errors
    /// [`SessionError::Noise`] if the handshake cannot be built.
    pub fn initiate(
        &mut self,
        now: Instant,
        peer: &NodeId,
        (key, binding): (PublicKey, Binding),
        id: u64,
        own_advert: &Advert,
    ) -> Result<SessionMsg, SessionError> {
        let prologue = prologue(&self.me, peer);
        let mut handshake = builder(&self.keys, &prologue)?
            .remote_public_key(key.as_bytes())?
            .build_initiator()?;
        let payload = encode_payload(&InitPayload {
            advert: own_advert.clone(),
        });
        let mut buf = vec![0u8; super::frame::MAX_NOISE_MESSAGE_LEN];
        let n = handshake.write_message(&payload, &mut buf)?;
        buf.truncate(n);
        self.table.insert(
            peer.clone(),
            Slot::Initiating {
                handshake: Box::new(handshake),
                id,
                key,
                binding,
                started: now,
            },
        );
        Ok(SessionMsg::Init {
            session: id,
            noise: Bytes::from(buf),
        })
    }

    /// Reads message 1 from `from`: returns the initiator's key and advert for the caller to
    /// judge, and a continuation that finishes the session once judged.
    ///
    /// # Errors
    /// [`SessionError`] when the message does not verify or the advert is not the
    /// initiator's own.
    pub fn read_init(
        &self,
        from: &NodeId,
        noise: &[u8],
    ) -> Result<(PublicKey, InitPayload, PendingAccept), SessionError> {
        let prologue = prologue(from, &self.me);
        let mut handshake = builder(&self.keys, &prologue)?.build_responder()?;
        let mut payload = vec![0u8; noise.len()];
        let n = handshake.read_message(noise, &mut payload)?;
        let key = handshake
            .get_remote_static()
            .and_then(PublicKey::from_slice)
            .ok_or_else(|| SessionError::Noise("no static key".into()))?;
        let init: InitPayload =
            decode_payload(&payload[..n]).map_err(|e| SessionError::Noise(e.to_string()))?;
        if init.advert.origin != *from || init.advert.key != key {
            return Err(SessionError::AdvertMismatch);
        }
        Ok((
            key,
            init,
            PendingAccept {
                handshake: Box::new(handshake),
            },
        ))
    }

    /// Finishes a session the caller accepted: returns message 2. When a session with the
    /// peer is established, the new one is held aside until an open under it authenticates
    /// (the peer restarted or dropped ours, or this is a copy of an old message 1 that nobody
    /// can finish); otherwise it is established now. When both ends initiated at once, the
    /// node with the smaller id keeps its own initiation and this returns `None`: the peer
    /// will answer ours.
    ///
    /// # Errors
    /// [`SessionError::Noise`] if Noise cannot finish.
    pub fn accept(
        &mut self,
        now: Instant,
        pending: PendingAccept,
        session: u64,
        peer: PeerIdentity,
    ) -> Result<Option<SessionMsg>, SessionError> {
        if self.is_initiating(&peer.node) && self.me < peer.node {
            return Ok(None);
        }
        let mut handshake = pending.handshake;
        let mut buf = vec![0u8; 128];
        let n = handshake.write_message(&[], &mut buf)?;
        buf.truncate(n);
        let (i2r, r2i) = handshake.dangerously_get_raw_split();
        let secrets = SessionSecrets {
            id: session,
            initiator_to_responder: i2r,
            responder_to_initiator: r2i,
            we_initiated: false,
        };
        let session_state = Box::new(Session::new(now, peer, secrets));
        match self.table.get_mut(&session_state.peer.node) {
            Some(Slot::Established { next, .. }) => *next = Some(session_state),
            _ => self.insert(session_state),
        }
        Ok(Some(SessionMsg::Accept {
            session,
            noise: Bytes::from(buf),
        }))
    }

    /// Reads message 2 from `from`; returns the established session's peer.
    ///
    /// # Errors
    /// [`SessionError`] for an answer to no handshake of ours, or one that fails.
    pub fn read_accept(
        &mut self,
        now: Instant,
        from: &NodeId,
        session: u64,
        noise: &[u8],
    ) -> Result<PeerIdentity, SessionError> {
        let Some(Slot::Initiating { id, .. }) = self.table.get(from) else {
            return Err(SessionError::NotInitiating(session));
        };
        if *id != session {
            return Err(SessionError::NotInitiating(session));
        }
        let Some(Slot::Initiating {
            mut handshake,
            key,
            binding,
            ..
        }) = self.table.remove(from)
        else {
            return Err(SessionError::NotInitiating(session));
        };
        let mut payload = vec![0u8; noise.len()];
        if let Err(e) = handshake.read_message(noise, &mut payload) {
            return Err(e.into());
        }
        let (i2r, r2i) = handshake.dangerously_get_raw_split();
        let secrets = SessionSecrets {
            id: session,
            initiator_to_responder: i2r,
            responder_to_initiator: r2i,
            we_initiated: true,
        };
        let peer = PeerIdentity {
            node: from.clone(),
            key,
            binding,
        };
        self.insert(Box::new(Session::new(now, peer.clone(), secrets)));
        Ok(peer)
    }

    fn insert(&mut self, session: Box<Session>) {
        let replies = ReplyBudget::new(session.last_used);
        self.table.insert(
            session.peer.node.clone(),
            Slot::Established {
                current: session,
                next: None,
                replies,
            },
        );
    }

    /// Forgets the session (or handshake) with `peer`.
    pub fn forget(&mut self, peer: &NodeId) {
        self.table.remove(peer);
    }

    /// The id of the session or handshake with `peer`.
    pub fn id_with(&self, peer: &NodeId) -> Option<u64> {
        match self.table.get(peer)? {
            Slot::Initiating { id, .. } => Some(*id),
            Slot::Established { current, .. } => Some(current.secrets.id),
        }
    }

    /// Drops handshakes older than [`SESSION_HANDSHAKE_TIMEOUT`] and sessions unused for
    /// `idle`; returns the peers whose handshake timed out.
    pub fn expire(&mut self, now: Instant, idle: Duration) -> Vec<NodeId> {
        let mut timed_out = Vec::new();
        self.table.retain(|peer, slot| match slot {
            Slot::Initiating { started, .. } => {
                let alive = now.saturating_duration_since(*started) < SESSION_HANDSHAKE_TIMEOUT;
                if !alive {
                    timed_out.push(peer.clone());
                }
                alive
            }
            // A session held aside goes with it: it was never used, and may be a copy.
            Slot::Established { current, .. } => {
                now.saturating_duration_since(current.last_used) < idle
            }
        });
        timed_out
    }

    /// When [`Sessions::expire`] next has a handshake to drop.
    pub fn next_handshake_deadline(&self) -> Option<Instant> {
        self.table
            .values()
            .filter_map(|slot| match slot {
                Slot::Initiating { started, .. } => Some(*started + SESSION_HANDSHAKE_TIMEOUT),
                Slot::Established { .. } => None,
            })
            .min()
    }

    /// Number of established sessions, for status.
    pub fn len(&self) -> usize {
        self.table
            .values()
            .filter(|s| matches!(s, Slot::Established { .. }))
            .count()
    }

    /// Whether there is no established session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A responder's handshake between reading message 1 and the caller's decision.
pub struct PendingAccept {
    handshake: Box<HandshakeState>,
}

impl std::fmt::Debug for PendingAccept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PendingAccept")
    }
}

#[cfg(test)]
mod tests;
