//! The per-job supervisor: a small process (`warren-supervisor __warren-supervise`, or any
//! of Warren's binaries started that way) that starts one program and stays its parent and
//! subreaper,
//! so that every descendant, however it daemonised (`setsid`, double fork, `nohup`), is
//! re-parented to it and can be found and killed.
//!
//! It serves two cases: containment where the node has no cgroups (the supervisor *is* the
//! containment), and detached jobs (it records the program's exit status in a file, so a
//! node that restarts learns how the job ended).
//!
//! Protocol, on descriptors the node sets up (Unix stream sockets, which no other process
//! can open through `/proc/<pid>/fd`): fd 3 carries the `Spec` as JSON (read to end of
//! file: the node shuts its end down for writing); fd 4 gets report lines:
//! `started <pid> <start time> <uid> <seccomp mode>` (the uid the program runs as and its
//! seccomp mode, read back from `/proc`; a node asking for a job user refuses a report
//! without them, or with a mode other than 2, a filter: the keyring filter) or `error <why>`,
//! and at the end
//! `ended <exit record JSON>`; fd 5, when `lifeline` is set, is a socket whose other end the
//! node holds open: its end of file means the node is gone. Signals: SIGTERM is forwarded
//! to the program (a handler's `terminate`); SIGUSR1, SIGHUP, SIGINT and SIGQUIT kill the
//! whole tree.
//!
//! The supervisor makes itself non-dumpable first thing: a job of the same (non-root)
//! user can then neither open its `/proc/<pid>/fd` nor read its memory (which holds the
//! job's whole spec, environment included). The program gets the ordinary setting back at
//! its `exec`. A job running as root passes that check, which is why the channels are
//! sockets as well.
//!
//! Single-threaded and synchronous; it runs after `exec`, so ordinary Rust is safe here.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::record::{self, EndReason, Entry, ExitRecord, ProcessRef, ProgramExit};
use super::setup::ChildSetup;
use super::vfork::{self, Role};

/// The first argument that turns the node's binary into a supervisor.
pub const SUPERVISE_ARG: &str = "__warren-supervise";

/// The descriptor the spec arrives on.
pub(crate) const SPEC_FD: RawFd = 3;
/// The descriptor reports go to.
pub(crate) const REPORT_FD: RawFd = 4;
/// The descriptor of the node's lifeline pipe.
pub(crate) const LIFELINE_FD: RawFd = 5;

/// How long the final sweep keeps killing and reaping before it gives up on processes
/// stuck in the kernel.
const SWEEP_LIMIT: Duration = Duration::from_secs(10);

/// What to run and how, sent by the node on [`SPEC_FD`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Spec {
    /// The executable.
    pub(crate) program: PathBuf,
    /// Its arguments, not including itself.
    pub(crate) args: Vec<String>,
    /// Its whole environment.
    pub(crate) env: Vec<(String, String)>,
    /// Its working directory.
    pub(crate) cwd: PathBuf,
    /// Files for its stdio; `None`: it inherits the supervisor's (pipes to the node).
    pub(crate) files: Option<SpecFiles>,
    /// Its rlimits and network (the supervisor already joined the cgroups).
    pub(crate) setup: ChildSetup,
    /// The job log to append the program's start and end to (detached jobs; the node
    /// wrote its first line).
    pub(crate) job_log: Option<PathBuf>,
    /// When to kill it, in milliseconds since the Unix epoch.
    pub(crate) deadline_ms: Option<u64>,
    /// Whether fd 5 is the node's lifeline.
    pub(crate) lifeline: bool,
    /// The job's cgroup directories, for the program to join itself: set when the
    /// supervisor was started before its job (a spare, see `supervised::Spare`), so it is
    /// in none of them. The program is created in the v2 one (no RCU grace period, as
    /// the node's own programs) and moves its one thread into each v1 one (`tasks`).
    #[serde(default)]
    pub(crate) join: Vec<PathBuf>,
}

/// A detached program's stdio.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SpecFiles {
    /// Read as stdin (the unit's payload).
    pub(crate) stdin: PathBuf,
    /// Appended to as stdout (the unit's results).
    pub(crate) stdout: PathBuf,
    /// Appended to as stderr (created, mode 0600).
    pub(crate) stderr: PathBuf,
}

/// Runs the supervisor and exits when the binary was started as one; returns otherwise.
/// Both of Warren's binaries call this first thing in `main`.
pub fn main_if_requested() {
    let mut args = std::env::args_os();
    let _ = args.next();
    if args.next().is_some_and(|a| a == SUPERVISE_ARG) {
        std::process::exit(run());
    }
}

/// The supervisor's whole life; the exit code is 0 once it reported an end, 127 when the
/// program could not start, 126 for a broken protocol.
fn run() -> i32 {
    // A node gone before the last report must not kill the supervisor through SIGPIPE before
    // it has swept its tree (`warren-supervisor` has no Rust runtime to ignore it; the
    // program gets it back at its default).
    // SAFETY: signal(2) with SIG_IGN installs no handler code.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    // SAFETY: prctl with integer arguments. Reset at the program's exec.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // The report pipe and the lifeline arrive inheritable; the program must not hold them
    // (the node waits for the report pipe's end of file, which is the supervisor's exit).
    for fd in [REPORT_FD, LIFELINE_FD] {
        // SAFETY: fcntl on descriptors the node set up (F_SETFD on a closed one fails).
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    if !is_open(REPORT_FD) {
        return 126;
    }
    // SAFETY: the node set up fd 4 as our report pipe (checked open); nothing else owns it.
    let mut report = unsafe { File::from_raw_fd(REPORT_FD) };
    let spec = match read_spec() {
        Ok(spec) => spec,
        Err(e) => {
            let _ = writeln!(report, "error supervisor: bad spec: {e}");
            return 126;
        }
    };
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let mut signals = match Signals::block() {
        Ok(signals) => signals,
        Err(e) => {
            let _ = writeln!(report, "error supervisor: signalfd: {e}");
            return 126;
        }
    };
    let log = match spec
        .job_log
        .as_deref()
        .map(record::open_job_log)
        .transpose()
    {
        Ok(log) => log,
        Err(e) => {
            let _ = writeln!(report, "error cannot open the job log: {e}");
            return 127;
        }
    };
    let main = match start(&spec) {
        Ok(pid) => pid,
        Err(e) => {
            let _ = writeln!(report, "error {e}");
            return 127;
        }
    };
    let program = ProcessRef::of(main).unwrap_or(ProcessRef {
        pid: main,
        start_time: 0,
    });
    if let Some(log) = &log
        && let Err(e) = log_start(log, program)
    {
        // A job no restarted node could find again must not run.
        kill_tree();
        sweep();
        let _ = writeln!(report, "error cannot write to the job log: {e}");
        return 127;
    }
    // The uid the program really runs as and its seccomp mode, read back, so a node asking
    // for a job user can tell this supervisor applied both (an older one ignores the field
    // and says nothing, or knows job users but not the keyring filter and leaves out the
    // mode).
    let mut started = format!("started {main} {}", program.start_time);
    if let Some((uid, seccomp)) = read_back(main) {
        started.push_str(&format!(" {uid}"));
        if let Some(mode) = seccomp {
            started.push_str(&format!(" {mode}"));
        }
    }
    let _ = writeln!(report, "{started}");
    detach_stdio();
    let lifeline = spec.lifeline.then_some(LIFELINE_FD);
    let (status, reason) = watch(main, &mut signals, lifeline, spec.deadline_ms);
    let ended = ExitRecord {
        status,
        reason,
        ended_at_ms: record::now_ms(),
    };
    if let Some(log) = &log {
        let _ = record::write_line(log, &Entry::Ended(ended));
    }
    if let Ok(json) = serde_json::to_string(&ended) {
        let _ = writeln!(report, "ended {json}");
    }
    sweep();
    0
}

/// Appends who runs the job to its log, before the node hears of the start: a node that
/// dies now still finds the job when it restarts.
fn log_start(log: &File, program: ProcessRef) -> io::Result<()> {
    let me = std::process::id().cast_signed();
    let supervisor = ProcessRef::of(me).ok_or_else(|| io::Error::other("no /proc/self/stat"))?;
    record::write_line(
        log,
        &Entry::Started {
            supervisor,
            program,
        },
    )
}

/// The real uid of `pid` (our unreaped child: its `/proc` entry stays until we reap it)
/// and its seccomp mode (`Seccomp:`, 2 for a filter; none on a kernel without seccomp).
fn read_back(pid: i32) -> Option<(u32, Option<u32>)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let uid = super::users::status_uids(&status).next()?;
    let seccomp = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .and_then(|m| m.trim().parse().ok());
    Some((uid, seccomp))
}

/// Whether `fd` is an open descriptor (taking ownership of a closed one is undefined).
fn is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

fn read_spec() -> io::Result<Spec> {
    if !is_open(SPEC_FD) {
        return Err(io::Error::other("no spec descriptor"));
    }
    // SAFETY: the node set up fd 3 as our spec socket (checked open); nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(SPEC_FD) };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    serde_json::from_slice(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Starts the program in its own process group with the spec's stdio; returns its pid.
/// Started as the node starts programs ([`vfork`]): the supervisor is not copied either.
fn start(spec: &Spec) -> io::Result<i32> {
    let stdio = program_stdio(spec.files.as_ref())?;
    let mut setup = spec.setup;
    // Without `join` the supervisor joined the cgroups: the program is born in them.
    setup.procs_len = 0;
    (setup.into_cgroup, setup.v2_procs) = (-1, -1);
    setup.unblock_signals = true;
    // Open until the program has started.
    let _join = join_on_exec(&spec.join, &mut setup)?;
    let plan = vfork::Plan {
        program: &spec.program,
        args: &spec.args,
        env: &spec.env,
        cwd: &spec.cwd,
        stdio: [&stdio[0], &stdio[1], &stdio[2]],
        setup,
        role: Role::Program,
    };
    // The supervisor reaps with waitpid(-1): the pidfd is not needed.
    let (pid, _pidfd) = vfork::start(&plan).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot start {}: {e}", spec.program.display()),
        )
    })?;
    Ok(pid)
}

/// Opens what the program needs to join `dirs` as it starts: a v1 directory's `tasks`, else
/// (v2 has no `tasks`) the directory itself to be created in and its `cgroup.procs`.
fn join_on_exec(dirs: &[PathBuf], setup: &mut ChildSetup) -> io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::new();
    for dir in dirs {
        let opened = OpenOptions::new().write(true).open(dir.join("tasks"));
        match opened {
            Ok(tasks) if setup.procs_len < setup.procs.len() => {
                let tasks = OwnedFd::from(tasks);
                setup.procs[setup.procs_len] = tasks.as_raw_fd();
                setup.procs_len += 1;
                fds.push(tasks);
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let into = OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_DIRECTORY)
                    .open(dir)
                    .map_err(|e| named(dir, e))?;
                let procs = dir.join("cgroup.procs");
                let procs = OpenOptions::new()
                    .write(true)
                    .open(&procs)
                    .map_err(|e| named(&procs, e))?;
                let (into, procs) = (OwnedFd::from(into), OwnedFd::from(procs));
                (setup.into_cgroup, setup.v2_procs) = (into.as_raw_fd(), procs.as_raw_fd());
                fds.extend([into, procs]);
            }
            Err(e) => return Err(named(&dir.join("tasks"), e)),
        }
    }
    Ok(fds)
}

/// The program's stdin, stdout and stderr: the spec's files, else the supervisor's own.
fn program_stdio(files: Option<&SpecFiles>) -> io::Result<[OwnedFd; 3]> {
    let Some(files) = files else {
        let own = |fd: RawFd| {
            // SAFETY: the supervisor's stdio, open for its whole life (the node set them up).
            unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()
        };
        return Ok([own(0)?, own(1)?, own(2)?]);
    };
    let append = |path: &PathBuf, create: bool| {
        OpenOptions::new()
            .append(true)
            .create(create)
            .mode(0o600)
            .open(path)
            .map_err(|e| named(path, e))
    };
    let stdin = File::open(&files.stdin).map_err(|e| named(&files.stdin, e))?;
    Ok([
        stdin.into(),
        append(&files.stdout, false)?.into(),
        append(&files.stderr, true)?.into(),
    ])
}

/// `e`, saying which file it is about.
fn named(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// Points the supervisor's own stdio at `/dev/null`, so the node sees end of file on its
/// pipes when the program (not the supervisor) closes them.
fn detach_stdio() {
    if let Ok(null) = OpenOptions::new().read(true).write(true).open("/dev/null") {
        for fd in 0..3 {
            // SAFETY: dup2 onto our own stdio descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}

/// The signals the supervisor takes through a signalfd.
struct Signals {
    fd: File,
}

impl Signals {
    const TAKEN: [i32; 6] = [
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
    ];

    fn block() -> io::Result<Self> {
        // SAFETY: a sigset on our stack; sigprocmask and signalfd take pointers to it.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&raw mut set);
            for signal in Self::TAKEN {
                libc::sigaddset(&raw mut set, signal);
            }
            if libc::sigprocmask(libc::SIG_BLOCK, &raw const set, std::ptr::null_mut()) != 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = libc::signalfd(-1, &raw const set, libc::SFD_CLOEXEC);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                fd: File::from_raw_fd(fd),
            })
        }
    }

    /// The next pending signal's number.
    fn read(&mut self) -> Option<i32> {
        // SAFETY: signalfd_siginfo is plain data; the kernel fills it whole or not at all.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into `info`.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut info).cast(), size) };
        (usize::try_from(n).ok() == Some(size)).then(|| i32::try_from(info.ssi_signo).unwrap_or(0))
    }
}

/// Waits until the program `main` has ended: forwards SIGTERM, kills the tree on a kill
/// signal, the lifeline's end or the deadline. Returns its status and why it ended.
fn watch(
    main: i32,
    signals: &mut Signals,
    mut lifeline: Option<RawFd>,
    mut deadline_ms: Option<u64>,
) -> (ProgramExit, EndReason) {
    let mut reason = EndReason::Exited;
    loop {
        if let Some(status) = reap(main) {
            return (status, reason);
        }
        let timeout = deadline_ms.map_or(-1, |d| {
            let left = d.saturating_sub(record::now_ms());
            i32::try_from(left).unwrap_or(i32::MAX)
        });
        let mut fds = [
            libc::pollfd {
                fd: signals.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: lifeline.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two pollfds on our stack.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if ready == 0 && deadline_ms.take().is_some() {
            reason = EndReason::Deadline;
            kill_tree();
            continue;
        }
        if fds[1].revents != 0 && lifeline.take().is_some() {
            reason = EndReason::NodeGone;
            kill_tree();
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0 {
            match signals.read() {
                Some(libc::SIGTERM) => {
                    // SAFETY: `main` is our unreaped child, so its pid cannot be reused.
                    unsafe { libc::kill(main, libc::SIGTERM) };
                }
                Some(libc::SIGCHLD) | None => {}
                Some(_) => {
                    reason = EndReason::Killed;
                    kill_tree();
                }
            }
        }
    }
}

/// Reaps every exited child; returns `main`'s status once it is among them.
fn reap(main: i32) -> Option<ProgramExit> {
    let mut found = None;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status word on our stack.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if pid <= 0 {
            return found;
        }
        if pid == main {
            found = Some(ProgramExit::from_wait_status(status));
        }
    }
}

/// SIGKILLs every descendant of the supervisor (they are all its descendants: orphans are
/// re-parented to it as the subreaper).
fn kill_tree() {
    for pid in descendants(std::process::id() as i32) {
        // SAFETY: kill(2); every pid was just found below us in the process tree.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// Kills and reaps until no child is left (or [`SWEEP_LIMIT`] passes). With no child left
/// there is no descendant either (orphans re-parent to the subreaper), so the common case
/// costs one `waitpid`.
fn sweep() {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status word on our stack.
        let pid = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
        if pid < 0 || start.elapsed() > SWEEP_LIMIT {
            return;
        }
        if pid == 0 {
            kill_tree();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Every process whose chain of parents leads to `root`: through the kernel's per-task
/// `children` lists where it has them, else from one scan of `/proc`.
pub(crate) fn descendants(root: i32) -> Vec<i32> {
    if !Path::new(&format!("/proc/{root}/task/{root}/children")).exists() {
        return descendants_by_scan(root);
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(children(parent));
        i += 1;
    }
    found.remove(0);
    found
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn descendants_by_scan(root: i32) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(i32, i32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            Some((pid, record::parse_stat(&text)?.0))
        })
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_are_found_by_both_ways() {
        // Rooted at a shell of our own, not at the test process: other tests' children
        // are none of this test's business (killing them failed those tests).
        let mut child = std::process::Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let sh = child.id() as i32;
        let start = Instant::now();
        let mut found = descendants(sh);
        while found.len() < 2 && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
            found = descendants(sh);
        }
        let mut scanned = descendants_by_scan(sh);
        for pid in &found {
            // SAFETY: kill(2) of the shell's own children, found just above.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        let _ = child.kill();
        let _ = child.wait();
        found.sort_unstable();
        scanned.sort_unstable();
        assert_eq!(found.len(), 2, "the shell's two sleeps: {found:?}");
        assert_eq!(found, scanned);
    }
}
