//! Work units: the jobs a node runs for a submitter, and their records on disk.
//!
//! Map:
//!
//! - [`unit`]: [`UnitId`] and the [`UnitState`] life cycle (which moves are legal). No IO.
//! - [`status`]: [`UnitStatus`], the JSON in a unit's `status` file (Receptor's keys plus
//!   Warren's), and redaction of secret parameters. No IO.
//! - [`store`]: [`UnitStore`], one directory per unit under `<data_dir>/units/`: atomic
//!   status writes, payload and results files, listing, release and recovery at startup.
//!
//! - [`protocol`]: the typed, versioned node-to-node work messages.
//! - [`remote`]: remote work: the submitter's mirror unit and the `work` mesh service.
//! - [`manager`]: [`Work`], which accepts, queues, runs (in `host`), follows, cancels and
//!   releases units.
//!
//! This module does not run handlers itself (that is `host`) and does not speak to operators or other
//! nodes (that is `control` and the node-to-node work protocol).

pub mod manager;
pub mod protocol;
pub mod remote;
mod scheduler;
pub mod status;
pub mod store;
pub mod unit;

pub use manager::{Work, WorkConfig, WorkError};
pub use status::{Component, UnitStatus};
pub use store::{Recovery, StoreError, UnitHandle, UnitStore};
pub use unit::{TransitionError, UnitId, UnitIdError, UnitState};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_remote;
