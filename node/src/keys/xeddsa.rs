//! Signatures with X25519 keys: XEdDSA, as Signal specifies it (`xeddsa.pdf`, 2016).
//!
//! A node's identity is one X25519 key pair: the Noise handshakes use it for Diffie-Hellman,
//! and the node signs its own link-state adverts with it, so one token (`x25519:...`) names
//! the node everywhere and no second key has to be distributed and bound to it. XEdDSA maps
//! the Montgomery key to the twisted Edwards curve (choosing the point whose sign bit is 0)
//! and makes a Schnorr signature there that any holder of the public X25519 key can check.
//!
//! Callers separate domains: every signed message starts with a context string naming what
//! it is, so a signature over one kind of message can never be replayed as another. No IO.

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::montgomery::MontgomeryPoint;
use curve25519_dalek::scalar::{Scalar, clamp_integer};
use sha2::{Digest, Sha512};

use super::link::{LinkKeypair, PublicKey};

/// Length of a signature: the compressed point `R` and the scalar `s`.
pub const SIGNATURE_LEN: usize = 64;

/// An XEdDSA signature.
pub type Signature = [u8; SIGNATURE_LEN];

/// The prefix of `hash1` in the specification: the 32-byte little-endian encoding of
/// 2^256 - 2, which no honest input to the plain hash starts with.
const HASH1_PREFIX: [u8; 32] = {
    let mut prefix = [0xff; 32];
    prefix[0] = 0xfe;
    prefix
};

/// The field prime 2^255 - 19, little endian: a Montgomery `u` must be below it.
const FIELD_PRIME: [u8; 32] = {
    let mut p = [0xff; 32];
    p[0] = 0xed;
    p[31] = 0x7f;
    p
};

/// The Edwards key pair `(A, a)` of an X25519 private key, with `A`'s sign bit forced to 0.
fn edwards_pair(private: &[u8; 32]) -> (CompressedEdwardsY, Scalar) {
    let k = Scalar::from_bytes_mod_order(clamp_integer(*private));
    let e = EdwardsPoint::mul_base(&k);
    let compressed = e.compress();
    if compressed.as_bytes()[31] & 0x80 == 0 {
        (compressed, k)
    } else {
        ((-e).compress(), -k)
    }
}

/// Signs `message` with `keys`. `nonce_seed` is mixed into the secret nonce (the
/// specification's `Z`); any value is safe, since the nonce also depends on the private key.
pub fn sign(keys: &LinkKeypair, message: &[u8], nonce_seed: &[u8; 64]) -> Signature {
    let (public, a) = edwards_pair(keys.private_bytes());
    let r = Scalar::from_hash(
        Sha512::new()
            .chain_update(HASH1_PREFIX)
            .chain_update(a.as_bytes())
            .chain_update(message)
            .chain_update(nonce_seed),
    );
    let big_r = EdwardsPoint::mul_base(&r).compress();
    let h = challenge(&big_r, &public, message);
    let s = r + h * a;
    let mut signature = [0u8; SIGNATURE_LEN];
    signature[..32].copy_from_slice(big_r.as_bytes());
    signature[32..].copy_from_slice(s.as_bytes());
    signature
}

/// Signature checks made so far by this process, for tests that count where CPU goes (the
/// simulated 1,000-node mesh).
#[cfg(test)]
pub(crate) static VERIFICATIONS: std::sync::atomic::AtomicU64 =
    std::sync::atomic::AtomicU64::new(0);

/// Whether `signature` is `key`'s signature over `message`. Rejects non-canonical keys,
/// points and scalars.
pub fn verify(key: &PublicKey, message: &[u8], signature: &Signature) -> bool {
    VerifyingKey::new(key).is_some_and(|key| key.verify(message, signature))
}

/// A public key made ready to check signatures: its Edwards point, found and checked once.
///
/// Mapping the Montgomery key to the Edwards curve costs a field inversion and a square
/// root, about a third of a check; a holder of many signatures by one key (the link-state
/// database, for every version of an origin's advert) keeps this instead of redoing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyingKey {
    /// The X25519 key it was made from.
    key: PublicKey,
    point: EdwardsPoint,
    compressed: CompressedEdwardsY,
}

impl VerifyingKey {
    /// The key ready to check with, or `None` for a key no signature can be valid for
    /// (non-canonical, not on the curve, or of small order).
    #[must_use]
    pub fn new(key: &PublicKey) -> Option<Self> {
        let u = key.as_bytes();
        if !is_below(u, &FIELD_PRIME) {
            return None;
        }
        let point = MontgomeryPoint(*u).to_edwards(0)?;
        if point.is_small_order() {
            return None;
        }
        Some(Self {
            key: *key,
            point,
            compressed: point.compress(),
        })
    }

    /// The X25519 key this was made from.
    #[must_use]
    pub fn public(&self) -> &PublicKey {
        &self.key
    }

    /// Whether `signature` is this key's signature over `message`. Rejects non-canonical
    /// scalars.
    #[must_use]
    pub fn verify(&self, message: &[u8], signature: &Signature) -> bool {
        #[cfg(test)]
        VERIFICATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut r_bytes = [0u8; 32];
        r_bytes.copy_from_slice(&signature[..32]);
        let mut s_bytes = [0u8; 32];
        s_bytes.copy_from_slice(&signature[32..]);
        let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes)) else {
            return false;
        };
        let big_r = CompressedEdwardsY(r_bytes);
        let h = challenge(&big_r, &self.compressed, message);
        // R' = sB - hA, computed as (-h)A + sB.
        let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-h, &self.point, &s);
        check.compress() == big_r
    }
}

/// `SHA-512(R || A || M)` reduced mod the group order.
fn challenge(big_r: &CompressedEdwardsY, public: &CompressedEdwardsY, message: &[u8]) -> Scalar {
    Scalar::from_hash(
        Sha512::new()
            .chain_update(big_r.as_bytes())
            .chain_update(public.as_bytes())
            .chain_update(message),
    )
}

/// Whether little-endian `x` is strictly below little-endian `bound`.
fn is_below(x: &[u8; 32], bound: &[u8; 32]) -> bool {
    for i in (0..32).rev() {
        if x[i] != bound[i] {
            return x[i] < bound[i];
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pair(seed: u8) -> LinkKeypair {
        LinkKeypair::from_private([seed; 32])
    }

    #[test]
    fn signs_and_verifies() {
        let keys = pair(7);
        let sig = sign(&keys, b"warren advert", &[3; 64]);
        assert!(verify(&keys.public(), b"warren advert", &sig));
    }

    #[test]
    fn the_edwards_key_maps_to_the_x25519_key() {
        // The point signed with, converted to Montgomery form, is the public X25519 key:
        // what binds a signature to the token nodes trust.
        for seed in 0..32 {
            let keys = pair(seed);
            let (public, _) = edwards_pair(keys.private_bytes());
            let point = public.decompress().unwrap();
            assert_eq!(point.to_montgomery().to_bytes(), *keys.public().as_bytes());
        }
    }

    #[test]
    fn rejects_another_message_key_or_tampered_signature() {
        let keys = pair(1);
        let sig = sign(&keys, b"message", &[0; 64]);
        assert!(!verify(&keys.public(), b"messagf", &sig));
        assert!(!verify(&pair(2).public(), b"message", &sig));
        for i in [0, 31, 32, 63] {
            let mut bad = sig;
            bad[i] ^= 1;
            assert!(!verify(&keys.public(), b"message", &bad), "bit flip at {i}");
        }
    }

    #[test]
    fn rejects_non_canonical_scalar_and_weak_keys() {
        let keys = pair(5);
        let mut sig = sign(&keys, b"m", &[9; 64]);
        // s + q is the same scalar mod q but not canonical.
        // The group order q = 2^252 + 27742317777372353535851937790883648493, little endian.
        let q: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let s = Scalar::from_canonical_bytes(sig[32..].try_into().unwrap()).unwrap();
        let mut wide = [0u8; 32];
        let (sb, qb) = (s.as_bytes(), &q);
        let mut carry = 0u16;
        for i in 0..32 {
            let sum = u16::from(sb[i]) + u16::from(qb[i]) + carry;
            wide[i] = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(carry, 0, "s + q < 2^254 always fits 32 bytes");
        sig[32..].copy_from_slice(&wide[..32]);
        assert!(!verify(&keys.public(), b"m", &sig));
        // u = 0 and u = 1 are small-order points: nothing verifies against them.
        for weak in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let any = [0u8; 64];
            assert!(!verify(&PublicKey::from_bytes(weak), b"m", &any));
        }
        // u >= p is refused outright.
        assert!(!verify(&PublicKey::from_bytes([0xff; 32]), b"m", &[0; 64]));
    }

    #[test]
    fn nonce_seed_changes_the_signature_not_its_validity() {
        let keys = pair(11);
        let a = sign(&keys, b"m", &[1; 64]);
        let b = sign(&keys, b"m", &[2; 64]);
        assert_ne!(a, b);
        assert!(verify(&keys.public(), b"m", &a) && verify(&keys.public(), b"m", &b));
    }

    proptest! {
        #[test]
        fn round_trips_for_any_key_and_message(
            seed in any::<[u8; 32]>(),
            message in proptest::collection::vec(any::<u8>(), 0..300),
            z in any::<[u8; 32]>(),
        ) {
            let keys = LinkKeypair::from_private(seed);
            let mut nonce = [0u8; 64];
            nonce[..32].copy_from_slice(&z);
            let sig = sign(&keys, &message, &nonce);
            prop_assert!(verify(&keys.public(), &message, &sig));
        }

        #[test]
        fn garbage_never_verifies_or_panics(
            key in any::<[u8; 32]>(),
            sig in proptest::collection::vec(any::<u8>(), 64..=64),
        ) {
            let sig: Signature = sig.try_into().unwrap();
            let _ = verify(&PublicKey::from_bytes(key), b"x", &sig);
        }
    }
}
