//! Job containment: every program a work handler starts runs, with all its descendants, in
//! a containment the node can limit and kill as a whole, so nothing a job starts outlives
//! it however it daemonised.
//!
//! What a node can use is found once at start ([`Containment::detect`]):
//!
//! - **cgroups** ([`cgroup`]): per program one cgroup in each usable hierarchy (v2 where
//!   the node can create and delegate there, the v1 `memory`, `pids` and `freezer`
//!   controllers where that is what the kernel offers, both on hybrid machines), with
//!   `memory.max`/`memory.limit_in_bytes` and `pids.max`, joined by the program's process
//!   before it runs any code, and killed as a group (`cgroup.kill`, else freeze and kill
//!   every member);
//! - else a **subreaper** ([`supervisor`]): a tiny per-program supervisor process that is
//!   the program's parent and `PR_SET_CHILD_SUBREAPER`, so double forks and `setsid`
//!   re-parent to it and it can find and kill every descendant;
//! - else only the program's process group (a node with neither: no cgroups and no binary
//!   to run as supervisor, as in embedded tests).
//!
//! In every case the program gets rlimits before `exec` (`setup`): `RLIMIT_NOFILE`,
//! `RLIMIT_FSIZE`, `RLIMIT_CORE` = 0, and where no cgroup bounds them `RLIMIT_AS` (per
//! process) and `RLIMIT_NPROC` (for a node not running as root); and, when the work type
//! says `network = "none"`, a private network namespace with only loopback.
//!
//! Detached programs ([`detached`]) always run under a supervisor that outlives the node
//! process and records the exit status ([`record`]), so a restarted node re-attaches.
//!
//! With `[work] job-users` ([`users`]), each job's programs also run as a uid of their own
//! (gid the same, no supplementary groups, no capabilities, `PR_SET_NO_NEW_PRIVS`, no kernel
//! keyring: `keyring`), set last before `exec`, in a job directory given to that uid
//! ([`jobdir`]); when the job is done every process still running as that uid is killed
//! (`reap`), so under process-group containment too nothing a job started outlives it.
//!
//! This module decides and sets up; the `process` capability (`host/process.rs`) spawns
//! through it.

// Without feature `host` (the client node of the Python package) nothing starts jobs: only
// the config's types and the supervisor binary use this module.
#![cfg_attr(not(feature = "host"), allow(dead_code, unused_imports))]

pub(crate) mod accounts;
pub mod cgroup;
#[cfg(feature = "host")]
pub mod detached;
pub(crate) mod detect;
pub mod error;
pub(crate) mod ipc;
pub mod jobdir;
pub(crate) mod keyring;
pub(crate) mod leftovers;
pub mod limits;
pub(crate) mod reap;
pub mod record;
pub(crate) mod setup;
#[cfg(feature = "host")]
pub(crate) mod spawn;
pub(crate) mod supervised;
pub mod supervisor;
pub mod users;
pub(crate) mod vfork;
pub mod watch;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

pub use error::ContainError;
pub use limits::{Network, ProgramLimits};

use cgroup::{Hit, JobCgroup, Roots};
use setup::ChildSetup;

/// How a node contains programs, as its config asks (`[work] containment`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ContainMode {
    /// cgroups where usable, else a subreaper supervisor, else process groups.
    #[default]
    Auto,
    /// cgroups or refuse to start.
    Cgroup,
    /// The subreaper supervisor even where cgroups are usable.
    Subreaper,
}

/// The mechanism in use.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Cgroups(Roots),
    Subreaper,
    ProcessGroup,
}

/// The node's containment: found once, shared by every job.
#[derive(Debug)]
pub struct Containment {
    kind: Kind,
    /// The binary re-executed as supervisor (`None`: none usable).
    supervisor: Option<PathBuf>,
    /// Why hierarchies or the supervisor are not used, for the log.
    notes: Vec<String>,
    /// Processes of the node's user when containment was set up: `RLIMIT_NPROC` counts all
    /// of them, so a cap without cgroups is this plus the work type's pids.
    user_processes: u64,
    /// Set by [`Containment::leave_detached_running`]: detached jobs are not killed when
    /// their handles drop (the node is stopping and will re-attach).
    leave_detached: AtomicBool,
    /// Makes each program's cgroup name unique within this node process.
    serial: AtomicU64,
    /// A supervisor started ahead for the next detached job ([`supervised::Spare`]): taken
    /// by that job, refilled after its start. Held only for a take or a put.
    spare: Mutex<Option<supervised::Spare>>,
    /// The uids reserved for jobs (`[work] job-users`); `None`: jobs run as the node's user.
    job_users: Option<Arc<users::JobUsers>>,
}

impl Containment {
    /// Finds what this node can contain programs with. `supervisor` is the binary to run
    /// as `<exe> __warren-supervise` (Warren's own binaries answer to it).
    ///
    /// # Errors
    /// [`ContainError`] when `mode` asks for a mechanism that is not available.
    pub fn detect(mode: ContainMode, supervisor: Option<PathBuf>) -> Result<Self, ContainError> {
        let mut notes = Vec::new();
        let supervisor = supervisor.filter(|p| {
            let ok = supervised::answers_as_supervisor(p);
            if !ok {
                notes.push(format!("{} does not answer as a supervisor", p.display()));
            }
            ok
        });
        let kind = match mode {
            ContainMode::Subreaper => {
                if supervisor.is_none() {
                    return Err(ContainError::NoSupervisor(notes.join("; ")));
                }
                Kind::Subreaper
            }
            ContainMode::Auto | ContainMode::Cgroup => {
                let (roots, why) = cgroup::probe(&detect::own_cgroups());
                notes.extend(why);
                if roots.is_usable() {
                    cgroup::sweep(&roots);
                    roots.make_parents();
                    Kind::Cgroups(roots)
                } else if mode == ContainMode::Cgroup {
                    return Err(ContainError::NoCgroups(notes.join("; ")));
                } else if supervisor.is_some() {
                    Kind::Subreaper
                } else {
                    Kind::ProcessGroup
                }
            }
        };
        Ok(Self {
            kind,
            supervisor,
            notes,
            user_processes: if is_root() { 0 } else { count_user_processes() },
            leave_detached: AtomicBool::new(false),
            serial: AtomicU64::new(0),
            spare: Mutex::new(None),
            job_users: None,
        })
    }

    /// Auto-detected containment with [`supervisor_binary`] as supervisor.
    pub fn auto() -> Self {
        Self::detect(ContainMode::Auto, supervisor_binary())
            .unwrap_or_else(|_| Self::process_groups())
    }

    /// Containment by process group only (no cgroups, no supervisor): what `Auto` falls
    /// back to on a machine with neither, and the baseline the `contain` benchmark
    /// measures the others against.
    pub fn process_groups() -> Self {
        Self {
            kind: Kind::ProcessGroup,
            supervisor: None,
            notes: Vec::new(),
            user_processes: 0,
            leave_detached: AtomicBool::new(false),
            serial: AtomicU64::new(0),
            spare: Mutex::new(None),
            job_users: None,
        }
    }

    /// Runs every job's programs as a uid of `users` from now on.
    #[must_use]
    pub fn with_job_users(mut self, users: users::JobUsers) -> Self {
        self.job_users = Some(Arc::new(users));
        self
    }

    /// The pool of job uids, when `[work] job-users` is set.
    pub fn job_users(&self) -> Option<&Arc<users::JobUsers>> {
        self.job_users.as_ref()
    }

    /// What is in use, for `warren status` and `ExtraData`: `cgroup v1 (memory, pids) +
    /// cgroup v2 (kill)`, `subreaper (...)`, `process group (...)`.
    pub fn describe(&self) -> String {
        let mut text = self.describe_mechanism();
        if let Some(users) = &self.job_users {
            text.push_str(&format!("; each job as its own uid of {}", users.range()));
        }
        text
    }

    fn describe_mechanism(&self) -> String {
        let unbounded = if is_root() {
            "memory per process (RLIMIT_AS); pids not bounded (root)"
        } else {
            "memory per process (RLIMIT_AS); pids by RLIMIT_NPROC"
        };
        match &self.kind {
            Kind::Cgroups(roots) => {
                let mut text = roots.describe();
                if !roots.bounds_memory() {
                    text.push_str("; memory per process (RLIMIT_AS)");
                }
                if !roots.bounds_pids() {
                    text.push_str(if is_root() {
                        "; pids not bounded (root)"
                    } else {
                        "; pids by RLIMIT_NPROC"
                    });
                }
                text
            }
            Kind::Subreaper => format!("subreaper supervisor; {unbounded}"),
            Kind::ProcessGroup => {
                format!("process group only (no cgroups, no supervisor); {unbounded}")
            }
        }
    }

    /// Why some mechanisms are not in use (for the node's log at start).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// The supervisor binary, if there is one.
    pub(crate) fn supervisor(&self) -> Option<&PathBuf> {
        self.supervisor.as_ref()
    }

    /// The supervisor started ahead for the next detached job, if one is waiting.
    pub(crate) fn take_spare(&self) -> Option<supervised::Spare> {
        self.spare.lock().ok()?.take().filter(|s| !s.has_ended())
    }

    /// Starts a supervisor ahead for the next detached job, unless one waits already or
    /// there is no supervisor binary. Blocks for a process start: call it off the
    /// runtime's threads. Without a spare the next job starts its own supervisor.
    pub(crate) fn refill_spare(&self) {
        let Some(exe) = &self.supervisor else {
            return;
        };
        if self.spare.lock().map_or(true, |slot| slot.is_some()) {
            return;
        }
        match supervised::Spare::start(exe) {
            Ok(spare) => {
                if let Ok(mut slot) = self.spare.lock()
                    && slot.is_none()
                {
                    *slot = Some(spare);
                }
            }
            Err(e) => tracing::debug!(error = %e, "no supervisor started ahead"),
        }
    }

    /// From now on detached jobs keep running when their handles are dropped (the node is
    /// stopping and its next start re-attaches them); everything else is still killed.
    pub fn leave_detached_running(&self) {
        self.leave_detached.store(true, Ordering::Release);
        if let Some(users) = &self.job_users {
            users.leave_detached_running();
        }
    }

    /// Whether detached jobs are to be left running.
    pub(crate) fn leaves_detached(&self) -> bool {
        self.leave_detached.load(Ordering::Acquire)
    }

    /// Sets up the containment of one program of unit `unit`.
    ///
    /// # Errors
    /// [`ContainError::Cgroup`] when its cgroup cannot be created.
    pub(crate) fn cell(
        &self,
        unit: &str,
        limits: &ProgramLimits,
        detached: bool,
    ) -> Result<Cell, ContainError> {
        let mut setup = ChildSetup::new(limits.open_files, limits.file_size_bytes);
        setup.private_network = limits.network == Network::None;
        let (cgroup, bounded) = match &self.kind {
            Kind::Cgroups(roots) => {
                let name = self.cgroup_name(unit, detached);
                let cgroup = JobCgroup::create(roots, &name, limits)
                    .map_err(|source| ContainError::Cgroup { name, source })?;
                (
                    Some(Arc::new(cgroup)),
                    (roots.bounds_memory(), roots.bounds_pids()),
                )
            }
            Kind::Subreaper | Kind::ProcessGroup => (None, (false, false)),
        };
        if !bounded.0 {
            setup.address_space = Some(limits.memory_bytes);
        }
        if !bounded.1 && !is_root() {
            setup.nproc = Some(self.user_processes.saturating_add(limits.pids));
        }
        let supervised = detached || self.kind == Kind::Subreaper;
        let info = ContainmentInfo {
            kind: self.describe(),
            cgroups: cgroup.as_ref().map(|c| c.paths()).unwrap_or_default(),
            limits: *limits,
            supervised,
            detached,
            stopped: None,
        };
        Ok(Cell {
            cgroup,
            setup,
            supervised,
            info,
        })
    }

    /// `<unit>-<node pid>-<n>`, plus `-d` for a detached program (see [`cgroup::sweep`]).
    fn cgroup_name(&self, unit: &str, detached: bool) -> String {
        let unit: String = unit
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(32)
            .collect();
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let suffix = if detached {
            cgroup::DETACHED_SUFFIX
        } else {
            ""
        };
        format!("{unit}-{}-{serial}{suffix}", std::process::id())
    }
}

impl Drop for Containment {
    /// The node is done with job cgroups: their empty parents go.
    fn drop(&mut self) {
        if let Kind::Cgroups(roots) = &self.kind {
            roots.remove_parents();
        }
    }
}

/// One program's containment, before and while it runs.
#[derive(Debug)]
pub(crate) struct Cell {
    /// Its cgroups, shared by the child handle (to kill) and its watcher (to monitor and
    /// remove).
    pub(crate) cgroup: Option<Arc<JobCgroup>>,
    /// What its process does before `exec`.
    pub(crate) setup: ChildSetup,
    /// Whether it runs under a supervisor.
    pub(crate) supervised: bool,
    /// What it is, for `ExtraData`.
    pub(crate) info: ContainmentInfo,
}

/// A program's containment as recorded in the unit's `ExtraData` (`{"Containment": ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainmentInfo {
    /// The mechanism, as `warren status` names it.
    pub kind: String,
    /// The program's cgroup directories (empty without cgroups).
    pub cgroups: Vec<PathBuf>,
    /// Its limits.
    pub limits: ProgramLimits,
    /// Whether it runs under a supervisor process.
    pub supervised: bool,
    /// Whether it is detached (survives a restart of the node process).
    pub detached: bool,
    /// Why the host stopped it, when it did.
    pub stopped: Option<String>,
}

/// A limit a job's programs broke; the host stopped them, and the unit's detail says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// The kernel killed a process out of memory at the cgroup's limit (bytes).
    Memory(u64),
    /// A fork was refused at the cgroup's pids limit.
    Pids(u64),
    /// A detached program's results passed the output cap (bytes).
    Output(u64),
}

impl Breach {
    pub(crate) fn from_hit(hit: Hit, limits: &ProgramLimits) -> Self {
        match hit {
            Hit::Memory => Self::Memory(limits.memory_bytes),
            Hit::Pids => Self::Pids(limits.pids),
        }
    }
}

impl std::fmt::Display for Breach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Memory(bytes) => write!(
                f,
                "stopped: the job's programs exceeded their memory limit of {} MiB (out-of-memory kill)",
                bytes >> 20
            ),
            Self::Pids(max) => write!(
                f,
                "stopped: the job's programs reached their limit of {max} processes"
            ),
            Self::Output(bytes) => {
                write!(f, "results exceeded the output limit of {bytes} bytes")
            }
        }
    }
}

/// A unit's own files, for programs that write to them directly (detached) and for the
/// node's record of the job. The work layer fills it in; jobs without it (embedded tests)
/// cannot detach.
#[derive(Clone)]
pub struct UnitFiles {
    /// The unit's private directory (not the guest's job directory): detached job records
    /// go in its `detached/`.
    pub dir: PathBuf,
    /// The payload file.
    pub payload: PathBuf,
    /// The results file.
    pub results: PathBuf,
    /// Called when the results grew by a write that did not pass through the job's results
    /// stream (a detached program appending), so followers wake.
    pub on_output: Arc<dyn Fn() + Send + Sync>,
    /// Called with the unit's new `ExtraData` when a program starts or is stopped.
    pub on_extra_data: Arc<dyn Fn(serde_json::Value) + Send + Sync>,
}

impl std::fmt::Debug for UnitFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnitFiles")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl UnitFiles {
    /// Records `info` as the unit's `ExtraData`.
    pub(crate) fn record(&self, info: &ContainmentInfo) {
        if let Ok(value) = serde_json::to_value(info) {
            (self.on_extra_data)(serde_json::json!({ "Containment": value }));
        }
    }
}

/// The binary to run as supervisor: `warren-supervisor` beside the running binary (small,
/// so it starts in about the time of `/bin/true`), else the running binary itself (Warren's
/// binaries answer to `__warren-supervise` too).
pub fn supervisor_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let sibling = exe.with_file_name(SUPERVISOR_BINARY);
    if sibling.is_file() && supervised::answers_as_supervisor(&sibling) {
        return Some(sibling);
    }
    Some(exe)
}

/// The name of the supervisor's own binary.
pub const SUPERVISOR_BINARY: &str = "warren-supervisor";

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Processes owned by this process's user now (for `RLIMIT_NPROC`).
fn count_user_processes() -> u64 {
    use std::os::unix::fs::MetadataExt as _;
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let count = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .count();
    count as u64
}
