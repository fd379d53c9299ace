//! What outlives the node process for a detached job: the job record (who supervises it,
//! its containment, limits and deadline) and the exit record its supervisor writes when the
//! program ends. Both are JSON files in the unit's `detached/` directory, written to a temp
//! file and renamed, so a crash of the node leaves the old or the new file, never half of
//! one.
//!
//! Also the `/proc` facts that guard against pid reuse: a process's start time and the boot
//! id.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::limits::ProgramLimits;

/// The directory in a unit's directory that holds its detached job's files.
pub const DETACHED_DIR: &str = "detached";
/// The job record's file name.
pub const JOB_FILE: &str = "job.json";
/// The exit record's file name.
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
    /// The supervisor, once started; `None` in the provisional record written before the
    /// spawn.
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
/// when missing.
///
/// # Errors
/// When it cannot be created.
pub(crate) fn detached_dir(unit_dir: &Path) -> io::Result<PathBuf> {
    let dir = unit_dir.join(DETACHED_DIR);
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(dir),
    }
}

/// Writes `value` as JSON to `dir/name` atomically (a temp file renamed over it).
///
/// Both records are written without syncing (a sync costs about 10 ms here): they have to
/// outlive the node *process*, which the page cache does. After a crash of the machine no
/// process a job record names is running (the boot id tells so), and an exit record lost
/// with the page cache only turns a job that ended in the last seconds before the crash,
/// while its node was down, from "ended" into "gone".
///
/// # Errors
/// Any step that failed; the old file (if any) is then still whole.
pub(crate) fn write_json<T: Serialize>(dir: &Path, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(io::Error::other)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&bytes)?;
    drop(file);
    fs::rename(&tmp, dir.join(name))
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

    #[test]
    fn records_round_trip_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let exit = ExitRecord {
            status: ProgramExit::Signaled(9),
            reason: EndReason::Deadline,
            ended_at_ms: 5,
        };
        write_json(dir.path(), EXIT_FILE, &exit).unwrap();
        assert_eq!(read_json(dir.path(), EXIT_FILE).unwrap(), Some(exit));
        assert!(!dir.path().join("exit.json.tmp").exists());
        assert_eq!(
            read_json::<ExitRecord>(dir.path(), "missing").unwrap(),
            None
        );
        fs::write(dir.path().join("bad"), b"{").unwrap();
        assert!(read_json::<ExitRecord>(dir.path(), "bad").is_err());
    }
}
