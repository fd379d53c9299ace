//! Why the core's later answers and its inputs failed: [`TicketError`] settles a request
//! answered by [`super::Action::Answer`], and [`PayloadError`] says why a unit's payload was
//! not stored (the unit fails with it as its detail). Both carry their causes typed; causes
//! that one failure hands to several waiters are shared (`Arc`), so both are `Clone`.
//! `Display` is the operator's text, the same text these failures always had.

use std::path::PathBuf;
use std::sync::Arc;

use crate::id::NodeId;
use crate::work::client::ClientError;
use crate::work::signature::SignatureError;
use crate::work::store::StoreError;
use crate::work::unit::UnitId;

/// Why a request settled later by [`super::Action::Answer`] failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TicketError {
    /// The unit's directory and files could not be made.
    #[error(transparent)]
    CreateFiles(Arc<StoreError>),
    /// The node that runs the unit did not cancel it (unreachable, or it refused).
    #[error(transparent)]
    CancelRemote(Arc<ClientError>),
    /// The unit was being made for a peer's submission when the peer submitted again under
    /// the same nonce before the payload arrived whole: the later submission replaces it.
    #[error("replaced by a later submission with the same nonce")]
    Resubmitted {
        /// The unit replaced.
        unit: UnitId,
    },
    /// A release of the unit is under way already.
    #[error("release already under way")]
    ReleaseUnderWay,
    /// The node that runs the unit could not be told to release it: the unit is kept here
    /// (release it again, or force-release to drop it here anyway).
    #[error("release pending: {0}")]
    ReleasePending(#[source] Arc<ClientError>),
}

impl PartialEq for TicketError {
    /// The same failure: the same variant sharing the same cause (a cause is one event, so
    /// two failures that happened apart are not equal even when they read alike).
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::CreateFiles(a), Self::CreateFiles(b)) => Arc::ptr_eq(a, b),
            (Self::CancelRemote(a), Self::CancelRemote(b))
            | (Self::ReleasePending(a), Self::ReleasePending(b)) => Arc::ptr_eq(a, b),
            (Self::Resubmitted { unit: a }, Self::Resubmitted { unit: b }) => a == b,
            (Self::ReleaseUnderWay, Self::ReleaseUnderWay) => true,
            _ => false,
        }
    }
}

impl Eq for TicketError {}

/// Why a mirror of a remote unit, or its submission, failed for good. `Display` is the
/// unit's detail.
#[derive(Debug, thiserror::Error)]
pub enum RemoteFailure {
    /// The remote node refused (not allowed, bad parameters, ...) or broke the protocol.
    #[error(transparent)]
    Refused(ClientError),
    /// The remote unit is gone (released there, or the node lost its data).
    #[error(
        "remote work unit {remote} is gone from {node} (released there, or the node lost its data)"
    )]
    Gone {
        /// The node it ran on.
        node: NodeId,
        /// Its id there.
        remote: UnitId,
    },
    /// The local results file could not be opened.
    #[error("{}: {source}", path.display())]
    OpenResults {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Writing the remote unit's output to the local results failed.
    #[error("{0}")]
    WriteResults(#[source] std::io::Error),
    /// The remote unit sent more results than this node keeps of it: what came up to the
    /// cap is kept, the rest refused, and the unit there is cancelled.
    #[error(
        "remote work unit {remote} on {node} sent more than {cap} bytes of results, this \
         node's cap for them (the work type's output-mb where it is offered here, else \
         [work] mirror-output-mb): the results are kept up to the cap and the unit there \
         was cancelled"
    )]
    OverCap {
        /// The node it ran on.
        node: NodeId,
        /// Its id there.
        remote: UnitId,
        /// The cap, in bytes.
        cap: u64,
    },
}

impl RemoteFailure {
    /// Whether it failed here (the local results), not on the remote node.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::OpenResults { .. } | Self::WriteResults(_))
    }
}

/// Why a unit's payload was not stored. The unit fails with its text as the detail.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PayloadError {
    /// The payload is larger than the node's limit.
    #[error("the payload (bytes) exceeds node {node}'s limit of {limit}")]
    TooLarge {
        /// The node.
        node: NodeId,
        /// Its limit in bytes (`[work] max-payload-mb`).
        limit: u64,
    },
    /// The node requires signed work and the payload does not match the signature.
    #[error("node {node} requires signed work: {source}")]
    Signature {
        /// The node.
        node: NodeId,
        /// What is wrong.
        #[source]
        source: SignatureError,
    },
    /// A content-addressed submission's payload could not be assembled from the node's
    /// content cache.
    #[error("node {node} could not assemble the payload from its content cache")]
    NotAssembled {
        /// The node.
        node: NodeId,
    },
    /// Writing the payload to the unit's stdin file failed.
    #[error("storing the payload: {0}")]
    Store(#[source] Arc<std::io::Error>),
    /// A content-addressed submission's contents broke off before they were all sent.
    #[error("the contents broke off: {0}")]
    ContentsBroke(#[source] Arc<std::io::Error>),
    /// A content-addressed submission's contents were refused (short, not matching their
    /// hash, trailing bytes, or the cache could not store them).
    #[error(transparent)]
    ContentsRefused(Arc<dyn std::error::Error + Send + Sync>),
    /// The stream could not be assembled from a content-addressed submission's contents.
    #[error("assembling the payload: {0}")]
    Assembly(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::PayloadError;
    use crate::id::NodeId;
    use crate::work::error::WorkError;
    use crate::work::protocol::WorkRefusal;

    fn node() -> NodeId {
        "node1".parse().unwrap()
    }

    fn refusal(e: PayloadError) -> WorkRefusal {
        WorkError::from(e).to_refusal(&node())
    }

    #[test]
    fn payload_failures_keep_their_refusals_and_texts_on_the_wire() {
        let too_large = PayloadError::TooLarge {
            node: node(),
            limit: 10,
        };
        assert_eq!(
            refusal(too_large),
            WorkRefusal::OverLimit {
                node: node(),
                what: "the payload (bytes)".into(),
                limit: 10,
            }
        );
        let not_assembled = PayloadError::NotAssembled { node: node() };
        assert_eq!(
            refusal(not_assembled),
            WorkRefusal::Internal {
                node: node(),
                reason: "node node1 could not assemble the payload from its content cache".into(),
            }
        );
        let full = std::io::Error::other("No space left on device");
        assert_eq!(
            refusal(PayloadError::Store(Arc::new(full))),
            WorkRefusal::Internal {
                node: node(),
                reason: "storing the payload: No space left on device".into(),
            }
        );
    }
}
