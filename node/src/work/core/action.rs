//! What the core asks of its driver: the [`Action`]s it drains with `poll_action`, and the
//! [`Ticket`]s that settle requests answered later. Plain data; no IO.

use super::{TicketError, UnitStatus};
use crate::id::NodeId;
use crate::work::unit::UnitId;

/// An opaque handle for a request answered later by [`Action::Answer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// What an answered request produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answered {
    /// The unit was created (its files exist).
    Created(UnitId),
    /// The submission was made before under the same nonce (by a submitter that restarted):
    /// this is the unit made then, with its payload.
    Existing(UnitId),
    /// Done.
    Done,
}

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create the unit's directory and files with this first status.
    CreateFiles {
        /// The unit.
        id: UnitId,
        /// Its first status.
        status: Box<UnitStatus>,
        /// This write's number: report it with [`Core::statuses_durable`](super::Core::statuses_durable) once durable.
        seq: u64,
    },
    /// Persist this status. Writes may be batched; actions that depend on a status being
    /// durable are held back by the core until [`Core::statuses_durable`](super::Core::statuses_durable) covers it.
    WriteStatus {
        /// The unit.
        id: UnitId,
        /// Its status.
        status: Box<UnitStatus>,
        /// This write's number: report it with [`Core::statuses_durable`](super::Core::statuses_durable) once durable.
        seq: u64,
    },
    /// Run the unit here in its work type's handler.
    Start {
        /// The unit.
        id: UnitId,
    },
    /// Ask the unit's running handler to stop.
    Stop {
        /// The unit.
        id: UnitId,
    },
    /// A unit that was running when the node stopped: re-attach to its job if it is still
    /// running detached, else report it ended (see `handler_ended`).
    Reattach {
        /// The unit.
        id: UnitId,
    },
    /// Submit the unit's stored payload to the node it runs on, and report progress.
    Submit {
        /// The unit.
        id: UnitId,
        /// The node.
        node: NodeId,
    },
    /// Follow the remote unit's output into the local results, from the local size.
    Follow {
        /// The unit.
        id: UnitId,
        /// The node it runs on.
        node: NodeId,
        /// Its id there.
        remote: UnitId,
    },
    /// Ask the running node to cancel the remote unit (answer `remote_cancelled`).
    CancelRemote {
        /// The unit.
        id: UnitId,
        /// The node.
        node: NodeId,
        /// Its id there.
        remote: UnitId,
    },
    /// Ask the running node to release the remote unit (answer `remote_released`).
    ReleaseRemote {
        /// The unit (gone here already when its local release did not wait).
        id: UnitId,
        /// The node.
        node: NodeId,
        /// Its id there.
        remote: UnitId,
    },
    /// Remove what the unit no longer needs and must not keep: its payload (it may hold
    /// keys and passwords) and its job directory. The results stay until release.
    DropSecrets {
        /// The unit.
        id: UnitId,
    },
    /// Remove the unit's files.
    DropUnit {
        /// The unit.
        id: UnitId,
    },
    /// The unit's output is complete: wake its results followers for the last time.
    Ended {
        /// The unit.
        id: UnitId,
    },
    /// Settle a request.
    Answer {
        /// The request.
        ticket: Ticket,
        /// Its result.
        result: Result<Answered, TicketError>,
    },
}
