//! Work units: the jobs a node runs for a submitter, the units it mirrors from other nodes,
//! and their records on disk.
//!
//! Map:
//!
//! - [`unit`](mod@unit): [`UnitId`] and the [`UnitState`] life cycle (which moves are legal). No IO.
//! - [`status`]: [`UnitStatus`], the JSON in a unit's `status` file (Receptor's keys plus
//!   Warren's), and redaction of secret parameters. No IO.
//! - [`core`]: the sans-IO work core: every unit's life as a state machine (queue, placement,
//!   ownership, cancel, release, retention, restart) that takes events and says what to do.
//! - [`driver`]: [`Work`], the handle, and the one task that owns the core and carries out
//!   its actions (files on the store's thread, handlers and remote exchanges as tasks).
//! - [`store`]: [`UnitStore`], one directory per unit under `<data_dir>/units/`: atomic,
//!   group-committed status writes, payload and results files, release.
//! - [`protocol`]: the typed, versioned node-to-node work messages, with typed refusals.
//! - [`client`]: the one client of that protocol (submit, follow from an offset, status,
//!   cancel, release), used by `warren run`, mirrors and the Python package.
//! - [`server`]: the mesh `work` service: access checks, ownership, signed work, and
//!   content-addressed submissions.
//! - [`cache`]: the content cache those use, scoped per submitter, bounded, LRU.
//! - [`signature`]: signed work (receptorctl's `signwork`).
//! - [`readbuf`]: the small-first read buffer of per-unit byte streams.
//! - [`error`]: [`WorkError`], and how it travels.
//!
//! This module does not run handlers itself (that is `host`) and does not speak to
//! operators (that is `control`).

#[cfg(feature = "host")]
pub mod cache;
pub mod client;
pub mod core;
#[cfg(feature = "host")]
pub mod driver;
pub mod error;
pub mod protocol;
pub mod readbuf;
#[cfg(feature = "host")]
pub mod server;
pub mod signature;
pub mod status;
pub mod store;
pub mod unit;

pub use core::Requester;
#[cfg(feature = "host")]
pub use driver::{Created, Submission, Taken, Work, WorkConfig, WorkSetup};
pub use error::WorkError;
pub use status::{Component, UnitStatus};
pub use store::{Recovery, StoreError, UnitHandle, UnitStore};
pub use unit::{SubmitNonce, TransitionError, UnitId, UnitIdError, UnitState};

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_contents;
#[cfg(test)]
mod tests_hostile_worker;
#[cfg(test)]
mod tests_remote;
