//! Ending every process of a job's uid (`[work] job-users`) when the job is done, whatever
//! the containment: a daemon that left its job's cgroup, supervisor tree or process group
//! (`setsid` and a double fork under process-group containment) still runs as the job's
//! uid, and the uid belongs to that job alone, so every process running as it is the job's.
//!
//! How: a short-lived helper, cloned from the node, becomes the uid (real, effective and
//! saved; no groups, no capabilities) and calls `kill(-1, SIGKILL)`, which the kernel
//! delivers to exactly the processes that uid may signal: those whose real or saved uid is
//! it. The kernel walks its own task list under its lock, so there is no window for a pid
//! to be reused between finding a process and signalling it, and a process forking at that
//! moment either is seen or fails its fork (a pending fatal signal aborts it); a `/proc`
//! scan with `pidfd_open` per pid would race a forking job pass after pass. The node then
//! reads `/proc` until no process runs as the uid (real, effective or saved), repeating the
//! kill, for at most [`REAP_WAIT`].
//!
//! Blocking (a clone, a `waitpid`, `/proc` scans, short sleeps): call it off the async
//! workers. Never for uid 0 or the node's own uid.

use std::io;
use std::time::{Duration, Instant};

/// How long the node keeps killing and looking before it gives up on a uid's processes
/// (stuck in the kernel, or zombies whose parent does not reap them); the pool skips a
/// uid any process still runs as, so giving up never hands it to another job early.
pub(crate) const REAP_WAIT: Duration = Duration::from_secs(10);

/// Pause between a kill and the next look: SIGKILLed processes need a scheduler pass
/// (and their parent a `wait`) to leave `/proc`.
const REAP_PAUSE: Duration = Duration::from_millis(5);

/// The helper's stack: it only makes system calls.
const HELPER_STACK: usize = 16 * 1024;

/// Why a uid's processes were not all ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReapError {
    /// uid 0 or the node's own: its processes are not a job's.
    #[error("uid {0} is root or the node's own; its processes are not a job's")]
    NotAJobUid(u32),
    /// The helper could not be started.
    #[error("cannot start the helper that kills uid {uid}'s processes: {source}")]
    Helper {
        /// The uid.
        uid: u32,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The helper could not become the uid (a node without `CAP_SETUID`).
    #[error("the helper could not become uid {0} to kill its processes")]
    Become(u32),
    /// Processes still run as the uid after [`REAP_WAIT`].
    #[error("{} process(es) still run as uid {uid} after {REAP_WAIT:?}: {pids:?}", pids.len())]
    Left {
        /// The uid.
        uid: u32,
        /// Their pids.
        pids: Vec<i32>,
    },
}

/// SIGKILLs every process running as `uid` until none is left (at most [`REAP_WAIT`]);
/// returns how many there were at the first look.
///
/// # Errors
/// [`ReapError`]: not a job's uid, the helper failed, or processes are left.
pub(crate) fn end_processes_of(uid: u32) -> Result<usize, ReapError> {
    // SAFETY: geteuid cannot fail.
    if uid == 0 || uid == unsafe { libc::geteuid() } {
        return Err(ReapError::NotAJobUid(uid));
    }
    let until = Instant::now() + REAP_WAIT;
    let mut found = None;
    loop {
        let left = processes_of(uid);
        let first = *found.get_or_insert(left.len());
        if left.is_empty() {
            return Ok(first);
        }
        if Instant::now() >= until {
            return Err(ReapError::Left { uid, pids: left });
        }
        kill_all_as(uid)?;
        std::thread::sleep(REAP_PAUSE);
    }
}

/// Pids of the processes whose real, effective or saved uid is `uid`, from
/// `/proc/<pid>/status` (zombies included: they leave `/proc` when reaped).
pub(crate) fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status"))
                .is_ok_and(|status| runs_as(&status, uid))
        })
        .collect()
}

/// Whether the real, effective or saved uid of a `/proc/<pid>/status` is `uid`.
fn runs_as(status: &str, uid: u32) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .is_some_and(|ids| {
            ids.split_whitespace()
                .take(3)
                .any(|id| id.parse() == Ok(uid))
        })
}

/// One pass: a helper that becomes `uid` and calls `kill(-1, SIGKILL)`.
///
/// The helper is cloned with `CLONE_VM | CLONE_VFORK` (no copy of the node's page tables;
/// this thread waits until it has exited), with every signal blocked, and makes only
/// system calls on its own stack. Becoming the uid takes the same steps as a job's program
/// ([`super::setup::become_job_user`]): without them a non-root node's `CAP_KILL` would
/// survive the uid change, and `kill(-1)` would reach every process on the host. Any step
/// failing ends the helper before the kill.
fn kill_all_as(uid: u32) -> Result<(), ReapError> {
    let helper = |source| ReapError::Helper { uid, source };
    let mut stack = vec![0u8; HELPER_STACK];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + HELPER_STACK) & !15;
    // SAFETY: sigfillset/pthread_sigmask on sets on our stack.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
    }
    // SAFETY: the helper runs `helper_main` on `stack` sharing our memory; CLONE_VFORK
    // keeps this thread (and so `stack`) in place until it has exited. It only makes
    // async-signal-safe system calls, with every signal blocked.
    let pid = unsafe {
        libc::clone(
            helper_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            uid as usize as *mut libc::c_void,
        )
    };
    let cloned = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    // SAFETY: restores this thread's mask from our stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    let pid = cloned.map_err(helper)?;
    drop(stack);
    let mut status = 0;
    // SAFETY: waits for our own child, writing the status word on our stack.
    let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if waited != pid {
        return Err(helper(io::Error::last_os_error()));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(ReapError::Become(uid))
    }
}

/// The helper: become the uid, kill everything it may signal, exit (1 if it could not
/// become the uid, having killed nothing).
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    let uid = arg as usize as u32;
    let code = match super::setup::become_job_user(uid) {
        Ok(()) => {
            // SAFETY: kill(2); from this uid without capabilities it reaches only the
            // processes whose real or saved uid is this uid (never the helper itself).
            unsafe { libc::kill(-1, libc::SIGKILL) };
            0
        }
        Err(_) => 1,
    };
    // SAFETY: _exit ends only this process, running no handlers.
    unsafe { libc::_exit(code) }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    /// Starts, as `uid`, a shell that leaves a `setsid`, double-forked daemon and a plain
    /// background child, then waits; returns the shell.
    fn daemonising_shell(uid: u32) -> std::process::Child {
        std::process::Command::new("/bin/sh")
            .args([
                "-c",
                "setsid sh -c '(sleep 300 &) ; exit 0' </dev/null >/dev/null 2>&1 & sleep 301 & wait",
            ])
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("tests run as root: start a process as another uid")
    }

    fn wait_for_processes(uid: u32, count: usize) -> Vec<i32> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let found = processes_of(uid);
            if found.len() >= count || Instant::now() >= until {
                return found;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn every_process_of_a_uid_dies_daemons_included_and_no_other_uids() {
        let (job, other) = (3_900_070, 3_900_071);
        let mut bystander = std::process::Command::new("sleep")
            .arg("30")
            .uid(other)
            .gid(other)
            .spawn()
            .expect("tests run as root: start a process as another uid");
        let shell = daemonising_shell(job);
        // The shell, its sleep, and the daemon's sleep (its own session, parent gone).
        let before = wait_for_processes(job, 3);
        assert!(before.len() >= 3, "{before:?}");
        // The shell is this test's child: reaped here, or its zombie would stay its uid's.
        let reaper = std::thread::spawn(move || {
            let mut shell = shell;
            shell.wait()
        });
        let killed = end_processes_of(job).unwrap();
        let _ = reaper.join();
        assert!(killed >= 3, "{killed}");
        assert_eq!(processes_of(job), Vec::<i32>::new());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "another uid's process was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    #[test]
    fn root_and_the_nodes_own_uid_are_never_reaped() {
        assert!(matches!(end_processes_of(0), Err(ReapError::NotAJobUid(0))));
        // SAFETY: geteuid cannot fail.
        let me = unsafe { libc::geteuid() };
        assert!(matches!(
            end_processes_of(me),
            Err(ReapError::NotAJobUid(_))
        ));
    }

    #[test]
    fn a_status_runs_as_its_real_effective_or_saved_uid_not_its_file_system_uid() {
        let status = |ids: &str| format!("Name:\tx\nUid:\t{ids}\nGid:\t0\t0\t0\t0\n");
        assert!(runs_as(&status("5\t1\t1\t1"), 5));
        assert!(runs_as(&status("1\t5\t1\t1"), 5));
        assert!(runs_as(&status("1\t1\t5\t1"), 5));
        assert!(!runs_as(&status("1\t1\t1\t5"), 5));
        assert!(!runs_as("Name:\tx\n", 5));
    }
}
