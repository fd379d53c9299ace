//! Work types a node offers (`[[work-type]]`, `--work-type`), the component signers it
//! trusts (`[[signer]]`, `--signer`) and where to find ansible-runner (`[ansible-runner]`).
//!
//! Plain data plus the checks of single values (names, params, variable names); the file
//! decoding lives in `file/work.rs` and the cross-checks in `validate.rs`.

use std::path::PathBuf;
use std::time::Duration;

use crate::host::args::ArgPattern;
use crate::host::contain::ProgramLimits;
use crate::host::disk::DiskQuota;
use crate::host::policy::{DEFAULT_DISK_QUOTA, Limits};

use super::error::Problem;

/// Name of the work type that runs ansible-runner, offered by default when it is found.
pub const ANSIBLE_RUNNER_WORK_TYPE: &str = "ansible-runner";

/// The handlers a work type may name, as written in `handler = "..."`.
pub const HANDLER_NAMES: [&str; 3] = ["command", "ansible-runner", "component"];

/// Longest work type name accepted.
pub const MAX_WORK_TYPE_NAME: usize = 64;

/// One work type: what submitters ask for, and how this node handles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkTypeConfig {
    /// The name submitters use: letters, digits and `. _ -`; unique on the node.
    pub name: String,
    /// What runs the work.
    pub handler: HandlerKind,
    /// Names of node environment variables passed through to the child.
    pub env_pass: Vec<String>,
    /// The job's limits.
    pub limits: Limits,
    /// Limits on the programs its handler starts.
    pub program_limits: ProgramLimits,
}

/// What runs a work type's jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandlerKind {
    /// Runs one program with the submission as its stdin.
    Command {
        /// An absolute path, or a bare name looked up on the node's `PATH` at startup.
        program: PathBuf,
        /// Fixed arguments, always passed first.
        params: Vec<String>,
        /// Whether a submission may add arguments of its own.
        allow_runtime_params: bool,
        /// What each argument a submission adds may be; `None` allows anything. Only with
        /// `allow_runtime_params`.
        args: Option<Vec<ArgPattern>>,
    },
    /// Runs ansible-runner's `worker` mode, found as [`AnsibleRunnerConfig`] says.
    AnsibleRunner,
    /// Runs a signed work-handler component.
    Component {
        /// The component's `.wasm` file.
        path: PathBuf,
        /// Its signature file (`<path>.sig` unless configured).
        signature: PathBuf,
    },
}

impl WorkTypeConfig {
    /// A command work type from `--work-type NAME=PROGRAM[ ARGS]`'s parts: `command_line`
    /// is the program then fixed arguments, split on whitespace; no runtime params, no
    /// variables passed through, default limits.
    ///
    /// # Errors
    /// [`Problem::WorkTypeName`] for a bad name, [`Problem::QuotedParams`] for quotes,
    /// [`Problem::EmptyPath`] when no program is given.
    pub fn command(name: &str, command_line: &str) -> Result<Self, Problem> {
        check_name(name)?;
        let mut words = split_params(command_line)?.into_iter();
        let program = words.next().ok_or(Problem::EmptyPath)?;
        Ok(Self {
            name: name.to_owned(),
            handler: HandlerKind::Command {
                program: PathBuf::from(program),
                params: words.collect(),
                allow_runtime_params: false,
                args: None,
            },
            env_pass: Vec::new(),
            limits: limits(
                DEFAULT_MEMORY_MB,
                DEFAULT_DEADLINE_SECONDS,
                DEFAULT_OUTPUT_MB,
            ),
            program_limits: ProgramLimits::default(),
        })
    }
}

impl HandlerKind {
    /// The handler's name as written in a config file.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Command { .. } => HANDLER_NAMES[0],
            Self::AnsibleRunner => HANDLER_NAMES[1],
            Self::Component { .. } => HANDLER_NAMES[2],
        }
    }
}

/// Where to find ansible-runner, and whether to offer it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsibleRunnerConfig {
    /// Its executable; `None` searches the node's `PATH`.
    pub path: Option<PathBuf>,
    /// Whether ansible-runner work is offered: the default `ansible-runner` work type (when
    /// ansible-runner is found) and any work type whose handler is `ansible-runner`.
    pub enabled: bool,
    /// Names of node environment variables passed through to it.
    pub env_pass: Vec<String>,
}

impl Default for AnsibleRunnerConfig {
    fn default() -> Self {
        Self {
            path: None,
            enabled: true,
            env_pass: Vec::new(),
        }
    }
}

/// Default guest memory cap of a work type, in MiB.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Default wall-clock limit of a work type, in seconds (6 hours).
pub const DEFAULT_DEADLINE_SECONDS: u64 = 6 * 3600;
/// Default results cap of a work type, in MiB (4 GiB).
pub const DEFAULT_OUTPUT_MB: u64 = 4 * 1024;
/// Default job-directory quota of a work type, in MiB.
pub const DEFAULT_DISK_MB: u64 = DEFAULT_DISK_QUOTA.bytes >> 20;
/// Default job-directory quota of a work type, in files, directories and links.
pub const DEFAULT_DISK_INODES: u64 = DEFAULT_DISK_QUOTA.inodes;
/// Default free-space floor of a node, in MiB: kept for units' results and status.
pub const DEFAULT_FREE_SPACE_FLOOR_MB: u64 = 512;

/// A work type's job-directory quota from its settings.
pub(super) fn disk_quota(disk_mb: u64, disk_inodes: u64) -> DiskQuota {
    DiskQuota {
        bytes: disk_mb << 20,
        inodes: disk_inodes,
    }
}

/// Builds a work type's limits from its settings in MiB and seconds, with the default
/// cancel grace. Callers keep the numbers in range, so nothing overflows.
pub(super) fn limits(memory_mb: u64, deadline_seconds: u64, output_mb: u64) -> Limits {
    Limits {
        memory_bytes: usize::try_from(memory_mb << 20).unwrap_or(usize::MAX),
        deadline: Duration::from_secs(deadline_seconds),
        output_bytes: output_mb << 20,
        ..Limits::default()
    }
}

/// Checks a work type name: 1 to [`MAX_WORK_TYPE_NAME`] letters, digits, `.`, `_`, `-`.
pub(super) fn check_name(name: &str) -> Result<(), Problem> {
    let ok = !name.is_empty()
        && name.len() <= MAX_WORK_TYPE_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Problem::WorkTypeName { value: name.into() })
    }
}

/// Splits fixed params on whitespace; quotes are refused, since they would not group.
pub(super) fn split_params(params: &str) -> Result<Vec<String>, Problem> {
    if params.contains(['"', '\'']) {
        return Err(Problem::QuotedParams {
            value: params.into(),
        });
    }
    Ok(params.split_whitespace().map(str::to_owned).collect())
}

/// Checks an environment variable name: a letter or `_`, then letters, digits or `_`.
pub(super) fn check_env_name(name: &str) -> Result<(), Problem> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if first_ok && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(())
    } else {
        Err(Problem::EnvName { value: name.into() })
    }
}
