//! Job users' programs get no kernel keyring (`[work] job-users`): a seccomp filter, set
//! last before `exec` ([`shut_keyrings`]), makes `add_key`, `keyctl` and `request_key` fail
//! with `EPERM`, as Docker's default seccomp profile does.
//!
//! Why: keyrings are not namespaced by mount, pid or IPC namespaces, and two of them belong
//! to a uid rather than to its processes: the user keyring (`@u`, kept by the user
//! namespace after the uid's last process exits, kernel 5.3 and later) and the persistent
//! keyring (`keyctl get_persistent`, kept three days). A job could leave a key there and
//! the next job of its uid, often another submitter's, would read it (`keyctl print
//! %user:name`). Clearing them when a job ends would not do: the user keyring is found by
//! the caller's real uid, a job can take away the owner's rights on it (`keyctl setperm`),
//! and a named keyring linked from either lives on. A program that needs a keyring (a
//! Kerberos `KEYRING:` credential cache) must use another store (`KRB5CCNAME=FILE:...`).
//!
//! Jobs that run as the node's own user are not filtered: their keyrings are the node's,
//! which they share with every other job and the node anyway (as their files), so a
//! filter would take a feature from them and keep nothing from anyone.
//!
//! The filter checks `seccomp_data.arch` and knows each calling convention the kernel of
//! the build's architecture takes: on x86_64 the x86_64 calls, the x32 ones (the same
//! numbers with bit 30 set, masked off before the comparison) and the i386 ones (`int
//! 0x80`); on aarch64 the aarch64 and the 32-bit ARM ones. A call made as any other
//! architecture fails whatever it is. Builds for other architectures have no filter: there
//! [`check_available`] refuses job users at start, and a spawn that asks for a job user
//! fails, rather than run jobs whose keyrings the next job of the uid could read.

use std::io;

/// What a refused call gets: `EPERM` ("Operation not permitted").
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const DENY: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);

/// The keyring calls of one calling convention: the `seccomp_data.arch` it shows, a mask for
/// the call number, and the numbers of `add_key`, `request_key` and `keyctl`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
struct ArchCalls {
    arch: u32,
    mask: u32,
    calls: [u32; 3],
}

/// `AUDIT_ARCH_X86_64`: `EM_X86_64` (62), 64-bit, little-endian.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`: `EM_386` (3), little-endian.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `__X32_SYSCALL_BIT`: an x32 call is the x86_64 number with this bit set, and shows
/// `AUDIT_ARCH_X86_64`.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

#[cfg(target_arch = "x86_64")]
const ARCHES: [ArchCalls; 2] = [
    ArchCalls {
        arch: AUDIT_ARCH_X86_64,
        mask: !X32_SYSCALL_BIT,
        calls: [
            libc::SYS_add_key as u32,
            libc::SYS_request_key as u32,
            libc::SYS_keyctl as u32,
        ],
    },
    // arch/x86/entry/syscalls/syscall_32.tbl
    ArchCalls {
        arch: AUDIT_ARCH_I386,
        mask: u32::MAX,
        calls: [286, 287, 288],
    },
];

/// `AUDIT_ARCH_AARCH64`: `EM_AARCH64` (183), 64-bit, little-endian.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// `AUDIT_ARCH_ARM`: `EM_ARM` (40), little-endian.
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH_ARM: u32 = 0x4000_0028;

#[cfg(target_arch = "aarch64")]
const ARCHES: [ArchCalls; 2] = [
    ArchCalls {
        arch: AUDIT_ARCH_AARCH64,
        mask: u32::MAX,
        calls: [
            libc::SYS_add_key as u32,
            libc::SYS_request_key as u32,
            libc::SYS_keyctl as u32,
        ],
    },
    // arch/arm/tools/syscall.tbl (EABI)
    ArchCalls {
        arch: AUDIT_ARCH_ARM,
        mask: u32::MAX,
        calls: [309, 310, 311],
    },
];

/// The filter program of the build's architecture.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
mod filter {
    use super::{ARCHES, ArchCalls, DENY};

    /// Instructions per calling convention: compare the arch (else on to the next), load
    /// the number, mask it, compare it with each call, allow.
    const BLOCK: usize = 7;

    /// The program: load the arch, one block per calling convention, refuse.
    pub(super) const LEN: usize = 2 + BLOCK * ARCHES.len();

    /// The filter, built at compile time.
    pub(super) static PROGRAM: [libc::sock_filter; LEN] = program(&ARCHES);

    const NR: u32 = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    const ARCH: u32 = std::mem::offset_of!(libc::seccomp_data, arch) as u32;

    const fn op(code: u32, k: u32, jt: usize, jf: usize) -> libc::sock_filter {
        // Jumps are at most LEN (16) instructions: they fit a u8.
        libc::sock_filter {
            code: code as u16,
            jt: jt as u8,
            jf: jf as u8,
            k,
        }
    }

    /// `A = seccomp_data.arch`; per calling convention `if A == arch { A = nr & mask; if A
    /// is a keyring call { refuse } allow }`; refuse (an architecture the filter does not
    /// know).
    const fn program(arches: &[ArchCalls; ARCHES.len()]) -> [libc::sock_filter; LEN] {
        let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let jeq = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
        let ret = libc::BPF_RET | libc::BPF_K;
        let deny_at = LEN - 1;
        let mut out = [op(ret, DENY, 0, 0); LEN];
        out[0] = op(load, ARCH, 0, 0);
        let mut i = 0;
        while i < arches.len() {
            let at = 1 + i * BLOCK;
            let block = &arches[i];
            // Not this arch: on to the next block (the last one's next is the refusal).
            out[at] = op(jeq, block.arch, 0, BLOCK - 1);
            out[at + 1] = op(load, NR, 0, 0);
            out[at + 2] = op(
                libc::BPF_ALU | libc::BPF_AND | libc::BPF_K,
                block.mask,
                0,
                0,
            );
            let mut c = 0;
            while c < 3 {
                let pc = at + 3 + c;
                out[pc] = op(jeq, block.calls[c], deny_at - (pc + 1), 0);
                c += 1;
            }
            out[at + 6] = op(ret, libc::SECCOMP_RET_ALLOW, 0, 0);
            i += 1;
        }
        out
    }
}

/// Installs the filter on the calling process: from then on, it and everything it runs get
/// `EPERM` from `add_key`, `keyctl` and `request_key`. Needs `PR_SET_NO_NEW_PRIVS` (or
/// `CAP_SYS_ADMIN`). Async-signal-safe: one `prctl` on a static program; call it in a child
/// before `exec`.
///
/// # Errors
/// The kernel refused the filter (no `CONFIG_SECCOMP_FILTER`, or no `PR_SET_NO_NEW_PRIVS`);
/// on a build without a filter, always (`Unsupported`).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub(crate) fn shut_keyrings() -> io::Result<()> {
    let program = libc::sock_fprog {
        len: filter::LEN as u16,
        filter: filter::PROGRAM.as_ptr().cast_mut(),
    };
    // SAFETY: the kernel copies the program; it only reads through the pointer.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &raw const program,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// This build has no filter: refuse (see the module doc).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) fn shut_keyrings() -> io::Result<()> {
    Err(io::Error::from(io::ErrorKind::Unsupported))
}

/// Whether [`shut_keyrings`] can work here: the build has a filter for its architecture and
/// the kernel takes seccomp filters that return an errno (`SECCOMP_GET_ACTION_AVAIL`,
/// kernel 4.14 and later).
///
/// # Errors
/// What is missing, in words for a start refusal.
pub(crate) fn check_available() -> Result<(), String> {
    if cfg!(not(any(target_arch = "x86_64", target_arch = "aarch64"))) {
        return Err(format!(
            "this build of warren has no seccomp filter for {} (only x86_64 and aarch64)",
            std::env::consts::ARCH
        ));
    }
    let action: u32 = libc::SECCOMP_RET_ERRNO;
    // SAFETY: the kernel reads one u32 from our stack.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_GET_ACTION_AVAIL,
            0,
            &raw const action,
        )
    };
    if rc < 0 {
        let error = io::Error::last_os_error();
        return Err(format!(
            "the kernel takes no seccomp filter returning an errno ({error}; it needs CONFIG_SECCOMP_FILTER, kernel 4.14 or later)"
        ));
    }
    Ok(())
}

#[cfg(all(test, any(target_arch = "x86_64", target_arch = "aarch64")))]
mod tests {
    use std::os::unix::process::CommandExt as _;

    use super::*;

    /// Runs a classic BPF program of the instructions the filter uses on one
    /// `seccomp_data` (`nr`, `arch`); returns what it returned.
    fn run(program: &[libc::sock_filter], nr: u32, arch: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let insn = program[pc];
            pc += 1;
            match u32::from(insn.code) {
                code if code == libc::BPF_LD | libc::BPF_W | libc::BPF_ABS => {
                    a = match insn.k {
                        0 => nr,
                        4 => arch,
                        k => panic!("load at {k}"),
                    };
                }
                code if code == libc::BPF_ALU | libc::BPF_AND | libc::BPF_K => a &= insn.k,
                code if code == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == insn.k { insn.jt } else { insn.jf });
                }
                code if code == libc::BPF_RET | libc::BPF_K => return insn.k,
                code => panic!("instruction {code:#x}"),
            }
        }
    }

    #[test]
    fn the_program_refuses_the_keyring_calls_of_every_calling_convention_and_allows_the_rest() {
        for block in &ARCHES {
            for &call in &block.calls {
                assert_eq!(run(&filter::PROGRAM, call, block.arch), DENY, "{call}");
            }
            for other in [0, 1, 39, 200, 285, 289, 312, 435] {
                assert_eq!(
                    run(&filter::PROGRAM, other, block.arch),
                    libc::SECCOMP_RET_ALLOW,
                    "call {other} of arch {:#x}",
                    block.arch
                );
            }
            // x32 (bit 30 set, shown as x86_64) is masked to the x86_64 number.
            let masked = block.calls[2] | !block.mask;
            assert_eq!(run(&filter::PROGRAM, masked, block.arch), DENY);
        }
        assert_eq!(run(&filter::PROGRAM, 39, 0x1234), DENY, "an unknown arch");
    }

    /// As a job user's program: keyctl, add_key and request_key (and the x32 keyctl on
    /// x86_64) give `EPERM`; other calls work.
    const PROBE: &str = r#"
import ctypes, errno, os, platform
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
add_key, request_key, keyctl = {"x86_64": (248, 249, 250), "aarch64": (217, 218, 219)}[platform.machine()]
def said(rc):
    return "ok" if rc >= 0 else errno.errorcode[ctypes.get_errno()]
print("keyctl", said(libc.syscall(keyctl, 0, -4, 0)))
print("add_key", said(libc.syscall(add_key, b"user", b"warren-probe", b"v", 1, -2)))
print("request_key", said(libc.syscall(request_key, b"user", b"warren-probe", None, 0)))
if platform.machine() == "x86_64":
    print("x32 keyctl", said(libc.syscall(0x40000000 | keyctl, 0, -4, 0)))
print("pid", os.getpid() > 0)
"#;

    fn probe(filtered: bool) -> String {
        let mut command = std::process::Command::new("/usr/bin/python3");
        command.args(["-c", PROBE]);
        if filtered {
            // SAFETY: prctl calls in the child before exec; async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    shut_keyrings()
                });
            }
        }
        let out = command.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0)` through the i386 entry
    /// (`int 0x80`, call 288), as a 32-bit program would make it.
    #[cfg(target_arch = "x86_64")]
    fn i386_keyctl() -> i32 {
        let mut rc: i32 = 288;
        // SAFETY: a system call with integer arguments; rbx (which LLVM keeps) is swapped
        // in and out around it; r8-r11 may be cleared by older kernels.
        unsafe {
            std::arch::asm!(
                "xchg {first:r}, rbx",
                "int 0x80",
                "xchg {first:r}, rbx",
                first = inout(reg) 0u64 => _,
                inout("eax") rc,
                in("ecx") -4i32,
                in("edx") 0i32,
                out("r8") _,
                out("r9") _,
                out("r10") _,
                out("r11") _,
            );
        }
        rc
    }

    /// A 64-bit process cannot slip past the filter through the i386 entry: its keyctl
    /// (another number, another `seccomp_data.arch`) fails too. The child exits before
    /// `exec` with the errno of the call (0: it worked; killed: no i386 entry here).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn a_filtered_process_gets_eperm_from_the_i386_keyctl_too() {
        let i386_keyctl_errno = |filtered: bool| {
            let mut command = std::process::Command::new("/bin/true");
            // SAFETY: prctl, a system call and _exit in the child before exec.
            unsafe {
                command.pre_exec(move || {
                    if filtered {
                        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                            return Err(io::Error::last_os_error());
                        }
                        shut_keyrings()?;
                    }
                    libc::_exit(i386_keyctl().min(0).abs())
                });
            }
            command.status().unwrap().code()
        };
        if i386_keyctl_errno(false) != Some(0) {
            eprintln!("no i386 system call entry here: nothing to check");
            return;
        }
        assert_eq!(i386_keyctl_errno(true), Some(libc::EPERM));
    }

    #[test]
    fn a_filtered_process_gets_eperm_from_the_keyring_calls_and_runs_the_rest() {
        assert_eq!(check_available(), Ok(()));
        let x32 = if cfg!(target_arch = "x86_64") {
            "x32 keyctl EPERM\n"
        } else {
            ""
        };
        assert_eq!(
            probe(true),
            format!("keyctl EPERM\nadd_key EPERM\nrequest_key EPERM\n{x32}pid True\n")
        );
        // Unfiltered, the same calls reach the kernel: keyctl (KEYCTL_GET_KEYRING_ID of the
        // user keyring) works, the add to the process keyring (this process's only, gone at
        // its exit) too, and the request finds the key just added there.
        let open = probe(false);
        assert!(
            open.starts_with("keyctl ok\nadd_key ok\nrequest_key ok\n"),
            "{open}"
        );
    }
}
