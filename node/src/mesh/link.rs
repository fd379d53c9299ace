//! One link to a directly connected peer: handshaking -> up -> closed.
//!
//! Owns the bytes of one TCP connection in both directions: Noise framing, the handshake,
//! encryption, message framing, keepalives, the idle timeout and periodic rekeying. It does
//! not decide whom to trust: when the peer has shown its key and hello it emits
//! [`LinkEvent::Identified`] and processes nothing further until the owner calls
//! [`Link::accept`] or [`Link::refuse`].
//!
//! The responder judges first (the initiator's hello comes in handshake message 3) and only
//! then names itself, in its first transport frame ([`Message::Hello`]); the initiator judges
//! that hello before anything else of the peer is read. So a node never tells a stranger
//! who it is. No IO; time is passed in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use super::frame::FrameError;
use super::message::{CloseReason, Hello, Message};
use super::noise::{CipherError, Handshake, HandshakeError, Role, Transport};
use crate::ca::SignedCertificate;
use crate::id::NodeId;
use crate::keys::{LinkKeypair, PublicKey};
use outbox::Outbox;

/// A link's handle on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "l{}", self.0)
    }
}

/// Largest handshake message accepted. Real ones are under 200 bytes, or a few KiB with a
/// certificate full of groups; garbage on the port (an HTTP request, say) announces far more
/// and is refused at once rather than waited for.
const MAX_HANDSHAKE_MESSAGE_LEN: usize = 8 * 1024;

/// Timing of a link.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// Send a keepalive after this long without sending anything.
    pub keepalive: Duration,
    /// Close the link after this long without hearing anything.
    pub idle_timeout: Duration,
    /// Give up on a handshake that has not finished after this long.
    pub handshake_timeout: Duration,
    /// Switch to fresh keys this often.
    pub rekey_interval: Duration,
    /// Diagnostics: report every decrypted frame ([`LinkEvent::Plaintext`]).
    pub tap: bool,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            keepalive: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            rekey_interval: Duration::from_secs(3600),
            tap: false,
        }
    }
}

/// How a link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEnd {
    /// We closed it, for this reason (sent to the peer when it could be).
    ByUs(CloseReason),
    /// The peer closed it, for this reason.
    ByPeer(CloseReason),
    /// The peer broke the protocol or the handshake failed; the text says how.
    Failed(String),
}

impl std::fmt::Display for LinkEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ByUs(CloseReason::VersionMismatch { sender, receiver }) => write!(
                f,
                "refused by us: this node speaks mesh protocol v{sender}, the peer v{receiver}"
            ),
            Self::ByPeer(CloseReason::VersionMismatch { sender, receiver }) => write!(
                f,
                "refused by peer: the peer speaks mesh protocol v{sender}, this node v{receiver}"
            ),
            Self::ByUs(r) => write!(f, "closed by us: {r}"),
            Self::ByPeer(r) => write!(f, "closed by peer: {r}"),
            Self::Failed(e) => write!(f, "failed: {e}"),
        }
    }
}

/// What a link tells its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// The peer has shown its static key and hello; call `accept` or `refuse`.
    Identified {
        /// The node id the peer claims.
        node: NodeId,
        /// The peer's static key, proven by the handshake.
        key: PublicKey,
        /// The peer's run epoch.
        epoch: u64,
        /// The peer's certificate, if it showed one.
        cert: Option<Box<SignedCertificate>>,
        /// The peer's key successions, oldest first (unchecked).
        successions: Vec<crate::keys::SignedSuccession>,
    },
    /// The link is up: messages flow.
    Up,
    /// A message from the peer.
    Message(Message),
    /// (Diagnostics, with [`LinkConfig::tap`].) A decrypted frame, as received.
    Plaintext(Bytes),
    /// The link is closed; nothing more will come.
    Closed(LinkEnd),
}

enum State {
    /// Handshake messages still to come.
    Handshaking {
        handshake: Box<Handshake>,
    },
    /// (Initiator.) Message 3 sent; the responder's hello must be its first frame.
    AwaitingHello {
        transport: Transport,
        key: PublicKey,
    },
    /// The peer is identified; its further bytes wait for the owner's decision.
    Identified {
        pending: Pending,
    },
    /// Transport established. `confirmed` turns true once the peer is known to have
    /// accepted us: at once for the initiator (the responder's hello proves it), with the
    /// first frame after our hello for the responder.
    Up {
        transport: Transport,
        confirmed: bool,
    },
    Closed,
}

/// What an identified link holds while its owner decides.
enum Pending {
    /// The responder's finished handshake.
    Responder(Box<Handshake>),
    /// The initiator's transport (the responder's hello was read from it).
    Initiator(Box<Transport>),
}

/// One link's protocol state.
pub struct Link {
    role: Role,
    config: LinkConfig,
    state: State,
    /// Our hello: sent in handshake message 3 (initiator) or as the first frame once the
    /// peer is accepted (responder).
    hello: Hello,
    /// Bytes from the socket not yet made into Noise messages.
    rx_wire: BytesMut,
    /// The handle of the buffer the last partial message was completed in: reused for the
    /// next once everything taken from it is dropped (see [`Link::handle_owned_bytes`]).
    rx_spare: BytesMut,
    /// Decrypted bytes not yet made into frames.
    rx_plain: BytesMut,
    /// Bytes waiting for the socket, sealed or being filled.
    outbox: Outbox,
    events: VecDeque<LinkEvent>,
    started: Instant,
    last_rx: Instant,
    last_tx: Instant,
    next_rekey: Instant,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

/// Why a message could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The link is not up.
    #[error("link is not up")]
    NotUp,
    /// The encoded message is over the frame limit.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The transport cannot seal any more (its nonce is spent).
    #[error(transparent)]
    Cipher(CipherError),
}

impl Link {
    /// A link we dialled; the first handshake message is queued at once.
    ///
    /// # Errors
    /// [`HandshakeError`] if the key material is unusable.
    pub fn initiator(
        now: Instant,
        keys: &LinkKeypair,
        hello: Hello,
        config: LinkConfig,
    ) -> Result<Self, HandshakeError> {
        let (handshake, first) = Handshake::initiator(keys)?;
        let mut link = Self::new(now, Role::Initiator, handshake, hello, config);
        link.queue_handshake(&first);
        Ok(link)
    }

    /// A link we accepted; it waits for the peer's first message.
    ///
    /// # Errors
    /// [`HandshakeError`] if the key material is unusable.
    pub fn responder(
        now: Instant,
        keys: &LinkKeypair,
        hello: Hello,
        config: LinkConfig,
    ) -> Result<Self, HandshakeError> {
        let handshake = Handshake::responder(keys)?;
        Ok(Self::new(now, Role::Responder, handshake, hello, config))
    }

    fn new(
        now: Instant,
        role: Role,
        handshake: Handshake,
        hello: Hello,
        config: LinkConfig,
    ) -> Self {
        Self {
            role,
            state: State::Handshaking {
                handshake: Box::new(handshake),
            },
            hello,
            rx_wire: BytesMut::new(),
            rx_spare: BytesMut::new(),
            rx_plain: BytesMut::new(),
            outbox: Outbox::default(),
            events: VecDeque::new(),
            started: now,
            last_rx: now,
            last_tx: now,
            next_rekey: now + config.rekey_interval,
            config,
        }
    }

    /// Whether we dialled this link.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Whether messages flow.
    pub fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Whether the peer has not been accepted yet (handshaking or awaiting a decision):
    /// an unauthenticated connection.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.state, State::Up { .. } | State::Closed)
    }

    /// Whether the link is finished (the owner flushes `poll_transmit` and drops it).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Feeds bytes read from the socket.
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) {
        self.handle_owned_bytes(now, BytesMut::from(bytes));
    }

    /// As [`Link::handle_bytes`], keeping the buffer the socket was read into instead of
    /// copying it: it becomes the receive buffer when that is empty, or joins it, in place
    /// when the two are adjacent in memory.
    ///
    /// A read rarely ends on a message boundary, so a partial message usually waits. Only
    /// the bytes that complete it are copied behind it; once it is handled, the rest of the
    /// read becomes the receive buffer as it lies (rather than all of the read being copied
    /// behind the partial message).
    pub fn handle_owned_bytes(&mut self, now: Instant, mut bytes: BytesMut) {
        if self.is_closed() {
            return;
        }
        self.last_rx = now;
        if let Some(lack) = self.lacking()
            && lack < bytes.len()
        {
            self.complete_partial(&bytes[..lack]);
            bytes.advance(lack);
            self.process();
            if self.is_closed() {
                return;
            }
        }
        if self.rx_wire.is_empty() {
            self.rx_wire = bytes;
        } else {
            self.rx_wire.unsplit(bytes);
        }
        self.process();
    }

    /// Makes the waiting partial message whole with `rest`, in the reused spare buffer (a
    /// fresh one only while the last is still in use).
    fn complete_partial(&mut self, rest: &[u8]) {
        let whole = self.rx_wire.len() + rest.len();
        if self.rx_plain.is_empty() {
            // An empty view still holds the last message's buffer, which may be the spare.
            self.rx_plain = BytesMut::new();
        }
        let mut buf = std::mem::take(&mut self.rx_spare);
        if !buf.try_reclaim(whole) {
            buf = BytesMut::with_capacity(whole.max(2 + super::frame::MAX_NOISE_MESSAGE_LEN));
        }
        buf.extend_from_slice(&self.rx_wire);
        buf.extend_from_slice(rest);
        self.rx_wire = buf.split();
        self.rx_spare = buf;
    }

    /// Bytes that would complete the partial Noise message waiting in the receive buffer,
    /// when one waits and its length prefix is in.
    fn lacking(&self) -> Option<usize> {
        let [a, b, ..] = self.rx_wire[..] else {
            return None;
        };
        let whole = 2 + usize::from(u16::from_be_bytes([a, b]));
        whole.checked_sub(self.rx_wire.len()).filter(|&n| n > 0)
    }

    /// The socket reached EOF or failed.
    pub fn handle_socket_closed(&mut self, why: &str) {
        if !self.is_closed() {
            self.state = State::Closed;
            self.events
                .push_back(LinkEvent::Closed(LinkEnd::Failed(why.to_owned())));
        }
    }

    /// Accepts the identified peer; the link comes up and buffered bytes are processed.
    pub fn accept(&mut self, now: Instant) {
        if !matches!(self.state, State::Identified { .. }) {
            return;
        }
        let State::Identified { pending } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let transport = match pending {
            Pending::Initiator(transport) => *transport,
            Pending::Responder(handshake) => match handshake.into_transport() {
                Ok(transport) => transport,
                Err(e) => return self.fail(e.to_string()),
            },
        };
        let confirmed = self.role == Role::Initiator;
        self.state = State::Up {
            transport,
            confirmed,
        };
        self.last_rx = now;
        self.next_rekey = now + self.config.rekey_interval;
        match self.role {
            // Name ourselves now that the peer is authenticated and accepted.
            Role::Responder => {
                let hello = Message::Hello(Box::new(self.hello.clone()));
                if self.send(&hello).is_err() {
                    return self.fail("our hello does not fit a frame".to_owned());
                }
            }
            // Our first frame proves to the responder that we accepted it.
            Role::Initiator => {
                let _ = self.send(&Message::Keepalive);
                self.events.push_back(LinkEvent::Up);
            }
        }
        self.process();
    }

    /// Refuses the identified peer, telling it why, and closes. None of its frames are read.
    pub fn refuse(&mut self, reason: CloseReason) {
        if !matches!(self.state, State::Identified { .. }) {
            return;
        }
        let State::Identified { pending } = std::mem::replace(&mut self.state, State::Closed)
        else {
            return;
        };
        let transport = match pending {
            Pending::Initiator(transport) => Some(*transport),
            Pending::Responder(handshake) => handshake.into_transport().ok(),
        };
        if let Some(transport) = transport {
            self.state = State::Up {
                transport,
                confirmed: true,
            };
            let _ = self.send(&Message::Close(reason));
            self.flush();
        }
        self.state = State::Closed;
        self.rx_wire.clear();
        self.rx_plain.clear();
        self.events
            .push_back(LinkEvent::Closed(LinkEnd::ByUs(reason)));
    }

    /// Closes the link, telling the peer why when a transport exists.
    pub fn close(&mut self, reason: CloseReason) {
        match self.state {
            State::Closed => return,
            State::Up { .. } => {
                let _ = self.send(&Message::Close(reason));
                self.flush();
            }
            State::AwaitingHello { .. } | State::Identified { .. } | State::Handshaking { .. } => {}
        }
        self.state = State::Closed;
        self.events
            .push_back(LinkEvent::Closed(LinkEnd::ByUs(reason)));
    }

    /// Queues a message for the peer.
    ///
    /// # Errors
    /// [`SendError::NotUp`] before the handshake ends or after close;
    /// [`SendError::Frame`] for a message over the frame limit.
    pub fn send(&mut self, message: &Message) -> Result<(), SendError> {
        let State::Up { transport, .. } = &mut self.state else {
            return Err(SendError::NotUp);
        };
        self.outbox.push_frame(transport, message)
    }

    /// Bytes queued for the peer and not yet taken by [`Link::poll_transmit`].
    pub fn queued_bytes(&self) -> usize {
        self.outbox.len()
    }

    /// Bytes for the socket, if any. Encrypts whatever is queued first.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Bytes> {
        self.flush();
        let bytes = self.outbox.take()?;
        self.last_tx = now;
        Some(bytes)
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<LinkEvent> {
        self.events.pop_front()
    }

    /// When [`Link::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Handshaking { .. } | State::AwaitingHello { .. } | State::Identified { .. } => {
                Some(self.started + self.config.handshake_timeout)
            }
            State::Up { .. } => Some(
                (self.last_tx + self.config.keepalive)
                    .min(self.last_rx + self.config.idle_timeout)
                    .min(self.next_rekey),
            ),
        }
    }

    /// Fires whatever timers are due: handshake timeout, idle timeout, keepalive, rekey.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::Up { .. } => self.handle_up_timeout(now),
            State::Handshaking { .. } | State::AwaitingHello { .. } | State::Identified { .. } => {
                if now >= self.started + self.config.handshake_timeout {
                    self.close(CloseReason::HandshakeTimeout);
                }
            }
        }
    }

    fn handle_up_timeout(&mut self, now: Instant) {
        if now >= self.last_rx + self.config.idle_timeout {
            self.close(CloseReason::IdleTimeout);
            return;
        }
        if now >= self.next_rekey {
            self.rekey_outgoing();
            self.next_rekey = now + self.config.rekey_interval;
        }
        if now >= self.last_tx + self.config.keepalive && !self.outbox.has_open() {
            self.outbox.shrink();
            let _ = self.send(&Message::Keepalive);
            self.last_tx = now;
        }
    }

    /// Sends `Rekey` as the last frame under the old key, then switches keys.
    fn rekey_outgoing(&mut self) {
        if self.send(&Message::Rekey).is_ok() {
            self.flush();
            if let State::Up { transport, .. } = &mut self.state {
                transport.rekey_outgoing();
            }
        }
    }

    fn queue_handshake(&mut self, message: &[u8]) {
        self.outbox.push_noise(message);
    }

    /// Seals the transport message being filled.
    fn flush(&mut self) {
        let State::Up { transport, .. } = &mut self.state else {
            return;
        };
        if self.outbox.seal(transport).is_err() {
            // Only a nonce exhausted after 2^64 messages gets here.
            self.state = State::Closed;
            self.rx_wire.clear();
            self.events.push_back(LinkEvent::Closed(LinkEnd::Failed(
                "noise nonce exhausted".to_owned(),
            )));
        }
    }

    fn fail(&mut self, why: String) {
        if matches!(self.state, State::Up { .. }) {
            let _ = self.send(&Message::Close(CloseReason::ProtocolViolation));
            self.flush();
        }
        self.state = State::Closed;
        self.rx_wire.clear();
        self.events
            .push_back(LinkEvent::Closed(LinkEnd::Failed(why)));
    }
}

mod inbound;
mod outbox;
#[cfg(test)]
mod tests;
