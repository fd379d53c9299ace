//! The `warren:worker` world's version as this node implements it, which components can
//! link against it, and the job as the world's `job` record. The generated types
//! themselves are in [`super::bindings`].

use super::bindings::warren::worker::types::{CommandSpec, Job as WitJob, Task as WitTask};
use super::params::Task;
use super::runner::Job;

/// The version of the `warren:worker` package this node implements (`wit/worker.wit`).
pub const WORLD_VERSION: &str = "0.2.0";

/// The first `warren:worker` version among a component's import and export `names` that
/// this node cannot link, if any: 0.x versions link only within the same minor version
/// (wasmtime's semver rule), later ones within the same major version.
pub fn foreign_world<'a>(names: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let ours = compat_key(WORLD_VERSION);
    names
        .into_iter()
        .filter_map(|name| name.strip_prefix("warren:worker/"))
        .filter_map(|rest| rest.split_once('@').map(|(_, version)| version))
        .find(|version| compat_key(version) != ours)
}

/// The part of a semver version that must match for two versions to link.
fn compat_key(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.').map(str::parse::<u64>);
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    Some(if major == 0 { (0, minor) } else { (major, 0) })
}

/// `job` as the world's `job` record.
pub(crate) fn job(job: &Job) -> WitJob {
    let task = match &job.task {
        Task::AnsibleRunner => WitTask::AnsibleRunner,
        Task::Command { program, args } => WitTask::Command(CommandSpec {
            program: program.clone(),
            args: args.clone(),
        }),
        Task::Component => WitTask::Component,
    };
    WitJob {
        id: job.id.clone(),
        work_type: job.work_type.clone(),
        task,
        runtime_args: job.params.runtime_args.clone(),
        terminal: job.params.terminal.clone(),
        params: job.params.other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn world_version_is_the_wit_package_version() {
        let wit = include_str!("../../../wit/worker.wit");
        let package = format!("\npackage warren:worker@{WORLD_VERSION};\n");
        assert!(wit.contains(&package), "wit/worker.wit lacks {package:?}");
    }

    #[test]
    fn components_of_older_or_newer_minor_worlds_are_foreign() {
        let ours = [
            "wasi:io/streams@0.2.12",
            "warren:worker/process@0.2.0",
            "warren:worker/handler@0.2.3",
        ];
        assert_eq!(foreign_world(ours), None);
        let old = ["warren:worker/process@0.1.1", "warren:worker/handler@0.1.1"];
        assert_eq!(foreign_world(old), Some("0.1.1"));
        assert_eq!(
            foreign_world(["warren:worker/handler@1.0.0"]),
            Some("1.0.0")
        );
        assert_eq!(foreign_world(["warren:worker/handler@x"]), Some("x"));
        // Unversioned names are left to the linker, which names what is missing.
        assert_eq!(foreign_world(["warren:worker/handler"]), None);
    }
}
