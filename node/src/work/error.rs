//! Why a work request failed, and how that travels: [`WorkError`] in the library, its
//! [`WorkRefusal`] on the wire, and its text at the control socket.

use std::sync::Arc;

use super::core::{PayloadError, TicketError};
use super::protocol::WorkRefusal;
use super::signature::SignatureError;
use super::store::StoreError;
use super::unit::UnitId;
use crate::access::Refusal;
use crate::id::NodeId;

/// Why a work request failed. `Display` is the operator's message.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// No such unit, or not one the requester may see.
    #[error("unknown work unit {0}")]
    UnknownUnit(UnitId),
    /// This node does not offer the work type.
    #[error("node {node} does not offer work type {work_type}")]
    UnknownWorkType {
        /// This node.
        node: NodeId,
        /// The work type asked for.
        work_type: String,
    },
    /// The parameters are not acceptable for the work type.
    #[error("{0}")]
    BadParameters(String),
    /// Over one of this node's limits.
    #[error("{what} exceeds node {node}'s limit of {limit}")]
    OverLimit {
        /// This node.
        node: NodeId,
        /// What was too large.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// The access policy refuses it.
    #[error(transparent)]
    NotAllowed(#[from] Refusal),
    /// A signed-work check failed.
    #[error("node {node} requires signed work: {source}")]
    Signature {
        /// This node.
        node: NodeId,
        /// What is wrong.
        #[source]
        source: SignatureError,
    },
    /// The unit sent to another node failed there (refused, or it could not be reached
    /// before the unit expired).
    #[error("{detail}")]
    RemoteFailed {
        /// The node it was sent to.
        node: NodeId,
        /// The unit's detail: why it failed.
        detail: String,
    },
    /// A request settled later failed: the unit's files could not be made, or the node
    /// that runs it did not cancel or release it (a release is then pending: the unit is
    /// kept; force-release drops it here anyway).
    #[error(transparent)]
    Ticket(#[from] TicketError),
    /// The unit's payload was not stored (the unit fails).
    #[error(transparent)]
    Payload(PayloadError),
    /// The unit id drawn is taken already (draw another).
    #[error("unit id {0} is taken")]
    UnitIdTaken(UnitId),
    /// The OS random source failed (drawing a unit id or a submission nonce).
    #[error(transparent)]
    Random(getrandom::Error),
    /// This node cannot reach other nodes (a local-only node).
    #[error("this node cannot reach other nodes")]
    NoMesh,
    /// The unit store failed.
    #[error(transparent)]
    Store(StoreError),
    /// The unit's status did not reach the node's disk: it was not taken (a unit not yet
    /// started fails).
    #[error("work unit {unit} was not taken: its status did not reach the node's disk ({error})")]
    NotStored {
        /// The unit.
        unit: UnitId,
        /// Why the write failed.
        error: Arc<StoreError>,
    },
    /// The node's disk is below its free-space floor: no new units until there is room.
    #[error("node {node} refuses new work: {reason} (the floor is [work] free-space-floor-mb)")]
    NoRoom {
        /// The node.
        node: NodeId,
        /// How much is free, against the floor.
        reason: String,
    },
    /// The node is draining: it finishes its running units, then stops, and takes no new
    /// ones meanwhile.
    #[error(
        "node {node} is draining (it stops once its running units end) and takes no new work; submit again once it has restarted, or to another node"
    )]
    Draining {
        /// The node.
        node: NodeId,
    },
    /// The work layer has stopped (the node is shutting down).
    #[error("the node's work layer has stopped")]
    Stopped,
    /// Something else failed inside this node.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for WorkError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownUnit { unit } => Self::UnknownUnit(unit),
            other => Self::Store(other),
        }
    }
}

impl From<PayloadError> for WorkError {
    /// A payload over the limit and a signature that does not match keep their own
    /// refusals on the wire; other payload failures are this node's.
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::TooLarge { node, limit } => Self::OverLimit {
                node,
                what: "the payload (bytes)".into(),
                limit,
            },
            PayloadError::Signature { node, source } => Self::Signature { node, source },
            other => Self::Payload(other),
        }
    }
}

impl WorkError {
    /// The refusal to send a remote requester.
    pub fn to_refusal(&self, node: &NodeId) -> WorkRefusal {
        match self {
            Self::UnknownUnit(unit) => WorkRefusal::UnknownUnit { unit: *unit },
            Self::UnknownWorkType { node, work_type } => WorkRefusal::UnknownWorkType {
                node: node.clone(),
                work_type: work_type.clone(),
            },
            Self::BadParameters(reason) => WorkRefusal::BadParameters {
                reason: reason.clone(),
            },
            Self::OverLimit { node, what, limit } => WorkRefusal::OverLimit {
                node: node.clone(),
                what: what.clone(),
                limit: *limit,
            },
            Self::NotAllowed(refusal) => WorkRefusal::NotAllowed(refusal.clone()),
            Self::Draining { node } => WorkRefusal::Draining { node: node.clone() },
            Self::NoRoom { node, reason } => WorkRefusal::NoRoom {
                node: node.clone(),
                reason: reason.clone(),
            },
            Self::Signature { node, source } => WorkRefusal::Signature {
                node: node.clone(),
                reason: source.to_string(),
            },
            other => WorkRefusal::Internal {
                node: node.clone(),
                reason: other.to_string(),
            },
        }
    }
}
