//! The owner task's inbox: requests from [`super::Work`]'s callers, with the channel each
//! is answered on, and the outcomes its helpers (the store thread, handler and remote
//! tasks) report. Plain data.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::{oneshot, watch};

use super::Created;
use super::results::Progress;
use crate::id::NodeId;
use crate::keys::SigningKeypair;
use crate::work::client::ClientError;
use crate::work::core::{
    Answered, CoreConfig, HandlerEnd, NewUnit, PayloadError, PayloadInfo, RemoteFailure, Requester,
};
use crate::work::error::WorkError;
use crate::work::protocol::RemoteStatus;
use crate::work::status::{Component, UnitStatus};
use crate::work::store::StoreError;
use crate::work::unit::UnitId;

/// Requests to the owner task, and the reports of its helpers.
pub(in crate::work) enum Command {
    Create {
        unit: NewUnit,
        reply: oneshot::Sender<Result<Created, WorkError>>,
    },
    PayloadStored {
        id: UnitId,
        result: Result<PayloadInfo, PayloadError>,
    },
    WaitTaken {
        id: UnitId,
        reply: oneshot::Sender<Result<UnitStatus, WorkError>>,
    },
    Status {
        id: UnitId,
        by: Requester,
        reply: oneshot::Sender<Result<UnitStatus, WorkError>>,
    },
    List {
        by: Requester,
        reply: oneshot::Sender<Vec<(UnitId, UnitStatus)>>,
    },
    Follow {
        id: UnitId,
        by: Requester,
        reply: oneshot::Sender<Result<(PathBuf, watch::Receiver<Progress>), WorkError>>,
    },
    Cancel {
        id: UnitId,
        by: Requester,
        reply: oneshot::Sender<Result<Answered, WorkError>>,
    },
    Release {
        id: UnitId,
        force: bool,
        by: Requester,
        reply: oneshot::Sender<Result<Answered, WorkError>>,
    },
    FilesCreated {
        id: UnitId,
        result: Result<(), StoreError>,
    },
    HandlerStarted {
        id: UnitId,
        component: Component,
    },
    HandlerEnded {
        id: UnitId,
        end: HandlerEnd,
    },
    ExtraData {
        id: UnitId,
        value: serde_json::Value,
    },
    RemoteCreated {
        id: UnitId,
        remote: UnitId,
    },
    RemoteStarted {
        id: UnitId,
        node: NodeId,
        remote: UnitId,
        /// The submitting task follows its output already.
        followed: bool,
    },
    RemoteSubmitFailed {
        id: UnitId,
        failure: RemoteFailure,
    },
    MirrorEnded {
        id: UnitId,
        local_size: u64,
        outcome: Result<RemoteStatus, RemoteFailure>,
    },
    RemoteCancelled {
        id: UnitId,
        result: Result<(), ClientError>,
    },
    RemoteReleased {
        id: UnitId,
        result: Result<(), ClientError>,
    },
    Dropped {
        id: UnitId,
    },
    Durable {
        upto: u64,
    },
    /// A status write of this unit failed (reported before the `Durable` that covers it).
    NotStored {
        id: UnitId,
        error: Arc<StoreError>,
    },
    /// Commit what the store holds, stop its thread, and stop serving.
    /// Tests: the store's thread sleeps this long.
    #[cfg(test)]
    StallStore(std::time::Duration),
    Shutdown {
        reply: oneshot::Sender<()>,
    },
    Drain {
        reply: oneshot::Sender<watch::Receiver<usize>>,
    },
    Reconfigure {
        core: CoreConfig,
        signing_key: Option<SigningKeypair>,
        /// `[work] mirror-output-mb`, in bytes.
        mirror_output: u64,
    },
}
