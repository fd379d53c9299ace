//! A 64-byte signature (Ed25519 or XEdDSA) as a wire value.
//!
//! serde's derive stops at 32-byte arrays; this newtype encodes as a byte string (compact
//! in postcard) and refuses any other length when decoding. No IO.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Length of every signature Warren makes.
pub const SIGNATURE_LEN: usize = 64;

/// A signature's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SignatureBytes(pub [u8; SIGNATURE_LEN]);

impl fmt::Debug for SignatureBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SignatureBytes(")?;
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Serialize for SignatureBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

struct SignatureVisitor;

impl<'de> Visitor<'de> for SignatureVisitor {
    type Value = SignatureBytes;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SIGNATURE_LEN} signature bytes")
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
        v.try_into()
            .map(SignatureBytes)
            .map_err(|_| E::invalid_length(v.len(), &self))
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = [0u8; SIGNATURE_LEN];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = seq
                .next_element()?
                .ok_or_else(|| de::Error::invalid_length(i, &self))?;
        }
        if seq.next_element::<u8>()?.is_some() {
            return Err(de::Error::invalid_length(SIGNATURE_LEN + 1, &self));
        }
        Ok(SignatureBytes(out))
    }
}

impl<'de> Deserialize<'de> for SignatureBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_bytes(SignatureVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_postcard_and_refuses_other_lengths() {
        let sig = SignatureBytes([7; SIGNATURE_LEN]);
        let bytes = postcard::to_stdvec(&sig).unwrap();
        assert_eq!(bytes.len(), 1 + SIGNATURE_LEN);
        assert_eq!(postcard::from_bytes::<SignatureBytes>(&bytes).unwrap(), sig);
        let short = postcard::to_stdvec(&serde_bytes_like(&[1u8; 10])).unwrap();
        assert!(postcard::from_bytes::<SignatureBytes>(&short).is_err());
    }

    fn serde_bytes_like(b: &[u8]) -> impl Serialize + '_ {
        struct B<'a>(&'a [u8]);
        impl Serialize for B<'_> {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(self.0)
            }
        }
        B(b)
    }
}
