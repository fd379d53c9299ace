//! What a program's process does to itself between `fork` and `exec`: join its cgroups, take
//! its rlimits, (when asked) enter a private network namespace, and last (with `[work]
//! job-users`) enter an IPC namespace of its own where the node may (so the System V
//! objects and POSIX message queues it makes die with it, out of reach of the uid's next
//! job) and become its job's own user: no supplementary groups, gid and uid the job's, no
//! capabilities, `PR_SET_NO_NEW_PRIVS`, and no kernel keyring (a seccomp filter refuses
//! `add_key`, `keyctl` and `request_key`: `keyring`).
//!
//! [`ChildSetup::apply`] runs in the child of a possibly multi-threaded process, so it makes
//! only async-signal-safe system calls: no allocation, no locks, no formatting through
//! `std::fmt`. Everything it needs (open `cgroup.procs` descriptors, numbers) is prepared
//! before the fork.

use std::io;
use std::os::fd::RawFd;

/// Most cgroup hierarchies a program joins: v2, and the v1 `memory`, `pids`, `freezer`.
pub(crate) const MAX_CGROUP_FDS: usize = 4;

/// The plan for one program's process, prepared before the fork. `Copy`, so the `pre_exec`
/// closure owns it outright. Serialisable so a supervisor can apply it to the program it
/// starts (the descriptors are meaningless there and are not sent).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "SetupWire", try_from = "SetupWire")]
pub(crate) struct ChildSetup {
    /// Open v1 `tasks` files to write `0` (this thread, and so this single-threaded
    /// process) to; the first `procs_len`. A thread moving itself does not take the
    /// kernel's threadgroup lock, so it does not wait for an RCU grace period as a
    /// `cgroup.procs` write does.
    pub(crate) procs: [RawFd; MAX_CGROUP_FDS],
    /// How many of `procs` are set.
    pub(crate) procs_len: usize,
    /// A v2 cgroup directory to create the process in (`CLONE_INTO_CGROUP`); -1: none.
    pub(crate) into_cgroup: RawFd,
    /// That cgroup's `cgroup.procs`, written `0` when the process could not be created in
    /// it (an older kernel); -1 once it was.
    pub(crate) v2_procs: RawFd,
    /// `RLIMIT_NOFILE`, lowered to the current hard limit if that is lower.
    pub(crate) open_files: u64,
    /// `RLIMIT_FSIZE` (soft and hard).
    pub(crate) file_size: u64,
    /// `RLIMIT_AS` per process, where no cgroup can bound the tree's memory.
    pub(crate) address_space: Option<u64>,
    /// `RLIMIT_NPROC`, where no cgroup can bound the tree's processes.
    pub(crate) nproc: Option<u64>,
    /// Enter a new network namespace with only loopback (brought up).
    pub(crate) private_network: bool,
    /// The node's uid and gid, for the user namespace an unprivileged node needs to own a
    /// network namespace.
    pub(crate) ids: (u32, u32),
    /// Unblock every signal (a supervisor blocks the ones it takes through a signalfd, and
    /// a signal mask survives `exec`).
    pub(crate) unblock_signals: bool,
    /// The job's own uid (used as its gid too), taken last; `None`: the node's user.
    pub(crate) job_user: Option<u32>,
    /// With a job user: enter a new IPC namespace first (the node has `CAP_SYS_ADMIN`).
    pub(crate) private_ipc: bool,
}

/// [`ChildSetup`] as a supervisor receives it (the descriptors are not sent). With a job
/// user, the node's ids travel inside `job_user` and `ids` is left out: a supervisor that
/// does not know job users then fails to read the spec (``missing field `ids` ``) before it
/// starts anything, instead of running the program as the node's user.
#[derive(serde::Serialize, serde::Deserialize)]
struct SetupWire {
    open_files: u64,
    file_size: u64,
    address_space: Option<u64>,
    nproc: Option<u64>,
    private_network: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ids: Option<(u32, u32)>,
    unblock_signals: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    job_user: Option<JobUserWire>,
}

/// A job user on the wire, with the node's ids and whether the program gets an IPC
/// namespace of its own.
#[derive(serde::Serialize, serde::Deserialize)]
struct JobUserWire {
    uid: u32,
    ids: (u32, u32),
    #[serde(default)]
    private_ipc: bool,
}

impl From<ChildSetup> for SetupWire {
    fn from(setup: ChildSetup) -> Self {
        let job_user = setup.job_user.map(|uid| JobUserWire {
            uid,
            ids: setup.ids,
            private_ipc: setup.private_ipc,
        });
        Self {
            open_files: setup.open_files,
            file_size: setup.file_size,
            address_space: setup.address_space,
            nproc: setup.nproc,
            private_network: setup.private_network,
            ids: job_user.is_none().then_some(setup.ids),
            unblock_signals: setup.unblock_signals,
            job_user,
        }
    }
}

impl TryFrom<SetupWire> for ChildSetup {
    type Error = &'static str;

    fn try_from(wire: SetupWire) -> Result<Self, Self::Error> {
        let (ids, job_user, private_ipc) = match (wire.ids, wire.job_user) {
            (Some(ids), None) => (ids, None, false),
            (None, Some(user)) => (user.ids, Some(user.uid), user.private_ipc),
            _ => return Err("exactly one of `ids` and `job_user` must be given"),
        };
        Ok(Self {
            procs: [-1; MAX_CGROUP_FDS],
            procs_len: 0,
            into_cgroup: -1,
            v2_procs: -1,
            open_files: wire.open_files,
            file_size: wire.file_size,
            address_space: wire.address_space,
            nproc: wire.nproc,
            private_network: wire.private_network,
            ids,
            unblock_signals: wire.unblock_signals,
            job_user,
            private_ipc,
        })
    }
}

impl ChildSetup {
    /// A plan with no cgroups, the given rlimits and nothing else.
    pub(crate) fn new(open_files: u64, file_size: u64) -> Self {
        // SAFETY: getuid/getgid cannot fail and have no memory effects.
        let ids = unsafe { (libc::getuid(), libc::getgid()) };
        Self {
            procs: [-1; MAX_CGROUP_FDS],
            procs_len: 0,
            into_cgroup: -1,
            v2_procs: -1,
            open_files,
            file_size,
            address_space: None,
            nproc: None,
            private_network: false,
            ids,
            unblock_signals: false,
            job_user: None,
            private_ipc: false,
        }
    }

    /// Applies the plan to the calling process.
    ///
    /// # Safety
    /// Call only in a freshly forked child before `exec` (a `pre_exec` hook): it changes
    /// process-wide state. It is async-signal-safe.
    ///
    /// # Errors
    /// The first system call that failed; the spawn then fails with it.
    pub(crate) unsafe fn apply(&self) -> io::Result<()> {
        // SAFETY: as this function's.
        unsafe { self.join_cgroups()? };
        if self.unblock_signals {
            // SAFETY: an empty set on the stack; sigprocmask is async-signal-safe.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&raw mut set);
                check(
                    libc::sigprocmask(libc::SIG_SETMASK, &raw const set, std::ptr::null_mut())
                        .into(),
                )?;
            }
        }
        set_limit(libc::RLIMIT_CORE, 0, true)?;
        set_limit(libc::RLIMIT_NOFILE, self.open_files, false)?;
        set_limit(libc::RLIMIT_FSIZE, self.file_size, true)?;
        if let Some(bytes) = self.address_space {
            set_limit(libc::RLIMIT_AS, bytes, false)?;
        }
        if let Some(count) = self.nproc {
            set_limit(libc::RLIMIT_NPROC, count, false)?;
        }
        if self.private_network {
            // SAFETY: as above; only system calls on stack data.
            unsafe { self.enter_private_network()? };
        }
        if let Some(uid) = self.job_user {
            if self.private_ipc {
                // SAFETY: unshare has no memory effects.
                check(unsafe { libc::unshare(libc::CLONE_NEWIPC) }.into())?;
            }
            become_job_user(uid)?;
        }
        Ok(())
    }

    /// Moves the calling process into the plan's cgroups, and nothing else (a supervisor
    /// joins them; the program it starts takes the rest of the plan).
    ///
    /// # Safety
    /// As [`ChildSetup::apply`].
    ///
    /// # Errors
    /// A `cgroup.procs` write that failed.
    pub(crate) unsafe fn join_cgroups(&self) -> io::Result<()> {
        let v2 = (self.v2_procs >= 0).then_some(self.v2_procs);
        for &fd in self.procs[..self.procs_len.min(MAX_CGROUP_FDS)]
            .iter()
            .chain(&v2)
        {
            // Writing 0 moves the writing thread: a v1 `tasks` file moves only it (the
            // whole process: it is single-threaded), a `cgroup.procs` its thread group.
            // SAFETY: a plain write of a static byte to an fd opened before the fork.
            check(unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } as i64)?;
        }
        Ok(())
    }

    /// `unshare(CLONE_NEWNET)` (as root), else inside a new user namespace that maps only
    /// the node's own ids; then brings `lo` up, so 127.0.0.1 works inside.
    unsafe fn enter_private_network(&self) -> io::Result<()> {
        let (uid, gid) = self.ids;
        // A job user is not mapped in a namespace of the node's user: the node needs
        // CAP_SYS_ADMIN (root) for the plain network namespace then.
        if uid == 0 || self.job_user.is_some() {
            // SAFETY: unshare has no memory effects.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) }.into())?;
        } else {
            // SAFETY: as above.
            check(unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET) }.into())?;
            write_file(c"/proc/self/setgroups", b"deny")?;
            write_id_map(c"/proc/self/uid_map", uid)?;
            write_id_map(c"/proc/self/gid_map", gid)?;
        }
        // SAFETY: only system calls on stack data.
        unsafe { loopback_up() }
    }
}

/// Drops every supplementary group, takes `uid` as real, effective and saved gid and uid,
/// clears every capability (a non-root node's capabilities survive a change between two
/// non-zero uids) and sets `PR_SET_NO_NEW_PRIVS`, so no set-uid program or file capability
/// gives any of it back; last, shuts the kernel keyrings (`keyring`: a seccomp filter under
/// which `add_key`, `keyctl` and `request_key` fail with `EPERM`), which would keep what
/// the job left there for the uid's next job.
///
/// Raw system calls: the libc wrappers of `setuid` and friends change every thread of the
/// calling process through a signal broadcast, and this child runs on the node's memory
/// (`CLONE_VM`), where that thread list is the node's. The kernel calls change only the
/// calling task, which is this whole single-threaded process.
pub(crate) fn become_job_user(uid: u32) -> io::Result<()> {
    let id = libc::c_long::from(uid);
    // SAFETY: system calls on integers and a stack buffer; async-signal-safe.
    unsafe {
        check(libc::syscall(
            libc::SYS_setgroups,
            0 as libc::c_long,
            std::ptr::null::<u32>(),
        ))?;
        check(libc::syscall(libc::SYS_setresgid, id, id, id))?;
        check(libc::syscall(libc::SYS_setresuid, id, id, id))?;
        // Ambient capabilities would be raised again at exec: clear them first.
        check(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            )
            .into(),
        )?;
        let header = CapHeader {
            version: LINUX_CAPABILITY_VERSION_3,
            pid: 0,
        };
        let data = [CapData::default(); 2];
        check(libc::syscall(
            libc::SYS_capset,
            &raw const header,
            data.as_ptr(),
        ))?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into())?;
    }
    super::keyring::shut_keyrings()
}

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: all zero is no capability at all.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Sets a resource limit. The soft limit is `value`, capped at the current hard limit; with
/// `hard`, the hard limit is lowered to it too, so the program cannot raise it back.
fn set_limit(resource: libc::__rlimit_resource_t, value: u64, hard: bool) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit write and read the struct on our stack.
    unsafe {
        check(libc::getrlimit(resource, &raw mut current).into())?;
        let soft = value.min(current.rlim_max);
        let max = if hard { soft } else { current.rlim_max };
        let limit = libc::rlimit {
            rlim_cur: soft,
            rlim_max: max,
        };
        check(libc::setrlimit(resource, &raw const limit).into())
    }
}

/// Writes `<id> <id> 1` to an id map file.
fn write_id_map(path: &std::ffi::CStr, id: u32) -> io::Result<()> {
    let mut buf = [0u8; 32];
    let mut len = 0;
    let mut digits = [0u8; 10];
    let mut n = id;
    let mut d = 0;
    loop {
        digits[d] = b'0' + (n % 10) as u8;
        d += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in 0..2 {
        for i in (0..d).rev() {
            buf[len] = digits[i];
            len += 1;
        }
        buf[len] = b' ';
        len += 1;
    }
    buf[len] = b'1';
    len += 1;
    write_file(path, &buf[..len])
}

/// Opens `path` for writing, writes `bytes` in one call, closes it.
fn write_file(path: &std::ffi::CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close on a static path and a stack buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(fd.into())?;
        let written = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        libc::close(fd);
        check(written as i64).map(drop)
    }
}

/// Sets `IFF_UP` on `lo` in the current network namespace.
unsafe fn loopback_up() -> io::Result<()> {
    // SAFETY: a socket and two ioctls on an ifreq on our stack.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(fd.into())?;
        let mut req: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let mut result = libc::ioctl(fd, libc::SIOCGIFFLAGS, &raw mut req);
        if result == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(fd, libc::SIOCSIFFLAGS, &raw const req);
        }
        libc::close(fd);
        check(result.into()).map(drop)
    }
}

/// `Err(errno)` for a negative system call result. Reads errno, which is
/// async-signal-safe.
fn check(result: i64) -> io::Result<()> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}
