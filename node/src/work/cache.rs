//! The node's content cache: file contents received in content-addressed submissions, kept
//! under `<data_dir>/content-cache/<scope>/<sha256>` so that a submitter's next run sends
//! only what changed.
//!
//! Owns that directory and its index (`lru`). A scope is derived from the submitter's
//! proven key: a submission finds only what the same identity sent, so no one learns
//! whether another submitter has a file. Contents are written to a temp file created
//! exclusively, verified by the caller, then renamed into place; the cache stays within
//! `[work] content-cache-mb` by evicting the least recently used entries, never one pinned
//! by a submission still being assembled. At most [`MAX_SESSIONS`] submissions are
//! assembled at once ([`MAX_SESSIONS_PER_SCOPE`] per submitter), and a cached file is
//! checked against its hash ([`Session::check`]) before it is used again. The index lock is held only for short file
//! operations (rename, unlink), so an eviction never removes a file a concurrent insert just
//! put in place.

mod check;
pub(crate) mod lru;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use crate::keys::PublicKey;
use lru::{Key, Lru};

/// The cache's directory under the data dir.
pub const CACHE_DIR: &str = "content-cache";

/// Prefix of files being received (removed at start).
const TEMP_PREFIX: &str = ".tmp-";

/// Most entries indexed (each costs about 100 bytes of memory): ample for many private
/// data dirs of thousands of files.
const MAX_ENTRIES: usize = 1_000_000;

/// Most submissions assembled from the cache at once, and per scope. Each holds its
/// manifest and its inline files in memory (up to about 100 MiB at the bounds), and pins
/// what it uses; a submission over these counts is told to send its payload whole.
pub const MAX_SESSIONS: usize = 8;
/// See [`MAX_SESSIONS`].
pub const MAX_SESSIONS_PER_SCOPE: usize = 4;

/// The share of the cache one scope's open sessions may pin at once (one in this many
/// bytes): pinned contents cannot be evicted, so one submitter must not hold the cache
/// against everyone else. A submission over it is told to send its payload whole.
pub const PINNED_SHARE: u64 = 4;

/// The content cache of a node. Shared by the work service's sessions.
#[derive(Debug)]
pub struct ContentCache {
    root: PathBuf,
    /// The bound on the bytes cached.
    max_bytes: u64,
    index: Mutex<Lru>,
    /// Sessions open and the bytes they pin or have reserved, per scope.
    sessions: Mutex<HashMap<[u8; 32], ScopeUse>>,
    /// Bytes read back from cached files to check them against their hash.
    rehashed: AtomicU64,
}

/// One scope's open sessions.
#[derive(Debug, Default)]
struct ScopeUse {
    open: usize,
    /// Bytes its sessions pin or have reserved to receive.
    charged: u64,
}

/// Whose contents a submission may use: derived from the submitter's proven key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scope([u8; 32]);

impl Scope {
    /// The scope of submissions proven to come from `key`.
    pub fn of(key: &PublicKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"warren content-cache scope\0");
        hasher.update(key.as_bytes());
        Self(hasher.finalize().into())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ContentCache {
    /// Opens (or creates) the cache under `data_dir`, bounded to `max_bytes`: indexes what
    /// an earlier run left (oldest modified first), removes unfinished temp files, and
    /// evicts down to the bound.
    ///
    /// # Errors
    /// When the directory cannot be created or read.
    pub fn open(data_dir: &Path, max_bytes: u64) -> io::Result<Arc<Self>> {
        let root = data_dir.join(CACHE_DIR);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&root)?;
        let mut found = Vec::new();
        for scope_dir in std::fs::read_dir(&root)? {
            let scope_dir = scope_dir?;
            let Some(scope) = scope_dir.file_name().to_str().and_then(unhex) else {
                continue;
            };
            for file in std::fs::read_dir(scope_dir.path())? {
                let file = file?;
                let name = file.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TEMP_PREFIX) {
                    let _ = std::fs::remove_file(file.path());
                    continue;
                }
                let (Some(hash), Ok(meta)) = (unhex(&name), file.metadata()) else {
                    continue;
                };
                let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                found.push((modified, Key { scope, hash }, meta.len()));
            }
        }
        found.sort();
        let mut index = Lru::new(max_bytes, MAX_ENTRIES);
        for (_, key, size) in found {
            index.insert(key, size, false);
        }
        let cache = Arc::new(Self {
            root,
            max_bytes,
            index: Mutex::new(index),
            sessions: Mutex::new(HashMap::new()),
            rehashed: AtomicU64::new(0),
        });
        let mut index = cache.lock();
        cache.evict(&mut index);
        drop(index);
        Ok(cache)
    }

    fn lock(&self) -> MutexGuard<'_, Lru> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn scope_dir(&self, scope: &[u8; 32]) -> PathBuf {
        self.root.join(hex(scope))
    }

    fn path(&self, key: &Key) -> PathBuf {
        self.scope_dir(&key.scope).join(hex(&key.hash))
    }

    /// Removes evicted entries' files. Called with the index locked.
    fn evict(&self, index: &mut Lru) {
        for key in index.evict() {
            if let Err(e) = std::fs::remove_file(self.path(&key)) {
                tracing::warn!(error = %e, "could not remove an evicted cache file");
            }
        }
    }

    /// A submission's view of the cache: what it pins stays until it is dropped. `None`
    /// when [`MAX_SESSIONS`] are open, or [`MAX_SESSIONS_PER_SCOPE`] for `scope`.
    pub fn session(self: &Arc<Self>, scope: Scope) -> Option<Session> {
        let mut sessions = self.sessions();
        let open: usize = sessions.values().map(|s| s.open).sum();
        let ours = sessions.entry(scope.0).or_default();
        if open >= MAX_SESSIONS || ours.open >= MAX_SESSIONS_PER_SCOPE {
            if ours.open == 0 {
                sessions.remove(&scope.0);
            }
            return None;
        }
        ours.open += 1;
        Some(Session {
            cache: self.clone(),
            scope: scope.0,
            pinned: Vec::new(),
            charged: 0,
            #[cfg(test)]
            lookups: Vec::new(),
        })
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<[u8; 32], ScopeUse>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_session(&self, scope: &[u8; 32], charged: u64) {
        let mut sessions = self.sessions();
        if let Some(ours) = sessions.get_mut(scope) {
            ours.open -= 1;
            ours.charged = ours.charged.saturating_sub(charged);
            if ours.open == 0 {
                sessions.remove(scope);
            }
        }
    }

    /// Adds `bytes` to what `scope` pins.
    fn charge(&self, scope: &[u8; 32], bytes: u64) {
        if let Some(ours) = self.sessions().get_mut(scope) {
            ours.charged = ours.charged.saturating_add(bytes);
        }
    }

    /// Takes `bytes` off what `scope` pins.
    fn release(&self, scope: &[u8; 32], bytes: u64) {
        if let Some(ours) = self.sessions().get_mut(scope) {
            ours.charged = ours.charged.saturating_sub(bytes);
        }
    }

    /// Bytes read back from cached files so far to check them against their hash (a file
    /// unchanged since it was last checked is not read again).
    pub fn rehashed_bytes(&self) -> u64 {
        self.rehashed.load(Ordering::Relaxed)
    }

    /// Bytes and entries indexed now.
    pub fn usage(&self) -> (u64, usize) {
        let index = self.lock();
        (index.bytes(), index.len())
    }
}

/// One submission's pins in one scope. Dropping it releases them (and evicts what no
/// longer fits).
#[derive(Debug)]
pub struct Session {
    cache: Arc<ContentCache>,
    scope: [u8; 32],
    pinned: Vec<Key>,
    /// Bytes this session pins or has reserved, counted in its scope's [`ScopeUse`].
    charged: u64,
    /// The thread of each look-up ([`Session::hit`]), for tests to see how often and where
    /// the index was asked.
    #[cfg(test)]
    pub(crate) lookups: Vec<std::thread::ThreadId>,
}

impl Session {
    fn key(&self, hash: &[u8; 32]) -> Key {
        Key {
            scope: self.scope,
            hash: *hash,
        }
    }

    /// Pins the content `hash` if this scope has it: its file and size.
    pub fn hit(&mut self, hash: &[u8; 32]) -> Option<(PathBuf, u64)> {
        let key = self.key(hash);
        #[cfg(test)]
        self.lookups.push(std::thread::current().id());
        let size = self.cache.lock().pin(&key)?;
        self.pinned.push(key);
        self.charged = self.charged.saturating_add(size);
        self.cache.charge(&self.scope, size);
        Some((self.cache.path(&key), size))
    }

    /// Reserves `bytes` more for this session to pin (the contents it is about to
    /// receive), if the scope's sessions would then pin at most 1/[`PINNED_SHARE`] of the
    /// cache; whether it did.
    pub fn reserve(&mut self, bytes: u64) -> bool {
        let share = self.cache.max_bytes / PINNED_SHARE;
        let mut sessions = self.cache.sessions();
        let Some(ours) = sessions.get_mut(&self.scope) else {
            return false;
        };
        let charged = ours.charged.saturating_add(bytes);
        if charged > share {
            return false;
        }
        ours.charged = charged;
        self.charged = self.charged.saturating_add(bytes);
        true
    }

    /// A new temp file in this scope's directory, created exclusively (nothing else can
    /// have it open or point it elsewhere); removed when its [`TempFile`] is dropped
    /// uncommitted.
    ///
    /// # Errors
    /// When it cannot be created.
    pub fn temp_file(&self) -> io::Result<(TempFile, std::fs::File)> {
        let dir = self.cache.scope_dir(&self.scope);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        loop {
            let mut tag = [0u8; 12];
            getrandom::fill(&mut tag).map_err(|e| io::Error::other(e.to_string()))?;
            let path = dir.join(format!("{TEMP_PREFIX}{}", hex(&tag)));
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(file) => return Ok((TempFile(Some(path)), file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Puts the verified temp file `temp` (of `size` bytes) in place as content `hash`,
    /// pinned, and evicts what no longer fits; returns its path. A file already there for
    /// the content is replaced (its readers keep what they opened).
    ///
    /// # Errors
    /// When the rename fails (`temp` is removed).
    pub fn commit(
        &mut self,
        hash: &[u8; 32],
        mut temp: TempFile,
        size: u64,
    ) -> io::Result<PathBuf> {
        let key = self.key(hash);
        let path = self.cache.path(&key);
        let mut index = self.cache.lock();
        // Verified just now, so it replaces a file already there for the same content
        // (another submission sent it meanwhile, or it could not be checked).
        if let Some(from) = temp.0.take()
            && let Err(e) = std::fs::rename(&from, &path)
        {
            let _ = std::fs::remove_file(&from);
            return Err(e);
        }
        drop(temp);
        index.insert(key, size, true);
        self.pinned.push(key);
        self.cache.evict(&mut index);
        Ok(path)
    }
}

/// A content being received, under a temp name in its scope's directory: removed when
/// dropped unless [`Session::commit`] put it in place, so that a submission given up
/// mid-content (its future dropped at a deadline or a shutdown) leaves nothing behind.
#[derive(Debug)]
pub struct TempFile(Option<PathBuf>);

impl TempFile {
    /// Where it is.
    pub fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), error = %e, "could not remove a cache temp file");
        }
    }
}

impl Session {
    /// Forgets the content `hash`, pinned by this session (its file is missing or no
    /// longer holds it): releases this session's pin and, if it was the last, removes it
    /// from the index and the disk, so that it is asked for again rather than failing
    /// every later submission.
    pub fn forget(&mut self, hash: &[u8; 32], size: u64) {
        let key = self.key(hash);
        let Some(ours) = self.pinned.iter().position(|pinned| *pinned == key) else {
            return;
        };
        self.pinned.swap_remove(ours);
        self.charged = self.charged.saturating_sub(size);
        self.cache.release(&self.scope, size);
        let mut index = self.cache.lock();
        // Another session of this scope still pins it: only our pin goes. What this one
        // receives for it replaces the file ([`Session::commit`]).
        if !index.forget_if_last(&key) {
            return;
        }
        if let Err(e) = std::fs::remove_file(self.cache.path(&key))
            && e.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(error = %e, "could not remove a damaged cache file");
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut index = self.cache.lock();
        for key in &self.pinned {
            index.unpin(key);
        }
        self.cache.evict(&mut index);
        drop(index);
        self.cache.close_session(&self.scope, self.charged);
    }
}

#[cfg(test)]
mod tests {
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
        let cache = ContentCache::open(dir.path(), 100).unwrap();
        let scope = Scope::of(&PublicKey::from_bytes([3; 32]));
        let mut first = cache.session(scope).unwrap();
        let a = put(&mut first, &[b'a'; 60]);
        let b = put(&mut first, &[b'b'; 60]);
        // Over the bound, but both are pinned by the session assembling them.
        assert!(a.is_file() && b.is_file());
        drop(first);
        // Released: the older goes.
        assert!(!a.exists() && b.is_file());
        assert_eq!(cache.usage(), (60, 1));
        // Found again after a restart, still bounded.
        drop(cache);
        let cache = ContentCache::open(dir.path(), 100).unwrap();
        let mut again = cache.session(scope).unwrap();
        let hash: [u8; 32] = Sha256::digest([b'b'; 60]).into();
        assert_eq!(again.hit(&hash), Some((b, 60)));
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
        // content it listed, up to 768 MiB for a 100-byte manifest.
        let dir = tempfile::tempdir().unwrap();
        let cache = ContentCache::open(dir.path(), 1 << 20).unwrap();
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
}
