//! The node's side of a supervisor: start `<exe> __warren-supervise` inside the program's
//! cgroups with its descriptors 3 to 5 set up, send it the spec, and learn the program's
//! pid or why it could not start. Then signal it, race-free through a pidfd where the
//! kernel has them.
//!
//! The supervisor starts as a job's program does ([`vfork`]): the node is not forked, and
//! the child joins the cgroups before `exec`, so the supervisor and everything it starts
//! are inside them from their first instruction.
//!
//! The spec, report and lifeline channels are Unix socket pairs, not pipes: a job runs as
//! the node's user and sees `/proc/<supervisor>/fd` and `/proc/<node>/fd`, and a pipe there
//! can be opened (a job could then plant its own spec ahead of the next job's in a waiting
//! spare, or hold the spec open so its end never comes), where opening a socket fails with
//! `ENXIO`. The node ends the spec with `shutdown(SHUT_WR)`; the whole exchange up to the
//! program's start has [`HANDSHAKE_WAIT`] (a spare a job stopped with `SIGSTOP` answers
//! never).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::pipe;

use super::ContainError;
use super::record::ProcessRef;
use super::setup::ChildSetup;
use super::supervisor::{REPORT_FD, SPEC_FD, SUPERVISE_ARG, Spec};
use super::vfork::{self, Role};

/// Lowest descriptor the child-side ends are moved to before the fork, so the `dup2`s onto
/// 3, 4 and 5 never overwrite one another.
const HIGH_FD: RawFd = 10;

/// How long a supervisor has from being handed its spec to reporting the program's start
/// (or why it could not): a spare answers in about a millisecond and a fresh supervisor
/// in a few on a loaded node, so only a stopped or wedged one takes this long. It is then
/// killed, and the start fails with [`ContainError::SupervisorSilent`].
pub(crate) const HANDSHAKE_WAIT: Duration = Duration::from_secs(30);

/// The longest report line a supervisor may send (`started ...`, `error <why>`, `ended
/// <record>`: a few hundred bytes). Whoever holds the report socket must not grow the
/// node's memory with a line that never ends.
pub(crate) const MAX_REPORT_LINE: usize = 16 * 1024;

/// A supervisor's report lines, each at most [`MAX_REPORT_LINE`] bytes.
#[derive(Debug)]
pub(crate) struct ReportLines {
    reader: BufReader<UnixStream>,
    /// The line read so far (kept when a `next_line` future is dropped).
    line: Vec<u8>,
}

impl ReportLines {
    fn new(stream: UnixStream) -> Self {
        Self {
            reader: BufReader::new(stream),
            line: Vec::new(),
        }
    }

    /// The next line without its newline; `None` at the end (what was read of an
    /// unfinished last line is given first). Cancel-safe: a dropped future loses nothing.
    ///
    /// # Errors
    /// Reading fails, a line is over [`MAX_REPORT_LINE`] bytes, or it is not UTF-8.
    pub(crate) async fn next_line(&mut self) -> io::Result<Option<String>> {
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                if self.line.is_empty() {
                    return Ok(None);
                }
                return utf8(std::mem::take(&mut self.line)).map(Some);
            }
            let end = available.iter().position(|b| *b == b'\n');
            let taken = end.map_or(available.len(), |at| at + 1);
            if self.line.len() + taken > MAX_REPORT_LINE + 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("a supervisor report line is over {MAX_REPORT_LINE} bytes"),
                ));
            }
            self.line.extend_from_slice(&available[..taken]);
            self.reader.consume(taken);
            if end.is_some() {
                self.line.pop();
                return utf8(std::mem::take(&mut self.line)).map(Some);
            }
        }
    }
}

fn utf8(bytes: Vec<u8>) -> io::Result<String> {
    String::from_utf8(bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// A started supervisor and its program.
#[derive(Debug)]
pub(crate) struct Launched {
    /// The supervisor process (our child until the node process ends; a dropped handle
    /// leaves it running: it kills its tree itself when the lifeline ends).
    pub(crate) child: vfork::Process,
    /// Its stdin, when [`SupervisorStdio::Piped`].
    pub(crate) stdin: Option<pipe::Sender>,
    /// The supervisor, named by pid and start time.
    pub(crate) supervisor: ProcessRef,
    /// A pidfd of the supervisor, where the kernel has them.
    pub(crate) pidfd: Option<OwnedFd>,
    /// The program.
    pub(crate) program: ProcessRef,
    /// The supervisor's later report lines (`ended ...`).
    pub(crate) reports: ReportLines,
    /// The node's end of the lifeline: dropping it tells the supervisor the node is gone.
    pub(crate) _lifeline: Option<OwnedFd>,
}

/// The supervisor's own stdio (and so the program's, unless the spec names files).
pub(crate) enum SupervisorStdio {
    /// `/dev/null` for all three (a detached job: its program writes to the unit's files).
    Null,
    /// A pipe to its stdin (the node's end is [`Launched::stdin`]), and these as stdout
    /// and stderr.
    Piped { stdout: OwnedFd, stderr: OwnedFd },
}

/// How the supervisor's own process is set up.
pub(crate) struct LaunchOptions {
    /// Its (and so the program's) stdin, stdout, stderr.
    pub(crate) stdio: SupervisorStdio,
    /// Put it in a process group of its own (a detached job): terminal signals to the
    /// node's group (Ctrl-C, a hangup) do not reach it. Not a new session: that would also
    /// give it a scheduling autogroup of its own, which on a busy machine delays its start
    /// by a scheduling period.
    pub(crate) own_group: bool,
    /// The cgroups it joins (only `procs` of this setup is used here).
    pub(crate) join: ChildSetup,
    /// How long it has to report the program's start ([`HANDSHAKE_WAIT`]).
    pub(crate) wait: Duration,
}

/// Starts a supervisor running `spec` and waits for its first report.
///
/// # Errors
/// [`ContainError`] naming what failed: the pipes, the supervisor's start, its protocol,
/// or the program's start as the supervisor reports it
/// (`cannot start /path: No such file or directory`).
pub(crate) async fn launch(
    exe: &Path,
    spec: &Spec,
    options: LaunchOptions,
) -> Result<Launched, ContainError> {
    let io = |what: &'static str| move |source: io::Error| ContainError::Pipe { what, source };
    let (spec_w, spec_r) = channel().map_err(io("spec socket"))?;
    let (report_r, report_w) = channel().map_err(io("report socket"))?;
    let (spec_r, report_w) = (OwnedFd::from(spec_r), OwnedFd::from(report_w));
    // The supervisor reads the lifeline; the node holds its end (close-on-exec, so no
    // other child inherits it) until it goes away.
    let (life_r, node_lifeline) = if spec.lifeline {
        let (w, r) = channel().map_err(io("lifeline socket"))?;
        (Some(OwnedFd::from(r)), Some(OwnedFd::from(w)))
    } else {
        (None, None)
    };
    let (stdio, stdin) = stdio_of(options.stdio).map_err(io("supervisor stdio"))?;
    let pass = [Some(&spec_r), Some(&report_w), life_r.as_ref()];
    let child = spawn_supervisor(exe, &stdio, options.join, pass, options.own_group)?;
    // Our copies of its ends must be gone before end of file can come.
    drop((spec_r, report_w, life_r, stdio));
    let started = Started {
        exe,
        child,
        spec: spec_w,
        reports: report_r,
    };
    started
        .handshake(spec, stdin, node_lifeline, options.wait)
        .await
}

/// Starts `exe` as a supervisor with `stdio`, `setup` and `pass` as its descriptors 3–5,
/// in the node's own directory: the spec's paths may be relative to it (a relative
/// `--data-dir`, as the demo uses).
fn spawn_supervisor(
    exe: &Path,
    stdio: &[OwnedFd; 3],
    setup: ChildSetup,
    pass: [Option<&OwnedFd>; 3],
    own_group: bool,
) -> Result<vfork::Process, ContainError> {
    let args = [SUPERVISE_ARG.to_owned()];
    let cwd = std::env::current_dir().unwrap_or_else(|_| "/".into());
    let plan = vfork::Plan {
        program: exe,
        args: &args,
        env: &[],
        cwd: &cwd,
        stdio: [&stdio[0], &stdio[1], &stdio[2]],
        setup,
        role: Role::Supervisor { pass, own_group },
    };
    vfork::spawn(&plan).map_err(|source| ContainError::SupervisorStart {
        exe: exe.to_owned(),
        source,
    })
}

/// A connected pair of close-on-exec Unix stream sockets: `open()` of either through
/// `/proc/<pid>/fd` fails (`ENXIO`), unlike a pipe's ends.
fn channel() -> io::Result<(StdStream, StdStream)> {
    StdStream::pair()
}

/// `stream` for the runtime.
fn tokio_stream(stream: StdStream, what: &'static str) -> Result<UnixStream, ContainError> {
    stream
        .set_nonblocking(true)
        .and_then(|()| UnixStream::from_std(stream))
        .map_err(|source| ContainError::Pipe { what, source })
}

/// A supervisor process that has not been sent its spec yet.
#[derive(Debug)]
struct Started<'a> {
    exe: &'a Path,
    child: vfork::Process,
    spec: StdStream,
    reports: StdStream,
}

impl Started<'_> {
    /// Sends `spec`, waits (at most `wait`) for the program's start and returns the
    /// launched job.
    async fn handshake(
        self,
        spec: &Spec,
        stdin: Option<OwnedFd>,
        lifeline: Option<OwnedFd>,
        wait: Duration,
    ) -> Result<Launched, ContainError> {
        let io = |what: &'static str| move |source: io::Error| ContainError::Pipe { what, source };
        let mut child = self.child;
        child.outlive_handle();
        let mut sender = tokio_stream(self.spec, "spec socket")?;
        let mut reports = ReportLines::new(tokio_stream(self.reports, "report socket")?);
        let exchange = async {
            send_spec(&mut sender, spec).await?;
            first_report(&mut reports, self.exe).await
        };
        let (program, uid) = match tokio::time::timeout(wait, exchange).await {
            Ok(Err(ContainError::Refused(why))) => return Err(refused(spec, self.exe, why)),
            Ok(program) => program?,
            Err(_) => return Err(silenced(&child, &sender, wait)),
        };
        let pid = child.id();
        check_job_user(spec, uid, self.exe, pid)?;
        let supervisor = ProcessRef::of(pid).unwrap_or(ProcessRef { pid, start_time: 0 });
        let stdin = stdin
            .map(pipe::Sender::from_owned_fd)
            .transpose()
            .map_err(io("supervisor stdin"))?;
        Ok(Launched {
            child,
            stdin,
            supervisor,
            pidfd: pidfd_open(pid),
            program,
            reports,
            _lifeline: lifeline,
        })
    }
}

/// Kills a supervisor that did not answer within `waited` and says whether it had read its
/// spec: the node's socket still holds bytes the supervisor has not taken.
fn silenced(child: &vfork::Process, sender: &UnixStream, waited: Duration) -> ContainError {
    let pid = child.id();
    let mut unread: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int: the bytes sent on this socket not yet read.
    let asked = unsafe { libc::ioctl(sender.as_raw_fd(), libc::TIOCOUTQ, &raw mut unread) };
    let spec_read = asked == 0 && unread == 0;
    if let Some(process) = ProcessRef::of(pid) {
        signal(&process, pidfd_open(pid).as_ref(), libc::SIGKILL);
    }
    tracing::warn!(
        supervisor = pid,
        spec_read,
        "a supervisor did not answer; killed it"
    );
    ContainError::SupervisorSilent {
        pid,
        waited,
        spec_read,
    }
}

/// A supervisor started ahead of its job and waiting for its spec, so that a detached job
/// does not wait for a process start (about a millisecond here): in a process group of its
/// own, stdio on `/dev/null`, no lifeline, in none of the job's cgroups (the spec's `join`
/// has the program join them). Dropped unused, it is killed; a node that dies closes its
/// spec socket, and a supervisor that reads an empty spec exits.
#[derive(Debug)]
pub(crate) struct Spare {
    exe: std::path::PathBuf,
    child: vfork::Process,
    spec: StdStream,
    reports: StdStream,
}

impl Spare {
    /// Starts one. Blocks for the spawn (until the supervisor's `exec`): call it off the
    /// runtime's threads.
    ///
    /// # Errors
    /// When the pipes or the process cannot be made.
    pub(crate) fn start(exe: &Path) -> Result<Self, ContainError> {
        let io = |what: &'static str| move |source: io::Error| ContainError::Pipe { what, source };
        let (spec, spec_r) = channel().map_err(io("spec socket"))?;
        let (reports, report_w) = channel().map_err(io("report socket"))?;
        let (spec_r, report_w) = (OwnedFd::from(spec_r), OwnedFd::from(report_w));
        let (stdio, _) = stdio_of(SupervisorStdio::Null).map_err(io("supervisor stdio"))?;
        let pass = [Some(&spec_r), Some(&report_w), None];
        let child = spawn_supervisor(exe, &stdio, ChildSetup::new(0, 0), pass, true)?;
        Ok(Self {
            exe: exe.to_owned(),
            child,
            spec,
            reports,
        })
    }

    /// Its pid.
    #[cfg(test)]
    pub(crate) fn pid(&self) -> i32 {
        self.child.id()
    }

    /// Whether it ended while it waited (killed, say): then it is not to be used.
    pub(crate) fn has_ended(&self) -> bool {
        self.child.has_exited()
    }

    /// Gives it `spec` (a detached job's, with `join` naming the job's cgroups) and waits
    /// for the program's start.
    ///
    /// # Errors
    /// As [`launch`]; [`ContainError::SupervisorSpec`] when it ended before it got the spec,
    /// [`ContainError::SupervisorSilent`] when it did not answer in time (then killed).
    pub(crate) async fn launch(
        self,
        spec: &Spec,
        wait: Duration,
    ) -> Result<Launched, ContainError> {
        let started = Started {
            exe: &self.exe,
            child: self.child,
            spec: self.spec,
            reports: self.reports,
        };
        started.handshake(spec, None, None, wait).await
    }
}

/// The supervisor's descriptors 0 to 2, and the node's end of its stdin pipe when piped.
fn stdio_of(stdio: SupervisorStdio) -> io::Result<([OwnedFd; 3], Option<OwnedFd>)> {
    match stdio {
        SupervisorStdio::Null => {
            let null = OwnedFd::from(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")?,
            );
            Ok(([null.try_clone()?, null.try_clone()?, null], None))
        }
        SupervisorStdio::Piped { stdout, stderr } => {
            let (reader, writer) = io::pipe()?;
            Ok(([OwnedFd::from(reader), stdout, stderr], Some(writer.into())))
        }
    }
}

/// A duplicate of `fd` numbered at least [`HIGH_FD`], close-on-exec.
fn high(fd: &OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, HIGH_FD) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Writes `spec` and ends it (`shutdown(SHUT_WR)`: the supervisor reads to end of file).
async fn send_spec(sender: &mut UnixStream, spec: &Spec) -> Result<(), ContainError> {
    let source = |source| ContainError::SupervisorSpec { source };
    let bytes = serde_json::to_vec(spec).map_err(|e| source(io::Error::other(e)))?;
    sender.write_all(&bytes).await.map_err(source)?;
    sender.shutdown().await.map_err(source)
}

/// What a supervisor read back of the program it started: the uid it runs as and its
/// seccomp mode (each missing from an older supervisor's report).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ReadBack {
    uid: Option<u32>,
    seccomp: Option<u32>,
}

/// `Seccomp:` of a process under a seccomp filter.
const SECCOMP_MODE_FILTER: u32 = 2;

/// Reads `started <pid> <start time> [<uid> [<seccomp mode>]]` (the program's, with the uid
/// it runs as and its seccomp mode) or `error <why>`.
async fn first_report(
    reports: &mut ReportLines,
    exe: &Path,
) -> Result<(ProcessRef, ReadBack), ContainError> {
    let line = reports
        .next_line()
        .await
        .map_err(|source| ContainError::SupervisorReport { source })?;
    let Some(line) = line else {
        return Err(ContainError::SupervisorEnded {
            exe: exe.to_owned(),
        });
    };
    if let Some(why) = line.strip_prefix("error ") {
        return Err(ContainError::Refused(why.to_owned()));
    }
    let mut words = line.strip_prefix("started ").unwrap_or("").split(' ');
    let pid = words.next().and_then(|w| w.parse().ok());
    let start_time = words.next().and_then(|w| w.parse().ok());
    let uid = words.next().and_then(|w| w.parse().ok());
    let seccomp = words.next().and_then(|w| w.parse().ok());
    match (pid, start_time) {
        (Some(pid), Some(start_time)) => {
            Ok((ProcessRef { pid, start_time }, ReadBack { uid, seccomp }))
        }
        _ => Err(ContainError::SupervisorProtocol { line }),
    }
}

/// The supervisor's refusal `why`; with a job user in `spec`, a spec it could not read is
/// an older supervisor's (it does not know job users: the spec leaves out what it needs, so
/// it started nothing), named so.
fn refused(spec: &Spec, exe: &Path, why: String) -> ContainError {
    match spec.setup.job_user {
        Some(expected) if why.starts_with(BAD_SPEC) => ContainError::SupervisorIgnoredJobUser {
            exe: exe.to_owned(),
            expected,
            answer: format!(
                "could not read the spec: {}",
                why[BAD_SPEC.len()..].trim_start_matches(": ")
            ),
        },
        _ => ContainError::Refused(why),
    }
}

/// How a supervisor begins its refusal of a spec it cannot read.
const BAD_SPEC: &str = "supervisor: bad spec";

/// With a job user in `spec`, refuses a start whose report does not name that uid (an
/// older supervisor, which ran the program as the node's user) or a seccomp filter on the
/// program (one that knows job users but not the keyring filter, `keyring`): the
/// supervisor is told to kill its tree (SIGUSR1), and the error says which binary to
/// replace.
fn check_job_user(
    spec: &Spec,
    reported: ReadBack,
    exe: &Path,
    supervisor: i32,
) -> Result<(), ContainError> {
    let Some(expected) = spec.setup.job_user else {
        return Ok(());
    };
    if reported.uid == Some(expected) && reported.seccomp == Some(SECCOMP_MODE_FILTER) {
        return Ok(());
    }
    if let Some(process) = ProcessRef::of(supervisor) {
        signal(&process, pidfd_open(supervisor).as_ref(), libc::SIGUSR1);
    }
    tracing::error!(supervisor = %exe.display(), expected, ?reported, "a supervisor ran a job's program as another uid than the job's or without the keyring filter; killed it");
    Err(ContainError::SupervisorIgnoredJobUser {
        exe: exe.to_owned(),
        expected,
        answer: match reported {
            ReadBack { uid: None, .. } => "reported no uid".to_owned(),
            ReadBack { uid: Some(u), .. } if u != expected => format!("reported uid {u}"),
            ReadBack { seccomp: None, .. } => {
                "reported no seccomp mode, so no keyring filter".to_owned()
            }
            ReadBack {
                seccomp: Some(mode),
                ..
            } => format!("reported seccomp mode {mode}, not the keyring filter"),
        },
    })
}

/// A pidfd for `pid` (Linux 5.3+); `None` where the kernel has none.
pub(crate) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor we then own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sends `signal` to the supervisor: through its pidfd (cannot hit a reused pid), else by
/// pid after checking its start time.
pub(crate) fn signal(supervisor: &ProcessRef, pidfd: Option<&OwnedFd>, signal: i32) {
    if let Some(fd) = pidfd {
        // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent == 0 {
            return;
        }
    }
    if supervisor.is_alive() {
        // SAFETY: kill(2) of a process whose start time we just checked.
        unsafe { libc::kill(supervisor.pid, signal) };
    }
}

/// Whether `exe` answers as a supervisor: started as one with an empty spec, it must report
/// `error supervisor: bad spec` (any other binary, such as a test harness, does not).
/// Costs one process start, once per node.
pub(crate) fn answers_as_supervisor(exe: &Path) -> bool {
    use std::io::BufRead as _;
    use std::os::unix::process::CommandExt as _;
    let Ok((report_r, report_w)) = channel() else {
        return false;
    };
    let Ok(report_fd) = high(&OwnedFd::from(report_w)) else {
        return false;
    };
    let raw = report_fd.as_raw_fd();
    let mut command = std::process::Command::new(exe);
    command
        .arg(SUPERVISE_ARG)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: dup2 and close only: async-signal-safe. fd 3 (the spec) is closed, so the
    // supervisor reads an empty spec at once.
    unsafe {
        command.pre_exec(move || {
            libc::close(SPEC_FD);
            if libc::dup2(raw, REPORT_FD) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let Ok(mut child) = command.spawn() else {
        return false;
    };
    drop(command);
    drop(report_fd);
    let mut line = String::new();
    let _ = io::BufReader::new(report_r).read_line(&mut line);
    let _ = child.kill();
    let _ = child.wait();
    line.starts_with("error supervisor: bad spec")
}

#[cfg(test)]
#[path = "supervised_tests.rs"]
mod tests;
