//! The Noise XX handshake and the transport that follows it, as two separate types, so no
//! data can be sent before the handshake ends and the peer's key has been judged.
//!
//! Owns the cipher suite, the prologue and the handshake message order:
//!
//! 1. initiator -> responder: its ephemeral key and, in clear, its protocol version;
//! 2. responder -> initiator: its static key, and "continue" (or a refusal naming both
//!    versions) — not its node id: a responder names itself only to authenticated peers;
//! 3. initiator -> responder: its static key and its hello (node id, epoch, certificate).
//!
//! The responder then judges the initiator and, if it accepts, sends its own hello as the
//! first transport frame, which the initiator judges in turn (see `link.rs`). The caller
//! decides whom to trust; this module only reports keys and hellos. No IO.

mod cipher;

use bytes::{BufMut, BytesMut};
use snow::HandshakeState;

use cipher::CipherState;
pub use cipher::{CipherError, TAG_LEN};

use super::message::{
    CloseReason, Hello, MessageError, PROTOCOL_VERSION, Preamble, ResponderPayload, decode_payload,
    encode_payload,
};
use crate::keys::{LinkKeypair, PublicKey};

/// The Noise protocol name. AES-GCM through ring uses the CPU's AES instructions and beat
/// ChaCha20-Poly1305 here (see `cargo bench --bench mesh`, which measures both).
pub const NOISE_PARAMS: &str = "Noise_XX_25519_AESGCM_SHA256";

/// Largest plaintext a transport message carries (a Noise message minus its 16-byte tag).
pub const MAX_PLAINTEXT_LEN: usize = super::frame::MAX_NOISE_MESSAGE_LEN - TAG_LEN;

/// Bound into the handshake hash. It names no version: the version travels in the first
/// message's preamble, so nodes of different versions can still tell each other why they
/// part. Public for tools that speak the handshake by hand (the fuzz targets).
pub const PROLOGUE: &[u8] = b"warren mesh";

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Noise rejected a message: corrupted, or another protocol.
    #[error(
        "noise handshake failed (corrupted, or not a warren peer of a compatible version): {0}"
    )]
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
    /// The initiator speaks another protocol version; refuse with [`Handshake::refuse_version`].
    #[error("peer speaks mesh protocol v{theirs}, this node v{PROTOCOL_VERSION}")]
    Version {
        /// The initiator's version.
        theirs: u16,
    },
    /// Message 1 carried no version preamble: a node from before protocol version 2.
    #[error(
        "peer speaks mesh protocol v1 (no version preamble), this node v{PROTOCOL_VERSION}: upgrade it"
    )]
    NoPreamble,
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
    /// (Responder, after message 1.) Send this message 2 and wait for message 3.
    Reply(Vec<u8>),
    /// (Initiator, after message 2.) The responder has shown its static key; send our hello
    /// with [`Handshake::finish_initiator`], then wait for the responder's hello frame.
    ResponderKey(PublicKey),
    /// (Responder, after message 3.) The initiator has shown its key and hello; judge it,
    /// then [`Handshake::into_transport`].
    Identified {
        /// The initiator's static key.
        key: PublicKey,
        /// The initiator's hello.
        hello: Box<Hello>,
    },
}

/// A Noise XX handshake in progress.
pub struct Handshake {
    state: HandshakeState,
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
    let builder = snow::Builder::new(params)
        .local_private_key(keys.private_bytes())?
        .prologue(PROLOGUE)?;
    match role {
        Role::Initiator => builder.build_initiator(),
        Role::Responder => builder.build_responder(),
    }
}

impl Handshake {
    /// Starts a handshake as the dialling side; returns message 1 (our version, in clear).
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the key material is unusable.
    pub fn initiator(keys: &LinkKeypair) -> Result<(Self, Vec<u8>), HandshakeError> {
        Self::initiator_speaking(keys, PROTOCOL_VERSION)
    }

    /// As [`Handshake::initiator`], claiming another protocol version (tests of mismatched
    /// versions).
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the key material is unusable.
    pub fn initiator_speaking(
        keys: &LinkKeypair,
        version: u16,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut hs = Self {
            state: build(keys, Role::Initiator)?,
            buf: vec![0; super::frame::MAX_NOISE_MESSAGE_LEN],
        };
        let first = hs.write(&encode_payload(&Preamble { version }))?;
        Ok((hs, first))
    }

    /// Starts a handshake as the accepting side.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if the key material is unusable.
    pub fn responder(keys: &LinkKeypair) -> Result<Self, HandshakeError> {
        Ok(Self {
            state: build(keys, Role::Responder)?,
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
    /// [`HandshakeError`] when the message is invalid, out of turn, a refusal, or (for the
    /// responder) of another protocol version.
    pub fn read(&mut self, message: &[u8]) -> Result<HandshakeOutput, HandshakeError> {
        if self.state.is_my_turn() || self.state.is_handshake_finished() {
            return Err(HandshakeError::Unexpected);
        }
        let mut payload = vec![0; message.len()];
        let n = self.state.read_message(message, &mut payload)?;
        let payload = &payload[..n];
        let remote = self.state.get_remote_static().map(PublicKey::from_slice);
        match (self.state.is_initiator(), remote) {
            // Responder after message 1: check the version, answer with message 2.
            (false, None) => {
                if payload.is_empty() {
                    return Err(HandshakeError::NoPreamble);
                }
                let Preamble { version } = decode_payload(payload)?;
                if version != PROTOCOL_VERSION {
                    return Err(HandshakeError::Version { theirs: version });
                }
                let reply = self.write(&encode_payload(&ResponderPayload::Continue))?;
                Ok(HandshakeOutput::Reply(reply))
            }
            // Initiator after message 2.
            (true, Some(key)) => {
                let key = key.ok_or(HandshakeError::NoStaticKey)?;
                match decode_payload(payload)? {
                    ResponderPayload::Continue => Ok(HandshakeOutput::ResponderKey(key)),
                    ResponderPayload::Refuse(reason) => Err(HandshakeError::Refused(reason)),
                }
            }
            // Responder after message 3.
            (false, Some(key)) => {
                let key = key.ok_or(HandshakeError::NoStaticKey)?;
                let hello = Box::new(decode_payload(payload)?);
                Ok(HandshakeOutput::Identified { key, hello })
            }
            (true, None) => Err(HandshakeError::NoStaticKey),
        }
    }

    /// (Responder.) Message 2 refusing an initiator of another protocol version, naming both.
    pub fn refuse_version(mut self, theirs: u16) -> Option<Vec<u8>> {
        let reason = CloseReason::VersionMismatch {
            sender: PROTOCOL_VERSION,
            receiver: theirs,
        };
        self.write(&encode_payload(&ResponderPayload::Refuse(reason)))
            .ok()
    }

    /// (Initiator, after [`HandshakeOutput::ResponderKey`].) Message 3 carrying our hello,
    /// and the transport.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if Noise cannot finish (out of order use).
    pub fn finish_initiator(
        mut self,
        hello: &Hello,
    ) -> Result<(Vec<u8>, Transport), HandshakeError> {
        let last = self.write(&encode_payload(hello))?;
        Ok((last, Transport::new(self.state)?))
    }

    /// (Responder, after [`HandshakeOutput::Identified`].) The transport.
    ///
    /// # Errors
    /// [`HandshakeError::Noise`] if Noise cannot finish (out of order use).
    pub fn into_transport(self) -> Result<Transport, HandshakeError> {
        Transport::new(self.state)
    }
}

/// The encrypted transport after a finished handshake: one `CipherState` each way.
pub struct Transport {
    send: CipherState,
    recv: CipherState,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport").finish_non_exhaustive()
    }
}

impl Transport {
    /// The transport of a finished handshake: its split, as Noise's `Split()` makes it
    /// (the first key for messages from the initiator).
    fn new(mut state: HandshakeState) -> Result<Self, HandshakeError> {
        if !state.is_handshake_finished() {
            return Err(HandshakeError::Unexpected);
        }
        let (from_initiator, from_responder) = state.dangerously_get_raw_split();
        let (send, recv) = if state.is_initiator() {
            (from_initiator, from_responder)
        } else {
            (from_responder, from_initiator)
        };
        Ok(Self {
            send: CipherState::new(&send),
            recv: CipherState::new(&recv),
        })
    }

    /// Encrypts `plaintext` (at most [`MAX_PLAINTEXT_LEN`] bytes) and appends it, framed, to
    /// `out`: one copy, sealed where it lands.
    ///
    /// # Errors
    /// [`CipherError::Exhausted`] when the nonce is spent (`out` is left as it was).
    ///
    /// # Panics
    /// If `plaintext` is longer than [`MAX_PLAINTEXT_LEN`] (callers cut it first).
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut BytesMut) -> Result<(), CipherError> {
        assert!(
            plaintext.len() <= MAX_PLAINTEXT_LEN,
            "a transport message carries at most {MAX_PLAINTEXT_LEN} bytes"
        );
        let len = u16::try_from(plaintext.len() + TAG_LEN)
            .expect("invariant: MAX_PLAINTEXT_LEN + TAG_LEN fits a 2-byte length");
        let start = out.len();
        out.reserve(2 + plaintext.len() + TAG_LEN);
        out.put_u16(len);
        out.extend_from_slice(plaintext);
        match self.send.seal_in_place(&mut out[start + 2..]) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Seals, where it lies, the message whose 2-byte length prefix sits at `out[start..]`
    /// and whose plaintext is the rest of `out` (at most [`MAX_PLAINTEXT_LEN`] bytes): the
    /// tag is appended and the prefix filled in. The same bytes as [`Transport::encrypt`] of
    /// that plaintext, without copying it.
    ///
    /// # Errors
    /// [`CipherError::Exhausted`] when the nonce is spent (`out` is left unsealed).
    ///
    /// # Panics
    /// If the plaintext is longer than [`MAX_PLAINTEXT_LEN`] or `start` is past the end.
    pub fn seal_tail(&mut self, out: &mut BytesMut, start: usize) -> Result<(), CipherError> {
        let plaintext = out.len() - start - 2;
        let len = u16::try_from(plaintext + TAG_LEN)
            .ok()
            .filter(|_| plaintext <= MAX_PLAINTEXT_LEN)
            .expect("a transport message carries at most MAX_PLAINTEXT_LEN bytes");
        let tag = self.send.seal_in_place(&mut out[start + 2..])?;
        out.extend_from_slice(tag.as_ref());
        out[start..start + 2].copy_from_slice(&len.to_be_bytes());
        Ok(())
    }

    /// Decrypts one transport message where it lies, leaving only its plaintext in it.
    ///
    /// # Errors
    /// [`CipherError::Decrypt`] when the message fails authentication.
    pub fn decrypt_in_place(&mut self, message: &mut BytesMut) -> Result<(), CipherError> {
        let len = self.recv.open_in_place(message)?;
        message.truncate(len);
        Ok(())
    }

    /// Decrypts one transport message, appending the plaintext to `out` (one copy).
    ///
    /// # Errors
    /// [`CipherError::Decrypt`] when the message fails authentication (`out` is left as it
    /// was).
    pub fn decrypt(&mut self, message: &[u8], out: &mut BytesMut) -> Result<(), CipherError> {
        let start = out.len();
        out.extend_from_slice(message);
        match self.recv.open_in_place(&mut out[start..]) {
            Ok(len) => {
                out.truncate(start + len);
                Ok(())
            }
            Err(e) => {
                out.truncate(start);
                Err(e)
            }
        }
    }

    /// Switches the sending side to a new key (after sending [`super::message::Message::Rekey`]).
    pub fn rekey_outgoing(&mut self) {
        self.send.rekey();
    }

    /// Switches the receiving side to a new key (after receiving `Rekey`).
    pub fn rekey_incoming(&mut self) {
        self.recv.rekey();
    }
}

#[cfg(test)]
mod tests;
