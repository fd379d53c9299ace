//! The store thread against a temp dir: group commit, held-back writes, stop.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{FLUSH_DELAY, StoreJob, StoreThread};
use crate::id::NodeId;
use crate::work::driver::Command;
use crate::work::status::UnitStatus;
use crate::work::store::UnitStore;
use crate::work::unit::{UnitId, UnitState};

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<UnitStore>,
    thread: StoreThread,
    events: mpsc::UnboundedReceiver<Command>,
}

/// Longer than any test: a write held back for it is never committed by the delay.
const FOREVER: Duration = Duration::from_secs(3600);

fn fixture(delay: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(UnitStore::open(dir.path()).unwrap());
    let (tx, events) = mpsc::unbounded_channel();
    let thread = StoreThread::start(store.clone(), tx, delay);
    Fixture {
        dir,
        store,
        thread,
        events,
    }
}

fn status(state: UnitState) -> Box<UnitStatus> {
    let node = NodeId::new("exec").unwrap();
    let mut s = UnitStatus::new("cat", BTreeMap::new(), node.clone(), node, 1);
    s.state = state;
    Box::new(s)
}

/// Creates `n` pending units directly in the store.
fn units(store: &UnitStore, n: usize) -> Vec<UnitId> {
    let node = NodeId::new("exec").unwrap();
    (0..n)
        .map(|_| {
            let handle = store
                .create("cat", BTreeMap::new(), node.clone(), node.clone())
                .unwrap();
            handle.id()
        })
        .collect()
}

/// Sends a `Running` status for each of `ids`, write numbers 1, 2, ...
fn send_running(thread: &StoreThread, ids: &[UnitId]) {
    for (seq, id) in (1..).zip(ids) {
        let job = StoreJob::Write {
            id: *id,
            status: status(UnitState::Running),
            seq,
        };
        assert!(thread.send(job));
    }
}

/// Waits (up to 10 s) for the event `wanted` picks out.
fn wait_for<T>(
    events: &mut mpsc::UnboundedReceiver<Command>,
    mut wanted: impl FnMut(&Command) -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match events.try_recv() {
            Ok(event) => {
                if let Some(found) = wanted(&event) {
                    return found;
                }
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "the store thread never answered");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

fn durable(event: &Command) -> Option<u64> {
    match event {
        Command::Durable { upto } => Some(*upto),
        _ => None,
    }
}

#[test]
fn writes_queued_together_are_committed_with_fewer_syncs_than_writes() {
    const N: usize = 32;
    let mut f = fixture(FOREVER);
    let ids = units(&f.store, N);
    let before = f.store.syncs();
    send_running(&f.thread, &ids);
    assert!(f.thread.send(StoreJob::Flush));
    let mut upto = 0;
    while upto < N as u64 {
        upto = wait_for(&mut f.events, durable);
    }
    let syncs = f.store.syncs() - before;
    assert!(syncs >= 1, "the writes were never flushed");
    assert!(syncs < N as u64, "{N} writes cost {syncs} syncs");
    for id in &ids {
        assert_eq!(f.store.status(*id).unwrap().state, UnitState::Running);
    }
}

#[test]
fn a_write_nobody_waits_for_is_committed_after_the_delay_with_one_sync() {
    let mut f = fixture(FLUSH_DELAY);
    let id = units(&f.store, 1)[0];
    let before = f.store.syncs();
    let sent = Instant::now();
    let job = StoreJob::Write {
        id,
        status: status(UnitState::Running),
        seq: 1,
    };
    assert!(f.thread.send(job));
    // A later status of the same unit joins the held-back one: still one record.
    let job = StoreJob::Write {
        id,
        status: status(UnitState::Running),
        seq: 2,
    };
    assert!(f.thread.send(job));
    assert_eq!(wait_for(&mut f.events, durable), 2);
    assert!(sent.elapsed() >= FLUSH_DELAY, "committed before the delay");
    assert_eq!(f.store.syncs() - before, 1);
}

#[test]
fn a_final_status_and_a_release_are_committed_at_once_and_secrets_dropped_after() {
    // Held back forever, a write nobody waits for would never be committed here.
    let mut f = fixture(FOREVER);
    let ids = units(&f.store, 2);
    std::fs::write(f.store.stdin_path(ids[0]), b"secret").unwrap();
    let job = StoreJob::Write {
        id: ids[0],
        status: status(UnitState::Succeeded),
        seq: 1,
    };
    assert!(f.thread.send(job));
    assert!(f.thread.send(StoreJob::DropSecrets { id: ids[0] }));
    assert_eq!(wait_for(&mut f.events, durable), 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while f.store.stdin_path(ids[0]).exists() {
        assert!(Instant::now() < deadline, "the payload is kept");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(f.store.status(ids[0]).unwrap().state, UnitState::Succeeded);
    assert!(f.thread.send(StoreJob::Drop { id: ids[1] }));
    let dropped = wait_for(&mut f.events, |e| match e {
        Command::Dropped { id } => Some(*id),
        _ => None,
    });
    assert_eq!(dropped, ids[1]);
    assert!(
        f.store.status(ids[1]).is_err(),
        "the released unit is still there"
    );
}

#[test]
fn stopping_the_thread_commits_every_held_back_write() {
    const N: usize = 8;
    let f = fixture(FOREVER);
    let ids = units(&f.store, N);
    send_running(&f.thread, &ids);
    let before = f.store.syncs();
    f.thread.stop();
    assert_eq!(
        f.store.syncs() - before,
        1,
        "one commit for the held-back writes"
    );
    // Opened again, as a restarted node does (the journal replayed over the files).
    drop(f.store);
    let reopened = UnitStore::open(f.dir.path()).unwrap();
    for id in &ids {
        assert_eq!(reopened.status(*id).unwrap().state, UnitState::Running);
    }
    let mut events = f.events;
    assert_eq!(wait_for(&mut events, durable), N as u64);
}

#[test]
fn writes_arriving_without_pause_do_not_hold_back_a_commit_past_its_delay() {
    // Every wait for the next job returned one, never a timeout, so a held-back write
    // stayed uncommitted for as long as writes kept coming (one unit's writes replace each
    // other, so the batch never filled). Here the jobs are all queued before the thread
    // looks, with no delay at all: each write is due at once.
    const JOBS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let store = UnitStore::open(dir.path()).unwrap();
    let id = units(&store, 1)[0];
    let (jobs, rx) = std::sync::mpsc::channel();
    for seq in 1..=JOBS {
        let job = StoreJob::Write {
            id,
            status: status(UnitState::Running),
            seq,
        };
        jobs.send(job).unwrap();
    }
    drop(jobs);
    let (tx, mut events) = mpsc::unbounded_channel();
    super::run(&store, &rx, &tx, Duration::ZERO);
    let first = wait_for(&mut events, durable);
    assert!(first < JOBS, "committed only once the writes stopped");
}

#[test]
fn a_status_write_that_fails_is_reported_before_the_batch_is_reported_durable() {
    // A failed write was logged and then covered by the batch's `Durable`: the owner took
    // it for a durable one and answered the unit's submitter.
    let mut f = fixture(FOREVER);
    let ids = units(&f.store, 2);
    std::fs::remove_dir_all(f.store.root().join(ids[0].as_str())).unwrap();
    send_running(&f.thread, &ids);
    assert!(f.thread.send(StoreJob::Flush));
    let mut seen = Vec::new();
    let upto = wait_for(&mut f.events, |event| match event {
        Command::NotStored { id, .. } => {
            seen.push(*id);
            None
        }
        other => durable(other),
    });
    assert_eq!(upto, 2);
    assert_eq!(seen, vec![ids[0]], "the failed write reported, and first");
}
