//! Ending every process of a job's uid (`[work] job-users`) when the job is done, whatever
//! the containment: a daemon that left its job's cgroup, supervisor tree or process group
//! (`setsid` and a double fork under process-group containment) still runs as the job's
//! uid, and the uid belongs to that job alone, so every process running as it is the job's.
//!
//! How: a short-lived helper, cloned from the node, drops its groups and capabilities and
//! takes real uid [`REAPER_UID`], effective uid the job's (X) and saved uid [`REAPER_UID`],
//! then calls `kill(-1, SIGKILL)`. kill(2): "the real or effective user ID of the sending
//! process must equal the real or saved set-user-ID of the target process" (the kernel's
//! `kill_ok_by_cred`). So:
//!
//! - the helper reaches every process whose real or saved uid is X (through its effective
//!   uid) or [`REAPER_UID`] (through its real uid), and no other: no process runs as
//!   [`REAPER_UID`] but another pass's helper, and passes run one at a time;
//! - a process of X (real and effective uid X, or an effective uid a set-user-ID program
//!   gave it) cannot signal the helper, whose real and saved uids are not X: a job that
//!   leaves `kill -STOP -1` or `kill -KILL -1` spinning cannot stop or kill the helper, and
//!   cannot ptrace it either (its real uid is not X, and the uid change made it
//!   non-dumpable). With every uid X, as before, such a spinner stopped the helper before
//!   its kill and held the node's thread in its `vfork` wait for good.
//!
//! The kernel walks its own task list under its lock, so there is no window for a pid to be
//! reused between finding a process and signalling it, and a process forking at that
//! moment either is seen or fails its fork (a pending fatal signal aborts it); a `/proc`
//! scan with `pidfd_open` per pid (the node killing as root) would race a job whose
//! processes fork and exit in a chain, pass after pass, which is why a helper is kept.
//!
//! The helper kills before anything is looked at (so a process `/proc` does not show still
//! dies), then the node reads `/proc` until no process runs as the uid (real, effective or
//! saved), repeating the kill; a pass that failed is retried; after [`REAP_WAIT`] it gives
//! up with an error, and the pool then keeps the uid out ([`super::users`]). A `/proc` that
//! cannot be read is an error, never "nothing runs". A zombie whose every thread has
//! exited ([`is_spent`]) runs nothing and holds no memory or file: it does not count, so a
//! parent that never reaps it (a container's init that does not wait) cannot keep the uid
//! out of the pool for good.
//!
//! The same helper, with the job's uid as its effective uid and no capability, removes the
//! System V IPC objects the job left (`ipc`), which the kernel allows their owner or
//! creator only.
//!
//! Blocking (a clone, a `waitpid`, `/proc` scans, short sleeps): call it off the async
//! workers. Never for uid 0 or the node's own uid.

use std::io;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::ipc::IpcObject;

/// How long the node keeps killing and looking before it gives up on a uid's processes
/// (stuck in the kernel); the pool then keeps the uid out, so giving up never hands it to
/// another job early.
pub(crate) const REAP_WAIT: Duration = Duration::from_secs(10);

/// The helper's real and saved uid: one no account and no process has (the largest valid
/// uid; `u32::MAX` is "no change" to `setresuid`), so that no job's process may signal the
/// helper and the helper's `kill(-1)` reaches no one else through it. A range holding it
/// is refused at start.
pub(crate) const REAPER_UID: u32 = u32::MAX - 1;

/// Pause between a kill and the next look: SIGKILLed processes need a scheduler pass
/// (and their parent a `wait`) to leave `/proc`.
const REAP_PAUSE: Duration = Duration::from_millis(5);

/// The helper's stack: it only makes system calls.
const HELPER_STACK: usize = 16 * 1024;

/// One helper at a time: every helper's real uid is [`REAPER_UID`], so one helper's
/// `kill(-1)` would kill another running beside it.
static ONE_HELPER: Mutex<()> = Mutex::new(());

/// Why a uid's processes were not all ended.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReapError {
    /// uid 0, the node's own or [`REAPER_UID`]: its processes are not a job's.
    #[error("uid {0} is root, the node's own or the reaper's; its processes are not a job's")]
    NotAJobUid(u32),
    /// `/proc` could not be listed, so what still runs as the uid is unknown.
    #[error("cannot list /proc to see what still runs as uid {uid}: {source}")]
    Proc {
        /// The uid.
        uid: u32,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// Processes may still run as the uid after [`REAP_WAIT`]: those left, and why the
    /// last pass failed if it did.
    #[error("{} process(es) still run as uid {uid} after {REAP_WAIT:?}: {pids:?}{}", pids.len(), last_failure.as_ref().map(|e| format!(" (last kill: {e})")).unwrap_or_default())]
    Left {
        /// The uid.
        uid: u32,
        /// Their pids.
        pids: Vec<i32>,
        /// Why the last pass's helper failed, if it did.
        last_failure: Option<PassError>,
    },
}

/// Why one pass's helper did not do its deed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassError {
    /// uid 0, the node's own or [`REAPER_UID`]: no helper acts as it.
    #[error("uid {0} is root, the node's own or the reaper's; no helper acts as it")]
    NotAJobUid(u32),
    /// The helper could not be started.
    #[error("cannot start the helper: {0}")]
    Helper(#[source] io::Error),
    /// The helper could not take the uids (a node without `CAP_SETUID`, or a user
    /// namespace that does not map [`REAPER_UID`]).
    #[error(
        "the helper could not take real uid {REAPER_UID} and effective uid {0} (the node needs CAP_SETUID, and its user namespace must map uid {REAPER_UID})"
    )]
    Become(u32),
}

/// SIGKILLs every process running as `uid` until none is left (at most [`REAP_WAIT`]);
/// returns how many there were at the first look.
///
/// # Errors
/// [`ReapError`]: not a job's uid, `/proc` unreadable, or processes may be left.
pub(crate) fn end_processes_of(uid: u32) -> Result<usize, ReapError> {
    end_processes_with(uid, REAP_WAIT, kill_all_as, |uid| {
        processes_of(uid).map_err(|source| ReapError::Proc { uid, source })
    })
}

/// [`end_processes_of`] with the pass and the look given, and `wait` in place of
/// [`REAP_WAIT`]: kill, look, until nothing is left or `wait` has passed.
fn end_processes_with(
    uid: u32,
    wait: Duration,
    mut pass: impl FnMut(u32) -> Result<(), PassError>,
    mut look: impl FnMut(u32) -> Result<Vec<i32>, ReapError>,
) -> Result<usize, ReapError> {
    // SAFETY: geteuid cannot fail.
    if uid == 0 || uid == REAPER_UID || uid == unsafe { libc::geteuid() } {
        return Err(ReapError::NotAJobUid(uid));
    }
    let until = Instant::now() + wait;
    let seen = look(uid);
    // Kill before acting on a look: what `/proc` does not show dies too.
    let mut failure = pass(uid).err();
    let first = seen?.len();
    loop {
        if let Some(e) = &failure {
            tracing::debug!(uid, error = %e, "a pass at killing a uid's processes failed; retrying");
        }
        std::thread::sleep(REAP_PAUSE);
        let left = look(uid)?;
        if left.is_empty() && failure.is_none() {
            return Ok(first);
        }
        if Instant::now() >= until {
            return Err(ReapError::Left {
                uid,
                pids: left,
                last_failure: failure,
            });
        }
        failure = pass(uid).err();
    }
}

/// Pids of the processes whose real, effective or saved uid is `uid`, from
/// `/proc/<pid>/status`, but for zombies whose every thread has exited ([`is_spent`]).
///
/// # Errors
/// `/proc` could not be listed.
pub(crate) fn processes_of(uid: u32) -> io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if std::fs::read_to_string(format!("/proc/{pid}/status"))
            .is_ok_and(|status| runs_as(&status, uid) && !is_spent(&status))
        {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Whether the real, effective or saved uid of a `/proc/<pid>/status` is `uid`.
fn runs_as(status: &str, uid: u32) -> bool {
    super::users::status_uids(status)
        .take(3)
        .any(|id| id == uid)
}

/// Whether a `/proc/<pid>/status` is a zombie that runs nothing: `State: Z` with `Threads:
/// 1`. Such a process has been through `exit_mm` and `exit_files` (no memory, no open file,
/// socket or mapping left) and waits only for its parent to collect its exit status; its
/// pid and credentials are all it holds. A thread-group leader that exited while other
/// threads of it run shows `State: Z` too, but counts them in `Threads:`, so it is not
/// spent. Spent zombies do not keep a uid's reap from ending, nor its uid out of the pool:
/// a parent that never reaps them (a container's init that does not wait) would otherwise
/// keep the uid held for good.
pub(crate) fn is_spent(status: &str) -> bool {
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(str::trim)
    };
    field("State:").is_some_and(|s| s.starts_with('Z')) && field("Threads:") == Some("1")
}

/// What a helper does once it has taken the job's uid as its effective uid.
enum Deed<'a> {
    /// `kill(-1, SIGKILL)`.
    KillAll,
    /// `IPC_RMID` each of these System V objects.
    RemoveIpc(&'a [IpcObject]),
}

/// A helper's argument: the job's uid and its deed.
struct HelperArg<'a> {
    uid: u32,
    deed: Deed<'a>,
}

/// One pass: a helper that takes real uid [`REAPER_UID`], effective uid `uid`, and calls
/// `kill(-1, SIGKILL)`.
fn kill_all_as(uid: u32) -> Result<(), PassError> {
    run_helper(&HelperArg {
        uid,
        deed: Deed::KillAll,
    })
}

/// A helper that takes real uid [`REAPER_UID`], effective uid `uid`, and removes
/// (`IPC_RMID`) each of `objects`. With effective uid `uid` and no capability it may
/// remove only objects whose owner or creator is `uid` (the kernel's `ipcctl_obtain_check`),
/// so an id reused for another uid's object since `objects` was read is left alone. Errors
/// of single removals are not reported: the caller looks again.
///
/// # Errors
/// [`PassError`]: the helper could not start or take the uids.
pub(crate) fn remove_ipc_as(uid: u32, objects: &[IpcObject]) -> Result<(), PassError> {
    run_helper(&HelperArg {
        uid,
        deed: Deed::RemoveIpc(objects),
    })
}

/// Runs one helper for `arg`.
///
/// The helper is cloned with `CLONE_VM | CLONE_VFORK` (no copy of the node's page tables;
/// this thread waits until it has exited), with every signal blocked, and makes only
/// system calls on its own stack. No process of `uid` can signal or trace it (see the
/// module doc), so the wait is bounded by the helper's few system calls. Any step failing
/// ends the helper before the kill.
fn run_helper(arg: &HelperArg<'_>) -> Result<(), PassError> {
    let uid = arg.uid;
    // SAFETY: geteuid cannot fail.
    if uid == 0 || uid == REAPER_UID || uid == unsafe { libc::geteuid() } {
        return Err(PassError::NotAJobUid(uid));
    }
    let _one = ONE_HELPER
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
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
            std::ptr::from_ref(arg).cast_mut().cast::<libc::c_void>(),
        )
    };
    let cloned = if pid < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(pid)
    };
    // SAFETY: restores this thread's mask from our stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    let pid = cloned.map_err(PassError::Helper)?;
    drop(stack);
    let mut status = 0;
    // SAFETY: waits for our own child, writing the status word on our stack.
    let waited = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    if waited != pid {
        return Err(PassError::Helper(io::Error::last_os_error()));
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(PassError::Become(uid))
    }
}

/// The helper: take the reaper's uids, do its deed, exit (1 if it could not take them,
/// having done nothing).
extern "C" fn helper_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `run_helper` passes a `HelperArg` that outlives the helper (CLONE_VFORK).
    let arg = unsafe { &*arg.cast_const().cast::<HelperArg<'_>>() };
    let code = match become_reaper_of(arg.uid) {
        Ok(()) => {
            match arg.deed {
                // SAFETY: kill(2); from these uids without capabilities it reaches only the
                // processes whose real or saved uid is `uid` or REAPER_UID (never the helper).
                Deed::KillAll => unsafe { libc::kill(-1, libc::SIGKILL) },
                Deed::RemoveIpc(objects) => {
                    for object in objects {
                        object.remove();
                    }
                    0
                }
            };
            0
        }
        Err(()) => 1,
    };
    // SAFETY: _exit ends only this process, running no handlers.
    unsafe { libc::_exit(code) }
}

/// No groups, gids [`REAPER_UID`], uids (real [`REAPER_UID`], effective `uid`, saved
/// [`REAPER_UID`]), no capabilities (a non-root node's `CAP_KILL` would otherwise survive
/// the uid change and `kill(-1)` reach every process), no new privileges. Raw system calls:
/// glibc's wrappers would signal every thread of the node to change theirs too.
fn become_reaper_of(uid: u32) -> Result<(), ()> {
    let (reaper, job) = (libc::c_long::from(REAPER_UID), libc::c_long::from(uid));
    let ok = |rc: libc::c_long| if rc < 0 { Err(()) } else { Ok(()) };
    // `struct __user_cap_header_struct` (version 3: two 32-bit words per set) and its data.
    let header: [u32; 2] = [0x2008_0522, 0];
    let data = [0u32; 6];
    // SAFETY: system calls on integers and our stack; async-signal-safe.
    unsafe {
        ok(libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<u32>(),
        ))?;
        ok(libc::syscall(libc::SYS_setresgid, reaper, reaper, reaper))?;
        ok(libc::syscall(libc::SYS_setresuid, reaper, job, reaper))?;
        ok(libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
        .into())?;
        ok(libc::syscall(
            libc::SYS_capset,
            header.as_ptr(),
            data.as_ptr(),
        ))?;
        ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())
    }
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
            let found = processes_of(uid).unwrap();
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
        assert_eq!(processes_of(job).unwrap(), Vec::<i32>::new());
        assert!(
            bystander.try_wait().unwrap().is_none(),
            "another uid's process was killed"
        );
        bystander.kill().unwrap();
        bystander.wait().unwrap();
    }

    /// Starts, as `uid`, in a session of its own, a shell that sends `signal` to every
    /// process it may signal, in a loop; returns a thread that reaps it.
    fn spinner(uid: u32, signal: &str) -> std::thread::JoinHandle<()> {
        let mut shell = std::process::Command::new("/bin/sh")
            .args(["-c", &format!("while :; do kill -{signal} -1; done")])
            .uid(uid)
            .gid(uid)
            .process_group(0)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tests run as root: start a process as another uid");
        std::thread::spawn(move || {
            let _ = shell.wait();
        })
    }

    /// A job spinning `kill -STOP -1` or `kill -KILL -1` as its uid neither stops nor kills
    /// the helper: the reap ends within a bound and nothing of the uid is left.
    /// Rounds of it: the helper's window between taking the uid and its kill is short, so
    /// one round alone would often miss it.
    fn a_spinner_cannot_hold_off_the_reap(uid: u32, signal: &str) {
        for round in 0..SPINNER_ROUNDS {
            let reaper = spinner(uid, signal);
            let seen = wait_for_processes(uid, 1);
            assert_eq!(seen.len(), 1, "{seen:?}");
            let (done, ended) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let _ = done.send(end_processes_of(uid));
            });
            let ended = ended
                .recv_timeout(Duration::from_secs(5))
                .unwrap_or_else(|_| panic!("round {round}: the reap was held by a job's spinner"));
            assert!(ended.is_ok(), "round {round}: {ended:?}");
            reaper.join().unwrap();
            assert_eq!(processes_of(uid).unwrap(), Vec::<i32>::new());
        }
    }

    const SPINNER_ROUNDS: usize = 20;

    #[test]
    fn a_job_spinning_kill_stop_cannot_stop_the_reap() {
        a_spinner_cannot_hold_off_the_reap(3_900_082, "STOP");
    }

    #[test]
    fn a_job_spinning_kill_kill_cannot_kill_the_reap() {
        a_spinner_cannot_hold_off_the_reap(3_900_083, "KILL");
    }

    #[test]
    fn an_unreadable_proc_fails_the_reap_after_one_kill_and_a_failed_pass_is_retried() {
        let passes = std::cell::Cell::new(0);
        let unreadable = end_processes_with(
            3_900_074,
            Duration::from_secs(5),
            |_| {
                passes.set(passes.get() + 1);
                Ok(())
            },
            |uid| {
                Err(ReapError::Proc {
                    uid,
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                })
            },
        );
        assert!(
            matches!(unreadable, Err(ReapError::Proc { .. })),
            "{unreadable:?}"
        );
        assert_eq!(
            passes.get(),
            1,
            "the kill comes before the look is acted on"
        );

        let passes = std::cell::Cell::new(0);
        let retried = end_processes_with(
            3_900_074,
            Duration::from_secs(5),
            |uid| {
                passes.set(passes.get() + 1);
                if passes.get() < 3 {
                    Err(PassError::Become(uid))
                } else {
                    Ok(())
                }
            },
            |_| Ok(Vec::new()),
        );
        assert_eq!(retried.unwrap(), 0);
        assert_eq!(passes.get(), 3);

        let failing = end_processes_with(
            3_900_074,
            Duration::from_millis(50),
            |uid| Err(PassError::Become(uid)),
            |_| Ok(Vec::new()),
        );
        assert!(
            matches!(
                failing,
                Err(ReapError::Left {
                    last_failure: Some(_),
                    ..
                })
            ),
            "a pass that never works is an error, not \"nothing left\": {failing:?}"
        );
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
