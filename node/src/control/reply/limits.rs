//! The limits of a work type's jobs, as `status` reports them (a Warren addition, shown by
//! receptorctl under "Additional data"). No IO.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The limits every job of a work type runs under (a Warren addition to `status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobLimits {
    /// Guest memory cap.
    #[serde(rename = "MemoryBytes")]
    pub memory_bytes: u64,
    /// Wall-clock limit.
    #[serde(rename = "DeadlineSeconds")]
    pub deadline_seconds: u64,
    /// Results cap.
    #[serde(rename = "OutputBytes")]
    pub output_bytes: u64,
    /// Host descriptors a job may hold; `None`: uncapped.
    #[serde(rename = "Descriptors")]
    pub descriptors: Option<u64>,
    /// Handles, streams and pollables a job may hold.
    #[serde(rename = "Resources")]
    pub resources: u64,
    /// Job-directory quota in bytes; `None`: not enforced.
    #[serde(rename = "DiskBytes")]
    pub disk_bytes: Option<u64>,
    /// Job-directory quota in files, directories and links.
    #[serde(rename = "DiskInodes")]
    pub disk_inodes: Option<u64>,
    /// Logical program -> the arguments it may be given (programs not listed take any).
    #[serde(rename = "Arguments", default)]
    pub arguments: BTreeMap<String, String>,
}
