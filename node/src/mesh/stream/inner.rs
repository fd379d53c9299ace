//! What a circuit carries inside its seal: the endpoints' side of the stream protocol,
//! which relays never see. No IO.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::id::ServiceName;

/// One sealed circuit message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Inner {
    /// The opener asks the target's `service` for a stream, offering `window` bytes of
    /// credit; `seq` numbers the session's opens, so a replayed open is refused.
    Open {
        from_service: ServiceName,
        service: ServiceName,
        window: u32,
        seq: u64,
    },
    /// The acceptor takes the stream, offering `window` bytes of credit.
    Accept { window: u32 },
    /// Bytes of the stream, in order.
    Data(Bytes),
    /// The receiver consumed this many more bytes; the sender may send as many more.
    Credit(u32),
    /// The sender will send no more data (a clean end, unlike a reset).
    Fin,
    /// Nothing to say; keeps relays and the peer from idling the circuit out.
    Keepalive,
}

impl Inner {
    /// Encodes for sealing, leaving room for the tag.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_hint() + super::super::seal::TAG_LEN);
        postcard::to_io(self, &mut out).expect("invariant: circuit messages serialise");
        out
    }

    fn encoded_hint(&self) -> usize {
        match self {
            Self::Data(d) => d.len() + 8,
            _ => 64,
        }
    }

    /// Decodes an opened seal.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Self> {
        postcard::from_bytes(bytes).ok()
    }
}
