//! The Noise XX handshake and the transport that follows it, as two separate types, so no
//! data can be sent before the handshake ends and the peer's key has been judged.
//!
//! Owns the cipher suite, the prologue and the handshake message order. The caller decides
//! whether to trust the peer's static key (see `link.rs`); this module only reports it. No IO.

use bytes::BytesMut;
use snow::{HandshakeState, TransportState};

use super::message::{CloseReason, HandshakePayload, MessageError, PROTOCOL_VERSION};
use crate::keys::{LinkKeypair, PublicKey};

/// The Noise protocol name. AES-GCM through ring uses the CPU's AES instructions and beat
/// ChaCha20-Poly1305 here (see `cargo bench --bench mesh`, which measures both).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Largest plaintext a transport message carries (a Noise message minus its 16-byte tag).
pub const MAX_PLAINTEXT_LEN: usize = super::frame::MAX_NOISE_MESSAGE_LEN - 16;

/// Bound into the handshake hash: a node of another protocol version fails the handshake.
fn prologue() -> Vec<u8> {
    format!("warren mesh protocol v{PROTOCOL_VERSION}").into_bytes()
}

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Noise rejected a message: corrupted, or a different protocol or version.
    #[error("noise handshake failed (corrupted, or another protocol version): {0}")]
    Noise(#[from] snow::Error),
    /// The peer's payload did not decode.
    #[error("bad handshake payload: {0}")]
    Payload(#[from] MessageError),
    /// The peer did not present a static key (cannot happen with XX; checked anyway).
    #[error("peer presented no static key")]
    NoStaticKey,
    /// The peer refused us, and told us why.
    #[error("peer refused the link: {0}")]
    Refused(CloseReason),
    /// A message arrived when none was expected.
    #[error("unexpected handshake message")]
    Unexpected,
}

/// Which side of the handshake we are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// We dialled.
    Initiator,
    /// We accepted.
    Responder,
}

/// What the handshake needs next after reading a message.
#[derive(Debug)]
pub enum HandshakeOutput {
    /// Send this handshake message and wait for the next.
    Reply(Vec<u8>),
    /// The peer has shown its static key and hello; call [`Handshake::accept`] or
    /// [`Handshake::refuse`].
    Identified {
        /// The peer's static key.
        key: PublicKey,
        /// The peer's hello.
        payload: HandshakePayload,
    },
}

/// A Noise XX handshake in progress.
pub struct Handshake {
    state: HandshakeState,
    hello: Vec<u8>,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.state.is_initiator())
            .finish_non_exhaustive()
    }
}

fn build(keys: &LinkKeypair, role: Role) -> Result<HandshakeState, snow::Error> {
    let params = NOISE_PARAMS
        .parse()
        .expect("invariant: NOISE_PARAMS is valid");
    let prologue = prologue();
    let builder = snow::Builder::new(params)
        .local_private_key(keys.private_bytes())?
        .prologue(&prologue)?;
    match role {
        Role::Initiator => builder.build_initiator(),
        Role::Responder => builder.build_responder(),
    }
}

impl Handshake {
    /// Starts a handshake as the dialling side; returns the first message to send.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the key material is unusable.
    pub fn initiator(
        keys: &LinkKeypair,
        hello: &HandshakePayload,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = Self {
            state: build(keys, Role::Initiator)?,
            hello: hello.encode(),
            buf: vec![0; super::frame::MAX_NOISE_MESSAGE_LEN],
        };
        let first = hs.write(&[])?;
        Ok((hs, first))
    }

    /// Starts a handshake as the accepting side.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the key material is unusable.
    pub fn responder(keys: &LinkKeypair, hello: &HandshakePayload) -> Result<Self, HandshakeError> {
        Ok(Self {
            state: build(keys, Role::Responder)?,
            hello: hello.encode(),
            buf: vec![0; super::frame::MAX_NOISE_MESSAGE_LEN],
        })
    }

    fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let n = self.state.write_message(payload, &mut self.buf)?;
        Ok(self.buf[..n].to_vec())
    }

    /// Reads the peer's next handshake message.
    ///
    /// # Errors
    /// [`HandshakeError`] when the message is invalid, out of turn, or a refusal.
    pub fn read(&mut self, message: &[u8]) -> Result<HandshakeOutput, HandshakeError> {
        if self.state.is_my_turn() || self.state.is_handshake_finished() {
            return Err(HandshakeError::Unexpected);
        }
        let mut payload = vec![0; message.len()];
        let n = self.state.read_message(message, &mut payload)?;
        let Some(remote) = self.state.get_remote_static() else {
            // Responder after message 1: answer with message 2 carrying our hello.
            let hello = std::mem::take(&mut self.hello);
            return Ok(HandshakeOutput::Reply(self.write(&hello)?));
        };
        let key = PublicKey::from_slice(remote).ok_or(HandshakeError::NoStaticKey)?;
        match HandshakePayload::decode(&payload[..n])? {
            HandshakePayload::Refuse(reason) => Err(HandshakeError::Refused(reason)),
            payload => Ok(HandshakeOutput::Identified { key, payload }),
        }
    }

    /// Accepts the identified peer. The initiator gets message 3 (carrying its hello) to send.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if Noise cannot finish (out of order use).
    pub fn accept(mut self) -> Result<(Option<Vec<u8>>, Transport), HandshakeError> {
        let last = if !self.state.is_handshake_finished() {
            let hello = std::mem::take(&mut self.hello);
            Some(self.write(&hello)?)
        } else {
            None
        };
        let state = self.state.into_transport_mode()?;
        Ok((last, Transport::new(state)))
    }

    /// Refuses the identified peer. The initiator gets message 3 carrying the reason, so the
    /// responder learns why; the responder gets nothing (it closes after the handshake).
    pub fn refuse(mut self, reason: CloseReason) -> Option<Vec<u8>> {
        if self.state.is_handshake_finished() {
            return None;
        }
        self.write(&HandshakePayload::Refuse(reason).encode()).ok()
    }
}

/// The encrypted transport after a finished handshake.
pub struct Transport {
    state: TransportState,
    scratch: Vec<u8>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    fn new(state: TransportState) -> Self {
        Self {
            state,
            scratch: vec![0; super::frame::MAX_NOISE_MESSAGE_LEN],
        }
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) and appends it, framed, to
    /// `out`.
    ///
    /// # Errors
    /// [`snow::Error`] if the plaintext is too long or the nonce is exhausted.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), snow::Error> {
        let n = self.state.write_message(plaintext, &mut self.scratch)?;
        super::frame::encode_noise(&self.scratch[..n], out)
            .expect("invariant: a noise message fits a 2-byte length");
        Ok(())
    }

    /// Decrypts one transport message, appending the plaintext to `out`.
    ///
    /// # Errors
    /// [`snow::Error`] when the message fails authentication.
    pub fn decrypt(&mut self, message: &[u8], out: &mut BytesMut) -> Result<(), snow::Error> {
        let n = self.state.read_message(message, &mut self.scratch)?;
        out.extend_from_slice(&self.scratch[..n]);
        Ok(())
    }

    /// Switches the sending side to a new key (after sending [`super::message::Message::Rekey`]).
    pub fn rekey_outgoing(&mut self) {
        self.state.rekey_outgoing();
    }

    /// Switches the receiving side to a new key (after receiving `Rekey`).
    pub fn rekey_incoming(&mut self) {
        self.state.rekey_incoming();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn hello(id: &str) -> HandshakePayload {
        HandshakePayload::Hello {
            node: NodeId::new(id).unwrap(),
            version: PROTOCOL_VERSION,
            epoch: 1,
        }
    }

    fn pair() -> (LinkKeypair, LinkKeypair) {
        (
            LinkKeypair::from_private([1; 32]),
            LinkKeypair::from_private([2; 32]),
        )
    }

    /// Runs a full handshake and returns both transports.
    fn handshake(a: &LinkKeypair, b: &LinkKeypair) -> (Transport, Transport) {
        let (mut ini, m1) = Handshake::initiator(a, &hello("a")).unwrap();
        let mut res = Handshake::responder(b, &hello("b")).unwrap();
        let HandshakeOutput::Reply(m2) = res.read(&m1).unwrap() else {
            panic!("responder must reply to message 1")
        };
        let HandshakeOutput::Identified { key, payload } = ini.read(&m2).unwrap() else {
            panic!("initiator must identify the responder")
        };
        assert_eq!(key, b.public());
        assert_eq!(payload, hello("b"));
        let (m3, ta) = ini.accept().unwrap();
        let HandshakeOutput::Identified { key, payload } = res.read(&m3.unwrap()).unwrap() else {
            panic!("responder must identify the initiator")
        };
        assert_eq!(key, a.public());
        assert_eq!(payload, hello("a"));
        let (none, tb) = res.accept().unwrap();
        assert!(none.is_none());
        (ta, tb)
    }

    #[test]
    fn handshake_then_transport_both_ways_with_rekey() {
        let (a, b) = pair();
        let (mut ta, mut tb) = handshake(&a, &b);
        let mut wire = BytesMut::new();
        ta.encrypt(b"ping", &mut wire).unwrap();
        let msg = super::super::frame::decode_noise(&mut wire)
            .unwrap()
            .unwrap();
        let mut out = BytesMut::new();
        tb.decrypt(&msg, &mut out).unwrap();
        assert_eq!(&out[..], b"ping");
        ta.rekey_outgoing();
        tb.rekey_incoming();
        ta.encrypt(b"after", &mut wire).unwrap();
        let msg = super::super::frame::decode_noise(&mut wire)
            .unwrap()
            .unwrap();
        out.clear();
        tb.decrypt(&msg, &mut out).unwrap();
        assert_eq!(&out[..], b"after");
    }

    #[test]
    fn initiator_refusal_reaches_responder() {
        let (a, b) = pair();
        let (mut ini, m1) = Handshake::initiator(&a, &hello("a")).unwrap();
        let mut res = Handshake::responder(&b, &hello("b")).unwrap();
        let HandshakeOutput::Reply(m2) = res.read(&m1).unwrap() else {
            panic!()
        };
        assert!(matches!(
            ini.read(&m2).unwrap(),
            HandshakeOutput::Identified { .. }
        ));
        let m3 = ini.refuse(CloseReason::UntrustedKey).unwrap();
        assert!(matches!(
            res.read(&m3),
            Err(HandshakeError::Refused(CloseReason::UntrustedKey))
        ));
    }

    #[test]
    fn garbage_fails_cleanly() {
        let (_, b) = pair();
        let mut res = Handshake::responder(&b, &hello("b")).unwrap();
        assert!(res.read(&[1, 2, 3]).is_err());
        let mut res = Handshake::responder(&b, &hello("b")).unwrap();
        assert!(
            res.read(&[0; 32]).is_ok(),
            "any 32 bytes is an ephemeral key"
        );
    }

    #[test]
    fn tampered_transport_message_is_rejected() {
        let (a, b) = pair();
        let (mut ta, mut tb) = handshake(&a, &b);
        let mut wire = BytesMut::new();
        ta.encrypt(b"secret", &mut wire).unwrap();
        let mut msg = super::super::frame::decode_noise(&mut wire)
            .unwrap()
            .unwrap()
            .to_vec();
        msg[0] ^= 1;
        assert!(tb.decrypt(&msg, &mut BytesMut::new()).is_err());
    }
}
