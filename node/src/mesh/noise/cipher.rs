//! The transport's two cipher states (Noise's `CipherState` for AESGCM), kept here rather
//! than in snow so that messages are sealed and opened in place, in the link's own buffers:
//! snow's transport copies every message twice on each side.
//!
//! The bytes on the wire are Noise's, unchanged (and tested against snow's transport): AES-256-GCM,
//! the nonce is 32 zero bits then the 64-bit big-endian message counter, no associated data,
//! the counter value 2^64-1 is never used for a message, and REKEY replaces the key with the
//! first 32 bytes of the encryption of 32 zero bytes under that reserved nonce. No IO.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// Bytes of the authentication tag each transport message ends with.
pub const TAG_LEN: usize = 16;

/// Why a transport message could not be sealed or opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CipherError {
    /// 2^64-1 messages went one way on one key: the link must end.
    #[error("noise nonce exhausted")]
    Exhausted,
    /// The message was not sealed by the peer for this place in the stream.
    #[error("transport message failed authentication")]
    Decrypt,
}

/// One direction's key and message counter.
pub(super) struct CipherState {
    key: LessSafeKey,
    counter: u64,
}

impl std::fmt::Debug for CipherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CipherState")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

/// The AES-256-GCM key for `raw`.
fn aes_key(raw: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, raw).expect("invariant: AES-256 keys are 32 bytes"),
    )
}

/// Noise's AESGCM nonce for message `counter`.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

impl CipherState {
    /// A direction starting at message 0 under `raw` (a half of the handshake's split).
    pub(super) fn new(raw: &[u8; 32]) -> Self {
        Self {
            key: aes_key(raw),
            counter: 0,
        }
    }

    /// The next message's nonce, counting it.
    fn next_nonce(&mut self) -> Result<Nonce, CipherError> {
        if self.counter == u64::MAX {
            return Err(CipherError::Exhausted);
        }
        let n = nonce(self.counter);
        self.counter += 1;
        Ok(n)
    }

    /// Encrypts `plaintext` where it lies and returns the tag to append after it.
    ///
    /// # Errors
    /// [`CipherError::Exhausted`] after 2^64-1 messages.
    pub(super) fn seal_in_place(&mut self, plaintext: &mut [u8]) -> Result<Tag, CipherError> {
        let nonce = self.next_nonce()?;
        self.key
            .seal_in_place_separate_tag(nonce, Aad::empty(), plaintext)
            .map_err(|_| CipherError::Exhausted)
    }

    /// Decrypts `message` (ciphertext then tag) where it lies; returns the plaintext's length
    /// (the bytes after it are the spent tag). The counter moves only on success, as Noise's.
    ///
    /// # Errors
    /// [`CipherError::Decrypt`] when the message fails authentication (or has no tag),
    /// [`CipherError::Exhausted`] after 2^64-1 messages.
    pub(super) fn open_in_place(&mut self, message: &mut [u8]) -> Result<usize, CipherError> {
        if message.len() < TAG_LEN {
            return Err(CipherError::Decrypt);
        }
        if self.counter == u64::MAX {
            return Err(CipherError::Exhausted);
        }
        let len = self
            .key
            .open_in_place(nonce(self.counter), Aad::empty(), message)
            .map_err(|_| CipherError::Decrypt)?
            .len();
        self.counter += 1;
        Ok(len)
    }

    /// Noise's REKEY: the key becomes the first 32 bytes of the encryption of 32 zero bytes
    /// under the reserved nonce 2^64-1; the counter goes on.
    pub(super) fn rekey(&mut self) {
        let mut next = [0u8; 32];
        // The tag is not part of the new key.
        let _tag = self
            .key
            .seal_in_place_separate_tag(nonce(u64::MAX), Aad::empty(), &mut next)
            .expect("invariant: 32 bytes are far below AES-GCM's length limit");
        self.key = aes_key(&next);
        next.fill(0);
    }
}
