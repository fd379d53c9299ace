//! TEMP stub of the work manager's API, so the control socket's `work` commands compile on
//! this branch. The real implementation replaces this file on merge.

use std::collections::BTreeMap;

use tokio::io::AsyncRead;

use super::{UnitId, UnitStatus};
use crate::id::NodeId;

/// Runs work units on this node. Cheap to clone.
#[derive(Clone)]
pub struct Work {
    _private: (),
}

/// Why a work operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    /// No unit has this id.
    #[error("unknown work unit {0}")]
    UnknownUnit(UnitId),
    /// No work type has this name.
    #[error("unknown work type {0}")]
    UnknownWorkType(String),
    /// The request was refused (parameters not allowed, payload too large, ...).
    #[error("{0}")]
    Refused(String),
    /// Something went wrong on this node.
    #[error("{0}")]
    Internal(String),
}

impl Work {
    /// TEMP: a placeholder for the daemon until the real manager is merged.
    pub fn stub() -> Self {
        Self { _private: () }
    }

    /// Creates a unit.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn create(
        &self,
        _work_type: &str,
        _params: BTreeMap<String, String>,
        _submitter: NodeId,
    ) -> Result<UnitId, WorkError> {
        unimplemented!("TEMP stub")
    }

    /// Reads the payload to EOF into the unit's stdin, then queues the unit to run.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn start(
        &self,
        _id: UnitId,
        _payload: &mut (dyn AsyncRead + Unpin + Send),
    ) -> Result<(), WorkError> {
        unimplemented!("TEMP stub")
    }

    /// A unit's status.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn status(&self, _id: UnitId) -> Result<UnitStatus, WorkError> {
        unimplemented!("TEMP stub")
    }

    /// Every unit and its status.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn list(&self) -> Result<Vec<(UnitId, UnitStatus)>, WorkError> {
        unimplemented!("TEMP stub")
    }

    /// Results from `offset`, following live output, EOF once the unit is finished (any
    /// terminal state, Canceled included) and everything was read.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn results(
        &self,
        _id: UnitId,
        _offset: u64,
    ) -> Result<Box<dyn AsyncRead + Send + Unpin>, WorkError> {
        unimplemented!("TEMP stub")
    }

    /// Cancels a unit.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn cancel(&self, _id: UnitId) -> Result<(), WorkError> {
        unimplemented!("TEMP stub")
    }

    /// Releases a unit.
    ///
    /// # Errors
    /// See [`WorkError`].
    pub async fn release(&self, _id: UnitId, _force: bool) -> Result<(), WorkError> {
        unimplemented!("TEMP stub")
    }
}
