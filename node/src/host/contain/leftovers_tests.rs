use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};

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

fn swept(root: &Path, uid: u32) -> Swept {
    let mut swept = Swept::default();
    sweep(root, uid, &mut swept);
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
    std::os::unix::fs::lchown(&top, Some(uid), Some(uid)).unwrap();
    let shallow = root.path().join("shallow");
    std::fs::create_dir_all(shallow.join("a/b")).unwrap();
    file_of(&shallow.join("a/b/key"), uid);
    std::os::unix::fs::lchown(&shallow, Some(uid), Some(uid)).unwrap();
    let result = swept(root.path(), uid);
    assert_eq!((result.removed, result.taken, result.failed), (1, 1, 0));
    assert!(!shallow.exists());
    let meta = std::fs::symlink_metadata(&top).unwrap();
    assert_eq!(
        (meta.uid(), meta.mode() & 0o777),
        (rustix::process::geteuid().as_raw(), 0o700)
    );
}
