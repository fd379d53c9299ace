//! What the node hands out: [`Transmit`]s for the driver's sockets, [`Event`]s for the
//! driver and the application, and the outcome of a probe. Plain data; no IO, no state.

use std::time::Duration;

use bytes::Bytes;

use crate::id::NodeId;
use crate::keys::{PublicKey, SignedSuccession};
use crate::mesh::link::{LinkEnd, LinkId};
use crate::mesh::message::Unreachable;
use crate::mesh::peers::PeerSlotId;
use crate::mesh::stream::StreamEvent;

/// Bytes for the driver to write, or a socket to close.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Transmit {
    /// Write these bytes to the link's socket.
    Data {
        /// The link.
        link: LinkId,
        /// The bytes.
        bytes: Bytes,
    },
    /// The link is finished: close its socket after the bytes before.
    Close {
        /// The link.
        link: LinkId,
    },
}

/// A probe's handle (ping and traceroute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbeId(pub u64);

/// Why a probe got no echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProbeFailure {
    /// A node on the way could not deliver it.
    #[error("{0}")]
    Unreachable(Unreachable),
    /// No answer in time.
    #[error("timeout")]
    Timeout,
}

/// What the node tells the driver and the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Dial the peer in this slot; report with `handle_dialed` or `handle_dial_failed`.
    Dial(PeerSlotId),
    /// A link came up.
    LinkUp {
        /// The link.
        link: LinkId,
        /// The peer.
        peer: NodeId,
    },
    /// A link went down (or was refused).
    LinkDown {
        /// The link.
        link: LinkId,
        /// The peer, when it had identified itself.
        peer: Option<NodeId>,
        /// How it ended.
        end: LinkEnd,
    },
    /// A stream event.
    Stream(StreamEvent),
    /// A probe's echo came back.
    ProbeReply {
        /// The probe.
        probe: ProbeId,
        /// Who answered.
        from: NodeId,
        /// Round trip time.
        rtt: Duration,
    },
    /// A probe failed.
    ProbeFailed {
        /// The probe.
        probe: ProbeId,
        /// Who reported the failure (a relay, or us).
        from: Option<NodeId>,
        /// Why.
        reason: ProbeFailure,
        /// Time until the failure was known.
        elapsed: Duration,
    },
    /// A packet we sent (not a probe) could not be delivered; `reporter` said why.
    Undeliverable {
        /// The node the packet was for.
        target: NodeId,
        /// The node that reported it.
        reporter: NodeId,
        /// Why.
        reason: Unreachable,
    },
    /// (Diagnostics, with `LinkConfig::tap`.) A frame a link decrypted.
    LinkPlaintext {
        /// The link.
        link: LinkId,
        /// The frame, as received.
        frame: Bytes,
    },
    /// A key succession was accepted for a pinned peer: persist it, so the pin follows the
    /// peer's new key after a restart too.
    SuccessionAccepted {
        /// The peer that presented it.
        node: NodeId,
        /// The statement.
        statement: SignedSuccession,
    },
    /// Another node uses our node id, or two nodes share one.
    DuplicateNodeId {
        /// The contested id.
        id: NodeId,
        /// The other key seen with it.
        key: PublicKey,
    },
}
