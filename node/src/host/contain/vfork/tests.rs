//! The vfork spawn's tests: what reaches the program, what is set before `exec`, the
//! supervisor role, and what a dropped handle does.

use std::io::Read as _;
use std::sync::Arc;

use super::super::cgroup::JobCgroup;
use super::super::{ContainMode, Containment, ProgramLimits};
use super::*;

/// Runs `sh -c script` with `setup`; returns its exit and everything it wrote to
/// stdout and stderr.
async fn sh(script: &str, setup: ChildSetup) -> (ProgramExit, String) {
    let (mut reader, writer) = io::pipe().unwrap();
    let out = OwnedFd::from(writer);
    let stdin = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let args = ["-c".to_owned(), script.to_owned(), "first".to_owned()];
    let env = [("WHO".to_owned(), "warren".to_owned())];
    let plan = Plan {
        program: Path::new("/bin/sh"),
        args: &args,
        env: &env,
        cwd: Path::new("/tmp"),
        stdio: [&stdin, &out, &out],
        setup,
        role: Role::Program,
    };
    let mut process = spawn(&plan).unwrap();
    drop((out, stdin));
    let exit = process.wait().await.unwrap();
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    (exit, text)
}

#[tokio::test]
async fn the_program_gets_its_arguments_environment_directory_and_exit_code() {
    let (exit, out) = sh(
        r#"echo "$0 $WHO $(pwd)"; env | grep -c . ; echo err >&2; exit 3"#,
        ChildSetup::new(1024, 1 << 30),
    )
    .await;
    assert_eq!(exit, ProgramExit::Exited(3));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "first warren /tmp");
    // WHO, plus what sh itself sets (PWD, maybe SHLVL, _): nothing of ours.
    let count: usize = lines[1].parse().unwrap();
    assert!(count <= 4, "environment leaked: {out}");
    assert_eq!(lines[2], "err");
}

#[tokio::test]
async fn rlimits_and_the_process_group_are_set_before_exec() {
    let (exit, out) = sh(
        "ulimit -n; ulimit -c; ps -o pgid= -p $$; echo $$",
        ChildSetup::new(77, 1 << 30),
    )
    .await;
    assert_eq!(exit, ProgramExit::Exited(0));
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(&lines[..2], ["77", "0"], "{out}");
    assert_eq!(lines[2], lines[3], "its own process group: {out}");
}

#[tokio::test]
async fn the_program_starts_with_no_signal_blocked_and_sigpipe_at_its_default() {
    // This test binary ignores SIGPIPE (the Rust runtime does) and a clone with every
    // signal blocked is how the child starts: neither may reach the program.
    let (_, out) = sh(
        "grep -E '^Sig(Blk|Ign)' /proc/self/status",
        ChildSetup::new(1024, 1 << 30),
    )
    .await;
    let mask = |name: &str| {
        let line = out.lines().find(|l| l.starts_with(name)).unwrap();
        u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap()
    };
    assert_eq!(mask("SigBlk:"), 0, "{out}");
    let sigpipe = 1u64 << (libc::SIGPIPE - 1);
    assert_eq!(mask("SigIgn:") & sigpipe, 0, "{out}");
}

#[tokio::test]
async fn a_program_that_cannot_be_executed_fails_the_spawn_with_the_os_error() {
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let mut plan = Plan {
        program: Path::new("/nonexistent/program"),
        args: &[],
        env: &[],
        cwd: Path::new("/"),
        stdio: [&null, &null, &null],
        setup: ChildSetup::new(64, 1 << 20),
        role: Role::Program,
    };
    let err = spawn(&plan).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    plan.program = Path::new("/bin/true");
    plan.cwd = Path::new("/nonexistent-dir");
    let err = spawn(&plan).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound, "bad cwd: {err}");
}

#[tokio::test]
async fn a_bare_program_name_is_found_on_the_jobs_path_as_execvp_would() {
    // `program = "cat"` in a work type is a name found on PATH: the job's own PATH, else
    // /bin:/usr/bin (what fork + execvp did).
    let tmp = tempfile::tempdir().unwrap();
    let tool = tmp.path().join("warren-test-tool");
    std::fs::write(&tool, "#!/bin/sh\necho found \"$@\"\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("/nonexistent:{}", tmp.path().display());
    for (env, program, want) in [
        (
            vec![("PATH".to_owned(), path)],
            "warren-test-tool",
            "found a\n",
        ),
        (vec![], "echo", "a\n"),
    ] {
        let (mut reader, writer) = io::pipe().unwrap();
        let out = OwnedFd::from(writer);
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let args = ["a".to_owned()];
        let plan = Plan {
            program: Path::new(program),
            args: &args,
            env: &env,
            cwd: Path::new("/"),
            stdio: [&null, &out, &null],
            setup: ChildSetup::new(64, 1 << 20),
            role: Role::Program,
        };
        let mut process = spawn(&plan).unwrap();
        drop(out);
        assert_eq!(process.wait().await.unwrap(), ProgramExit::Exited(0));
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, want, "{program}");
    }
}

#[tokio::test]
async fn a_private_network_is_made_in_the_vfork_child() {
    // Root makes the network namespace directly; a node that is not root makes it
    // inside a new user namespace (`unshare(CLONE_NEWUSER)`, which refuses a threaded
    // caller, while the vfork child shares the node's memory). The suite runs as root;
    // run this test as another user to take the second path.
    let mut setup = ChildSetup::new(1024, 1 << 30);
    setup.private_network = true;
    let (exit, out) = sh("cat /proc/net/dev", setup).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    let interfaces: Vec<&str> = (out.lines())
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .filter(|name| !name.contains('|'))
        .collect();
    assert_eq!(interfaces, ["lo"], "{out}");
}

#[tokio::test]
async fn a_process_dropped_before_it_was_waited_for_is_killed() {
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let args = ["30".to_owned()];
    let plan = Plan {
        program: Path::new("/bin/sleep"),
        args: &args,
        env: &[],
        cwd: Path::new("/"),
        stdio: [&null, &null, &null],
        setup: ChildSetup::new(64, 1 << 20),
        role: Role::Program,
    };
    let process = spawn(&plan).unwrap();
    let pid = process.id();
    let stat = format!("/proc/{pid}/stat");
    assert!(Path::new(&stat).exists());
    drop(process);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    // Killed and reaped: the pid is gone from /proc.
    while Path::new(&stat).exists() {
        assert!(std::time::Instant::now() < deadline, "sleep still there");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_supervisor_gets_its_descriptors_keeps_the_group_and_takes_no_rlimits() {
    // Started as a supervisor: the passed descriptors are its 3 and 4 (5 left closed), it
    // stays in the node's process group (`own_group: false`), and the setup's rlimits are
    // not applied to it (the program it starts takes them).
    let (spec_r, mut spec_w) = io::pipe().unwrap();
    let (mut report_r, report_w) = io::pipe().unwrap();
    let (spec_r, report_w) = (OwnedFd::from(spec_r), OwnedFd::from(report_w));
    io::Write::write_all(&mut spec_w, b"the spec\n").unwrap();
    drop(spec_w);
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    let script = "cat <&3 >&4; ulimit -n >&4; ps -o pgid= -p $$ >&4; \
                  if [ -e /proc/self/fd/5 ]; then echo five open >&4; fi";
    let args = ["-c".to_owned(), script.to_owned()];
    let plan = Plan {
        program: Path::new("/bin/sh"),
        args: &args,
        env: &[],
        cwd: Path::new("/"),
        stdio: [&null, &null, &null],
        setup: ChildSetup::new(77, 1 << 20),
        role: Role::Supervisor {
            pass: [Some(&spec_r), Some(&report_w), None],
            own_group: false,
        },
    };
    let mut process = spawn(&plan).unwrap();
    drop((spec_r, report_w));
    assert_eq!(process.wait().await.unwrap(), ProgramExit::Exited(0));
    let mut text = String::new();
    report_r.read_to_string(&mut text).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    // SAFETY: getpgrp has no memory effects.
    let own_group = unsafe { libc::getpgrp() }.to_string();
    assert_eq!(lines[0], "the spec", "{text}");
    assert_ne!(
        lines[1], "77",
        "the supervisor took the program's rlimit: {text}"
    );
    assert_eq!(
        lines[2], own_group,
        "it left the node's process group: {text}"
    );
    assert_eq!(lines.len(), 3, "descriptor 5 was open: {text}");
}

#[tokio::test]
async fn a_process_that_outlives_its_handle_is_left_running_and_reaped_at_its_end() {
    let (mut reader, writer) = io::pipe().unwrap();
    let out = OwnedFd::from(writer);
    let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    // It reads until its stdin's end, then says so: alive after the drop only if it can
    // still answer.
    let (stdin_r, stdin_w) = io::pipe().unwrap();
    let stdin_r = OwnedFd::from(stdin_r);
    let args = [
        "-c".to_owned(),
        "cat >/dev/null; echo still here".to_owned(),
    ];
    let plan = Plan {
        program: Path::new("/bin/sh"),
        args: &args,
        env: &[],
        cwd: Path::new("/"),
        stdio: [&stdin_r, &out, &null],
        setup: ChildSetup::new(64, 1 << 20),
        role: Role::Program,
    };
    let mut process = spawn(&plan).unwrap();
    drop((stdin_r, out));
    let pid = process.id();
    process.outlive_handle();
    drop(process);
    std::thread::yield_now();
    drop(stdin_w);
    let mut text = String::new();
    reader.read_to_string(&mut text).unwrap();
    assert_eq!(text, "still here\n");
    // Reaped by the drop's reaper: no zombie left under this process.
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Path::new(&stat).exists() {
        assert!(std::time::Instant::now() < deadline, "{pid} not reaped");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// The job cgroups of a fresh program cell, the program's setup joining them, and the open
/// descriptors that setup uses; `None` (the test then checks nothing) without usable
/// cgroups.
fn cgroup_cell(unit: &str) -> Option<(Arc<JobCgroup>, ChildSetup, Vec<OwnedFd>)> {
    let containment = Containment::detect(ContainMode::Cgroup, None).ok()?;
    let cell = containment
        .cell(unit, &ProgramLimits::default(), false)
        .unwrap();
    let cgroup = cell.cgroup.clone()?;
    let mut setup = cell.setup;
    let fds = cgroup.join_on_exec(&mut setup).unwrap();
    Some((cgroup, setup, fds))
}

#[tokio::test]
async fn a_program_is_in_every_job_cgroup_before_it_runs() {
    let Some((cgroup, setup, fds)) = cgroup_cell("vforkjoin") else {
        eprintln!("no usable cgroups: nothing to check");
        return;
    };
    let (exit, out) = sh("cat /proc/self/cgroup", setup).await;
    drop(fds);
    cgroup.kill();
    cgroup.remove();
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    for dir in cgroup.paths() {
        let name = dir.file_name().unwrap().to_str().unwrap();
        let parent = dir.parent().unwrap().file_name().unwrap().to_str().unwrap();
        let needle = format!("/{parent}/{name}\n");
        let hierarchy = dir
            .components()
            .nth(4)
            .unwrap()
            .as_os_str()
            .to_str()
            .unwrap();
        let line = out.lines().find(|l| {
            let controllers = l.split(':').nth(1).unwrap_or("");
            (hierarchy == "unified" && controllers.is_empty())
                || controllers.split(',').any(|c| c == hierarchy)
        });
        let line = line.unwrap_or_else(|| panic!("no {hierarchy} line: {out}"));
        assert!(
            format!("{line}\n").ends_with(&needle),
            "{line} is not in {}",
            dir.display()
        );
    }
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn a_program_is_created_in_its_v2_cgroup_rather_than_moved_there() {
    // The v2 `cgroup.procs` write (a move, which waits for an RCU grace period) is the
    // fallback of a kernel that cannot create the process in place: with it pointing at
    // /dev/full, a move would fail the spawn with ENOSPC.
    let Some((cgroup, mut setup, fds)) = cgroup_cell("vforkinto") else {
        eprintln!("no usable cgroups: nothing to check");
        return;
    };
    if setup.into_cgroup < 0 {
        eprintln!("no cgroup v2 here: nothing to check");
        return;
    }
    let full = OwnedFd::from(
        std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap(),
    );
    setup.v2_procs = full.as_raw_fd();
    let (exit, out) = sh("cat /proc/self/cgroup", setup).await;
    drop(fds);
    cgroup.kill();
    cgroup.remove();
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    let v2 = out.lines().find(|l| l.starts_with("0::")).unwrap();
    assert!(
        v2.ends_with(cgroup.paths()[0].file_name().unwrap().to_str().unwrap()),
        "{out}"
    );
}

#[tokio::test]
async fn a_job_users_system_v_objects_stay_in_its_own_ipc_namespace_when_the_node_makes_one() {
    // The suite runs as root (CAP_SYS_ADMIN): the namespace is made. Without it the same
    // segment lands in the node's namespace, where only the removal at the job's end
    // (`ipc::remove_objects_of`, run here too) keeps it from the uid's next job.
    let uid = 3_900_100;
    let script = "ipcmk -M 4096 >/dev/null && ipcmk -Q >/dev/null && ipcmk -S 1 >/dev/null \
                  && grep -c . /proc/sysvipc/shm";
    for private_ipc in [true, false] {
        let mut setup = ChildSetup::new(1024, 1 << 30);
        setup.job_user = Some(uid);
        setup.private_ipc = private_ipc;
        let (exit, out) = sh(script, setup).await;
        assert_eq!(exit, ProgramExit::Exited(0), "{out}");
        let left = super::super::ipc::objects_of(uid).unwrap();
        if private_ipc {
            // Inside: the header and its one segment, none of the node's.
            assert_eq!(out.trim(), "2", "the program saw the node's segments");
            assert_eq!(left, Vec::new(), "the objects outlived their namespace");
        } else {
            assert_eq!(left.len(), 3, "{left:?}");
            assert_eq!(super::super::ipc::remove_objects_of(uid).unwrap(), 3);
            assert_eq!(super::super::ipc::objects_of(uid).unwrap(), Vec::new());
        }
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[tokio::test]
async fn a_job_users_program_gets_eperm_from_the_keyring_calls_and_the_nodes_own_jobs_do_not() {
    // `keyctl(KEYCTL_GET_KEYRING_ID, @u, 0)` through Python's ctypes: 1 (EPERM) under the
    // filter, 0 (found) without it. A job user's user keyring outlives the job, so the
    // next job of the uid would read what it left there.
    let script = r#"exec /usr/bin/python3 -c '
import ctypes, platform
libc = ctypes.CDLL(None, use_errno=True)
keyctl = {"x86_64": 250, "aarch64": 219}[platform.machine()]
rc = libc.syscall(keyctl, 0, -4, 0)
print(ctypes.get_errno() if rc < 0 else 0)
'"#;
    let mut setup = ChildSetup::new(1024, 1 << 30);
    setup.job_user = Some(3_900_112);
    let (exit, out) = sh(script, setup).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    assert_eq!(out.trim(), libc::EPERM.to_string(), "{out}");
    let (exit, out) = sh(script, ChildSetup::new(1024, 1 << 30)).await;
    assert_eq!(exit, ProgramExit::Exited(0), "{out}");
    assert_eq!(out.trim(), "0", "the node's own job was filtered: {out}");
}
