use super::*;

fn quota(bytes: u64, inodes: u64) -> DiskQuota {
    DiskQuota { bytes, inodes }
}

fn usage(bytes: u64, inodes: u64) -> Usage {
    Usage { bytes, inodes }
}

#[tokio::test]
async fn guest_writes_are_charged_and_a_write_past_the_quota_fails_the_job() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = DiskLedger::new(dir.path().to_owned(), quota(1000, 10), 0);
    assert!(ledger.admit(usage(600, 1)).await);
    assert_eq!(ledger.room_bytes(), 400);
    assert!(ledger.admit(usage(400, 0)).await);
    assert!(!ledger.is_stopped());
    // Nothing was really written, so a measurement finds room again.
    assert!(ledger.admit(usage(900, 1)).await);
    // A write that does not fit even after measuring is refused, and the job will fail
    // for it; nothing is over the quota, so it need not stop at once.
    assert!(!ledger.admit(usage(1001, 0)).await);
    assert!(!ledger.is_stopped());
    let verdict = ledger.verdict().unwrap();
    assert!(
        matches!(verdict, DiskStop::Quota { usage, .. } if usage.bytes == 1001),
        "{verdict:?}"
    );
    assert!(
        verdict.to_string().contains("exceeded its disk quota"),
        "{verdict}"
    );
    assert!(
        ledger.admit(usage(10, 0)).await,
        "a write that fits still does"
    );
    // Really over the quota (a program wrote past it): the job must stop at once.
    std::fs::write(dir.path().join("big"), vec![0u8; 5000]).unwrap();
    assert!(!ledger.admit(usage(991, 0)).await);
    assert!(ledger.is_stopped());
    assert!(
        !ledger.admit(usage(1, 0)).await,
        "nothing more once stopped"
    );
}

#[tokio::test]
async fn inodes_are_a_quota_of_their_own() {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3 {
        std::fs::write(dir.path().join(i.to_string()), b"").unwrap();
    }
    let ledger = DiskLedger::new(dir.path().to_owned(), quota(1 << 30, 3), 0);
    assert_eq!(ledger.rescan().await, Ok(usage(0, 3)));
    assert!(!ledger.admit(usage(0, 1)).await);
    assert!(matches!(ledger.verdict(), Some(DiskStop::Quota { .. })));
}

#[tokio::test]
async fn a_measurement_over_the_quota_or_of_an_unreadable_tree_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), vec![0u8; 5000]).unwrap();
    let ledger = DiskLedger::new(dir.path().to_owned(), quota(4096, 100), 0);
    assert!(matches!(ledger.rescan().await, Err(DiskStop::Quota { .. })));
    let gone = DiskLedger::new(dir.path().join("missing"), quota(4096, 100), 0);
    let stop = gone.rescan().await.unwrap_err();
    assert!(stop.to_string().contains("could not be measured"), "{stop}");
}

#[tokio::test]
async fn growing_below_the_free_space_floor_stops_the_job() {
    let dir = tempfile::tempdir().unwrap();
    // A floor no disk meets: the first growth stops the job, naming the floor.
    let ledger = DiskLedger::new(dir.path().to_owned(), quota(1 << 30, 100), u64::MAX);
    assert_eq!(ledger.rescan().await, Ok(Usage::default()), "no growth yet");
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let stop = ledger.rescan().await.unwrap_err();
    assert!(matches!(stop, DiskStop::Floor(_)), "{stop:?}");
    assert!(stop.to_string().contains("free-space floor"), "{stop}");
}

#[tokio::test]
async fn the_watcher_stops_a_program_writing_past_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = DiskLedger::new(dir.path().to_owned(), quota(8 << 20, 1000), 0);
    let watcher = tokio::spawn(watch(ledger.clone()));
    // Nothing is measured until the job has a child.
    tokio::time::sleep(MIN_SCAN_INTERVAL * 3).await;
    std::fs::write(dir.path().join("before"), vec![0u8; 9 << 20]).unwrap();
    tokio::time::sleep(MIN_SCAN_INTERVAL * 3).await;
    assert!(!ledger.is_stopped(), "measured before any child");
    std::fs::remove_file(dir.path().join("before")).unwrap();
    ledger.child_started();
    let mut stopped = ledger.subscribe();
    // A writer outside the host's view (like a child process), writing until stopped.
    let path = dir.path().join("flood");
    let writer = std::thread::spawn({
        let ledger = ledger.clone();
        move || {
            use std::io::Write;
            let mut file = std::fs::File::create(path).unwrap();
            let chunk = vec![7u8; 64 << 10];
            while !ledger.is_stopped() {
                file.write_all(&chunk).unwrap();
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    let stop = tokio::time::timeout(Duration::from_secs(30), stopped.wait_for(Option::is_some))
        .await
        .expect("the watcher stops the job")
        .unwrap()
        .clone();
    writer.join().unwrap();
    assert!(matches!(stop, Some(DiskStop::Quota { .. })), "{stop:?}");
    watcher.await.unwrap();
}

#[test]
fn scans_come_sooner_near_the_quota_and_never_hog_the_cpu() {
    let q = quota(4 << 30, 1000);
    let far = next_scan(q, usage(0, 0), Duration::ZERO);
    assert_eq!(far, MAX_SCAN_INTERVAL);
    let near = next_scan(q, usage((4 << 30) - (10 << 20), 0), Duration::ZERO);
    assert_eq!(near, MIN_SCAN_INTERVAL);
    let over = next_scan(q, usage(5 << 30, 0), Duration::ZERO);
    assert_eq!(over, MIN_SCAN_INTERVAL);
    let slow_scan = next_scan(q, usage(0, 0), Duration::from_millis(300));
    assert_eq!(slow_scan, Duration::from_secs(3));
}
