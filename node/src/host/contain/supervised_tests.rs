//! The node's side of a supervisor against stand-ins: refusals, silence, and what a job
//! can reach of a spare.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;

use super::*;

/// A stand-in supervisor: reads the spec to its end, then runs `then` (a shell line;
/// fd 4 is the report socket).
fn fake_supervisor(dir: &Path, then: &str) -> PathBuf {
    let path = dir.join("fake-supervisor");
    std::fs::write(&path, format!("#!/bin/sh\ncat <&3 >/dev/null\n{then}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
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

async fn launch_with(exe: &Path) -> Result<Launched, ContainError> {
    let spec = spec();
    let options = LaunchOptions {
        stdio: SupervisorStdio::Null,
        own_group: false,
        join: spec.setup,
        wait: HANDSHAKE_WAIT,
    };
    launch(exe, &spec, options).await
}

#[tokio::test]
async fn a_supervisor_that_ends_without_a_report_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_supervisor(dir.path(), "exit 0");
    let err = launch_with(&exe).await.unwrap_err();
    assert!(
        matches!(&err, ContainError::SupervisorEnded { exe: named } if *named == exe),
        "{err:?}"
    );
    assert!(err.to_string().contains("is it a warren binary?"), "{err}");
}

#[tokio::test]
async fn a_garbled_report_is_a_protocol_error_quoting_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_supervisor(dir.path(), "echo 'started lots' >&4");
    let err = launch_with(&exe).await.unwrap_err();
    assert!(
        matches!(&err, ContainError::SupervisorProtocol { line } if line == "started lots"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_later_report_line_that_never_ends_is_refused_at_the_bound() {
    // Found by the s22 review: later report lines were read with no bound, so whoever got
    // the report socket grew the node's memory with a line that never ended.
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_supervisor(
        dir.path(),
        "echo \"started $$ 1\" >&4\nhead -c 1048576 /dev/zero | tr '\\0' x >&4\necho >&4",
    );
    let mut launched = launch_with(&exe).await.unwrap();
    let line = launched.reports.next_line().await;
    assert!(
        matches!(&line, Err(e) if e.kind() == io::ErrorKind::InvalidData),
        "{:?}",
        line.map(|l| l.map(|l| l.len()))
    );
}

/// Launches `exe` with a spec asking for job user `uid`.
async fn launch_as_job_user(exe: &Path, uid: u32) -> Result<Launched, ContainError> {
    let mut spec = spec();
    spec.setup.job_user = Some(uid);
    let options = LaunchOptions {
        stdio: SupervisorStdio::Null,
        own_group: false,
        join: spec.setup,
        wait: HANDSHAKE_WAIT,
    };
    launch(exe, &spec, options).await
}

#[tokio::test]
async fn a_supervisor_that_does_not_report_the_job_uid_and_a_seccomp_filter_is_refused_and_told_to_kill_its_tree()
 {
    // This stop's review: a warren-supervisor older than the node ignores the job's uid
    // (a spec field it does not know) and ran the program as the node's user.
    let dir = tempfile::tempdir().unwrap();
    for (report, answer) in [
        ("started $$ 1", "reported no uid"),
        ("started $$ 1 0", "reported uid 0"),
        ("started $$ 1 0 2", "reported uid 0"),
        // A supervisor that knows job users but not the keyring filter.
        (
            "started $$ 1 3900080",
            "reported no seccomp mode, so no keyring filter",
        ),
        (
            "started $$ 1 3900080 0",
            "reported seccomp mode 0, not the keyring filter",
        ),
    ] {
        let gone = dir.path().join("killed");
        let _ = std::fs::remove_file(&gone);
        let exe = fake_supervisor(
            dir.path(),
            &format!(
                "trap 'kill $!; touch {}; exit 1' USR1\necho \"{report}\" >&4\nsleep 30 & wait",
                gone.display()
            ),
        );
        let err = launch_as_job_user(&exe, 3_900_080).await.unwrap_err();
        assert!(
            matches!(&err, ContainError::SupervisorIgnoredJobUser { expected: 3_900_080, answer: a, .. } if a == answer),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("install the warren-supervisor of the same release beside warren"),
            "{err}"
        );
        let until = std::time::Instant::now() + Duration::from_secs(10);
        while !gone.exists() {
            assert!(
                std::time::Instant::now() < until,
                "the supervisor was not told to kill its tree ({report})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test]
async fn a_supervisor_that_cannot_read_a_job_users_spec_is_named_as_too_old() {
    // An older supervisor misses the node's ids, which a job user's spec carries inside
    // `job_user`: it refuses the spec and starts nothing.
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_supervisor(
        dir.path(),
        "echo 'error supervisor: bad spec: missing field `ids`' >&4",
    );
    let err = launch_as_job_user(&exe, 3_900_110).await.unwrap_err();
    assert!(
        matches!(&err, ContainError::SupervisorIgnoredJobUser { answer, .. } if answer == "could not read the spec: missing field `ids`"),
        "{err:?}"
    );
    // Without a job user the refusal is passed on as it is.
    let err = launch_with(&exe).await.unwrap_err();
    assert!(matches!(&err, ContainError::Refused(_)), "{err:?}");
}

#[test]
fn a_job_users_spec_leaves_out_what_an_older_supervisor_needs_and_round_trips() {
    /// The setup as a supervisor before job users reads it.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Older {
        open_files: u64,
        ids: (u32, u32),
    }
    let mut setup = ChildSetup::new(64, 1 << 20);
    let plain = serde_json::to_string(&setup).unwrap();
    assert!(serde_json::from_str::<Older>(&plain).is_ok(), "{plain}");
    assert_eq!(serde_json::from_str::<ChildSetup>(&plain).unwrap(), setup);
    setup.job_user = Some(3_900_111);
    let as_user = serde_json::to_string(&setup).unwrap();
    let older = serde_json::from_str::<Older>(&as_user)
        .err()
        .map(|e| e.to_string());
    assert!(
        older
            .as_deref()
            .is_some_and(|e| e.starts_with("missing field `ids`")),
        "{older:?} from {as_user}"
    );
    assert_eq!(serde_json::from_str::<ChildSetup>(&as_user).unwrap(), setup);
}

#[tokio::test]
async fn a_supervisor_that_reports_the_job_uid_and_a_seccomp_filter_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    let exe = fake_supervisor(dir.path(), "echo \"started $$ 1 3900081 2\" >&4");
    let launched = launch_as_job_user(&exe, 3_900_081).await.unwrap();
    assert_eq!(launched.program.start_time, 1);
}

#[tokio::test]
async fn the_supervisors_refusal_is_passed_on_in_its_words() {
    let dir = tempfile::tempdir().unwrap();
    let said = "cannot start /nowhere: No such file or directory (os error 2)";
    let exe = fake_supervisor(dir.path(), &format!("echo 'error {said}' >&4"));
    let err = launch_with(&exe).await.unwrap_err();
    assert!(matches!(&err, ContainError::Refused(_)), "{err:?}");
    assert_eq!(err.to_string(), said);
}

#[tokio::test]
async fn a_missing_supervisor_binary_is_named_with_the_os_error() {
    let err = launch_with(Path::new("/nonexistent/warren-supervisor"))
        .await
        .unwrap_err();
    let ContainError::SupervisorStart { exe, source } = &err else {
        panic!("{err:?}")
    };
    assert_eq!(exe, Path::new("/nonexistent/warren-supervisor"));
    assert_eq!(source.kind(), io::ErrorKind::NotFound);
}

/// A spare of the script `exe`, written just before: another test's fork may still hold
/// the script open for writing for a moment (`ETXTBSY`).
fn start_spare(exe: &Path) -> Spare {
    for _ in 0..100 {
        match Spare::start(exe) {
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

/// A job runs as the node's user and can open what `/proc/<pid>/fd` shows of a spare
/// supervisor: through its spec channel it could plant its own spec ahead of the next
/// job's (its program run outside every job cgroup), or hold it to hang the next
/// start. Opening a socket through `/proc` fails (`ENXIO`); a pipe opens.
#[tokio::test]
async fn a_spares_spec_and_report_channels_cannot_be_opened_through_proc() {
    let dir = tempfile::tempdir().unwrap();
    let spare = start_spare(&fake_supervisor(dir.path(), "exit 0"));
    let pid = spare.child.id();
    for fd in [SPEC_FD, REPORT_FD] {
        let path = format!("/proc/{pid}/fd/{fd}");
        for write in [true, false] {
            let opened = std::fs::OpenOptions::new()
                .write(write)
                .read(!write)
                .open(&path);
            let err = opened.expect_err(&format!("{path} opened (write: {write})"));
            assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{path}: {err}");
        }
    }
    // The node's own ends, through /proc/<node>/fd, neither.
    for fd in [spare.spec.as_raw_fd(), spare.reports.as_raw_fd()] {
        let path = format!("/proc/self/fd/{fd}");
        let err = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect_err(&path);
        assert_eq!(err.raw_os_error(), Some(libc::ENXIO), "{path}: {err}");
    }
}

/// A spare that never reads its spec (a job of the node's user stopped it with
/// `SIGSTOP`; here a stand-in that only sleeps) hung the next detached job's start for
/// ever. The start now gives up after [`HANDSHAKE_WAIT`], kills it, and says the spec
/// was not read, so the job may start on a fresh supervisor.
#[tokio::test(start_paused = true)]
async fn a_spare_that_never_answers_is_killed_after_the_handshake_wait() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("deaf");
    std::fs::write(&exe, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let spare = start_spare(&exe);
    let pid = spare.child.id();
    let asked = tokio::time::Instant::now();
    let err = spare.launch(&spec(), HANDSHAKE_WAIT).await.unwrap_err();
    assert!(asked.elapsed() >= HANDSHAKE_WAIT, "gave up early");
    assert!(
        matches!(err, ContainError::SupervisorSilent { pid: p, spec_read: false, .. } if p == pid),
        "{err:?}"
    );
    assert!(err.to_string().contains("did not answer"), "{err}");
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed().as_secs() < 10,
            "the silent spare was not killed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A spare that ended while it waited (killed, say) is not handed to a job, which
/// then starts a supervisor of its own.
#[tokio::test]
async fn a_spare_that_ended_while_it_waited_is_not_taken() {
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("ends-at-once");
    std::fs::write(&exe, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let containment = super::super::Containment::process_groups();
    let spare = start_spare(&exe);
    let start = std::time::Instant::now();
    while !spare.has_ended() {
        assert!(start.elapsed().as_secs() < 10, "the stand-in did not end");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    *containment.spare.lock().unwrap() = Some(spare);
    assert!(containment.take_spare().is_none());
    let waiting = start_spare(&fake_supervisor(dir.path(), "exit 0"));
    assert!(!waiting.has_ended(), "it waits for its spec");
    *containment.spare.lock().unwrap() = Some(waiting);
    assert!(containment.take_spare().is_some());
}
