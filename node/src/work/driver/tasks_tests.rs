//! The unit tasks as the owner runs and aborts them.

use std::time::Duration;

use super::*;
use crate::host::contain::ProgramLimits;
use crate::host::contain::record::{self, JobRecord, ProcessRef};
use crate::metrics::{MeshFigures, Metrics};

/// `warren_units_running` for work type `t`, as `/metrics` shows it.
fn running(metrics: &Metrics) -> Option<f64> {
    let text = metrics.encode(&MeshFigures::default());
    let line = text
        .lines()
        .find(|l| l.starts_with("warren_units_running{work_type=\"t\"}"))?;
    line.rsplit(' ').next()?.parse().ok()
}

/// A job record naming `supervisor` as this boot's running supervisor, with a deadline
/// and a cancel grace far off: only an abort ends its wait.
fn record_for(unit: UnitId, supervisor: ProcessRef) -> JobRecord {
    JobRecord {
        unit: unit.as_str().into(),
        label: "sleep".into(),
        boot_id: record::boot_id(),
        supervisor: Some(supervisor),
        program: None,
        containment: String::new(),
        cgroups: Vec::new(),
        limits: ProgramLimits::default(),
        deadline_ms: record::now_ms() + 3_600_000,
        deadline_ms_total: 3_600_000,
        cancel_grace_ms: 3_600_000,
        output_bytes: 1 << 20,
        job_user: None,
    }
}

/// A released unit is dropped after `RELEASE_WAIT` even when its job has not ended (its
/// cancel grace comes from the job record, which the job controls), and the owner then
/// aborts the unit's task. A re-attached unit's task counted it running; aborted before
/// its end it must not stay counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reattached_units_task_aborted_before_its_end_leaves_it_not_counted_running() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(UnitStore::open(dir.path()).unwrap());
    let id = UnitId::random().unwrap();
    let unit_dir = store.stdin_path(id).parent().unwrap().to_owned();
    std::fs::create_dir_all(&unit_dir).unwrap();
    // Stands in for the job's supervisor: alive until the re-attached wait is dropped.
    let mut sleeper = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let supervisor = ProcessRef::of(i32::try_from(sleeper.id()).unwrap()).unwrap();
    let (detached, _) = record::detached_dir(&unit_dir).unwrap();
    record::create_job_log(&detached, &record_for(id, supervisor)).unwrap();
    let metrics = Metrics::new();
    let (commands, _commands) = mpsc::unbounded_channel();
    let ctx = TaskCtx {
        store,
        host: crate::work::tests::shared_host(),
        client: None,
        signing_key: None,
        node: NodeId::new("n1").unwrap(),
        commands,
        metrics: metrics.clone(),
    };
    let (_registry, registry) = watch::channel(Arc::new(Registry::default()));
    let (_stop, stopped) = watch::channel(false);
    let (progress, _progress) = watch::channel(Progress::default());
    let task = tokio::spawn(reattach(ctx, id, "t".into(), registry, stopped, progress));
    let start = std::time::Instant::now();
    while running(&metrics) != Some(1.0) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never counted running"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // As the owner's DropUnit does once RELEASE_WAIT has passed.
    task.abort();
    let _ = task.await;
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(running(&metrics), Some(0.0), "still counted running");
}

/// Reads `reader` to its end.
async fn read_all(mut reader: PayloadReader) -> Vec<u8> {
    use tokio::io::AsyncReadExt as _;
    let mut bytes = Vec::new();
    reader.read_to_end(&mut bytes).await.unwrap();
    bytes
}

#[tokio::test]
async fn a_payload_is_read_whole_when_small_and_from_the_file_when_large() {
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::write(&small, b"{\"kwargs\": {}}\n").unwrap();
    let reader = open_payload_blocking(&small).unwrap();
    assert_eq!(read_all(reader).await, b"{\"kwargs\": {}}\n");
    let large = dir.path().join("large");
    let body: Vec<u8> = (0..INLINE_PAYLOAD_BYTES * 3)
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&large, &body).unwrap();
    let reader = open_payload_blocking(&large).unwrap();
    assert_eq!(read_all(reader).await, body);
}

#[test]
fn a_payload_path_that_is_a_fifo_or_a_link_is_refused_without_blocking() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("stdin");
    let c_path = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // On the old code the open blocked until a writer came: run it on a thread and wait
    // a bounded time for its answer.
    let (tx, rx) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(open_payload_blocking(&path).map(drop));
    });
    let answer = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("opening a FIFO payload blocked");
    let err = answer.unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput, "{err}");
    let target = dir.path().join("elsewhere");
    std::fs::write(&target, b"not the unit's").unwrap();
    let link = dir.path().join("linked");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    assert!(open_payload_blocking(&link).is_err());
}
