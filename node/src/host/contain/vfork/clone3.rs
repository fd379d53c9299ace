//! `clone3` with `CLONE_INTO_CGROUP` for the vfork spawn: the child is created inside its
//! v2 cgroup, so it never has to move there. A move (a `cgroup.procs` write) takes the
//! kernel's threadgroup lock for writing, which waits for an RCU grace period unless
//! another move happened within the last one: about 7 ms on an idle machine, more under
//! load, paid by every job that arrives alone.
//!
//! libc has no `clone3` wrapper that runs a function on a new stack, so this is a few
//! instructions of assembly (x86_64 only; elsewhere [`clone_into_cgroup`] is `None` and the
//! caller moves the child as before): the child, on the stack the kernel switched to, calls
//! `child` with `arg` and exits with its result (it never returns: `child` execs or
//! `_exit`s).

use std::ffi::{c_int, c_void};

/// `CLONE_INTO_CGROUP` (Linux 5.7).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The kernel's `struct clone_args` (version 2, with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Starts `child(arg)` on `stack` as a vfork child sharing our memory, created in the
/// cgroup of the directory descriptor `cgroup`, with a pidfd stored in `pidfd`.
///
/// Returns `None` where this kernel or architecture cannot (no `clone3`, or a `clone3`
/// without `CLONE_INTO_CGROUP`): nothing was started, the caller clones as before.
/// Otherwise the child's pid or the OS error.
///
/// # Safety
/// As `clone(CLONE_VM | CLONE_VFORK)`: `child` may only make async-signal-safe calls and
/// must `execve` or `_exit`; `stack` must be valid for the child until then.
pub(super) unsafe fn clone_into_cgroup(
    child: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
    stack: &mut [u8],
    cgroup: c_int,
    pidfd: &mut c_int,
) -> Option<std::io::Result<i32>> {
    // The child's stack pointer starts at stack + stack_size: keep it 16-byte aligned.
    let base = stack.as_mut_ptr() as usize;
    let top = (base + stack.len()) & !15;
    let mut args = CloneArgs {
        flags: (libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD) as u64 | CLONE_INTO_CGROUP,
        pidfd: std::ptr::from_mut(pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: base as u64,
        stack_size: (top - base) as u64,
        cgroup: u64::try_from(cgroup).ok()?,
        ..CloneArgs::default()
    };
    // SAFETY: as this function's contract.
    let ret = unsafe { raw_clone3(&raw mut args, child, arg)? };
    if ret >= 0 {
        return Some(Ok(i32::try_from(ret).unwrap_or(-1)));
    }
    let errno = i32::try_from(-ret).unwrap_or(libc::EINVAL);
    // ENOSYS: no clone3 (before 5.3); E2BIG / EINVAL: a clone3 that does not know the
    // `cgroup` field or flag (before 5.7); EPERM: a seccomp filter that refuses clone3
    // (some container runtimes' profiles did, to make libc fall back to clone).
    if matches!(
        errno,
        libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM
    ) {
        return None;
    }
    Some(Err(std::io::Error::from_raw_os_error(errno)))
}

/// The `clone3` system call; in the child, calls `child(arg)` and exits with its result.
/// Returns the raw result (pid or `-errno`) in the parent.
#[cfg(target_arch = "x86_64")]
unsafe fn raw_clone3(
    args: *mut CloneArgs,
    child: extern "C" fn(*mut c_void) -> c_int,
    arg: *mut c_void,
) -> Option<i64> {
    let ret: i64;
    // SAFETY: the kernel returns 0 in the child on the new stack with every other register
    // as the parent had it: r12 and r13 still hold `child` and `arg`. The child calls
    // `child` (the stack is 16-byte aligned, so the callee sees the usual alignment) and
    // exits with its result; it never reaches the parent's code. The parent resumes after
    // the child has exec'd or exited (CLONE_VFORK) with rcx and r11 clobbered by `syscall`.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "mov rdi, r13",
            "call r12",
            "mov edi, eax",
            "mov eax, 60",
            "syscall",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args,
            in("rsi") size_of::<CloneArgs>(),
            in("r12") child,
            in("r13") arg,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    Some(ret)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn raw_clone3(
    _args: *mut CloneArgs,
    _child: extern "C" fn(*mut c_void) -> c_int,
    _arg: *mut c_void,
) -> Option<i64> {
    None
}
