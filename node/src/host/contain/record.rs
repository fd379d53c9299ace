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
//! Also the `/proc` facts that guard against pid reuse: a process's start time and the boot
//! id.

use std::fs::{self, File};
use std::io::{self, Write as _};
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
    let bytes = match fs::read(dir.join(JOB_FILE)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
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
    match fs::read(dir.join(name)) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
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
mod tests {
    use super::*;

    #[test]
    fn stat_with_a_hostile_command_name_parses() {
        let text = "4242 (evil) 1 2 (x) S 17 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 \
                    987654 1000 100\n";
        assert_eq!(parse_stat(text), Some((17, 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_and_a_changed_start_time_is_not() {
        let me = ProcessRef::of(std::process::id() as i32).expect("own stat");
        assert!(me.is_alive());
        let reused = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!reused.is_alive());
    }

    fn a_record() -> JobRecord {
        JobRecord {
            unit: "u1".into(),
            label: "ansible-runner worker".into(),
            boot_id: boot_id(),
            supervisor: None,
            program: None,
            containment: "subreaper supervisor".into(),
            cgroups: Vec::new(),
            limits: ProgramLimits::default(),
            deadline_ms: 7,
            deadline_ms_total: 8,
            cancel_grace_ms: 9,
            output_bytes: 10,
        }
    }

    const SUPERVISOR: ProcessRef = ProcessRef {
        pid: 11,
        start_time: 12,
    };
    const PROGRAM: ProcessRef = ProcessRef {
        pid: 13,
        start_time: 14,
    };
    const EXIT: ExitRecord = ExitRecord {
        status: ProgramExit::Signaled(9),
        reason: EndReason::Deadline,
        ended_at_ms: 5,
    };

    #[test]
    fn the_job_log_reads_as_its_record_with_the_start_and_the_end_appended() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_job_log(dir.path()).unwrap(), None);
        create_job_log(dir.path(), &a_record()).unwrap();
        let mode = fs::metadata(dir.path().join(JOB_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let read = read_job_log(dir.path()).unwrap().unwrap();
        assert_eq!((read.record, read.exit), (a_record(), None));
        let log = open_job_log(&dir.path().join(JOB_FILE)).unwrap();
        let started = Entry::Started {
            supervisor: SUPERVISOR,
            program: PROGRAM,
        };
        write_line(&log, &started).unwrap();
        write_line(&log, &Entry::Ended(EXIT)).unwrap();
        // Later lines (a job appending to its own log) change nothing.
        let other = ExitRecord {
            status: ProgramExit::Exited(0),
            ..EXIT
        };
        write_line(&log, &Entry::Ended(other)).unwrap();
        let read = read_job_log(dir.path()).unwrap().unwrap();
        assert_eq!(read.record.supervisor, Some(SUPERVISOR));
        assert_eq!(read.record.program, Some(PROGRAM));
        assert_eq!(read.exit, Some(EXIT));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "one file");
    }

    #[test]
    fn a_line_cut_short_is_ignored_and_a_log_without_a_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        create_job_log(dir.path(), &a_record()).unwrap();
        let log = open_job_log(&dir.path().join(JOB_FILE)).unwrap();
        (&log).write_all(br#"{"Ended":{"Status":{"Exi"#).unwrap();
        let read = read_job_log(dir.path()).unwrap().unwrap();
        assert_eq!(read.exit, None);
        fs::write(dir.path().join(JOB_FILE), b"{\"Ended\":1}\n").unwrap();
        let err = read_job_log(dir.path()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn an_older_nodes_record_and_exit_file_are_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let old = JobRecord {
            supervisor: Some(SUPERVISOR),
            program: Some(PROGRAM),
            ..a_record()
        };
        fs::write(dir.path().join(JOB_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
        let read = read_job_log(dir.path()).unwrap().unwrap();
        assert_eq!((&read.record, read.exit), (&old, None));
        fs::write(
            dir.path().join(EXIT_FILE),
            serde_json::to_vec(&EXIT).unwrap(),
        )
        .unwrap();
        assert_eq!(read_job_log(dir.path()).unwrap().unwrap().exit, Some(EXIT));
    }

    /// A job runs as the node's user and can reach its unit's `detached/`: a symlink it
    /// plants where the log goes must not make the node or the supervisor write through it.
    #[test]
    fn a_symlink_in_place_of_the_job_log_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join(JOB_FILE)).unwrap();
        let err = create_job_log(dir.path(), &a_record()).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        let err = open_job_log(&dir.path().join(JOB_FILE)).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }
}
