//! [`StoreError`]: why a unit store operation failed, naming the unit and the file.

use std::io;
use std::path::PathBuf;

use super::MAX_ID_DRAWS;
use crate::work::unit::{TransitionError, UnitId};

/// Why a unit store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The units directory could not be created.
    #[error("cannot create the units directory {}", path.display())]
    CreateUnitsDir {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The units directory could not be listed.
    #[error("cannot list the units directory {}", path.display())]
    ListUnits {
        /// The directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// No unit with this id exists.
    #[error("unknown work unit {unit}")]
    UnknownUnit {
        /// The id asked for.
        unit: UnitId,
    },
    /// The OS random source failed while drawing a unit id.
    #[error("cannot draw a random unit id")]
    Random {
        /// What getrandom said.
        #[source]
        source: getrandom::Error,
    },
    /// Every id drawn was already taken.
    #[error("no free unit id after {MAX_ID_DRAWS} draws in {}", path.display())]
    NoFreeId {
        /// The units directory.
        path: PathBuf,
    },
    /// A unit's directory or one of its files could not be created.
    #[error("cannot create {} for work unit {unit}", path.display())]
    CreateUnit {
        /// The unit.
        unit: UnitId,
        /// The directory or file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A unit's status file could not be read.
    #[error("cannot read the status of work unit {unit} from {}", path.display())]
    ReadStatus {
        /// The unit.
        unit: UnitId,
        /// The status file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A unit's status file is not valid status JSON.
    #[error("corrupt status for work unit {unit} in {}", path.display())]
    CorruptStatus {
        /// The unit.
        unit: UnitId,
        /// The status file.
        path: PathBuf,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// A unit's status could not be encoded as JSON.
    #[error("cannot encode the status of work unit {unit}")]
    EncodeStatus {
        /// The unit.
        unit: UnitId,
        /// What serde_json said.
        #[source]
        source: serde_json::Error,
    },
    /// A unit's status file could not be written.
    #[error("cannot write the status of work unit {unit} to {}", path.display())]
    WriteStatus {
        /// The unit.
        unit: UnitId,
        /// The file being written or renamed.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// An update asked for a state change the life cycle does not allow; nothing was
    /// written.
    #[error("illegal state change for work unit {unit}")]
    IllegalTransition {
        /// The unit.
        unit: UnitId,
        /// The refused move.
        #[source]
        source: TransitionError,
    },
    /// A unit's stdout could not be read.
    #[error("cannot read the stdout of work unit {unit} from {}", path.display())]
    ReadStdout {
        /// The unit.
        unit: UnitId,
        /// The stdout file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// A unit's directory could not be removed.
    #[error("cannot remove work unit {unit} at {}", path.display())]
    Release {
        /// The unit.
        unit: UnitId,
        /// The unit directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}
