//! Tests of [`UnitStore`] against temp dirs.

use std::collections::{BTreeMap, HashSet};
use std::os::unix::fs::PermissionsExt;

use super::*;
use crate::work::status::REDACTED;

fn node(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

fn store() -> (tempfile::TempDir, UnitStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = UnitStore::open(dir.path()).unwrap();
    (dir, store)
}

fn create(store: &UnitStore) -> UnitId {
    let params = BTreeMap::from([
        ("params".to_owned(), "worker".to_owned()),
        ("Secret_Token".to_owned(), "hunter2".to_owned()),
    ]);
    store
        .create("cat", params, node("ctl"), node("exec"))
        .unwrap()
        .id()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn set_state(store: &UnitStore, id: UnitId, state: UnitState) -> Result<UnitStatus, StoreError> {
    store.update(id, |s| s.state = state)
}

#[test]
fn creates_a_pending_unit_with_private_files() {
    let (dir, store) = store();
    let handle = store
        .create("cat", BTreeMap::new(), node("ctl"), node("exec"))
        .unwrap();
    let id = handle.id();
    assert_eq!(handle.dir(), dir.path().join("units").join(id.as_str()));
    assert_eq!(handle.stdin_path(), store.stdin_path(id));
    assert_eq!(handle.stdout_path(), store.stdout_path(id));
    assert_eq!(mode(store.root()), 0o700);
    assert_eq!(mode(handle.dir()), 0o700);
    for file in ["status", "stdin", "stdout"] {
        assert_eq!(mode(&handle.dir().join(file)), 0o600, "{file}");
    }

    let status = store.status(id).unwrap();
    assert_eq!(status.state, UnitState::Pending);
    assert_eq!(status.detail, "Unit Created");
    assert_eq!(status.work_type, "cat");
    assert_eq!(status.submitter, node("ctl"));
    assert_eq!(status.node, node("exec"));
    assert_eq!(status.stdout_size, 0);
    assert!(status.created_at > 0);
    assert_eq!(status.created_at, status.updated_at);
}

#[test]
fn update_list_and_release() {
    let (_dir, store) = store();
    let a = create(&store);
    let b = create(&store);

    let running = store
        .update(a, |s| {
            s.state = UnitState::Running;
            s.detail = "Running: PID 7".to_owned();
        })
        .unwrap();
    assert_eq!(store.status(a).unwrap(), running);
    assert!(running.updated_at >= running.created_at);
    assert_eq!(store.set_stdout_size(a, 30).unwrap().stdout_size, 30);
    assert_eq!(store.status(a).unwrap().state, UnitState::Running);

    let listed = store.list().unwrap();
    let mut expected = vec![a, b];
    expected.sort();
    assert_eq!(
        listed.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        expected
    );

    store.release(a).unwrap();
    assert!(!store.root().join(a.as_str()).exists());
    assert!(matches!(
        store.status(a),
        Err(StoreError::UnknownUnit { unit }) if unit == a
    ));
    assert!(matches!(
        store.release(a),
        Err(StoreError::UnknownUnit { unit }) if unit == a
    ));
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn unknown_units_are_typed_errors() {
    let (_dir, store) = store();
    let id: UnitId = "nosuch00".parse().unwrap();
    assert!(matches!(
        store.status(id),
        Err(StoreError::UnknownUnit { .. })
    ));
    assert!(matches!(
        store.update(id, |_| {}),
        Err(StoreError::UnknownUnit { .. })
    ));
    assert!(matches!(
        store.read_stdout(id, 0, 10),
        Err(StoreError::UnknownUnit { .. })
    ));
    assert!(matches!(
        store.release(id),
        Err(StoreError::UnknownUnit { .. })
    ));
}

#[test]
fn refuses_illegal_transitions_and_writes_nothing() {
    let (_dir, store) = store();
    let id = create(&store);
    let before = store.status(id).unwrap();
    let refused = store.update(id, |s| {
        s.state = UnitState::Succeeded;
        s.detail = "should not be stored".to_owned();
    });
    match refused {
        Err(StoreError::IllegalTransition { unit, source }) => {
            assert_eq!(unit, id);
            assert_eq!(source.from, UnitState::Pending);
            assert_eq!(source.to, UnitState::Succeeded);
        }
        other => panic!("expected IllegalTransition, got {other:?}"),
    }
    assert_eq!(store.status(id).unwrap(), before);

    set_state(&store, id, UnitState::Running).unwrap();
    set_state(&store, id, UnitState::Canceled).unwrap();
    for to in [UnitState::Pending, UnitState::Running, UnitState::Succeeded] {
        assert!(matches!(
            set_state(&store, id, to),
            Err(StoreError::IllegalTransition { .. })
        ));
    }
    assert_eq!(store.status(id).unwrap().state, UnitState::Canceled);
    // Keeping a terminal state while changing other fields is allowed.
    assert_eq!(store.set_stdout_size(id, 5).unwrap().stdout_size, 5);
}

#[test]
fn reads_stdout_from_any_offset() {
    let (_dir, store) = store();
    let id = create(&store);
    let data = b"0123456789abcdefghij";
    fs::write(store.stdout_path(id), data).unwrap();
    assert_eq!(store.read_stdout(id, 0, 100).unwrap(), &data[..]);
    assert_eq!(store.read_stdout(id, 0, 4).unwrap(), &b"0123"[..]);
    assert_eq!(store.read_stdout(id, 10, 5).unwrap(), &b"abcde"[..]);
    assert_eq!(store.read_stdout(id, 15, 100).unwrap(), &b"fghij"[..]);
    assert!(store.read_stdout(id, 20, 100).unwrap().is_empty());
    assert!(store.read_stdout(id, 1_000, 100).unwrap().is_empty());
    assert!(store.read_stdout(id, u64::MAX, 100).unwrap().is_empty());
    assert!(store.read_stdout(id, 3, 0).unwrap().is_empty());
}

#[test]
fn recovery_fails_units_left_running_or_pending() {
    let dir = tempfile::tempdir().unwrap();
    let (running, pending, done) = {
        let store = UnitStore::open(dir.path()).unwrap();
        let running = create(&store);
        set_state(&store, running, UnitState::Running).unwrap();
        let pending = create(&store);
        let done = create(&store);
        set_state(&store, done, UnitState::Running).unwrap();
        set_state(&store, done, UnitState::Succeeded).unwrap();
        (running, pending, done)
        // The store is dropped here without any shutdown: a crash.
    };
    let store = UnitStore::open(dir.path()).unwrap();
    let done_before = store.status(done).unwrap();

    let recovery = store.recover().unwrap();
    let mut expected = vec![running, pending];
    expected.sort();
    assert_eq!(recovery.failed, expected);
    assert!(recovery.errors.is_empty(), "{:?}", recovery.errors);

    let status = store.status(running).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert_eq!(status.detail, DETAIL_RESTARTED_RUNNING);
    let status = store.status(pending).unwrap();
    assert_eq!(status.state, UnitState::Failed);
    assert_eq!(status.detail, DETAIL_RESTARTED_PENDING);
    // Finished units are not touched, and a second recovery changes nothing.
    assert_eq!(store.status(done).unwrap(), done_before);
    assert!(store.recover().unwrap().failed.is_empty());
}

#[test]
fn corrupt_status_is_reported_and_left_alone() {
    let (_dir, store) = store();
    let good = create(&store);
    set_state(&store, good, UnitState::Running).unwrap();
    let corrupt = create(&store);
    let empty = create(&store);
    let missing = create(&store);
    let corrupt_path = store.root().join(corrupt.as_str()).join("status");
    fs::write(&corrupt_path, b"{\"State\":1,\"Det").unwrap();
    fs::write(store.root().join(empty.as_str()).join("status"), b"").unwrap();
    fs::remove_file(store.root().join(missing.as_str()).join("status")).unwrap();
    // Stray entries in the units directory are ignored.
    fs::write(store.root().join("notaunit"), b"x").unwrap();
    fs::create_dir(store.root().join("bad-name")).unwrap();

    assert!(matches!(
        store.status(corrupt),
        Err(StoreError::CorruptStatus { unit, ref path, .. })
            if unit == corrupt && *path == corrupt_path
    ));
    let listed: Vec<UnitId> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(listed, vec![good]);

    let recovery = store.recover().unwrap();
    assert_eq!(recovery.failed, vec![good]);
    let mut reported: Vec<UnitId> = recovery
        .errors
        .iter()
        .map(|e| match e {
            StoreError::CorruptStatus { unit, .. } | StoreError::ReadStatus { unit, .. } => *unit,
            other => panic!("unexpected error {other:?}"),
        })
        .collect();
    reported.sort();
    let mut expected = vec![corrupt, empty, missing];
    expected.sort();
    assert_eq!(reported, expected);
    assert_eq!(
        fs::read(&corrupt_path).unwrap(),
        b"{\"State\":1,\"Det".to_vec()
    );
}

#[test]
fn ids_are_unique_over_many_creations() {
    let (_dir, store) = store();
    let mut seen = HashSet::new();
    for _ in 0..1_000 {
        let id = store
            .create("cat", BTreeMap::new(), node("ctl"), node("exec"))
            .unwrap()
            .id();
        assert!(seen.insert(id), "duplicate id {id}");
    }
    assert_eq!(store.list().unwrap().len(), 1_000);
}

#[test]
fn status_file_is_one_receptor_compatible_json_line() {
    let (_dir, store) = store();
    let id = create(&store);
    set_state(&store, id, UnitState::Running).unwrap();
    store
        .update(id, |s| {
            s.state = UnitState::Succeeded;
            s.detail = "exit status 0".to_owned();
            s.stdout_size = 30;
        })
        .unwrap();
    let text = fs::read_to_string(store.root().join(id.as_str()).join("status")).unwrap();
    assert_eq!(text.matches('\n').count(), 1);
    assert!(text.ends_with('\n'));
    assert!(!store.root().join(id.as_str()).join("status.tmp").exists());

    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let object = value.as_object().unwrap();
    assert_eq!(object["State"], 2);
    assert_eq!(object["Detail"], "exit status 0");
    assert_eq!(object["StdoutSize"], 30);
    assert_eq!(object["WorkType"], "cat");
    assert!(object["ExtraData"].is_null());
    let receptor = ["State", "Detail", "StdoutSize", "WorkType", "ExtraData"];
    let warren = [
        "Submitter",
        "Params",
        "Node",
        "RemoteUnitId",
        "Component",
        "CreatedAt",
        "UpdatedAt",
    ];
    let keys: HashSet<&str> = object.keys().map(String::as_str).collect();
    let expected: HashSet<&str> = receptor.into_iter().chain(warren).collect();
    assert_eq!(keys, expected);
    // On disk the secret is kept; redacted output hides it.
    assert_eq!(object["Params"]["Secret_Token"], "hunter2");
    let shown = serde_json::to_value(store.status(id).unwrap().redacted()).unwrap();
    assert_eq!(shown["Params"]["Secret_Token"], REDACTED);
    assert_eq!(shown["Params"]["params"], "worker");
}

#[test]
fn a_committed_status_overwrites_its_file_in_place() {
    use std::os::unix::fs::MetadataExt as _;
    let (_dir, store) = store();
    let id = create(&store);
    let path = store.root().join(id.as_str()).join(STATUS_FILE);
    let inode = fs::metadata(&path).unwrap().ino();
    let mut status = store.status(id).unwrap();
    status.state = UnitState::Running;
    status.detail = "a detail longer than the pending one had, to change the length".into();
    let results = store.commit(&[Entry::Status {
        unit: id,
        status: Box::new(status.clone()),
    }]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(store.status(id).unwrap(), status);
    status.detail = "short".into();
    store.commit(&[Entry::Status {
        unit: id,
        status: Box::new(status.clone()),
    }]);
    // Cut to the new, shorter length: one whole JSON line, nothing of the old one after it.
    assert_eq!(store.status(id).unwrap(), status);
    assert_eq!(fs::metadata(&path).unwrap().ino(), inode, "no new file");
    assert!(!path.with_file_name(STATUS_TEMP_FILE).exists());
}

#[test]
fn a_status_file_torn_after_its_commit_is_rewritten_from_the_journal_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = UnitStore::open(dir.path()).unwrap();
    let id = create(&store);
    let mut status = store.status(id).unwrap();
    status.state = UnitState::Running;
    status.detail = "committed".into();
    store.commit(&[Entry::Status {
        unit: id,
        status: Box::new(status.clone()),
    }]);
    drop(store);
    // A crash in the middle of the in-place write: half a line on the disk.
    let path = dir.path().join("units").join(id.as_str()).join(STATUS_FILE);
    let whole = fs::read(&path).unwrap();
    fs::write(&path, &whole[..whole.len() / 2]).unwrap();
    assert!(serde_json::from_slice::<UnitStatus>(&fs::read(&path).unwrap()).is_err());

    let reopened = UnitStore::open(dir.path()).unwrap();
    assert_eq!(reopened.status(id).unwrap(), status);
}

#[test]
fn the_units_directory_is_a_top_directory_where_the_file_system_has_them() {
    let (_dir, store) = store();
    let root = File::open(store.root()).unwrap();
    // SAFETY: fstatfs fills a zeroed statfs of our own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    assert_eq!(
        unsafe { libc::fstatfs(std::os::fd::AsRawFd::as_raw_fd(&root), &mut fs) },
        0
    );
    let flags = spread::flags(&root);
    if fs.f_type == libc::EXT4_SUPER_MAGIC {
        // ext2, ext3 and ext4 share the magic, and all three keep the mark.
        assert_ne!(flags.unwrap() & spread::TOPDIR_FLAG, 0);
    } else {
        eprintln!(
            "not ext4 (f_type {:#x}): the mark is optional here",
            fs.f_type
        );
    }
    // Opened again, a marked directory stays as it is.
    drop(UnitStore::open(store.root().parent().unwrap()).unwrap());
}

#[test]
fn a_status_write_never_follows_a_symlink_planted_at_its_path() {
    // A job runs as the node's user and could replace its unit's status file with a link
    // to a file of that user; the next status write would have overwritten that file.
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    fs::write(&victim, "precious\n").unwrap();
    let planted = dir.path().join("status");
    std::os::unix::fs::symlink(&victim, &planted).unwrap();
    let refused = overwrite_file(&planted, b"{}\n").unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");
    let refused = write_file(&planted, b"{}\n", Durability::No).unwrap_err();
    assert_eq!(refused.raw_os_error(), Some(libc::ELOOP), "{refused}");
    assert_eq!(fs::read_to_string(&victim).unwrap(), "precious\n");
}

#[test]
fn a_status_answered_as_not_stored_after_a_failed_sync_is_not_found_queued_at_the_next_open() {
    // Found by the s22 review: the second sync of a batch failed after its renames, so the
    // submitter was told "not taken" while the Pending status with its payload was in
    // place; when the Failed status written next failed too, the next start queued the
    // unit and ran it.
    use crate::work::core::{Core, CoreConfig, Requester};
    let dir = tempfile::tempdir().unwrap();
    let id = {
        let store = UnitStore::open(dir.path()).unwrap();
        // No journal: the batch syncs the file system on each side of its renames.
        *store.journal.lock().unwrap() = None;
        let id = create(&store);
        let mut status = store.status(id).unwrap();
        status.payload_size = Some(5);
        commit::SYNCS_BEFORE_FAILURE.set(Some(1));
        let results = store.commit(&[Entry::Status {
            unit: id,
            status: Box::new(status),
        }]);
        commit::SYNCS_BEFORE_FAILURE.set(None);
        assert!(results[0].is_err(), "{results:?}");
        // The Failed status the core writes next does not reach the disk either.
        id
    };
    let store = UnitStore::open(dir.path()).unwrap();
    let mut core = Core::new(
        node("exec"),
        CoreConfig {
            max_running: 4,
            keep_finished: None,
            max_units_per_submitter: 100,
        },
    );
    core.recover(std::time::Instant::now(), 0, store.list().unwrap());
    assert_eq!(
        (core.queued(), core.running()),
        (0, 0),
        "not queued, not run"
    );
    let status = core.status(id, &Requester::Operator).unwrap();
    assert_eq!(status.state, UnitState::Failed);
}
