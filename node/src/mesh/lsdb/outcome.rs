//! What the database made of an advert: stored, ignored, a duplicate node id, or refused
//! and why. Plain data.

use super::{MAX_CLOCK_SKEW, ShapeError};
use crate::id::NodeId;
use crate::keys::PublicKey;
use crate::mesh::trust::TrustDecision;

#[cfg(doc)]
use super::Lsdb;

/// Why an advert was refused (not stored, not flooded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdvertRefusal {
    /// Over a limit or inconsistent.
    #[error(transparent)]
    Shape(#[from] ShapeError),
    /// The signature does not verify with the advert's key.
    #[error("the signature does not verify")]
    BadSignature,
    /// The epoch lies further in the future than clock skew explains.
    #[error("epoch {epoch} is more than {} s ahead of this node's clock", MAX_CLOCK_SKEW.as_secs())]
    FutureEpoch {
        /// The advert's epoch.
        epoch: u64,
    },
    /// Nothing here binds the key to the node id.
    #[error("its key may not speak for this node id ({0:?})")]
    Untrusted(TrustDecision),
    /// The origin advertises faster than any honest node does.
    #[error("the origin advertises too fast")]
    RateLimited,
    /// The database is at its node or byte cap.
    #[error("the link-state database is full")]
    Full,
    /// A new origin that nothing here vouches for (first-seen), and the database holds as
    /// many such origins as it takes.
    #[error(
        "the link-state database holds as many first-seen nodes (vouched for by no pin or \
         certificate here) as it takes; pin the node or certify it to have it stored"
    )]
    FirstSeenFull,
}

impl AdvertRefusal {
    /// A short stable name for the refusal's kind (a metrics label).
    #[must_use]
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Shape(_) => "shape",
            Self::BadSignature => "bad_signature",
            Self::FutureEpoch { .. } => "future_epoch",
            Self::Untrusted(_) => "untrusted",
            Self::RateLimited => "rate_limited",
            Self::Full => "full",
            Self::FirstSeenFull => "first_seen_full",
        }
    }
}

/// What [`Lsdb::handle_advert`] made of an advert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdvertOutcome {
    /// New information: stored; the caller floods it to every other link.
    Stored,
    /// Same or older than what is stored: ignored, not flooded.
    Ignored,
    /// Refused: not stored, not flooded; worth a log line.
    Refused(AdvertRefusal),
    /// A signed advert for our own id but from someone else (a different key, or our key
    /// with a newer epoch than ours): a duplicate node id. Not stored.
    DuplicateOfMe {
        /// The key the advert carries.
        key: PublicKey,
    },
    /// A signed advert for a known id with a different key than the one stored (and the
    /// stored one has not expired and is as well vouched for): a duplicate node id. Not
    /// stored.
    DuplicateId {
        /// The id both nodes claim.
        id: NodeId,
        /// The key stored for the id.
        known: PublicKey,
        /// The key of the rejected advert.
        other: PublicKey,
    },
    /// An advert of our own from an earlier life in this epoch with a higher seq than ours
    /// (we restarted fast): the caller must bump its seq above `seq`.
    OwnStale {
        /// The highest seq seen from our earlier life.
        seq: u64,
    },
}
