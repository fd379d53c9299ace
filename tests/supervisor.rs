//! The supervisor of detached jobs on its own: started by hand as a node starts it (its
//! reports left unread, as a node leaves a detached job's last one), and started ahead of
//! its job (a host's spare for its next detached job).

use std::process::{Command, Stdio};
use std::time::Duration;

use tokio::sync::watch;
use warren::host::runner::Outcome;

use crate::contain::{assert_all_gone, marked_sleep, marker};
use crate::detached::{Unit, host, run, runtime};

/// `warren-supervisor` has no Rust runtime to ignore `SIGPIPE` for it: a node that stopped
/// reading its reports (gone, or a detached job's, which never reads the last one) must not
/// kill it with its `ended` report before it has swept the job's daemons. The supervisor is
/// started by hand here, as a node would, with the spec on fd 3 and reports on fd 4.
#[test]
fn a_supervisor_whose_reports_nobody_reads_still_sweeps_the_jobs_daemons() {
    use std::io::{BufRead as _, Write as _};
    use std::os::fd::{AsRawFd as _, OwnedFd};
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};
    let dir = tempfile::tempdir().unwrap();
    let marker = marker();
    let sleep = marked_sleep(dir.path(), &marker);
    let job = format!("setsid {} 300 & sleep 0.3; exit 3", sleep.display());
    let spec = serde_json::json!({
        "program": "/bin/sh", "args": ["-c", job], "env": [["PATH", "/bin:/usr/bin"]],
        "cwd": "/", "files": null, "job_log": null, "deadline_ms": null, "lifeline": false,
        "setup": {"open_files": 1024, "file_size": 1u64 << 30, "address_space": null,
                  "nproc": null, "private_network": false, "ids": [0, 0],
                  "unblock_signals": false},
    });
    let (spec_r, mut spec_w) = std::io::pipe().unwrap();
    let (report_r, report_w) = std::io::pipe().unwrap();
    let (spec_r, report_w) = (OwnedFd::from(spec_r), OwnedFd::from(report_w));
    let (spec_fd, report_fd) = (spec_r.as_raw_fd(), report_w.as_raw_fd());
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren-supervisor"));
    command
        .arg("__warren-supervise")
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: fcntl and dup2 only (async-signal-safe). Both ends are first copied above
    // any fd the test process may hold, so neither dup2 overwrites the other's source.
    unsafe {
        command.pre_exec(move || {
            let high = [spec_fd, report_fd].map(|fd| libc::fcntl(fd, libc::F_DUPFD, 1000));
            for (from, to) in high.into_iter().zip([3, 4]) {
                if from < 0 || libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut supervisor = command.spawn().unwrap();
    drop((spec_r, report_w, command));
    spec_w.write_all(spec.to_string().as_bytes()).unwrap();
    drop(spec_w);
    let mut started = String::new();
    std::io::BufReader::new(&report_r)
        .read_line(&mut started)
        .unwrap();
    assert!(started.starts_with("started "), "{started:?}");
    // Stop listening, as a node does once a detached job has started.
    drop(report_r);
    let status = supervisor.wait().unwrap();
    assert_eq!(
        (status.code(), status.signal()),
        (Some(0), None),
        "the supervisor must end by itself, not by SIGPIPE"
    );
    assert_all_gone(&marker, "the supervisor's end");
}

/// The names of the cgroups `/proc/<pid>/cgroup` lists for a process.
fn cgroups_of(pid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default()
}

/// A host keeps a supervisor started ahead for its next detached job, so that job does not
/// wait for a process start. That supervisor was started before its job's cgroups existed:
/// its program must still be born in them, and cancel must still leave nothing.
#[test]
fn a_detached_job_under_a_supervisor_started_ahead_is_in_its_cgroups_and_leaves_nothing() {
    let (first, second) = (Unit::new(), Unit::new());
    let host = host();
    runtime().block_on(async {
        let (_cancel, rx) = watch::channel(false);
        let (outcome, _) = run(&host, first.path(), &first.runner, rx).await;
        assert!(
            matches!(
                outcome,
                Outcome::Failed {
                    exit_code: Some(3),
                    ..
                }
            ),
            "{outcome:?}"
        );
        let (cancel, rx) = watch::channel(false);
        let job = run(&host, second.path(), &second.runner, rx);
        let check = async {
            while !second.results().contains("line 3") {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let record = second.record().unwrap();
            let (supervisor, program) = (record.supervisor.unwrap(), record.program.unwrap());
            // SAFETY: sysconf has no memory effects.
            let ticks = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap();
            assert!(
                program.start_time >= supervisor.start_time + 2 * ticks,
                "the supervisor was started ahead, during the first job's 5 s: {record:?}"
            );
            let (inside, outside) = (cgroups_of(program.pid), cgroups_of(supervisor.pid));
            for cgroup in &record.cgroups {
                let name = cgroup.file_name().unwrap().to_string_lossy().into_owned();
                assert!(inside.contains(&name), "program not in {name}: {inside}");
                assert!(!outside.contains(&name), "supervisor in {name}: {outside}");
            }
            cancel.send(true).unwrap();
        };
        let ((outcome, _), ()) = tokio::join!(job, check);
        assert!(matches!(outcome, Outcome::Canceled { .. }), "{outcome:?}");
    });
    assert_all_gone(&first.marker, "the first job's end");
    assert_all_gone(&second.marker, "the second job's cancel");
}
