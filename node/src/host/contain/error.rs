//! Why containment could not be set up, or a program could not be started inside it.

use std::io;
use std::path::PathBuf;

/// Why containment cannot be set up as asked, or a program not started inside it. The
/// `process` capability hands the guest this error's text; the daemon refuses to start
/// on the configuration variants.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    /// `containment = "cgroup"` on a node where no cgroup hierarchy is usable.
    #[error("containment = \"cgroup\", but no cgroup hierarchy is usable here: {0}")]
    NoCgroups(String),
    /// `containment = "subreaper"` without a binary to run as supervisor.
    #[error("containment = \"subreaper\" needs the warren binary to run as supervisor: {0}")]
    NoSupervisor(String),
    /// A program's cgroup could not be created.
    #[error("cannot create the job's cgroup {name}: {source}")]
    Cgroup {
        /// The cgroup's name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A cgroup's directory, `cgroup.procs` or `tasks` could not be opened for the program
    /// to join on exec.
    #[error("cannot join the job's cgroup through {}: {source}", path.display())]
    CgroupAttach {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Every uid of `[work] job-users` is held by a running job, still used by a process, or
    /// not yet cleared of what its last job left.
    #[error(
        "every uid of [work] job-users ({range}) is held by a running job, still runs a process, or still has files its last job left that could not all be removed (waited 10s; the log says which); widen the range or lower max-running"
    )]
    NoJobUser {
        /// The configured range.
        range: String,
    },
    /// The job directory could not be given to the job's uid.
    #[error("cannot give the job directory {} to the job's uid {uid}: {source}", path.display())]
    JobDir {
        /// The job directory.
        path: PathBuf,
        /// The uid.
        uid: u32,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The program could not be started (fork, exec, or its rlimits, network namespace or
    /// cgroup join before exec).
    #[error("cannot start {}: {source}", program.display())]
    Spawn {
        /// The executable.
        program: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// A pipe between the node and the program or its supervisor could not be set up.
    #[error("supervisor {what}: {source}")]
    Pipe {
        /// Which pipe (`spec pipe`, `report pipe`, `lifeline pipe`).
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The supervisor binary could not be started.
    #[error("cannot start the supervisor {}: {source}", exe.display())]
    SupervisorStart {
        /// The binary.
        exe: PathBuf,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The supervisor could not be sent its spec.
    #[error("sending the supervisor its spec: {source}")]
    SupervisorSpec {
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The supervisor's report could not be read.
    #[error("supervisor report: {source}")]
    SupervisorReport {
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// With `[work] job-users`, the supervisor could not read a job user's spec, or did not
    /// report starting the program as the job's uid under a seccomp filter: a
    /// `warren-supervisor` older than the node does not know job users (it would run the
    /// program as the node's user) or the keyring filter (the program would reach its
    /// uid's keyrings). What it started, if anything, was killed.
    #[error(
        "{} does not run programs as job users (asked for uid {expected}, it {answer}): it is older than this warren; install the warren-supervisor of the same release beside warren (or remove the old one, and warren supervises itself)",
        exe.display()
    )]
    SupervisorIgnoredJobUser {
        /// The supervisor binary.
        exe: PathBuf,
        /// The job's uid.
        expected: u32,
        /// What it did instead: `could not read the spec: ...`, `reported uid 0`,
        /// `reported no uid`, `reported no seccomp mode, ...`.
        answer: String,
    },
    /// The supervisor ended before it reported the program started.
    #[error(
        "the supervisor {} ended without starting the program (is it a warren binary?)",
        exe.display()
    )]
    SupervisorEnded {
        /// The binary.
        exe: PathBuf,
    },
    /// The supervisor did not report the program's start (or why it could not start) in
    /// time: stopped (a job can `SIGSTOP` a spare supervisor of its user) or wedged. It was
    /// killed.
    #[error(
        "the job's supervisor (pid {pid}) did not answer within {waited:?} and was killed{}",
        if *spec_read { "; the program may have started: its containment is killed" } else { "" }
    )]
    SupervisorSilent {
        /// The supervisor's pid.
        pid: i32,
        /// How long it was given.
        waited: std::time::Duration,
        /// Whether it had read its whole spec (so may have started the program); `false`:
        /// it certainly did not, and the job may start on another supervisor.
        spec_read: bool,
    },
    /// The supervisor reported something other than `started` or `error`.
    #[error("unexpected supervisor report {line:?}")]
    SupervisorProtocol {
        /// The line it sent.
        line: String,
    },
    /// The supervisor could not start the program, in its own words (its report line
    /// crosses a process boundary as text: `cannot start /path: No such file or
    /// directory`).
    #[error("{0}")]
    Refused(String),
    /// A detached program was asked for by a job without unit files (embedded tests).
    #[error("this job has no unit files to detach to")]
    NoUnitFiles,
    /// A detached program was asked for on a node without a supervisor binary.
    #[error("this node has no supervisor binary to detach with")]
    NoSupervisorBinary,
    /// A second detached program in one job.
    #[error("this job already started its detached program")]
    AlreadyDetached,
    /// A file or directory of the unit's detached state could not be set up.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The job record of a detached program could not be written.
    #[error("writing the job record in {}: {source}", dir.display())]
    Record {
        /// The unit's detached directory.
        dir: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
}
