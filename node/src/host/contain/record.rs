//! What outlives the node process for a detached job: its job log `detached/job.json`, one
//! JSON line per fact, only ever appended to. The node writes the first line, the
//! [`JobRecord`] (containment, limits and deadline), before it starts the supervisor; the
//! supervisor appends [`Entry::Started`] (its own pid and the program's) before it reports
//! the start, and [`Entry::Ended`] when the program has ended. One file, created once: each
//! file a job creates costs it tens of microseconds on a busy ext4 directory.
//!
//! A line is one `write` to a file opened `O_APPEND`, so a process killed at any moment
//! leaves whole lines; a reader ignores a last line it cannot parse (one being written).
//! Records of an older node (a whole record rewritten by rename, the exit in `exit.json`)
//! are still read, so jobs started before an upgrade re-attach after it.
//!
//! The job runs as the node's user and can replace its log: every read opens it without
//! following a symlink (at `detached/` or `job.json`), refuses anything but a regular file
//! (a FIFO would block the reader, `/dev/zero` would fill its memory) and reads at most
//! [`JOB_LOG_CAP`] bytes. A refused log is an error naming why, for that unit alone.
//!
//! Also the `/proc` facts that guard against pid reuse: a process's start time and the boot
//! id.

use std::fs::{self, File};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::limits::ProgramLimits;

/// The directory in a unit's directory that holds its detached job's files.
pub const DETACHED_DIR: &str = "detached";
/// The job log's file name.
pub const JOB_FILE: &str = "job.json";
/// Where an older node's supervisor recorded the exit (read for jobs it started).
pub const EXIT_FILE: &str = "exit.json";
/// Where a detached program's stderr goes.
pub const STDERR_FILE: &str = "stderr";

/// Most bytes of a job log (or an older node's exit file) the node reads. A real log is
/// three lines of well under a kilobyte each (the record names a few cgroup paths; the
/// supervisor's two lines are fixed-size), so this is three orders of magnitude of room
/// and still a bounded read: each unit found running at start is read on a blocking
/// thread, so what a node holds for it is this times the threads reading at once.
pub const JOB_LOG_CAP: u64 = 1 << 20;

/// How a program ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProgramExit {
    /// It exited with this code.
    Exited(i32),
    /// This signal ended it.
    Signaled(i32),
}

impl ProgramExit {
    /// From a `waitpid` status word.
    pub(crate) fn from_wait_status(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            Self::Signaled(libc::WTERMSIG(status))
        } else {
            Self::Exited(libc::WEXITSTATUS(status))
        }
    }
}

/// Why a supervisor ended its program (besides the program simply exiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndReason {
    /// The program exited by itself (or by a signal from outside the supervisor).
    Exited,
    /// The node asked the supervisor to kill it (cancel, deadline or the job's end).
    Killed,
    /// The deadline in the job record passed (while the node was away or not).
    Deadline,
    /// The node that started a non-detached program went away.
    NodeGone,
}

/// What a supervisor records when its program has ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ExitRecord {
    /// How the program ended.
    pub status: ProgramExit,
    /// Why.
    pub reason: EndReason,
    /// When, in milliseconds since the Unix epoch.
    pub ended_at_ms: u64,
}

/// A process named by pid and start time, so a reused pid is never mistaken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProcessRef {
    /// Its pid.
    pub pid: i32,
    /// Field 22 of `/proc/<pid>/stat`: clock ticks after boot when it started.
    pub start_time: u64,
}

impl ProcessRef {
    /// The process `pid` as it is now, if it exists.
    pub(crate) fn of(pid: i32) -> Option<Self> {
        Some(Self {
            pid,
            start_time: start_time(pid)?,
        })
    }

    /// Whether the process still exists and is the same one (same start time).
    pub(crate) fn is_alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }
}

/// A line of the job log after the job record: what the supervisor appends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// The supervisor started the program.
    Started {
        /// The supervisor.
        supervisor: ProcessRef,
        /// The program.
        program: ProcessRef,
    },
    /// The program ended.
    Ended(ExitRecord),
}

/// A detached job, as recorded for the node that restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct JobRecord {
    /// The unit's id, for logs.
    pub unit: String,
    /// Names the program in the unit's detail (`ansible-runner worker`).
    pub label: String,
    /// The boot the job started in (`/proc/sys/kernel/random/boot_id`): after a reboot
    /// no pid in this record means anything.
    pub boot_id: String,
    /// The supervisor, once started (from the log's [`Entry::Started`]; an older node
    /// wrote it into the record itself).
    pub supervisor: Option<ProcessRef>,
    /// The program, once started.
    pub program: Option<ProcessRef>,
    /// Which containment the job runs in (as `warren status` names it).
    pub containment: String,
    /// The job's cgroup directories (empty without cgroups).
    pub cgroups: Vec<PathBuf>,
    /// The limits it runs under.
    pub limits: ProgramLimits,
    /// When the job must end, in milliseconds since the Unix epoch.
    pub deadline_ms: u64,
    /// The work type's deadline as configured, in milliseconds (for the unit's detail).
    pub deadline_ms_total: u64,
    /// How long a cancelled job has after its SIGTERM before it is killed, in milliseconds.
    pub cancel_grace_ms: u64,
    /// The results cap, in bytes.
    pub output_bytes: u64,
    /// The uid the program runs as (`[work] job-users`); `None`: the node's user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_user: Option<u32>,
}

/// The `detached/` directory of the unit whose directory is `unit_dir`, created (mode 0700)
/// when missing; `true` when it was already there (it may hold an older job's files).
///
/// # Errors
/// When it cannot be created.
pub(crate) fn detached_dir(unit_dir: &Path) -> io::Result<(PathBuf, bool)> {
    let dir = unit_dir.join(DETACHED_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => Ok((dir, false)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((dir, true)),
        Err(e) => Err(e),
    }
}

/// Starts the job log `dir/job.json` with `record` as its first line (mode 0600; an older
/// log is truncated; a symlink there is refused, not followed).
///
/// Not synced (a sync costs about 10 ms here): the log has to outlive the node *process*,
/// which the page cache does. After a crash of the machine no process it names is running
/// (the boot id tells so), and an `Ended` line lost with the page cache only turns a job
/// that ended in the last seconds before the crash, while its node was down, from "ended"
/// into "gone".
///
/// # Errors
/// When it cannot be created or written.
pub(crate) fn create_job_log(dir: &Path, record: &JobRecord) -> io::Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(JOB_FILE))?;
    write_line(&file, record)
}

/// Opens the job log at `path` to append to (a symlink is refused, not followed). The
/// supervisor keeps it open, so what a job later does to the path does not redirect its
/// writes.
///
/// # Errors
/// When it cannot be opened.
pub(crate) fn open_job_log(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Appends `value` as one JSON line, in one `write`.
///
/// # Errors
/// When it cannot be serialised or written.
pub(crate) fn write_line<T: Serialize>(mut file: &File, value: &T) -> io::Result<()> {
    let mut bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    file.write_all(&bytes)
}

/// A detached job as its log tells it: the record (with the supervisor and program once
/// started) and the exit once recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLog {
    /// The job record.
    pub record: JobRecord,
    /// How the program ended, once it did.
    pub exit: Option<ExitRecord>,
}

/// Reads the job log in `dir` (a unit's `detached/` directory): `Ok(None)` when there is
/// none. The first `Started` and the first `Ended` line count; reading stops at a line that
/// does not parse. Without an `Ended` line, an older node's `exit.json` is read.
///
/// # Errors
/// When the log exists but cannot be read, or its first line is not a job record.
pub fn read_job_log(dir: &Path) -> io::Result<Option<JobLog>> {
    let Some(bytes) = read_capped(dir, JOB_FILE)? else {
        return Ok(None);
    };
    let mut lines = bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or_default();
    let mut record: JobRecord =
        serde_json::from_slice(first).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut exit = None;
    for entry in lines.map_while(|l| serde_json::from_slice::<Entry>(l).ok()) {
        match entry {
            Entry::Started {
                supervisor,
                program,
            } if record.supervisor.is_none() => {
                record.supervisor = Some(supervisor);
                record.program = Some(program);
            }
            Entry::Ended(ended) if exit.is_none() => exit = Some(ended),
            Entry::Started { .. } | Entry::Ended(_) => {}
        }
    }
    if exit.is_none() {
        exit = read_json(dir, EXIT_FILE).ok().flatten();
    }
    Ok(Some(JobLog { record, exit }))
}

/// Reads `dir/name` as JSON: `Ok(None)` when it does not exist.
///
/// # Errors
/// When it exists but cannot be read or parsed.
pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(
    dir: &Path,
    name: &str,
) -> io::Result<Option<T>> {
    let Some(bytes) = read_capped(dir, name)? else {
        return Ok(None);
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Reads the regular file `dir/name`, at most [`JOB_LOG_CAP`] bytes: `Ok(None)` when it
/// (or `dir`) does not exist. Neither `dir` nor `name` is followed when it is a symlink,
/// and the open never blocks (`O_NONBLOCK`: a FIFO); what is not a regular file, or is
/// larger than the cap, is refused with an error saying so.
///
/// # Errors
/// When it cannot be opened or read, or is refused.
fn read_capped(dir: &Path, name: &str) -> io::Result<Option<Vec<u8>>> {
    let path = dir.join(name);
    let refused = |why: &str| {
        let text = format!(
            "{} {why}; the node writes it as a regular file, so something replaced it \
             (the job?) and it is not read",
            path.display()
        );
        io::Error::new(io::ErrorKind::InvalidData, text)
    };
    let nofollow = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY;
    let opened = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | nofollow)
        .open(dir);
    let dir_fd = match opened {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
            return Err(refused(
                "is in a directory that is a symbolic link or no directory",
            ));
        }
        Err(e) => return Err(e),
    };
    let name_c =
        std::ffi::CString::new(std::ffi::OsStr::new(name).as_bytes()).map_err(io::Error::other)?;
    // Looked at before it is opened: opening a device can have effects of its own.
    // SAFETY: a plain C struct; all zeroes is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    let at = libc::AT_SYMLINK_NOFOLLOW;
    // SAFETY: fstatat fills `stat` on our stack; the name is NUL-terminated.
    if unsafe { libc::fstatat(dir_fd.as_raw_fd(), name_c.as_ptr(), &raw mut stat, at) } != 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::NotFound {
            Ok(None)
        } else {
            Err(e)
        };
    }
    match stat.st_mode & libc::S_IFMT {
        libc::S_IFREG => {}
        libc::S_IFLNK => return Err(refused("is a symbolic link")),
        _ => return Err(refused("is not a regular file")),
    }
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | nofollow;
    // SAFETY: openat with a NUL-terminated name relative to a directory we hold open.
    let fd = unsafe { libc::openat(dir_fd.as_raw_fd(), name_c.as_ptr(), flags) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOENT) => Ok(None),
            Some(libc::ELOOP) => Err(refused("is a symbolic link")),
            _ => Err(io::Error::new(e.kind(), format!("{}: {e}", path.display()))),
        };
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    let meta = file.metadata()?;
    // Swapped for something else between the look and the open.
    if !meta.file_type().is_file() {
        return Err(refused("is not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(JOB_LOG_CAP + 1).read_to_end(&mut bytes)?;
    if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > JOB_LOG_CAP {
        return Err(refused(&format!("is larger than {JOB_LOG_CAP} bytes")));
    }
    Ok(Some(bytes))
}

/// Field 22 of `/proc/<pid>/stat`, the process's start time in clock ticks after boot.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text).map(|s| s.1)
}

/// `(ppid, start time)` from the text of a `/proc/<pid>/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
pub(crate) fn parse_stat(text: &str) -> Option<(i32, u64)> {
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state (3), ppid (4), ... starttime (22).
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start))
}

/// This boot's id.
pub(crate) fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// Milliseconds since the Unix epoch, now.
pub(crate) fn now_ms() -> u64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
#[path = "record_tests.rs"]
mod tests;
