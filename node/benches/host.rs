//! `cargo bench -p warren --bench host [-- SECTION]`: WebAssembly host figures, each printed
//! beside a baseline or target measured in the same run, because the machine is shared and
//! noisy. Figures are medians over repeated rounds; ratios are taken per round, then their
//! median.
//!
//! Sections (a filter argument runs those whose name contains it):
//! - `start`: component sizes, compile and cached-load times of guest-runner, and per-job
//!   start (store + instantiate + call) of the probe handler's empty `noop` job, with the
//!   job's resource accounting on and off, interleaved.
//! - `relay`: payload → child stdin → child stdout → results through guest-runner's
//!   `command` handler and `/bin/cat`, against a native pipe through `/bin/cat`, with the
//!   accounting on and off.
//! - `quota`: the cost of measuring job directories of 1,000 to 100,000 entries, and how
//!   far a program writing flat out gets past its quota before the watcher stops it.
//! - `contain`: per-job start overhead of job containment (cgroups, the subreaper
//!   supervisor, the detached form) beside a plain spawn and the process-group baseline.
//!
//! "Accounting" is what a node gives every job ([`limits`]): a descriptor cap counted per
//! open file and child, a job-directory quota with its watcher, and the free-space floor.
//! Off, the same jobs run without them (the resource table keeps its cap either way).
//!
//! The sections live in `benches/host/` (the shared statistics in `benches/mesh/`), named by
//! `#[path]` because a file directly in `benches/` would become a bench target of its own.

#[path = "host/contain.rs"]
mod contain;
#[path = "host/quota.rs"]
mod quota;
#[path = "host/relay.rs"]
mod relay;
#[path = "common/sections.rs"]
mod sections;
#[path = "host/start.rs"]
mod start;
#[path = "mesh/stats.rs"]
mod stats;

use std::process::ExitCode;

/// A node's default job limits with the accounting on (`true`) or off.
pub(crate) fn limits(accounting: bool) -> warren::host::policy::Limits {
    let defaults = warren::host::policy::Limits::default();
    warren::host::policy::Limits {
        descriptors: accounting.then_some(warren::host::fds::MAX_DEFAULT_PER_JOB),
        disk: accounting.then_some(warren::host::policy::DEFAULT_DISK_QUOTA),
        ..defaults
    }
}

/// The node's default free-space floor, watched while jobs with accounting write.
pub(crate) const FREE_SPACE_FLOOR: u64 = warren::config::DEFAULT_FREE_SPACE_FLOOR_MB << 20;

/// The probe handler (built for tests and benches by build.rs).
pub(crate) const PROBE_HANDLER: &[u8] = include_bytes!(env!("WARREN_PROBE_HANDLER_WASM"));

/// A section: its name (the filter matches it) and its body.
type Section = (&'static str, fn() -> anyhow::Result<()>);

const SECTIONS: [Section; 4] = [
    ("start", start::run),
    ("relay", relay::run),
    ("contain", contain::run),
    ("quota", quota::run),
];

fn main() -> ExitCode {
    let Some(chosen) = sections::choose(&SECTIONS) else {
        return ExitCode::FAILURE;
    };
    sections::run(chosen, |run| run())
}

/// A multi-threaded runtime like the node's, with one worker per core of this machine.
pub(crate) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
