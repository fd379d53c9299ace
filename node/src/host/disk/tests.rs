use super::*;

fn quota(bytes: u64, inodes: u64) -> DiskQuota {
    DiskQuota { bytes, inodes }
}

#[test]
fn measures_files_directories_and_links_without_following_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::write(root.join("a/b/f"), vec![1u8; 10_000]).unwrap();
    std::fs::write(root.join("g"), b"hi").unwrap();
    // A symlink to / must count as one small entry, never as the whole file system.
    std::os::unix::fs::symlink("/", root.join("root")).unwrap();
    std::os::unix::fs::symlink("a", root.join("loop")).unwrap();
    let usage = measure(root, None).unwrap();
    assert_eq!(usage.inodes, 6, "a, a/b, a/b/f, g, root, loop");
    let at_least = 10_000 + 2;
    assert!(usage.bytes >= at_least, "{usage:?}");
    assert!(usage.bytes < 1 << 20, "{usage:?}");
}

#[test]
fn a_sparse_file_counts_as_big_as_it_claims() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("sparse")).unwrap();
    file.set_len(1 << 40).unwrap();
    let usage = measure(dir.path(), None).unwrap();
    assert_eq!(usage.bytes, 1 << 40);
}

#[test]
fn stops_early_once_past_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    for d in 0..50 {
        let sub = dir.path().join(format!("d{d}"));
        std::fs::create_dir(&sub).unwrap();
        for f in 0..20 {
            std::fs::write(sub.join(format!("f{f}")), b"").unwrap();
        }
    }
    let all = measure(dir.path(), None).unwrap();
    assert_eq!(all.inodes, 50 * 21);
    let early = measure(dir.path(), Some(quota(u64::MAX, 30))).unwrap();
    assert!(early.exceeds(quota(u64::MAX, 30)));
    assert!(early.inodes < all.inodes, "{early:?}");
}

#[test]
fn a_tree_nested_too_deep_cannot_be_measured() {
    let dir = tempfile::tempdir().unwrap();
    let mut path = dir.path().to_owned();
    for _ in 0..=MAX_SCAN_DEPTH + 1 {
        path.push("d");
    }
    std::fs::create_dir_all(&path).unwrap();
    assert!(matches!(
        measure(dir.path(), None),
        Err(ScanError::TooDeep { .. })
    ));
}

#[test]
fn a_missing_directory_is_an_error_but_vanishing_entries_are_not() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        measure(&dir.path().join("missing"), None),
        Err(ScanError::Io { .. })
    ));
    assert_eq!(measure(dir.path(), None).unwrap(), Usage::default());
}

#[test]
fn the_floor_names_free_space_and_floor() {
    let space = Space {
        free_bytes: 300 << 20,
        free_inodes: Some(1_000_000),
    };
    assert_eq!(check_floor(space, 0), Ok(()));
    assert_eq!(check_floor(space, 300 << 20), Ok(()));
    let below = check_floor(space, 512 << 20).unwrap_err();
    assert_eq!(
        below.to_string(),
        "300 MiB free, below this node's free-space floor of 512 MiB"
    );
    let few_inodes = Space {
        free_bytes: 1 << 40,
        free_inodes: Some(10),
    };
    let below = check_floor(few_inodes, 1).unwrap_err();
    assert!(below.to_string().contains("only 10 free inodes"), "{below}");
    let no_inode_count = Space {
        free_bytes: 1 << 40,
        free_inodes: None,
    };
    assert_eq!(check_floor(no_inode_count, 1 << 20), Ok(()));
}

#[test]
fn has_room_reads_the_real_file_system() {
    let dir = tempfile::tempdir().unwrap();
    assert!(has_room(dir.path(), 1).is_ok());
    let err = has_room(dir.path(), u64::MAX).unwrap_err();
    assert!(
        err.to_string()
            .contains("below this node's free-space floor"),
        "{err}"
    );
    assert!(matches!(
        has_room(&dir.path().join("missing"), 1),
        Err(RoomError::Unknown { .. })
    ));
    assert!(has_room(&dir.path().join("missing"), 0).is_ok());
}
