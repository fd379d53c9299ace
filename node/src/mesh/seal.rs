//! End-to-end sealing of circuit traffic: the keys two endpoint nodes agreed in their
//! session (see `session.rs`), turned into one AES-256-GCM key per circuit and direction.
//!
//! Circuits are in order (pinned paths over ordered links), so each direction's nonce is an
//! implicit counter: the receiver expects exactly the next one, and a replayed, dropped or
//! reordered message fails authentication. Keys differ per circuit, so circuits of one
//! session never share a nonce space, whatever their paths. No IO.

use bytes::{Bytes, BytesMut};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf::{HKDF_SHA256, KeyType, Salt};

use super::message::CircuitId;
use super::stream::ChunkPool;

/// Bytes a seal adds: the GCM tag.
pub const TAG_LEN: usize = 16;

/// Info string of the circuit key derivation, so these keys serve nothing else.
const CIRCUIT_KEY_INFO: &[u8] = b"warren circuit key v1";

/// The two directions' keys of an established session, and its id.
pub struct SessionSecrets {
    /// The session's id (chosen by its initiator).
    pub id: u64,
    /// The key for traffic from the session's initiator to its responder.
    pub initiator_to_responder: [u8; 32],
    /// The key for traffic from the responder to the initiator.
    pub responder_to_initiator: [u8; 32],
    /// Whether this node initiated the session.
    pub we_initiated: bool,
}

impl std::fmt::Debug for SessionSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionSecrets")
            .field("id", &self.id)
            .field("we_initiated", &self.we_initiated)
            .finish_non_exhaustive()
    }
}

impl Drop for SessionSecrets {
    fn drop(&mut self) {
        // Best effort: the keys do not outlive the session in this struct.
        self.initiator_to_responder.fill(0);
        self.responder_to_initiator.fill(0);
    }
}

impl SessionSecrets {
    fn ours(&self) -> &[u8; 32] {
        if self.we_initiated {
            &self.initiator_to_responder
        } else {
            &self.responder_to_initiator
        }
    }

    fn theirs(&self) -> &[u8; 32] {
        if self.we_initiated {
            &self.responder_to_initiator
        } else {
            &self.initiator_to_responder
        }
    }

    /// The sealer and opener of one circuit of this session, seen from this node.
    pub fn circuit(&self, circuit: &CircuitId) -> (Sealer, Opener) {
        let salt = circuit_salt(self.id, circuit);
        (
            Sealer {
                key: derive(self.ours(), &salt),
                next: 0,
            },
            Opener {
                key: derive(self.theirs(), &salt),
                next: 0,
            },
        )
    }
}

fn circuit_salt(session: u64, circuit: &CircuitId) -> Vec<u8> {
    let mut salt = session.to_be_bytes().to_vec();
    salt.extend_from_slice(&circuit.number.to_be_bytes());
    salt.extend_from_slice(circuit.opener.as_str().as_bytes());
    salt
}

struct Aes256;

impl KeyType for Aes256 {
    fn len(&self) -> usize {
        32
    }
}

fn derive(secret: &[u8; 32], salt: &[u8]) -> LessSafeKey {
    let prk = Salt::new(HKDF_SHA256, salt).extract(secret);
    let mut key = [0u8; 32];
    prk.expand(&[CIRCUIT_KEY_INFO], Aes256)
        .and_then(|okm| okm.fill(&mut key))
        .expect("invariant: 32 bytes is a valid HKDF-SHA256 output length");
    let unbound =
        UnboundKey::new(&AES_256_GCM, &key).expect("invariant: 32 bytes is an AES-256 key");
    key.fill(0);
    LessSafeKey::new(unbound)
}

fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

/// Seals one direction of a circuit.
pub struct Sealer {
    key: LessSafeKey,
    next: u64,
}

/// Opens the other direction of a circuit.
pub struct Opener {
    key: LessSafeKey,
    next: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.next)
    }
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener({})", self.next)
    }
}

/// A sealed message failed to open: forged, replayed, reordered or corrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit message failed authentication")]
pub struct OpenError;

impl Sealer {
    /// Seals `plaintext` (appending the tag in place) as the next message.
    pub fn seal(&mut self, mut plaintext: Vec<u8>) -> Bytes {
        let counter = self.next;
        self.next += 1;
        self.key
            .seal_in_place_append_tag(nonce(counter), Aad::empty(), &mut plaintext)
            .expect("invariant: messages are far below AES-GCM's length limit");
        Bytes::from(plaintext)
    }

    /// Seals `plaintext` as [`Sealer::seal`] does, appending the tag in the buffer's spare
    /// capacity (no copy when it has [`TAG_LEN`] bytes to spare).
    pub fn seal_chunk(&mut self, mut plaintext: BytesMut) -> Bytes {
        let counter = self.next;
        self.next += 1;
        self.key
            .seal_in_place_append_tag(nonce(counter), Aad::empty(), &mut plaintext)
            .expect("invariant: messages are far below AES-GCM's length limit");
        plaintext.freeze()
    }
}

impl Opener {
    /// Opens the next message where it lies when `sealed` is its buffer's only owner (as a
    /// freshly decoded packet's is), copying it first otherwise.
    ///
    /// # Errors
    /// [`OpenError`] as [`Opener::open`].
    pub fn open_owned(&mut self, sealed: Bytes) -> Result<BytesMut, OpenError> {
        self.open_pooled(sealed, &ChunkPool::new())
    }

    /// [`Opener::open_owned`], copying (when it must) into a buffer of `pool`.
    ///
    /// # Errors
    /// [`OpenError`] as [`Opener::open`].
    pub fn open_pooled(&mut self, sealed: Bytes, pool: &ChunkPool) -> Result<BytesMut, OpenError> {
        let mut buf = sealed
            .try_into_mut()
            .unwrap_or_else(|shared| pool.copy(&shared));
        let len = self.open_in_place(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens the next message.
    ///
    /// # Errors
    /// [`OpenError`] when it is not the next message of this direction, sealed by the peer.
    pub fn open(&mut self, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut buf = sealed.to_vec();
        let len = self.open_in_place(&mut buf)?;
        buf.truncate(len);
        Ok(buf)
    }

    /// Opens the next message where it lies; returns the plaintext's length.
    fn open_in_place(&mut self, buf: &mut [u8]) -> Result<usize, OpenError> {
        let len = self
            .key
            .open_in_place(nonce(self.next), Aad::empty(), buf)
            .map_err(|_| OpenError)?
            .len();
        self.next += 1;
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;

    fn secrets(we_initiated: bool) -> SessionSecrets {
        SessionSecrets {
            id: 9,
            initiator_to_responder: [1; 32],
            responder_to_initiator: [2; 32],
            we_initiated,
        }
    }

    fn circuit(n: u64) -> CircuitId {
        CircuitId {
            opener: NodeId::new("a").unwrap(),
            number: n,
        }
    }

    #[test]
    fn both_ends_derive_matching_keys_per_direction() {
        let (mut a_seal, mut a_open) = secrets(true).circuit(&circuit(5));
        let (mut b_seal, mut b_open) = secrets(false).circuit(&circuit(5));
        let sealed = a_seal.seal(b"to b".to_vec());
        assert_eq!(b_open.open(&sealed).unwrap(), b"to b");
        let back = b_seal.seal(b"to a".to_vec());
        assert_eq!(a_open.open(&back).unwrap(), b"to a");
        // Our own direction's key does not open what we sealed.
        let mine = a_seal.seal(b"x".to_vec());
        assert!(a_open.open(&mine).is_err());
    }

    #[test]
    fn replays_reorders_and_other_circuits_fail() {
        let (mut seal, _) = secrets(true).circuit(&circuit(5));
        let (_, mut open) = secrets(false).circuit(&circuit(5));
        let first = seal.seal(b"1".to_vec());
        let second = seal.seal(b"2".to_vec());
        assert!(open.open(&second).is_err(), "reordered");
        assert_eq!(open.open(&first).unwrap(), b"1");
        assert!(open.open(&first).is_err(), "replayed");
        assert_eq!(open.open(&second).unwrap(), b"2");
        let (_, mut other) = secrets(false).circuit(&circuit(6));
        let third = seal.seal(b"3".to_vec());
        assert!(other.open(&third).is_err(), "another circuit's key");
    }
}
