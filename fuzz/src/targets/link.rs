//! One link's handshake and framing, as each side receives them: raw bytes into a
//! responder or an initiator, and handshakes driven by hand with Noise so that the version
//! preamble, the responder's answer, the hello (message 3, or the responder's first
//! frame) and every transport frame after them are whatever the input says.

use std::time::Duration;

use bytes::BytesMut;
use snow::{HandshakeState, TransportState};
use warren::mesh::frame::{decode_noise, encode_noise};
use warren::mesh::link::{Link, LinkConfig, LinkEvent};
use warren::mesh::message::CloseReason;
use warren::mesh::noise::{NOISE_PARAMS, PROLOGUE};

use super::Reached;
use crate::mesh::{Clock, Harness, private_key};
use crate::ops::{Fields, Ops};

/// Most ops per input.
const MAX_OPS: usize = 64;

/// The first byte picks the side under test and how the harness plays the other side
/// (raw bytes, or Noise by hand), and whether the link's owner accepts the peer once it is
/// identified; the rest are ops.
pub fn link_handshake(data: &[u8]) -> Reached {
    let Some((&setup, rest)) = data.split_first() else {
        return Reached::new();
    };
    let mut t = Tester::new(setup);
    let mut hand = match setup % 4 {
        2 => Hand::initiator(setup),
        3 => Hand::responder(),
        _ => Hand::Raw,
    };
    // An initiator under test has sent message 1 already: a responder hand reads it first.
    hand.listen(&mut t);
    for op in Ops::new(rest).take(MAX_OPS) {
        match op.tag % 4 {
            0 => hand.speak(&mut t, op.data),
            1 => t.feed(op.data),
            2 => t.advance(Fields::new(op.data).u16()),
            _ => {
                let reason = postcard::from_bytes(op.data).unwrap_or(CloseReason::Shutdown);
                t.link.close(reason);
                t.drain();
            }
        }
        hand.listen(&mut t);
    }
    t.reached
}

/// The link under test and what it said.
struct Tester {
    link: Link,
    clock: Clock,
    accept: bool,
    /// Bytes the link sent, not yet read by the hand-driven side.
    sent: BytesMut,
    reached: Reached,
}

impl Tester {
    fn new(setup: u8) -> Self {
        let clock = Clock::new();
        let keys = crate::mesh::member(0).1;
        let hello = Harness::hello(0, 1, false);
        let config = LinkConfig::default();
        let link = if setup % 4 == 1 || setup % 4 == 3 {
            Link::initiator(clock.now(), &keys, hello, config)
        } else {
            Link::responder(clock.now(), &keys, hello, config)
        }
        .expect("a link with a valid key starts");
        let mut tester = Self {
            link,
            clock,
            accept: setup & 4 == 0,
            sent: BytesMut::new(),
            reached: Reached::new(),
        };
        tester.drain();
        tester
    }

    fn feed(&mut self, bytes: &[u8]) {
        self.link.handle_bytes(self.clock.now(), bytes);
        self.drain();
    }

    fn advance(&mut self, ms: u16) {
        self.clock.advance(Duration::from_millis(u64::from(ms) * 4));
        let now = self.clock.now();
        if self.link.poll_timeout().is_some_and(|t| t <= now) {
            self.link.handle_timeout(now);
            self.drain();
            // The driver sleeps until poll_timeout: one still due would spin it.
            assert!(
                self.link.poll_timeout().is_none_or(|t| t > now),
                "a link timer stays due after handle_timeout"
            );
        }
        self.drain();
    }

    /// Takes what the link sends, and answers its events as a node would.
    fn drain(&mut self) {
        loop {
            let now = self.clock.now();
            while let Some(bytes) = self.link.poll_transmit(now) {
                self.sent.extend_from_slice(&bytes);
            }
            let Some(event) = self.link.poll_event() else {
                return;
            };
            match event {
                LinkEvent::Identified { .. } => {
                    self.reached.push("identified");
                    if self.accept {
                        self.link.accept(now);
                    } else {
                        self.link.refuse(CloseReason::UntrustedKey);
                    }
                }
                LinkEvent::Up => self.reached.push("up"),
                LinkEvent::Message(m) => self.reached.push(crate::mesh::kind(&m)),
                LinkEvent::Plaintext(_) => {}
                LinkEvent::Closed(end) => {
                    let _ = end.to_string();
                    self.reached.push("closed");
                }
            }
        }
    }
}

/// The other side, when it is played with Noise by hand.
enum Hand {
    /// Raw bytes only (op 0 sends them as they are).
    Raw,
    /// Handshake messages still to write or read.
    Handshaking(Box<HandshakeState>),
    /// Transport messages with the input's plaintext.
    Transport(Box<TransportState>),
    /// Nothing more to say.
    Done,
}

fn builder(setup: u8) -> Option<snow::Builder<'static>> {
    let params = NOISE_PARAMS.parse().ok()?;
    // The speaker's key: a cast member the link knows nothing about (links do not judge).
    static KEYS: std::sync::OnceLock<Vec<[u8; 32]>> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| (0..9).map(private_key).collect());
    let key: &'static [u8; 32] = &keys[usize::from(setup >> 3) % keys.len()];
    snow::Builder::new(params)
        .local_private_key(key)
        .ok()?
        .prologue(PROLOGUE)
        .ok()
}

impl Hand {
    fn initiator(setup: u8) -> Self {
        builder(setup)
            .and_then(|b| b.build_initiator().ok())
            .map_or(Self::Done, |hs| Self::Handshaking(Box::new(hs)))
    }

    fn responder() -> Self {
        builder(1)
            .and_then(|b| b.build_responder().ok())
            .map_or(Self::Done, |hs| Self::Handshaking(Box::new(hs)))
    }

    /// Op 0: the next message, carrying the input's bytes as its payload.
    fn speak(&mut self, t: &mut Tester, payload: &[u8]) {
        let mut buf = vec![0u8; 65_535];
        let written = match self {
            Self::Raw => return t.feed(payload),
            Self::Done => return,
            Self::Handshaking(hs) => {
                if !hs.is_my_turn() {
                    return;
                }
                hs.write_message(payload, &mut buf)
            }
            Self::Transport(ts) => ts.write_message(payload, &mut buf),
        };
        let Ok(n) = written else {
            *self = Self::Done;
            return;
        };
        let mut wire = BytesMut::new();
        if encode_noise(&buf[..n], &mut wire).is_ok() {
            t.feed(&wire);
        }
        self.maybe_finish();
    }

    /// Reads what the link sent, moving the handshake on.
    fn listen(&mut self, t: &mut Tester) {
        while let Ok(Some(message)) = decode_noise(&mut t.sent) {
            let mut buf = vec![0u8; 65_535];
            match self {
                Self::Handshaking(hs) if !hs.is_my_turn() => {
                    if hs.read_message(&message, &mut buf).is_err() {
                        *self = Self::Done;
                        return;
                    }
                    self.maybe_finish();
                }
                Self::Transport(ts) => {
                    let _ = ts.read_message(&message, &mut buf);
                }
                _ => {}
            }
        }
        if matches!(self, Self::Raw | Self::Done) {
            t.sent.clear();
        }
    }

    fn maybe_finish(&mut self) {
        if let Self::Handshaking(hs) = self
            && hs.is_handshake_finished()
        {
            let Self::Handshaking(hs) = std::mem::replace(self, Self::Done) else {
                return;
            };
            if let Ok(ts) = hs.into_transport_mode() {
                *self = Self::Transport(Box::new(ts));
            }
        }
    }
}
