//! Watching a contained program until it ends: its exit, its cgroup's breach counters
//! (an out-of-memory kill, a fork refused at the pids limit) and, for a detached program,
//! its results file (growth wakes the unit's followers; passing the output cap stops it).
//! A breach stops the whole program tree and is recorded for the unit's detail and
//! `ExtraData`. When the program has ended, whatever it left running is killed.

use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use super::cgroup::JobCgroup;
use super::record::{self, EndReason, ExitRecord, ProcessRef, ProgramExit};
use super::supervised;
use super::{Breach, ContainmentInfo, ProgramLimits, UnitFiles};

/// How often a running program's cgroup counters are read (two small cgroupfs files).
const MONITOR_TICK: Duration = Duration::from_millis(100);

/// The first limit a job's programs broke, shared by the job's watchers and its runner.
#[derive(Debug, Clone, Default)]
pub struct BreachLog(Arc<Mutex<Option<Breach>>>);

impl BreachLog {
    /// Records `breach` unless one was recorded already.
    fn record(&self, breach: Breach) {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slot.get_or_insert(breach);
    }

    /// The first breach, if any.
    pub fn get(&self) -> Option<Breach> {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Stops a program: through its cgroup, its supervisor or its process group.
#[derive(Debug, Clone)]
pub(crate) struct Killer {
    /// The program's cgroups, killed as a whole.
    pub(crate) cgroup: Option<Arc<JobCgroup>>,
    /// Who else to signal.
    pub(crate) target: Target,
}

/// A program's process to signal, besides its cgroup.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A program the node started itself, in its own process group (led by this pid).
    Group(i32),
    /// A program under a supervisor (which forwards SIGTERM and kills on SIGUSR1).
    Supervisor(ProcessRef, Option<Arc<OwnedFd>>),
}

impl Killer {
    /// Asks the program to stop (SIGTERM to the program itself; ansible-runner then stops
    /// its own children and still reports).
    pub(crate) fn terminate(&self) {
        match &self.target {
            // SAFETY: kill(2) has no memory effects; the caller checked the child is running.
            Target::Group(pid) => unsafe {
                libc::kill(*pid, libc::SIGTERM);
            },
            Target::Supervisor(sup, pidfd) => {
                supervised::signal(sup, pidfd.as_deref(), libc::SIGTERM);
            }
        }
    }

    /// Kills the program and everything it started.
    pub(crate) fn kill(&self) {
        if let Target::Supervisor(sup, pidfd) = &self.target {
            supervised::signal(sup, pidfd.as_deref(), libc::SIGUSR1);
        }
        match (&self.cgroup, &self.target) {
            (Some(cgroup), _) => cgroup.kill(),
            // SAFETY: kill(2) of the program's own process group.
            (None, Target::Group(pid)) => unsafe {
                libc::kill(-*pid, libc::SIGKILL);
            },
            (None, Target::Supervisor(..)) => {}
        }
    }
}

/// What a watcher checks besides the process.
pub(crate) struct Watch {
    /// How to stop the program.
    pub(crate) killer: Killer,
    /// Its limits.
    pub(crate) limits: ProgramLimits,
    /// Where a breach is recorded for the runner.
    pub(crate) breaches: BreachLog,
    /// What it is, for `ExtraData`.
    pub(crate) info: ContainmentInfo,
    /// The unit's files and callbacks (when the work layer gave them).
    pub(crate) files: Option<UnitFiles>,
    /// A detached program's results cap, in bytes.
    pub(crate) output_cap: Option<u64>,
}

impl Watch {
    /// One monitoring round: a cgroup limit hit or the output cap passed stops the program.
    fn check(&mut self) {
        let hit = self.killer.cgroup.as_ref().and_then(|c| c.hit());
        if let Some(hit) = hit {
            self.stop(Breach::from_hit(hit, &self.limits));
        }
        if let (Some(cap), Some(files)) = (self.output_cap, &self.files)
            && std::fs::metadata(&files.results).is_ok_and(|m| m.len() > cap)
        {
            self.stop(Breach::Output(cap));
        }
    }

    fn stop(&mut self, breach: Breach) {
        self.killer.kill();
        if self.info.stopped.is_none() {
            tracing::warn!(%breach, "stopping a job's programs");
            self.breaches.record(breach);
            self.info.stopped = Some(breach.to_string());
            if let Some(files) = &self.files {
                files.record(&self.info);
            }
        }
    }

    /// The program has ended: look once more (an OOM kill of the program itself shows only
    /// now), kill what it left, and remove its cgroups off the async threads.
    fn finish(&mut self) {
        self.check();
        self.killer.kill();
        if let Some(cgroup) = self.killer.cgroup.clone() {
            drop(tokio::task::spawn_blocking(move || cgroup.remove()));
        }
    }

    fn announce_output(&self) {
        if let Some(files) = &self.files {
            (files.on_output)();
        }
    }
}

/// Watches a program the node started itself until it exits; returns how it ended.
pub(crate) async fn direct(mut child: super::vfork::Process, mut watch: Watch) -> ProgramExit {
    let mut tick = tokio::time::interval(MONITOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.unwrap_or(ProgramExit::Exited(-1)),
            _ = tick.tick() => watch.check(),
        }
    };
    watch.finish();
    status
}

/// Watches a program under a supervisor that reports its end on the report pipe.
pub(crate) async fn supervised(
    mut launched: supervised::Launched,
    mut watch: Watch,
) -> ProgramExit {
    let mut tick = tokio::time::interval(MONITOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ended = None;
    loop {
        tokio::select! {
            line = launched.reports.next_line() => match line {
                Ok(Some(line)) => ended = ended.or_else(|| parse_ended(&line)),
                Ok(None) | Err(_) => break,
            },
            _ = tick.tick() => watch.check(),
        }
    }
    let _ = launched.child.wait().await;
    watch.finish();
    // A supervisor that died without reporting was killed along with its tree.
    ended.map_or(ProgramExit::Signaled(libc::SIGKILL), |e| e.status)
}

fn parse_ended(line: &str) -> Option<ExitRecord> {
    serde_json::from_str(line.strip_prefix("ended ")?).ok()
}

/// A detached job's supervisor, to wait for.
#[derive(Debug)]
pub(crate) struct SupervisorWait {
    /// Our child (first run): waited for, which also reaps it.
    pub(crate) child: Option<super::vfork::Process>,
    /// Its pidfd (readable once it exited), where the kernel has them.
    pub(crate) pidfd: Option<Arc<OwnedFd>>,
    /// It, by pid and start time (polled where there is no pidfd).
    pub(crate) process: ProcessRef,
}

impl SupervisorWait {
    async fn exited(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.wait().await;
            return;
        }
        // SAFETY: the Arc keeps the pidfd open for as long as the AsyncFd holds it.
        let registered = self.pidfd.clone().and_then(|fd| unsafe {
            AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE).ok()
        });
        if let Some(fd) = registered {
            let _ = fd.readable().await;
            return;
        }
        while self.process.is_alive() {
            tokio::time::sleep(MONITOR_TICK).await;
        }
    }
}

/// Watches a detached job until its supervisor exits; returns the recorded end (a
/// supervisor killed before it could record counts as killed).
pub(crate) async fn detached(
    mut supervisor: SupervisorWait,
    exit_dir: PathBuf,
    mut watch: Watch,
) -> (ProgramExit, EndReason) {
    let mut tick = tokio::time::interval(MONITOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut results = watch
        .files
        .as_ref()
        .and_then(|f| ResultsWatch::new(&f.results));
    loop {
        tokio::select! {
            () = supervisor.exited() => break,
            _ = tick.tick() => {
                watch.check();
                if results.is_none() {
                    watch.announce_output();
                }
            }
            () = changed(&mut results) => {
                watch.announce_output();
                watch.check();
            }
        }
    }
    close_off_path(results);
    watch.finish();
    watch.announce_output();
    let recorded = record::read_job_log(&exit_dir)
        .ok()
        .flatten()
        .and_then(|log| log.exit);
    recorded.map_or(
        (ProgramExit::Signaled(libc::SIGKILL), EndReason::Killed),
        |r| (r.status, r.reason),
    )
}

/// Closes the results watch on a blocking thread: closing an inotify instance waits for an
/// SRCU grace period (5 ms of a detached job's 15 ms overhead here, measured with strace in
/// `cargo bench --bench host -- contain`), which the job's end need not wait for. The fd
/// leaves the reactor here, at once.
fn close_off_path(results: Option<ResultsWatch>) {
    if let Some(results) = results {
        let fd = results.fd.into_inner();
        drop(tokio::task::spawn_blocking(move || drop(fd)));
    }
}

async fn changed(results: &mut Option<ResultsWatch>) {
    match results {
        Some(watch) => watch.changed().await,
        None => std::future::pending().await,
    }
}

/// An inotify watch for writes to a results file.
struct ResultsWatch {
    fd: AsyncFd<OwnedFd>,
}

impl ResultsWatch {
    fn new(path: &Path) -> Option<Self> {
        use std::os::unix::ffi::OsStrExt as _;
        let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
        // SAFETY: inotify_init1 returns a new descriptor we then own, or -1.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: a valid inotify fd and a NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_MODIFY) };
        if wd < 0 {
            return None;
        }
        // SAFETY: the AsyncFd owns the inotify descriptor outright.
        unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .ok()
            .map(|fd| Self { fd })
    }

    /// Returns after the next write(s) to the file.
    async fn changed(&mut self) {
        let Ok(mut guard) = self.fd.readable().await else {
            return std::future::pending().await;
        };
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reads inotify events into a buffer on our stack.
            let n = unsafe {
                libc::read(
                    guard.get_inner().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                )
            };
            if n <= 0 {
                break;
            }
        }
        guard.clear_ready();
    }
}
