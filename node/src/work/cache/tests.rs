//! The content cache driven on real files: pins, scopes, sessions, eviction and the checks
//! of cached files.

use super::check::SETTLED;
use super::*;

fn put(session: &mut Session, content: &[u8]) -> PathBuf {
    let hash: [u8; 32] = Sha256::digest(content).into();
    let (temp, _) = session.temp_file().unwrap();
    std::fs::write(temp.path(), content).unwrap();
    session.commit(&hash, temp, content.len() as u64).unwrap()
}

#[test]
fn a_session_pins_what_it_uses_until_dropped_and_the_bound_holds_after() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 10_000).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let mut first = cache.session(scope).unwrap();
    let a = put(&mut first, &[b'a'; 6000]);
    let b = put(&mut first, &[b'b'; 6000]);
    // Over the bound, but both are pinned by the session assembling them.
    assert!(a.is_file() && b.is_file());
    drop(first);
    // Released: the older goes.
    cache.settle_removals();
    assert!(!a.exists() && b.is_file());
    assert_eq!(cache.usage(), (6000, 1));
    // Found again after a restart, still bounded.
    drop(cache);
    let cache = ContentCache::open(dir.path(), 10_000).unwrap();
    let mut again = cache.session(scope).unwrap();
    let hash: [u8; 32] = Sha256::digest([b'b'; 6000]).into();
    assert_eq!(again.hit(&hash), Some((b, 6000)));
}

#[test]
fn another_identity_does_not_see_a_content() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let mine = Scope::of(&PublicKey::from_bytes([3; 32]));
    let theirs = Scope::of(&PublicKey::from_bytes([4; 32]));
    put(&mut cache.session(mine).unwrap(), b"secret");
    let hash: [u8; 32] = Sha256::digest(b"secret").into();
    assert!(cache.session(theirs).unwrap().hit(&hash).is_none());
    assert!(cache.session(mine).unwrap().hit(&hash).is_some());
}

#[test]
fn sessions_are_bounded_in_all_and_per_scope_and_a_closed_one_frees_its_slot() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = |n: u8| Scope::of(&PublicKey::from_bytes([n; 32]));
    let mine: Vec<Session> = (0..MAX_SESSIONS_PER_SCOPE)
        .map(|_| cache.session(scope(1)).unwrap())
        .collect();
    assert!(
        cache.session(scope(1)).is_none(),
        "one scope's share is taken"
    );
    let others: Vec<Session> = (MAX_SESSIONS_PER_SCOPE..MAX_SESSIONS)
        .map(|n| cache.session(scope(2 + n as u8)).unwrap())
        .collect();
    assert!(cache.session(scope(99)).is_none(), "every slot is taken");
    drop(others);
    assert!(cache.session(scope(99)).is_some());
    drop(mine);
    assert!(cache.session(scope(1)).is_some());
}

#[test]
fn a_cached_file_cut_or_changed_on_disk_no_longer_holds_its_content_and_is_forgotten() {
    // Found by an attacker's review: a cached file removed or changed on disk was a
    // hit for ever after, and every later submission of that scope failed.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let mut session = cache.session(scope).unwrap();
    let path = put(&mut session, b"the playbook");
    let mode = std::fs::metadata(&path).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let hash: [u8; 32] = Sha256::digest(b"the playbook").into();
    let later = std::time::SystemTime::now() + SETTLED;
    assert!(session.check(&hash, &path, 12, later).unwrap());
    std::fs::write(&path, b"POISONED!!!!").unwrap();
    assert!(
        !session.check(&hash, &path, 12, later).unwrap(),
        "same length, other bytes"
    );
    std::fs::write(&path, b"cut").unwrap();
    assert!(!session.check(&hash, &path, 12, later).unwrap());
    session.forget(&hash, 12);
    assert!(!path.exists());
    assert_eq!(session.hit(&hash), None);
    drop(session);
    assert_eq!(cache.usage(), (0, 0));
}

#[test]
fn an_unchanged_cached_file_is_hashed_once_settled_and_not_again_until_it_changes() {
    // Found by an attacker's review: every reuse re-read and hashed every cached
    // content it listed, up to 768 MiB for a 100-byte manifest. (Without the check ahead,
    // so that only the reuses read.)
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open_with(dir.path(), 1 << 20, false).unwrap();
    let mut session = cache
        .session(Scope::of(&PublicKey::from_bytes([3; 32])))
        .unwrap();
    let content = vec![b'p'; 1000];
    let path = put(&mut session, &content);
    let hash: [u8; 32] = Sha256::digest(&content).into();
    let now = std::time::SystemTime::now();
    // Just written: its times may not have moved past a write in the same tick.
    assert!(session.check(&hash, &path, 1000, now).unwrap());
    assert!(session.check(&hash, &path, 1000, now).unwrap());
    assert_eq!(
        cache.rehashed_bytes(),
        2000,
        "not settled: hashed each time"
    );
    let later = now + SETTLED;
    assert!(session.check(&hash, &path, 1000, later).unwrap());
    assert_eq!(cache.rehashed_bytes(), 3000);
    for _ in 0..3 {
        assert!(session.check(&hash, &path, 1000, later).unwrap());
    }
    assert_eq!(cache.rehashed_bytes(), 3000, "unchanged: not read again");
    // Same length, other bytes, then the same bytes again: both show in fstat.
    std::fs::write(&path, vec![b'q'; 1000]).unwrap();
    assert!(!session.check(&hash, &path, 1000, later).unwrap());
    std::fs::write(&path, &content).unwrap();
    assert!(session.check(&hash, &path, 1000, later).unwrap());
    assert_eq!(cache.rehashed_bytes(), 5000);
}

/// Commits `size` bytes (a sparse file: its bytes do not matter here) as content `hash`.
fn put_sized(session: &mut Session, hash: [u8; 32], size: u64) -> PathBuf {
    let (temp, file) = session.temp_file().unwrap();
    file.set_len(size).unwrap();
    session.commit(&hash, temp, size).unwrap()
}

fn numbered(n: u32) -> [u8; 32] {
    Sha256::digest(n.to_be_bytes()).into()
}

#[test]
fn a_commit_evicting_many_entries_unlinks_none_on_its_own_thread() {
    // Found by an attacker's review: every evicted file was unlinked by the caller (an
    // async worker) with the index lock held; a commit evicting a million tiny entries
    // held both for about 25 s.
    let dir = tempfile::tempdir().unwrap();
    let many = 10_000u32;
    let max_bytes = u64::from(many) * 4096;
    let cache = ContentCache::open(dir.path(), max_bytes).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let mut session = cache.session(scope).unwrap();
    let tiny: Vec<PathBuf> = (0..many)
        .map(|n| put_sized(&mut session, numbered(n), 1))
        .collect();
    drop(session);
    assert_eq!(cache.usage().1, many as usize, "all fit");
    let mut session = cache.session(scope).unwrap();
    put_sized(&mut session, [0xaa; 32], max_bytes);
    // Gone from the index at once: no look-up finds a file not yet removed.
    assert_eq!(cache.usage(), (max_bytes, 1));
    assert_eq!(session.hit(&numbered(0)), None);
    cache.settle_removals();
    let removed_by = cache.removed_by.lock().unwrap().clone();
    assert_eq!(removed_by.len(), many as usize);
    let here = std::thread::current().id();
    let on_caller = removed_by.iter().filter(|t| **t == here).count();
    assert_eq!(on_caller, 0, "{on_caller} of {many} removed on the caller");
    assert!(tiny.iter().all(|path| !path.exists()));
}

#[test]
fn each_entry_is_charged_at_least_4_kib_so_tiny_contents_cannot_crowd_a_small_cache() {
    // Found by an attacker's review: a million 3-byte contents fit in any cache, each
    // a file (an inode and a block) and an index entry.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    for n in 0..1_000 {
        put_sized(&mut cache.session(scope).unwrap(), numbered(n), 1);
    }
    assert_eq!(cache.usage(), (1 << 20, 256), "1 MiB holds 256 entries");
}

/// Maps `path` shared and writable, as a job of the node's user could.
struct Shared {
    addr: *mut u8,
    len: usize,
}

impl Shared {
    fn map(path: &Path, len: usize) -> Self {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        // The mapping keeps the file open for writing once the descriptor is closed.
        drop(file);
        Self {
            addr: addr.cast(),
            len,
        }
    }

    fn write(&self, at: usize, bytes: &[u8]) {
        assert!(at + bytes.len() <= self.len);
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.addr.add(at), bytes.len()) };
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        unsafe { libc::munmap(self.addr.cast(), self.len) };
    }
}

#[test]
fn a_cached_file_changed_through_a_shared_mapping_is_hashed_again() {
    // Found by an attacker's review: a page made dirty and writable through a shared
    // mapping takes later writes with no fault and no time update, so once its stamp was
    // recorded the file was never hashed again (a permanent bypass of the check).
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let mut session = cache
        .session(Scope::of(&PublicKey::from_bytes([3; 32])))
        .unwrap();
    let content = vec![b'A'; 8192];
    let path = put(&mut session, &content);
    let hash: [u8; 32] = Sha256::digest(&content).into();
    let mapped = Shared::map(&path, 8192);
    mapped.write(0, b"A");
    let later = std::time::SystemTime::now() + SETTLED + std::time::Duration::from_secs(1);
    assert!(
        session.check(&hash, &path, 8192, later).unwrap(),
        "still good"
    );
    mapped.write(0, &[b'P'; 4096]);
    assert_eq!(&std::fs::read(&path).unwrap()[..4], b"PPPP");
    assert!(
        !session.check(&hash, &path, 8192, later).unwrap(),
        "poisoned through the mapping: must be hashed again"
    );
}

#[test]
fn one_scope_filling_the_cache_does_not_evict_another_scopes_contents() {
    // Found by an attacker's review: one global LRU, so one submitter sending
    // `max_bytes` of new contents evicted every other submitter's cache.
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 1 << 20;
    let cache = ContentCache::open(dir.path(), max_bytes).unwrap();
    let a = Scope::of(&PublicKey::from_bytes([1; 32]));
    let b = Scope::of(&PublicKey::from_bytes([2; 32]));
    let x = put(&mut cache.session(b).unwrap(), &[b'x'; 4096]);
    let hash: [u8; 32] = Sha256::digest([b'x'; 4096]).into();
    // A sends the cache's size in distinct contents, over successive sessions.
    for round in 0..8u32 {
        let mut session = cache.session(a).unwrap();
        for n in 0..8 {
            put_sized(&mut session, numbered(round * 8 + n), max_bytes / 64);
        }
    }
    assert_eq!(
        cache.session(b).unwrap().hit(&hash),
        Some((x, 4096)),
        "B's content evicted by A's"
    );
    // A keeps its newest.
    assert!(cache.session(a).unwrap().hit(&numbered(63)).is_some());
}

#[test]
fn tiny_hits_count_at_least_4_kib_against_the_scopes_pinned_share() {
    // Found by an attacker's review: a hit charged the content's real size while the
    // index pins at least 4 KiB of it, so a submitter of tiny files pinned far over its
    // share, and the cache evicted every other scope's entries to make room.
    let dir = tempfile::tempdir().unwrap();
    let max_bytes = 1 << 20;
    let cache = ContentCache::open(dir.path(), max_bytes).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let share_entries = (max_bytes / PINNED_SHARE / MIN_CHARGE) as u32;
    for n in 0..share_entries {
        put_sized(&mut cache.session(scope).unwrap(), numbered(n), 1);
    }
    let mut session = cache.session(scope).unwrap();
    for n in 0..share_entries {
        assert!(session.hit(&numbered(n)).is_some());
    }
    assert!(
        !session.reserve(1),
        "{share_entries} pinned entries of 4 KiB fill the 1/{PINNED_SHARE} share"
    );
}

#[test]
fn commits_and_dropped_sessions_do_not_wait_for_a_stalled_cleaner() {
    // Found by the s22 review: evicted files were queued with a blocking send, from
    // commits and dropped sessions on async workers; with the cleaner behind (a slow
    // disk) 64 batches filled its queue and every content submission's worker waited.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), MIN_CHARGE).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let stalled = cache.stall.lock().unwrap();
    let (done, finished) = std::sync::mpsc::channel();
    let worker = cache.clone();
    std::thread::spawn(move || {
        // Each commit evicts the entry before it: one batch each, 199 in all.
        for n in 0..200 {
            put_sized(&mut worker.session(scope).unwrap(), numbered(n), 1);
        }
        let _ = done.send(());
    });
    let in_time = finished
        .recv_timeout(std::time::Duration::from_secs(10))
        .is_ok();
    drop(stalled);
    assert!(in_time, "200 commits waited for the stalled cleaner");
    cache.settle_removals();
    let scope_dir = cache.scope_dir(&scope.0);
    let left: Vec<_> = std::fs::read_dir(scope_dir).unwrap().collect();
    assert_eq!(
        left.len(),
        1,
        "every evicted file is removed once it catches up"
    );
    assert!(cache.session(scope).unwrap().hit(&numbered(199)).is_some());
}

#[tokio::test]
async fn a_session_pinning_many_entries_is_released_off_the_async_worker() {
    // Found by the s22 review: a dropped session unpinned all it pinned (up to 200,000
    // entries) and evicted what no longer fit in one hold of the index lock, on the
    // async worker that dropped it.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let mut session = cache.session(scope).unwrap();
    for n in 0..2_000 {
        put_sized(&mut session, numbered(n), 1);
    }
    drop(session);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while cache.released_by.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let released_by = cache.released_by.lock().unwrap().clone();
    assert_eq!(released_by.len(), 1);
    assert_ne!(
        released_by[0],
        std::thread::current().id(),
        "released on the worker"
    );
    // Released all the same: unpinned and evicted down to the bound (256 entries of 4 KiB).
    assert_eq!(cache.usage(), (1 << 20, 256));
}

#[test]
fn leases_not_available_are_counted_and_a_lease_refused_to_a_writer_is_not() {
    // Found by the s22 review: where leases fail (NFS, `fs.leases-enable=0`, ...) no
    // stamp is ever recorded and every reuse hashes every file again, with no trace.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let mut session = cache
        .session(Scope::of(&PublicKey::from_bytes([3; 32])))
        .unwrap();
    let content = vec![b'p'; 1000];
    let path = put(&mut session, &content);
    let hash: [u8; 32] = Sha256::digest(&content).into();
    let later = std::time::SystemTime::now() + SETTLED;
    // A writer has it open: the lease is refused, which is no sign of leases missing.
    let writer = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    assert!(session.check(&hash, &path, 1000, later).unwrap());
    drop(writer);
    assert_eq!(cache.leases_unavailable(), 0);
    check::LEASES_FAIL.set(true);
    assert!(session.check(&hash, &path, 1000, later).unwrap());
    assert!(session.check(&hash, &path, 1000, later).unwrap());
    check::LEASES_FAIL.set(false);
    assert_eq!(cache.leases_unavailable(), 2);
    assert_eq!(cache.rehashed_bytes(), 3000, "no stamp: hashed each time");
}

/// Waits (up to 20 s) until `done` holds (the settler's checks run 2 s after a commit).
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !done() {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(20),
            "waited 20 s for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_new_content_is_checked_once_settled_so_that_its_first_reuse_reads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let content = vec![b'p'; 100_000];
    let hash: [u8; 32] = Sha256::digest(&content).into();
    let path = put(&mut cache.session(scope).unwrap(), &content);
    let key = Key {
        scope: scope.0,
        hash,
    };
    wait_until("the stamp", || cache.lock().stamp(&key).is_some());
    assert_eq!(cache.read_ahead_bytes(), 100_000, "read once, ahead");
    let mut reuse = cache.session(scope).unwrap();
    assert_eq!(reuse.hit(&hash), Some((path.clone(), 100_000)));
    assert!(
        reuse
            .check(&hash, &path, 100_000, std::time::SystemTime::now())
            .unwrap()
    );
    assert_eq!(
        cache.rehashed_bytes(),
        0,
        "checked ahead: the reuse read nothing"
    );
    // A write after the check ahead still shows.
    std::fs::write(&path, vec![b'q'; 100_000]).unwrap();
    assert!(
        !reuse
            .check(
                &hash,
                &path,
                100_000,
                std::time::SystemTime::now() + SETTLED
            )
            .unwrap()
    );
}

#[test]
fn a_content_changed_before_it_is_checked_ahead_is_not_trusted_and_its_reuse_finds_it_changed() {
    // The attack: a job running as the node's user rewrites a cached file, same length,
    // right after the node put it in place. The check ahead must hash what is there, not
    // trust what was received.
    let dir = tempfile::tempdir().unwrap();
    let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
    let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
    let content = vec![b'p'; 100_000];
    let hash: [u8; 32] = Sha256::digest(&content).into();
    let path = put(&mut cache.session(scope).unwrap(), &content);
    std::fs::write(&path, vec![b'X'; 100_000]).unwrap();
    wait_until("the check ahead", || cache.read_ahead_bytes() == 100_000);
    let key = Key {
        scope: scope.0,
        hash,
    };
    assert_eq!(cache.lock().stamp(&key), None);
    let mut reuse = cache.session(scope).unwrap();
    assert!(reuse.hit(&hash).is_some());
    let later = std::time::SystemTime::now() + SETTLED;
    assert!(!reuse.check(&hash, &path, 100_000, later).unwrap());
}

#[test]
fn only_the_lower_case_hex_a_key_is_written_as_names_a_cache_file() {
    let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37 + 171) as u8);
    let name = hex(&bytes);
    assert_eq!(unhex(&name), Some(bytes));
    // The same bytes in upper case, or with a `+` before a digit, spell another name.
    assert_eq!(unhex(&name.to_uppercase()), None);
    let plus = format!("+{}", &name[1..]);
    assert_eq!(unhex(&plus), None);
    assert_eq!(unhex(&format!("+f{}", &"0".repeat(62))), None);
    assert_eq!(unhex(&name[..62]), None);
    assert_eq!(unhex(&format!("{}g", &name[..63])), None);
}
