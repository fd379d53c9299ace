//! A detached job's supervisor started when the spare waiting for it does not answer.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use super::*;
use crate::host::contain::setup::ChildSetup;

/// A script `name` in `dir` running `body`, as a stand-in supervisor.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// A spare of the script `exe`, written just before: another test's fork may still hold
/// it open for writing for a moment (`ETXTBSY`).
fn start_spare(exe: &Path) -> supervised::Spare {
    for _ in 0..100 {
        match supervised::Spare::start(exe) {
            Err(ContainError::SupervisorStart { source, .. })
                if source.raw_os_error() == Some(libc::ETXTBSY) =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            started => return started.unwrap(),
        }
    }
    panic!("{} stayed busy", exe.display());
}

fn spec() -> Spec {
    Spec {
        program: "/bin/true".into(),
        args: Vec::new(),
        env: Vec::new(),
        cwd: "/".into(),
        files: None,
        setup: ChildSetup::new(64, 1 << 20),
        job_log: None,
        deadline_ms: None,
        lifeline: false,
        join: Vec::new(),
    }
}

/// A job of the node's user can stop the spare supervisor waiting for the next detached
/// job (`SIGSTOP`; here a stand-in that never reads its spec). That job is not lost: once
/// the spare has had its time it is killed, and the job starts on a fresh supervisor.
#[tokio::test]
async fn a_detached_job_whose_spare_never_answers_starts_on_a_fresh_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let deaf = script(dir.path(), "deaf", "exec sleep 600");
    let fresh = script(
        dir.path(),
        "fresh",
        "cat <&3 >/dev/null\necho \"started $$ 0\" >&4",
    );
    let containment = Arc::new(Containment::process_groups());
    let spare = start_spare(&deaf);
    let deaf_pid = spare.pid();
    *containment.spare.lock().unwrap() = Some(spare);
    let cell = containment
        .cell("u", &ProgramLimits::default(), true)
        .unwrap();
    // Also the fresh stand-in's time to answer: ample for a shell on a loaded machine.
    let wait = Duration::from_secs(5);
    let launched = launch_detached(&containment, &fresh, &spec(), &cell, wait)
        .await
        .unwrap();
    assert_ne!(
        launched.supervisor.pid, deaf_pid,
        "started on the silent spare"
    );
    assert_eq!(
        launched.program.pid, launched.supervisor.pid,
        "the fresh stand-in"
    );
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{deaf_pid}")).exists() {
        assert!(
            start.elapsed().as_secs() < 10,
            "the silent spare was not killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A spare that read its spec and then went silent may have started the program: the job
/// is not started a second time but fails, saying so.
#[tokio::test]
async fn a_detached_job_whose_spare_read_its_spec_and_went_silent_fails_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let mute = script(dir.path(), "mute", "cat <&3 >/dev/null\nexec sleep 600");
    let fresh = script(dir.path(), "fresh", "echo \"started $$ 0\" >&4");
    let containment = Arc::new(Containment::process_groups());
    let spare = start_spare(&mute);
    let mute_pid = spare.pid();
    *containment.spare.lock().unwrap() = Some(spare);
    let cell = containment
        .cell("u", &ProgramLimits::default(), true)
        .unwrap();
    let wait = Duration::from_secs(5);
    let err = launch_detached(&containment, &fresh, &spec(), &cell, wait)
        .await
        .unwrap_err();
    assert!(
        matches!(err, ContainError::SupervisorSilent { pid, spec_read: true, .. } if pid == mute_pid),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("the program may have started"),
        "{err}"
    );
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{mute_pid}")).exists() {
        assert!(
            start.elapsed().as_secs() < 10,
            "the silent spare was not killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_uid_stays_held_until_its_job_directory_is_handed_over_even_if_the_start_is_dropped() {
    // From this stop's first review: a start dropped (cancel, deadline) while the job
    // directory was being handed to the uid gave the uid back at once; the hand-over went on
    // and could give the cancelled unit's directory to the uid's next job.
    use crate::host::contain::users::{JobUsers, UidRange};
    let range: UidRange = "3900093-3900093".parse().unwrap();
    let users = JobUsers::unchecked(range, PathBuf::from("/nonexistent"));
    let user = users.take().unwrap();
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let mut handing = Box::pin(with_user_held(&user, move |_| {
        let _ = started_tx.send(());
        let _ = release_rx.recv();
        Ok(())
    }));
    tokio::select! {
        _ = &mut handing => panic!("the hand-over cannot end before it is released"),
        _ = started_rx => {}
    }
    drop(handing);
    drop(user);
    assert_eq!(
        users.held(),
        vec![3_900_093],
        "held while the hand-over runs"
    );
    release_tx.send(()).unwrap();
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while !users.held().is_empty() {
        assert!(std::time::Instant::now() < until, "the uid never came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
