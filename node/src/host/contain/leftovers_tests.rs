use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

use std::time::Instant;

use rustix::fs::AtFlags;

use super::*;

/// A root-owned 1777 directory at `path` (as `/tmp` and `/tmp/.X11-unix` are).
fn open_dir(path: &Path) {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o1777)).unwrap();
}

/// A file of `uid` at `path`.
fn file_of(path: &Path, uid: u32) {
    std::fs::write(path, b"secret").unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

/// Gives `path` and everything below it to `uid`, as a job of the uid leaves its trees.
fn chown_tree(path: &Path, uid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            chown_tree(&entry.unwrap().path(), uid);
        }
    }
}

fn swept(root: &Path, uid: u32) -> Swept {
    swept_within(root, uid, MAX_PLACE_ENTRIES)
}

/// A sweep of `root` that may look at `entries` entries.
fn swept_within(root: &Path, uid: u32, entries: usize) -> Swept {
    let mut swept = Swept::default();
    let mut budget = Budget::new(entries, Instant::now() + SWEEP_TIME);
    sweep(root, uid, &mut budget, &mut swept);
    swept
}

#[test]
fn a_uids_entries_are_removed_in_world_writable_directories_down_to_the_depth_bound() {
    let uid = 3_900_101;
    let root = tempfile::tempdir().unwrap();
    let top = root.path();
    // .X11-unix/x at level 1; a chain of others' 1777 directories below.
    let mut chain = top.join(".X11-unix");
    open_dir(&chain);
    file_of(&chain.join("x"), uid);
    let mut placed = vec![chain.join("x")];
    for level in 2..=MAX_DEPTH + 1 {
        chain = chain.join(format!("l{level}"));
        open_dir(&chain);
        file_of(&chain.join("x"), uid);
        placed.push(chain.join("x"));
    }
    // A 0755 directory of another user is not one the uid could write in: not entered.
    let closed = top.join("closed");
    std::fs::create_dir(&closed).unwrap();
    file_of(&closed.join("x"), uid);
    std::fs::write(top.join(".X11-unix/X0"), b"root's").unwrap();
    let result = swept(top, uid);
    assert_eq!(result.removed, MAX_DEPTH, "{result:?}");
    for (at, path) in placed.iter().enumerate() {
        assert_eq!(
            path.exists(),
            at >= MAX_DEPTH,
            "level {}: {}",
            at + 1,
            path.display()
        );
    }
    assert!(closed.join("x").exists());
    assert!(top.join(".X11-unix/X0").exists(), "root's file was removed");
}

#[test]
fn a_symlink_to_a_directory_is_never_followed() {
    let uid = 3_900_102;
    let root = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::set_permissions(elsewhere.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
    file_of(&elsewhere.path().join("x"), uid);
    // Another user's link to a world-writable directory outside: not entered.
    std::os::unix::fs::symlink(elsewhere.path(), root.path().join("link")).unwrap();
    // The uid's own link into it: the link is removed, not what it points at.
    let own = root.path().join("own-link");
    std::os::unix::fs::symlink(elsewhere.path(), &own).unwrap();
    std::os::unix::fs::lchown(&own, Some(uid), Some(uid)).unwrap();
    let result = swept(root.path(), uid);
    assert_eq!(result.removed, 1, "{result:?}");
    assert!(own.symlink_metadata().is_err());
    assert!(elsewhere.path().join("x").exists());
}

#[test]
fn a_uids_tree_too_deep_to_remove_is_given_to_the_node_closed() {
    let uid = 3_900_103;
    let root = tempfile::tempdir().unwrap();
    let top = root.path().join("deep");
    let mut path = top.clone();
    for _ in 0..=MAX_TREE_DEPTH {
        path = path.join("d");
    }
    std::fs::create_dir_all(&path).unwrap();
    chown_tree(&top, uid);
    let shallow = root.path().join("shallow");
    std::fs::create_dir_all(shallow.join("a/b")).unwrap();
    file_of(&shallow.join("a/b/key"), uid);
    chown_tree(&shallow, uid);
    let result = swept(root.path(), uid);
    assert_eq!((result.removed, result.taken, result.failed), (1, 1, 0));
    assert!(!shallow.exists());
    let meta = std::fs::symlink_metadata(&top).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (rustix::process::geteuid().as_raw(), 0o700)
    );
}

/// A directory of `uid` at `path` that everyone may write in (0777, no sticky bit).
fn open_dir_of(path: &Path, uid: u32) {
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
}

#[test]
fn a_directory_swapped_in_after_the_uids_was_judged_is_not_removed() {
    let uid = 3_900_120;
    let root = tempfile::tempdir().unwrap();
    let top = root.path();
    let judged = top.join("x");
    open_dir_of(&judged, uid);
    let fd = rustix::fs::open(top, dir_flags(), Mode::empty()).unwrap();
    let stat = rustix::fs::statat(&fd, c"x", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    // Between the sweep's look and its removal, the name is given to another directory.
    std::fs::rename(&judged, top.join("x-moved")).unwrap();
    let victim = top.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), b"not the uid's").unwrap();
    std::fs::rename(&victim, &judged).unwrap();
    let mut swept = Swept::default();
    let mut budget = Budget::new(MAX_PLACE_ENTRIES, Instant::now() + SWEEP_TIME);
    let mut scan = Scan {
        uid,
        budget: &mut budget,
        swept: &mut swept,
    };
    scan.remove(fd.as_fd(), c"x", &judged, &stat);
    assert!(judged.join("keep").exists(), "{swept:?}");
}

#[test]
fn a_directory_swapped_in_after_the_uids_was_judged_is_not_taken_from_its_owner() {
    let uid = 3_900_125;
    let other = 3_900_126;
    let root = tempfile::tempdir().unwrap();
    let top = root.path();
    let judged = top.join("x");
    open_dir_of(&judged, uid);
    let fd = rustix::fs::open(top, dir_flags(), Mode::empty()).unwrap();
    let stat = rustix::fs::statat(&fd, c"x", AtFlags::SYMLINK_NOFOLLOW).unwrap();
    std::fs::rename(&judged, top.join("x-moved")).unwrap();
    open_dir_of(&top.join("victim"), other);
    std::fs::rename(top.join("victim"), &judged).unwrap();
    let taken = tree::take_from_uid(fd.as_fd(), c"x", &stat);
    assert!(matches!(taken, Err(TreeError::Replaced)), "{taken:?}");
    let meta = std::fs::symlink_metadata(&judged).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (other, 0o777));
}

#[test]
fn what_another_user_put_in_a_uids_open_directory_is_left_and_the_directory_taken() {
    let uid = 3_900_121;
    let root = tempfile::tempdir().unwrap();
    let top = root.path();
    let open = top.join("open");
    open_dir_of(&open, uid);
    file_of(&open.join("mine"), uid);
    // Another user moved a tree of its own in (as it may: the directory is 0777).
    std::fs::create_dir_all(open.join("moved/private")).unwrap();
    std::fs::write(open.join("moved/private/key"), b"root's").unwrap();
    let result = swept(top, uid);
    assert!(open.join("moved/private/key").exists(), "{result:?}");
    assert!(!open.join("mine").exists(), "{result:?}");
    assert_eq!((result.removed, result.taken), (0, 1), "{result:?}");
    let meta = std::fs::symlink_metadata(&open).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (rustix::process::geteuid().as_raw(), 0o700)
    );
}

#[test]
fn a_uids_directory_of_thousands_of_entries_is_removed_reading_each_entry_once() {
    let uid = 3_900_122;
    let root = tempfile::tempdir().unwrap();
    let many = root.path().join("many");
    std::fs::create_dir(&many).unwrap();
    for n in 0..3_000 {
        std::fs::write(many.join(format!("f{n}")), b"").unwrap();
    }
    chown_tree(&many, uid);
    let mut swept = Swept::default();
    let mut budget = Budget::new(MAX_PLACE_ENTRIES, Instant::now() + SWEEP_TIME);
    sweep(root.path(), uid, &mut budget, &mut swept);
    assert_eq!(swept.removed, 1, "{swept:?}");
    assert!(!many.exists());
    // The directory itself and each of its entries, once.
    assert_eq!(budget.entries, MAX_PLACE_ENTRIES - 3_001);
}

#[test]
fn a_sweep_stops_at_its_entry_bound_and_takes_the_tree_it_stopped_in() {
    let uid = 3_900_123;
    let root = tempfile::tempdir().unwrap();
    let tree = root.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    for n in 0..50 {
        std::fs::write(tree.join(format!("f{n}")), b"").unwrap();
    }
    chown_tree(&tree, uid);
    let result = swept_within(root.path(), uid, 10);
    assert_eq!(
        (result.removed, result.taken, result.cut_short),
        (0, 1, 1),
        "{result:?}"
    );
    let meta = std::fs::symlink_metadata(&tree).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (rustix::process::geteuid().as_raw(), 0o700)
    );
}

#[test]
fn a_sweep_whose_time_is_up_looks_at_nothing_more() {
    let uid = 3_900_124;
    let root = tempfile::tempdir().unwrap();
    file_of(&root.path().join("x"), uid);
    let mut swept = Swept::default();
    let mut budget = Budget::new(MAX_PLACE_ENTRIES, Instant::now());
    sweep(root.path(), uid, &mut budget, &mut swept);
    assert_eq!(
        swept,
        Swept {
            cut_short: 1,
            ..Swept::default()
        }
    );
    assert!(root.path().join("x").exists());
}

#[test]
fn shared_directories_are_the_world_writable_children_of_the_parents_each_once() {
    let parent = tempfile::tempdir().unwrap();
    let p = parent.path();
    open_dir(&p.join("crash"));
    std::fs::create_dir(p.join("open")).unwrap();
    std::fs::set_permissions(p.join("open"), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::create_dir(p.join("closed")).unwrap();
    std::os::unix::fs::symlink(p.join("crash"), p.join("link")).unwrap();
    std::fs::write(p.join("null"), b"").unwrap();
    std::fs::set_permissions(p.join("null"), std::fs::Permissions::from_mode(0o666)).unwrap();
    // A known one first; a parent named twice (as a bind mount shows one directory
    // twice): each once.
    let (open, link) = (p.join("open"), p.join("link"));
    let found = places::shared_dirs_in(&[&open, &link], &[p, p]);
    assert_eq!(found[0], open);
    let mut found = found;
    found.sort();
    assert_eq!(found, vec![p.join("crash"), open]);
}

#[test]
fn a_crowded_directory_of_another_users_does_not_keep_the_sweep_from_the_uids_entries_beside_it() {
    let uid = 3_900_127;
    // tmpfs lists the newest entry first, so the crowd is read before the uid's file.
    let root = tempfile::tempdir_in("/dev/shm").unwrap();
    file_of(&root.path().join("plant"), uid);
    let crowd = root.path().join("crowd");
    open_dir(&crowd);
    for n in 0..100 {
        std::fs::write(crowd.join(format!("f{n}")), b"").unwrap();
    }
    let result = swept_within(root.path(), uid, 20);
    assert!(
        !root.path().join("plant").exists(),
        "the uid's file beside the crowd was removed: {result:?}"
    );
    assert_eq!((result.removed, result.cut_short), (1, 1), "{result:?}");
    assert!(!result.is_complete(), "a sweep cut short is not complete");
}
