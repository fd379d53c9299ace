//! Starting a handler's program inside its containment, three ways: directly (the node
//! forks it; cgroups or its process group contain it), under a supervisor with pipes to the
//! node (no cgroups: the subreaper contains it), and detached (a supervisor that outlives
//! the node, stdio on the unit's files, exit status recorded).
//!
//! Each returns a [`Spawned`]: the program's pid, its pipes, an exit watch fed by a
//! watcher task, and a [`Killer`]. The policy checks happened before (`host/process.rs`).

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::record::{self, JobRecord, ProgramExit};
use super::supervised::{self, HANDSHAKE_WAIT, LaunchOptions, SupervisorStdio};
use super::supervisor::{Spec, SpecFiles};
use super::users::JobUser;
use super::vfork;
use super::watch::{self as watcher, BreachLog, Killer, SupervisorWait, Target, Watch};
use super::{Cell, ContainError, Containment, ProgramLimits, UnitFiles, jobdir};

/// A resolved command: what the policy allowed.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    /// The executable.
    pub(crate) program: PathBuf,
    /// Its arguments.
    pub(crate) args: Vec<String>,
    /// Its whole environment.
    pub(crate) env: Vec<(String, String)>,
    /// Its working directory.
    pub(crate) cwd: PathBuf,
}

/// Per job: what containment needs to know (set by the runner).
#[derive(Debug, Clone, Default)]
pub(crate) struct JobContain {
    /// The node's containment; `None` contains by process group only.
    pub(crate) containment: Option<Arc<Containment>>,
    /// The work type's program limits.
    pub(crate) limits: ProgramLimits,
    /// The unit's files (none in embedded tests: no detaching).
    pub(crate) files: Option<UnitFiles>,
    /// Breaches seen by this job's watchers.
    pub(crate) breaches: BreachLog,
    /// When the job must end, in milliseconds since the Unix epoch.
    pub(crate) deadline_ms: u64,
    /// The job's deadline as configured (for details).
    pub(crate) deadline: Duration,
    /// After a cancel, how long before the kill.
    pub(crate) cancel_grace: Duration,
    /// The results cap, in bytes.
    pub(crate) output_bytes: u64,
    /// Whether this job already started its detached program (one per job).
    pub(crate) detached_started: bool,
    /// The job directory (given to the job's uid with `[work] job-users`).
    pub(crate) job_dir: Option<PathBuf>,
    /// The job's uid, taken at its first program (with `[work] job-users`); each program's
    /// watcher keeps a clone until the program has ended.
    pub(crate) job_user: Option<JobUser>,
}

impl JobContain {
    /// The job's breaches, for the runner.
    pub(crate) fn breaches(&self) -> &BreachLog {
        &self.breaches
    }
}

/// A started program.
pub(crate) struct Spawned {
    /// The program's pid.
    pub(crate) pid: u32,
    /// Its stdin (piped forms only).
    pub(crate) stdin: Option<BoxedWrite>,
    /// Its stdout, or stdout and stderr merged (piped forms only).
    pub(crate) stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Its stderr (piped forms, not merged).
    pub(crate) stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    /// Set once it has ended.
    pub(crate) exit: watch::Receiver<Option<ProgramExit>>,
    /// Stops it.
    pub(crate) killer: Killer,
}

impl std::fmt::Debug for Spawned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spawned")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

/// The program's stdout and stderr for the piped forms: its ends and ours.
pub(crate) struct Pipes {
    /// The program's stdout, and stderr: the same pipe when merged.
    pub(crate) stdout: OwnedFd,
    pub(crate) stderr: OwnedFd,
    /// Our end of stdout (of the merged pipe, when merged).
    pub(crate) stdout_reader: std::io::PipeReader,
    /// Our end of stderr, when not merged.
    pub(crate) stderr_reader: Option<std::io::PipeReader>,
}

impl Pipes {
    /// New close-on-exec pipes; one for both streams when `merge`.
    ///
    /// # Errors
    /// The OS error of a `pipe` or `dup`.
    pub(crate) fn new(merge: bool) -> std::io::Result<Self> {
        let (stdout_reader, writer) = std::io::pipe()?;
        let stdout = OwnedFd::from(writer);
        let (stderr, stderr_reader) = if merge {
            (stdout.try_clone()?, None)
        } else {
            let (reader, writer) = std::io::pipe()?;
            (OwnedFd::from(writer), Some(reader))
        };
        Ok(Self {
            stdout,
            stderr,
            stdout_reader,
            stderr_reader,
        })
    }

    /// Our ends (`stdout`, `stderr`), readable on the runtime.
    fn readers_of(
        stdout: std::io::PipeReader,
        stderr: Option<std::io::PipeReader>,
    ) -> std::io::Result<(BoxedRead, Option<BoxedRead>)> {
        let reader = |r: std::io::PipeReader| -> std::io::Result<BoxedRead> {
            Ok(Box::new(tokio::net::unix::pipe::Receiver::from_owned_fd(
                OwnedFd::from(r),
            )?))
        };
        let stderr = stderr.map(reader).transpose()?;
        Ok((reader(stdout)?, stderr))
    }
}

/// A boxed reader of a program's output.
type BoxedRead = Box<dyn AsyncRead + Send + Unpin>;

/// A boxed writer to a program's stdin.
pub(crate) type BoxedWrite = Box<dyn AsyncWrite + Send + Unpin>;

fn containment_of(job: &JobContain) -> Arc<Containment> {
    job.containment
        .clone()
        .unwrap_or_else(|| Arc::new(Containment::process_groups()))
}

fn watch_for(job: &JobContain, cell: &Cell, killer: Killer, output_cap: Option<u64>) -> Watch {
    Watch {
        killer,
        limits: job.limits,
        breaches: job.breaches.clone(),
        info: cell.info.clone(),
        files: job.files.clone(),
        output_cap,
    }
}

/// Starts `cmd` with piped stdio, directly or (without cgroups) under a supervisor.
///
/// # Errors
/// [`ContainError`] naming what failed: its cgroup, the supervisor, or its start.
pub(crate) async fn piped(
    job: &mut JobContain,
    unit: &str,
    cmd: &Resolved,
    pipes: Pipes,
) -> Result<Spawned, ContainError> {
    let containment = containment_of(job);
    let mut cell = containment.cell(unit, &job.limits, false)?;
    let cmd = &as_job_user(job, &containment, cmd, &mut cell).await?;
    if let Some(files) = &job.files {
        files.record(&cell.info);
    }
    if cell.supervised
        && let Some(exe) = containment.supervisor().cloned()
    {
        return supervised_piped(job, &exe, cmd, cell, pipes).await;
    }
    direct(job, cmd, cell, pipes)
}

fn direct(
    job: &JobContain,
    cmd: &Resolved,
    cell: Cell,
    pipes: Pipes,
) -> Result<Spawned, ContainError> {
    let io = |source| ContainError::Spawn {
        program: cmd.program.clone(),
        source,
    };
    let mut setup = cell.setup;
    let join = match &cell.cgroup {
        Some(cgroup) => cgroup.join_on_exec(&mut setup)?,
        None => Vec::new(),
    };
    let (stdin_r, stdin_w) = std::io::pipe().map_err(io)?;
    let stdin_r = OwnedFd::from(stdin_r);
    let plan = vfork::Plan {
        program: &cmd.program,
        args: &cmd.args,
        env: &cmd.env,
        cwd: &cmd.cwd,
        stdio: [&stdin_r, &pipes.stdout, &pipes.stderr],
        setup,
        role: vfork::Role::Program,
    };
    let child = vfork::spawn(&plan).map_err(io)?;
    // Our copies of the program's ends must be gone before EOF can come.
    drop((stdin_r, join));
    drop((pipes.stdout, pipes.stderr));
    let pid = child.id();
    let stdin: BoxedWrite = Box::new(
        tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(stdin_w)).map_err(io)?,
    );
    let (stdout, stderr) =
        Pipes::readers_of(pipes.stdout_reader, pipes.stderr_reader).map_err(io)?;
    let killer = Killer {
        cgroup: cell.cgroup.clone(),
        target: Target::Group(pid),
    };
    let watch = watch_for(job, &cell, killer.clone(), None);
    let (tx, exit) = watch::channel(None);
    let user = job.job_user.clone();
    tokio::spawn(async move {
        let status = watcher::direct(child, watch).await;
        drop(user);
        let _ = tx.send(Some(status));
    });
    Ok(Spawned {
        pid: u32::try_from(pid).unwrap_or(0),
        stdin: Some(stdin),
        stdout: Some(stdout),
        stderr,
        exit,
        killer,
    })
}

async fn supervised_piped(
    job: &JobContain,
    exe: &std::path::Path,
    cmd: &Resolved,
    cell: Cell,
    pipes: Pipes,
) -> Result<Spawned, ContainError> {
    let spec = Spec {
        program: cmd.program.clone(),
        args: cmd.args.clone(),
        env: cmd.env.clone(),
        cwd: cmd.cwd.clone(),
        files: None,
        setup: cell.setup,
        job_log: None,
        join: Vec::new(),
        deadline_ms: None,
        lifeline: true,
    };
    let options = LaunchOptions {
        stdio: SupervisorStdio::Piped {
            stdout: pipes.stdout,
            stderr: pipes.stderr,
        },
        own_group: false,
        join: cell.setup,
        wait: HANDSHAKE_WAIT,
    };
    let mut launched = supervised::launch(exe, &spec, options).await?;
    let stdin = launched.stdin.take().map(|s| Box::new(s) as BoxedWrite);
    let (stdout, stderr) =
        Pipes::readers_of(pipes.stdout_reader, pipes.stderr_reader).map_err(|source| {
            ContainError::Pipe {
                what: "stdout pipe",
                source,
            }
        })?;
    let pid = u32::try_from(launched.program.pid).unwrap_or(0);
    let killer = Killer {
        cgroup: cell.cgroup.clone(),
        target: Target::Supervisor(launched.supervisor, launched.pidfd.take().map(Arc::new)),
    };
    let watch = watch_for(job, &cell, killer.clone(), None);
    let (tx, exit) = watch::channel(None);
    let user = job.job_user.clone();
    tokio::spawn(async move {
        // The lifeline stays open (in `launched`) until the supervisor has ended.
        let status = watcher::supervised(launched, watch).await;
        drop(user);
        let _ = tx.send(Some(status));
    });
    Ok(Spawned {
        pid,
        stdin,
        stdout: Some(stdout),
        stderr,
        exit,
        killer,
    })
}

/// Starts `cmd` detached: under a supervisor in its own process group that outlives the node, with
/// the unit's payload as stdin, stdout appended to its results, stderr to
/// `detached/stderr`, and a job record so a restarted node can re-attach.
///
/// # Errors
/// [`ContainError`] naming what failed (including: this job cannot detach).
pub(crate) async fn detached(
    job: &mut JobContain,
    unit: &str,
    cmd: &Resolved,
    label: &str,
) -> Result<Spawned, ContainError> {
    let files = job.files.clone().ok_or(ContainError::NoUnitFiles)?;
    let containment = containment_of(job);
    let exe = containment
        .supervisor()
        .cloned()
        .ok_or(ContainError::NoSupervisorBinary)?;
    if job.detached_started {
        return Err(ContainError::AlreadyDetached);
    }
    job.detached_started = true;
    let mut cell = containment.cell(unit, &job.limits, true)?;
    let cmd = &as_job_user(job, &containment, cmd, &mut cell).await?;
    let (dir, reused) = record::detached_dir(&files.dir).map_err(|source| ContainError::Io {
        path: files.dir.clone(),
        source,
    })?;
    if reused {
        // An older node's exit record must not be taken for this job's.
        let _ = std::fs::remove_file(dir.join(record::EXIT_FILE));
    }
    // Written once, before the spawn: a node that dies before the supervisor is recorded
    // still finds the cgroups to clean up. The supervisor appends itself and the program
    // to it before it reports the start, and the exit at the end.
    record::create_job_log(&dir, &job_record(job, unit, label, &cell)).map_err(|source| {
        ContainError::Record {
            dir: dir.clone(),
            source,
        }
    })?;
    let spec = Spec {
        program: cmd.program.clone(),
        args: cmd.args.clone(),
        env: cmd.env.clone(),
        cwd: cmd.cwd.clone(),
        files: Some(SpecFiles {
            stdin: files.payload.clone(),
            stdout: files.results.clone(),
            stderr: dir.join(record::STDERR_FILE),
        }),
        setup: cell.setup,
        job_log: Some(dir.join(record::JOB_FILE)),
        deadline_ms: Some(job.deadline_ms),
        lifeline: false,
        join: Vec::new(),
    };
    let launched = launch_detached(&containment, &exe, &spec, &cell, HANDSHAKE_WAIT).await?;
    if let Some(user) = &job.job_user {
        user.mark_detached();
    }
    files.record(&cell.info);
    Ok(watch_detached(job, &cell, launched, dir, unit))
}

/// The job record of a detached program about to start (no pids yet).
fn job_record(job: &JobContain, unit: &str, label: &str, cell: &Cell) -> JobRecord {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    JobRecord {
        unit: unit.to_owned(),
        label: label.to_owned(),
        boot_id: record::boot_id(),
        supervisor: None,
        program: None,
        containment: cell.info.kind.clone(),
        cgroups: cell.info.cgroups.clone(),
        limits: job.limits,
        deadline_ms: job.deadline_ms,
        deadline_ms_total: ms(job.deadline),
        cancel_grace_ms: ms(job.cancel_grace),
        output_bytes: job.output_bytes,
        job_user: job.job_user.as_ref().map(JobUser::uid),
    }
}

/// How long a job waits for a uid of `[work] job-users` to come free (the last job of one
/// may still be stopping: its processes are being killed) before it fails.
const JOB_USER_WAIT: Duration = Duration::from_secs(10);

/// A uid for a new job, waiting up to [`JOB_USER_WAIT`] for one to come free.
async fn take_job_user(users: &super::users::JobUsers) -> Result<JobUser, ContainError> {
    let until = tokio::time::Instant::now() + JOB_USER_WAIT;
    loop {
        // Off the async workers: a `/proc` scan, and what the uid's last job left removed.
        let pool = users.clone();
        let taken = tokio::task::spawn_blocking(move || pool.take())
            .await
            .ok()
            .flatten();
        if let Some(user) = taken {
            return Ok(user);
        }
        if tokio::time::Instant::now() >= until {
            return Err(ContainError::NoJobUser {
                range: users.range().to_string(),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `work` for `user`'s uid on the blocking pool (a recursive `lchown` of what the
/// handler put in the job directory), holding `user` until `work` returns: if the caller
/// stops waiting (a cancel, a deadline), the uid still cannot go back to the pool, and to
/// the next job, while its tree is being handed to it.
async fn with_user_held(
    user: &JobUser,
    work: impl FnOnce(u32) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<()> {
    let held = user.clone();
    tokio::task::spawn_blocking(move || {
        let done = work(held.uid());
        drop(held);
        done
    })
    .await
    .unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

/// With `[work] job-users`: the job's uid (taken at its first program, with its job
/// directory handed over to it), set as the last step of the program's setup with
/// `RLIMIT_NPROC` bounding that uid, and `cmd` with `TMPDIR` in the job directory.
/// Without: `cmd` as it is.
async fn as_job_user(
    job: &mut JobContain,
    containment: &Containment,
    cmd: &Resolved,
    cell: &mut Cell,
) -> Result<Resolved, ContainError> {
    let Some(users) = containment.job_users() else {
        return Ok(cmd.clone());
    };
    let job_dir = job.job_dir.clone().ok_or(ContainError::NoUnitFiles)?;
    let user = match &job.job_user {
        Some(user) => user.clone(),
        None => {
            let user = take_job_user(users).await?;
            let unit_dir = job.files.as_ref().map_or_else(
                || job_dir.parent().unwrap_or(&job_dir).to_owned(),
                |f| f.dir.clone(),
            );
            let (dir, data_dir) = (job_dir.clone(), users.data_dir().to_owned());
            with_user_held(&user, move |uid| {
                jobdir::hand_over(&dir, &unit_dir, &data_dir, uid)
            })
            .await
            .map_err(|source| ContainError::JobDir {
                path: job_dir.clone(),
                uid: user.uid(),
                source,
            })?;
            job.job_user = Some(user.clone());
            user
        }
    };
    cell.setup.job_user = Some(user.uid());
    cell.setup.private_ipc = users.private_ipc();
    cell.setup.nproc = Some(job.limits.pids);
    let mut cmd = cmd.clone();
    cmd.env.retain(|(name, _)| name != "TMPDIR");
    cmd.env
        .push(("TMPDIR".to_owned(), job_dir.display().to_string()));
    Ok(cmd)
}

/// Launches a detached job's supervisor: the spare the containment keeps waiting (started
/// ahead, so this job does not wait for a process start), else a new one; each has `wait`
/// to report the program's start. Then has the next spare started, off the runtime's
/// threads.
async fn launch_detached(
    containment: &Arc<Containment>,
    exe: &std::path::Path,
    spec: &Spec,
    cell: &Cell,
    wait: Duration,
) -> Result<supervised::Launched, ContainError> {
    let launched = match containment.take_spare() {
        Some(spare) => {
            let joining = Spec {
                join: cell.info.cgroups.clone(),
                ..spec.clone()
            };
            match spare.launch(&joining, wait).await {
                // It never got the spec (it ended while it waited), or never read it (a
                // job stopped it; it was killed): start one afresh.
                Err(
                    ContainError::SupervisorSpec { .. }
                    | ContainError::SupervisorSilent {
                        spec_read: false, ..
                    },
                ) => launch_in_cell(exe, spec, cell, wait).await,
                launched => launched,
            }
        }
        None => launch_in_cell(exe, spec, cell, wait).await,
    };
    // A supervisor killed after it read its spec may have started the program, and one
    // that ignored the job's uid did: in the job's cgroups, which are killed with it
    // (without cgroups the supervisor kills its tree).
    if let Err(
        ContainError::SupervisorSilent { .. } | ContainError::SupervisorIgnoredJobUser { .. },
    ) = &launched
        && let Some(cgroup) = &cell.cgroup
    {
        cgroup.kill();
    }
    let refill = Arc::clone(containment);
    drop(tokio::task::spawn_blocking(move || refill.refill_spare()));
    launched
}

/// Launches a detached supervisor in its own process group inside `cell`'s cgroups.
async fn launch_in_cell(
    exe: &std::path::Path,
    spec: &Spec,
    cell: &Cell,
    wait: Duration,
) -> Result<supervised::Launched, ContainError> {
    let mut join = cell.setup;
    // The descriptors must stay open until the supervisor has joined.
    let _fds = match &cell.cgroup {
        Some(cgroup) => cgroup.join_on_exec(&mut join)?,
        None => Vec::new(),
    };
    let options = LaunchOptions {
        stdio: SupervisorStdio::Null,
        own_group: true,
        join,
        wait,
    };
    supervised::launch(exe, spec, options).await
}

/// Starts the watcher of a launched detached program and returns its handle.
fn watch_detached(
    job: &JobContain,
    cell: &Cell,
    launched: supervised::Launched,
    dir: PathBuf,
    unit: &str,
) -> Spawned {
    let pidfd = launched.pidfd.map(Arc::new);
    let killer = Killer {
        cgroup: cell.cgroup.clone(),
        target: Target::Supervisor(launched.supervisor, pidfd.clone()),
    };
    let watch = watch_for(job, cell, killer.clone(), Some(job.output_bytes));
    let wait = SupervisorWait {
        child: Some(launched.child),
        pidfd,
        process: launched.supervisor,
    };
    let (tx, exit) = watch::channel(None);
    let unit = unit.to_owned();
    let user = job.job_user.clone();
    tokio::spawn(async move {
        let (status, _) = super::detached::wait(wait, dir, watch, &unit).await;
        drop(user);
        let _ = tx.send(Some(status));
    });
    Spawned {
        pid: u32::try_from(launched.program.pid).unwrap_or(0),
        stdin: None,
        stdout: None,
        stderr: None,
        exit,
        killer,
    }
}

#[cfg(test)]
#[path = "spawn_tests.rs"]
mod tests;
