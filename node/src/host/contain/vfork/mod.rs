//! Starting a program without copying the node: `clone(CLONE_VM | CLONE_VFORK)`, so the
//! child borrows the node's memory (no page tables copied; a `fork` of the node, with its
//! wasmtime mappings, cost milliseconds of kernel time per job) until it calls `execve`,
//! while the calling thread waits. The child sets itself up exactly as a forked one did
//! (stdio, working directory, its own process group, its cgroups, rlimits, a private
//! network namespace: [`ChildSetup::apply`]) before `exec`, so every containment guarantee
//! holds from the program's first instruction.
//!
//! Running on the node's memory, the child makes only async-signal-safe system calls on
//! data prepared before the clone, never allocates or takes a lock, and reports a failure
//! through a word in that shared memory, so a program that cannot start fails the spawn
//! with its `errno` as `fork`+`exec` did. Every signal is blocked around the clone, and the
//! child resets the handlers the node installed to their defaults before unblocking, so no
//! node signal handler ever runs on the borrowed memory.
//!
//! The same path starts a job's supervisor ([`Role::Supervisor`]): then the child joins
//! the job's cgroups and nothing else of the setup (the supervisor applies the rest to the
//! program it starts), takes the supervisor's protocol descriptors as 3, 4 and 5, and keeps
//! the node's process group unless asked for its own.
//!
//! The started process is a [`Process`]: waited for through a pidfd (no reliance on
//! `SIGCHLD` bookkeeping, no pid reuse race), killed if dropped before it was reaped unless
//! it was told to outlive its handle ([`Process::outlive_handle`], a detached supervisor).

use std::ffi::{CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use tokio::io::unix::AsyncFd;

mod clone3;

use super::record::ProgramExit;
use super::setup::ChildSetup;

/// The child's stack while it runs on the node's memory (it only makes system calls).
const CHILD_STACK: usize = 128 * 1024;

/// Highest signal number plus one (Linux).
const NSIG: c_int = 65;

/// The child's descriptors 0 to 5 are set by `dup2`; every source is first moved to at
/// least this, so no `dup2` overwrites a source still to be used.
const FIRST_SOURCE_FD: RawFd = 6;

/// What the new process is, which decides how much of the setup it applies itself.
#[derive(Clone, Copy)]
pub(crate) enum Role<'a> {
    /// A job's program: its own process group, the whole [`ChildSetup`] applied.
    Program,
    /// A job's supervisor: joins the setup's cgroups only (it applies the rest to the
    /// program it starts); `pass` become its descriptors 3, 4 and 5 (`None`: left closed);
    /// a process group of its own only when `own_group`.
    Supervisor {
        pass: [Option<&'a OwnedFd>; 3],
        own_group: bool,
    },
}

/// What to start: the program, its argument and environment vectors, working directory,
/// stdio and setup.
pub(crate) struct Plan<'a> {
    /// The executable (a path: no `PATH` search).
    pub(crate) program: &'a Path,
    /// `argv[1..]`.
    pub(crate) args: &'a [String],
    /// The whole environment.
    pub(crate) env: &'a [(String, String)],
    /// The working directory.
    pub(crate) cwd: &'a Path,
    /// Descriptors to become the program's 0, 1 and 2.
    pub(crate) stdio: [&'a OwnedFd; 3],
    /// Cgroups to join, rlimits, network namespace.
    pub(crate) setup: ChildSetup,
    /// A program or a supervisor.
    pub(crate) role: Role<'a>,
}

/// Everything the child reads, as raw pointers into memory the parent keeps alive.
struct ChildPlan {
    program: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    cwd: *const c_char,
    stdio: [RawFd; 3],
    /// Descriptors to become 3, 4 and 5 (-1: none).
    pass: [RawFd; 3],
    own_group: bool,
    /// Join the setup's cgroups and apply nothing else of it.
    cgroups_only: bool,
    setup: ChildSetup,
    /// Set by the child to the `errno` of the step that failed.
    error: AtomicI32,
}

/// A started program, the node's child until waited for.
#[derive(Debug)]
pub(crate) struct Process {
    pid: i32,
    pidfd: Option<AsyncFd<OwnedFd>>,
    /// Left running (and reaped when it ends) if dropped before it was waited for.
    outlives_handle: bool,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "an argument, variable or path holds a NUL byte",
        )
    })
}

/// Starts `plan` in a new process; returns once it has called `execve` (or failed).
///
/// # Errors
/// The failing step's OS error: a descriptor, the working directory, a cgroup join, an
/// rlimit, or the `execve` itself (`NotFound`, `PermissionDenied`, ...).
pub(crate) fn spawn(plan: &Plan<'_>) -> io::Result<Process> {
    let (pid, pidfd) = start(plan)?;
    // SAFETY: the AsyncFd owns the pidfd outright.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }?;
    Ok(Process {
        pid,
        pidfd: Some(pidfd),
        outlives_handle: false,
    })
}

/// Starts `plan` in a new process; returns its pid and a pidfd once it has called `execve`
/// (the caller reaps it). For a caller without an async runtime (the supervisor).
///
/// # Errors
/// As [`spawn`].
pub(crate) fn start(plan: &Plan<'_>) -> io::Result<(i32, OwnedFd)> {
    let program = cstring(on_path(plan).as_os_str().as_bytes())?;
    let cwd = cstring(plan.cwd.as_os_str().as_bytes())?;
    let argv: Vec<CString> = std::iter::once(Ok(program.clone()))
        .chain(plan.args.iter().map(|a| cstring(a.as_bytes())))
        .collect::<io::Result<_>>()?;
    let envp: Vec<CString> = plan
        .env
        .iter()
        .map(|(k, v)| cstring(format!("{k}={v}").as_bytes()))
        .collect::<io::Result<_>>()?;
    let pointers = |v: &[CString]| -> Vec<*const c_char> {
        v.iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect()
    };
    let (argv_ptrs, envp_ptrs) = (pointers(&argv), pointers(&envp));
    // Sources below 6 could be overwritten by an earlier dup2 onto 0..5: move them up.
    let raised: Vec<OwnedFd> = plan
        .stdio
        .iter()
        .map(|fd| duplicate_above(fd, FIRST_SOURCE_FD))
        .collect::<io::Result<_>>()?;
    let (pass, own_group, cgroups_only) = match plan.role {
        Role::Program => ([None, None, None], true, false),
        Role::Supervisor { pass, own_group } => (pass, own_group, true),
    };
    let passed: Vec<Option<OwnedFd>> = pass
        .iter()
        .map(|fd| {
            fd.map(|fd| duplicate_above(fd, FIRST_SOURCE_FD))
                .transpose()
        })
        .collect::<io::Result<_>>()?;
    let mut child = ChildPlan {
        program: program.as_ptr(),
        argv: argv_ptrs.as_ptr(),
        envp: envp_ptrs.as_ptr(),
        cwd: cwd.as_ptr(),
        stdio: [0, 1, 2].map(|i| raised[i].as_raw_fd()),
        pass: [0, 1, 2].map(|i| passed[i].as_ref().map_or(-1, AsRawFd::as_raw_fd)),
        own_group,
        cgroups_only,
        setup: plan.setup,
        error: AtomicI32::new(0),
    };
    let (pid, pidfd) = clone_child(&mut child)?;
    let failed = child.error.load(Ordering::Acquire);
    if failed != 0 {
        reap_blocking(&pidfd);
        return Err(io::Error::from_raw_os_error(failed));
    }
    Ok((pid, pidfd))
}

/// Where `execvp` would find the plan's program: a name without a `/` is looked up on the
/// job's `PATH` (`/bin:/usr/bin` when it has none; an empty entry is the working
/// directory), the first executable file winning. Not found, the name is kept, and
/// `execve` fails with `ENOENT` as `execvp` did.
fn on_path(plan: &Plan<'_>) -> std::path::PathBuf {
    let program = plan.program;
    if program.as_os_str().as_bytes().contains(&b'/') {
        return program.to_owned();
    }
    let path = (plan.env.iter())
        .find(|(name, _)| name == "PATH")
        .map_or("/bin:/usr/bin", |(_, value)| value.as_str());
    path.split(':')
        .map(|dir| plan.cwd.join(dir).join(program))
        .find(|candidate| is_executable_file(candidate))
        .unwrap_or_else(|| program.to_owned())
}

fn is_executable_file(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A close-on-exec duplicate of `fd` numbered at least `min`.
fn duplicate_above(fd: &OwnedFd, min: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl F_DUPFD_CLOEXEC returns a new descriptor we then own.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, min) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Clones the child with every signal blocked; returns its pid and pidfd once it has
/// exec'd or exited. A child with a v2 cgroup is created in it where the kernel can
/// ([`clone3`]), and then does not move there itself.
fn clone_child(child: &mut ChildPlan) -> io::Result<(i32, OwnedFd)> {
    let mut stack = vec![0u8; CHILD_STACK];
    // The stack grows down from its (16-byte aligned) top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK) & !15;
    let mut pidfd: c_int = -1;
    // SAFETY: sigfillset/pthread_sigmask on sets on our stack.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&raw mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &raw const all, &raw mut old);
    }
    let mut placed = None;
    let into = child.setup.into_cgroup;
    if into >= 0 {
        let procs = std::mem::replace(&mut child.setup.v2_procs, -1);
        let arg = std::ptr::from_mut(child).cast();
        // SAFETY: as for the clone below; the child runs `child_main`, which execs or exits.
        placed =
            unsafe { clone3::clone_into_cgroup(child_main, arg, &mut stack, into, &mut pidfd) };
        if placed.is_none() {
            child.setup.v2_procs = procs;
        }
    }
    let cloned = placed.unwrap_or_else(|| {
        // SAFETY: the child runs `child_main` on `stack` sharing our memory; CLONE_VFORK
        // keeps this thread (and so `child`, `stack` and everything they point to) in
        // place until the child has exec'd or exited. It only makes async-signal-safe
        // calls.
        let pid = unsafe {
            libc::clone(
                child_main,
                top as *mut c_void,
                libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
                std::ptr::from_mut(child).cast(),
                &raw mut pidfd,
            )
        };
        if pid < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(pid)
        }
    });
    // SAFETY: restores this thread's mask from our stack.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &raw const old, std::ptr::null_mut()) };
    drop(stack);
    let pid = cloned?;
    // SAFETY: CLONE_PIDFD stored a fresh descriptor for the child that we now own.
    Ok((pid, unsafe { OwnedFd::from_raw_fd(pidfd) }))
}

/// The child, on the node's memory: set up, `execve`, or report `errno` and `_exit`.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `ChildPlan`, kept alive by CLONE_VFORK.
    let plan = unsafe { &*(arg as *const ChildPlan) };
    // SAFETY: only async-signal-safe calls on prepared data, in the new process.
    let errno = unsafe { prepare_and_exec(plan) };
    plan.error.store(errno.max(1), Ordering::Release);
    // SAFETY: _exit ends only this process, running no handlers.
    unsafe { libc::_exit(127) }
}

/// Returns only on failure, with the `errno` of the failing step.
unsafe fn prepare_and_exec(plan: &ChildPlan) -> c_int {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY (whole body): system calls on the plan's prepared data; see the module doc.
    unsafe {
        default_signal_handlers();
        let sources = plan.stdio.iter().chain(&plan.pass);
        for (target, &fd) in sources.enumerate() {
            // dup2 clears close-on-exec on the target: these are the ones passed on.
            if fd >= 0 && libc::dup2(fd, target as c_int) < 0 {
                return errno();
            }
        }
        if libc::chdir(plan.cwd) < 0 || (plan.own_group && libc::setpgid(0, 0) < 0) {
            return errno();
        }
        let applied = if plan.cgroups_only {
            plan.setup.join_cgroups()
        } else {
            plan.setup.apply()
        };
        if let Err(e) = applied {
            return e.raw_os_error().unwrap_or(libc::EINVAL);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&raw mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const none, std::ptr::null_mut());
        libc::execve(plan.program, plan.argv, plan.envp);
    }
    errno()
}

/// Every signal the node handles goes back to its default (as `exec` would do), and
/// `SIGPIPE`, which the Rust runtime ignores, too; ignored ones stay ignored.
unsafe fn default_signal_handlers() {
    for signal in 1..NSIG {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction reads and writes structs on our stack.
        unsafe {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &raw mut current) < 0 {
                continue;
            }
            if current.sa_sigaction == libc::SIG_DFL
                || (current.sa_sigaction == libc::SIG_IGN && signal != libc::SIGPIPE)
            {
                continue;
            }
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(signal, &raw const default, std::ptr::null_mut());
        }
    }
}

/// `waitid` on `pidfd`; `None` while the process runs (with `WNOHANG`).
fn wait_pidfd(pidfd: &OwnedFd, flags: c_int) -> io::Result<Option<ProgramExit>> {
    // SAFETY: waitid fills the zeroed siginfo on our stack.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let id = libc::id_t::try_from(pidfd.as_raw_fd()).unwrap_or(libc::id_t::MAX);
        if libc::waitid(libc::P_PIDFD, id, &raw mut info, libc::WEXITED | flags) < 0 {
            return Err(io::Error::last_os_error());
        }
        if info.si_pid() == 0 {
            return Ok(None);
        }
        let status = info.si_status();
        Ok(Some(if info.si_code == libc::CLD_EXITED {
            ProgramExit::Exited(status)
        } else {
            ProgramExit::Signaled(status)
        }))
    }
}

/// Waits for (and so reaps) the process of `pidfd`, blocking.
fn reap_blocking(pidfd: &OwnedFd) {
    loop {
        match wait_pidfd(pidfd, 0) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            _ => return,
        }
    }
}

impl Process {
    /// Its pid.
    pub(crate) fn id(&self) -> i32 {
        self.pid
    }

    /// From now on a drop before it was waited for leaves it running (a detached job's
    /// supervisor outlives a node that stops); it is still reaped when it ends.
    pub(crate) fn outlive_handle(&mut self) {
        self.outlives_handle = true;
    }

    /// Whether it has exited (its pidfd is readable), without reaping it.
    pub(crate) fn has_exited(&self) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return true;
        };
        let mut fds = [libc::pollfd {
            fd: pidfd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: poll on one pollfd on our stack, without waiting.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) == 1 }
    }

    /// Waits until it has exited, and reaps it.
    ///
    /// # Errors
    /// The `waitid` or reactor error (it was then reaped already, or never will be here).
    pub(crate) async fn wait(&mut self) -> io::Result<ProgramExit> {
        let Some(pidfd) = &self.pidfd else {
            return Err(io::Error::other("the process was waited for already"));
        };
        loop {
            let mut ready = pidfd.readable().await?;
            match wait_pidfd(pidfd.get_ref(), libc::WNOHANG) {
                Ok(Some(exit)) => {
                    self.pidfd = None;
                    return Ok(exit);
                }
                Ok(None) => ready.clear_ready(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.pidfd = None;
                    return Err(e);
                }
            }
        }
    }
}

impl Drop for Process {
    /// Not waited for: killed (as `kill_on_drop` did) unless it outlives its handle, and
    /// reaped off this thread.
    fn drop(&mut self) {
        let Some(pidfd) = self.pidfd.take() else {
            return;
        };
        let pidfd = pidfd.into_inner();
        if !self.outlives_handle {
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
        }
        if let Ok(None) = wait_pidfd(&pidfd, libc::WNOHANG) {
            let _ = std::thread::Builder::new()
                .name("warren-reap".into())
                .spawn(move || reap_blocking(&pidfd));
        }
    }
}

#[cfg(test)]
mod tests;
