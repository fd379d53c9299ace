//! The job log as the node, the supervisor and a hostile job leave it.

use super::*;

#[test]
fn stat_with_a_hostile_command_name_parses() {
    let text = "4242 (evil) 1 2 (x) S 17 4242 4242 0 -1 4194560 0 0 0 0 0 0 0 0 20 0 1 0 \
                987654 1000 100\n";
    assert_eq!(parse_stat(text), Some((17, 987_654)));
    assert_eq!(parse_stat("garbage"), None);
}

#[test]
fn own_process_is_alive_and_a_changed_start_time_is_not() {
    let me = ProcessRef::of(std::process::id() as i32).expect("own stat");
    assert!(me.is_alive());
    let reused = ProcessRef {
        start_time: me.start_time + 1,
        ..me
    };
    assert!(!reused.is_alive());
}

fn a_record() -> JobRecord {
    JobRecord {
        unit: "u1".into(),
        label: "ansible-runner worker".into(),
        boot_id: boot_id(),
        supervisor: None,
        program: None,
        containment: "subreaper supervisor".into(),
        cgroups: Vec::new(),
        limits: ProgramLimits::default(),
        deadline_ms: 7,
        deadline_ms_total: 8,
        cancel_grace_ms: 9,
        output_bytes: 10,
        job_user: None,
    }
}

const SUPERVISOR: ProcessRef = ProcessRef {
    pid: 11,
    start_time: 12,
};
const PROGRAM: ProcessRef = ProcessRef {
    pid: 13,
    start_time: 14,
};
const EXIT: ExitRecord = ExitRecord {
    status: ProgramExit::Signaled(9),
    reason: EndReason::Deadline,
    ended_at_ms: 5,
};

#[test]
fn the_job_log_reads_as_its_record_with_the_start_and_the_end_appended() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(read_job_log(dir.path()).unwrap(), None);
    create_job_log(dir.path(), &a_record()).unwrap();
    let mode = fs::metadata(dir.path().join(JOB_FILE))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let read = read_job_log(dir.path()).unwrap().unwrap();
    assert_eq!((read.record, read.exit), (a_record(), None));
    let log = open_job_log(&dir.path().join(JOB_FILE)).unwrap();
    let started = Entry::Started {
        supervisor: SUPERVISOR,
        program: PROGRAM,
    };
    write_line(&log, &started).unwrap();
    write_line(&log, &Entry::Ended(EXIT)).unwrap();
    // Later lines (a job appending to its own log) change nothing.
    let other = ExitRecord {
        status: ProgramExit::Exited(0),
        ..EXIT
    };
    write_line(&log, &Entry::Ended(other)).unwrap();
    let read = read_job_log(dir.path()).unwrap().unwrap();
    assert_eq!(read.record.supervisor, Some(SUPERVISOR));
    assert_eq!(read.record.program, Some(PROGRAM));
    assert_eq!(read.exit, Some(EXIT));
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "one file");
}

#[test]
fn a_line_cut_short_is_ignored_and_a_log_without_a_record_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    create_job_log(dir.path(), &a_record()).unwrap();
    let log = open_job_log(&dir.path().join(JOB_FILE)).unwrap();
    (&log).write_all(br#"{"Ended":{"Status":{"Exi"#).unwrap();
    let read = read_job_log(dir.path()).unwrap().unwrap();
    assert_eq!(read.exit, None);
    fs::write(dir.path().join(JOB_FILE), b"{\"Ended\":1}\n").unwrap();
    let err = read_job_log(dir.path()).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn an_older_nodes_record_and_exit_file_are_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let old = JobRecord {
        supervisor: Some(SUPERVISOR),
        program: Some(PROGRAM),
        ..a_record()
    };
    fs::write(dir.path().join(JOB_FILE), serde_json::to_vec(&old).unwrap()).unwrap();
    let read = read_job_log(dir.path()).unwrap().unwrap();
    assert_eq!((&read.record, read.exit), (&old, None));
    fs::write(
        dir.path().join(EXIT_FILE),
        serde_json::to_vec(&EXIT).unwrap(),
    )
    .unwrap();
    assert_eq!(read_job_log(dir.path()).unwrap().unwrap().exit, Some(EXIT));
}

/// A job runs as the node's user and can reach its unit's `detached/`: a symlink it
/// plants where the log goes must not make the node or the supervisor write through it.
#[test]
fn a_symlink_in_place_of_the_job_log_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(JOB_FILE)).unwrap();
    let err = create_job_log(dir.path(), &a_record()).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    let err = open_job_log(&dir.path().join(JOB_FILE)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP), "{err}");
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
}

/// A job can put a symlink to another unit's valid log in place of its own: the node
/// must not adopt the other job (its supervisor and cgroups).
#[test]
fn a_symlinked_job_log_is_refused_even_when_it_names_a_valid_log() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("elsewhere");
    let detached = dir.path().join("detached");
    fs::create_dir_all(&elsewhere).unwrap();
    fs::create_dir_all(&detached).unwrap();
    create_job_log(&elsewhere, &a_record()).unwrap();
    std::os::unix::fs::symlink(elsewhere.join(JOB_FILE), detached.join(JOB_FILE)).unwrap();
    let read = read_job_log(&detached);
    let err = read.expect_err("a symlinked log was read");
    assert!(err.to_string().contains("symbolic link"), "{err}");
}

/// `read_job_log(dir)` on a thread, waited for at most 10 s: a reader that blocks is a
/// failed test, not a hung one.
fn read_within_10s(dir: &Path) -> io::Result<Option<JobLog>> {
    let (tx, rx) = std::sync::mpsc::channel();
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        let _ = tx.send(read_job_log(&dir));
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("reading the job log blocked")
}

/// A FIFO in place of the log parked the re-attach thread for ever (the unit stayed
/// Running); it is refused at once.
#[test]
fn a_fifo_in_place_of_the_job_log_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let path =
        std::ffi::CString::new(dir.path().join(JOB_FILE).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo with a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let err = read_within_10s(dir.path()).expect_err("a FIFO was read as a log");
    assert!(err.to_string().contains("not a regular file"), "{err}");
}

/// A symlink to `/dev/zero` made the node read until it was OOM-killed, at every start.
/// A device there (not a symlink) is refused too, and so is a regular file past the cap.
#[test]
fn a_job_log_pointing_at_dev_zero_or_past_the_cap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join(JOB_FILE)).unwrap();
    let err = read_within_10s(dir.path()).expect_err("/dev/zero was read as a log");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    fs::remove_file(dir.path().join(JOB_FILE)).unwrap();
    let path =
        std::ffi::CString::new(dir.path().join(JOB_FILE).as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mknod with a NUL-terminated path: a character device 1:5, /dev/zero's.
    let made = unsafe { libc::mknod(path.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(1, 5)) };
    assert_eq!(made, 0, "mknod: {}", io::Error::last_os_error());
    let err = read_within_10s(dir.path()).expect_err("a device was read as a log");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    fs::remove_file(dir.path().join(JOB_FILE)).unwrap();
    let huge = dir.path().join(JOB_FILE);
    create_job_log(dir.path(), &a_record()).unwrap();
    let log = open_job_log(&huge).unwrap();
    let line = vec![b' '; 64 * 1024];
    for _ in 0..17 {
        (&log).write_all(&line).unwrap();
    }
    let err = read_within_10s(dir.path()).expect_err("a log past the cap was read");
    assert!(err.to_string().contains("larger than"), "{err}");
}
