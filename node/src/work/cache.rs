//! The node's content cache: file contents received in content-addressed submissions, kept
//! under `<data_dir>/content-cache/<scope>/<sha256>` so that a submitter's next run sends
//! only what changed.
//!
//! Owns that directory and its index (`lru`). A scope is derived from the submitter's
//! proven key: a submission finds only what the same identity sent, so no one learns
//! whether another submitter has a file. Contents are written to a temp file created
//! exclusively, verified by the caller, then renamed into place; the cache stays within
//! `[work] content-cache-mb` by evicting the least recently used entries, never one pinned
//! by a submission still being assembled, and a submitter over half the cache its own
//! first (`lru`'s per-scope quota). At most [`MAX_SESSIONS`] submissions are
//! assembled at once ([`MAX_SESSIONS_PER_SCOPE`] per submitter), and a cached file is
//! checked against its hash ([`Session::check`]) before it is used again; a new one is
//! checked once ahead of that, when it has settled (`settler`), so that its first reuse
//! need not read it.
//!
//! Each entry counts at least [`MIN_CHARGE`] against the bound (its real cost on disk: an
//! inode and a block), so tiny contents cannot fill the index. An eviction takes the
//! entries out of the index under its lock and hands their files to the `cleaner` thread:
//! no caller unlinks them, however many there are. The index lock is held for one file
//! operation at most (a commit's rename, a forgotten file's or one evicted file's unlink),
//! so an eviction never removes a file a concurrent insert just put in place.

mod check;
mod cleaner;
pub(crate) mod lru;
mod settler;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use sha2::{Digest, Sha256};

use crate::keys::PublicKey;
use cleaner::Cleaner;
use lru::{Key, Lru};
use settler::Settler;

/// The cache's directory under the data dir.
pub const CACHE_DIR: &str = "content-cache";

/// Prefix of files being received (removed at start).
const TEMP_PREFIX: &str = ".tmp-";

/// Most entries indexed (each costs about 100 bytes of memory): ample for many private
/// data dirs of thousands of files.
const MAX_ENTRIES: usize = 1_000_000;

/// The least an entry counts against the cache's bound, whatever its size: a file costs
/// an inode and a block on disk however small it is.
pub const MIN_CHARGE: u64 = 4096;

/// What a content of `size` bytes counts against the cache's bound and a scope's pinned
/// share: at least [`MIN_CHARGE`]. The index, a session's hits and a submission's
/// reservation all count with this, so tiny contents cannot pin more than they reserved.
pub fn charge_of(size: u64) -> u64 {
    size.max(MIN_CHARGE)
}

/// Most submissions assembled from the cache at once, and per scope. Each holds its
/// manifest and its inline files in memory (up to about 100 MiB at the bounds), and pins
/// what it uses; a submission over these counts is told to send its payload whole.
pub const MAX_SESSIONS: usize = 8;
/// See [`MAX_SESSIONS`].
pub const MAX_SESSIONS_PER_SCOPE: usize = 4;

/// Pins (or 4 KiB units of bytes pinned and reserved) above which a session dropped on an
/// async worker is released on the blocking pool: unpinning and evicting that many
/// entries holds the index lock for a long time.
const RELEASE_ON_CALLER: u64 = 1024;

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
    index: Arc<Mutex<Lru>>,
    /// Removes evicted files.
    cleaner: Cleaner,
    /// Sessions open and the bytes they pin or have reserved, per scope.
    sessions: Mutex<HashMap<[u8; 32], ScopeUse>>,
    /// Bytes read back from cached files to check them against their hash on reuse.
    rehashed: AtomicU64,
    /// Checks that found file leases not available (no stamp could be recorded).
    leases_unavailable: Arc<AtomicU64>,
    /// Checks new contents once settled, ahead of their first reuse (`None`: not ahead).
    settler: Option<Settler>,
    /// Bytes the settler has read.
    read_ahead: Arc<AtomicU64>,
    /// The thread that removed each evicted file, for tests to see where it ran.
    #[cfg(test)]
    removed_by: cleaner::Removals,
    /// The thread that released each session, for tests to see where it ran.
    #[cfg(test)]
    released_by: cleaner::Removals,
    /// Holds the cleaner while taken (tests: a stalled disk).
    #[cfg(test)]
    stall: cleaner::Stall,
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

/// Where the content `key` is kept under the cache's `root`.
fn content_path(root: &Path, key: &Key) -> PathBuf {
    root.join(hex(&key.scope)).join(hex(&key.hash))
}

/// The 32 bytes a name of 64 lower-case hex digits spells, as [`hex`] writes them; `None`
/// for any other name (`u8::from_str_radix` alone would take upper case and a `+`, so
/// two names could spell one key).
fn unhex(text: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = digit(pair[0])? << 4 | digit(pair[1])?;
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
        Self::open_with(data_dir, max_bytes, true)
    }

    /// [`ContentCache::open`], checking new contents ahead of their first reuse only if
    /// `ahead` (tests that count the reads of reuses turn it off).
    fn open_with(data_dir: &Path, max_bytes: u64, ahead: bool) -> io::Result<Arc<Self>> {
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
        let mut index = Lru::new(max_bytes, MAX_ENTRIES).charging_with(charge_of);
        for (_, key, size) in found {
            index.insert(key, size, false);
        }
        let evicted = index.evict();
        let index = Arc::new(Mutex::new(index));
        #[cfg(test)]
        let (removed_by, stall) = (cleaner::Removals::default(), cleaner::Stall::default());
        let cleaner = Cleaner::start(
            root.clone(),
            index.clone(),
            cleaner::MAX_OVERFLOW,
            #[cfg(test)]
            removed_by.clone(),
            #[cfg(test)]
            stall.clone(),
        )?;
        cleaner.remove(evicted);
        let counters = settler::Counters::default();
        let (read_ahead, leases_unavailable) =
            (counters.read.clone(), counters.leases_unavailable.clone());
        let settler = match ahead {
            true => Some(Settler::start(root.clone(), index.clone(), counters)?),
            false => None,
        };
        Ok(Arc::new(Self {
            root,
            max_bytes,
            index,
            cleaner,
            sessions: Mutex::new(HashMap::new()),
            rehashed: AtomicU64::new(0),
            leases_unavailable,
            settler,
            read_ahead,
            #[cfg(test)]
            removed_by,
            #[cfg(test)]
            released_by: cleaner::Removals::default(),
            #[cfg(test)]
            stall,
        }))
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
        content_path(&self.root, key)
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

    /// Bytes read back from cached files so far to check them against their hash when a
    /// submission reuses them (a file unchanged since it was last checked is not read
    /// again).
    pub fn rehashed_bytes(&self) -> u64 {
        self.rehashed.load(Ordering::Relaxed)
    }

    /// Checks so far that found file leases not available in the cache's directory: each
    /// such file is hashed again at every use.
    pub fn leases_unavailable(&self) -> u64 {
        self.leases_unavailable.load(Ordering::Relaxed)
    }

    /// Bytes read so far to check new contents ahead of their first reuse.
    pub fn read_ahead_bytes(&self) -> u64 {
        self.read_ahead.load(Ordering::Relaxed)
    }

    /// Waits until every evicted file so far is removed (test hook).
    #[cfg(test)]
    fn settle_removals(&self) {
        self.cleaner.settle();
    }

    /// Bytes (each entry counted at least [`MIN_CHARGE`]) and entries indexed now.
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
    /// The cache this session uses.
    pub fn cache(&self) -> &ContentCache {
        &self.cache
    }

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
        let charge = charge_of(size);
        self.charged = self.charged.saturating_add(charge);
        self.cache.charge(&self.scope, charge);
        Some((self.cache.path(&key), size))
    }

    /// Reserves `bytes` more for this session to pin (the contents it is about to
    /// receive, each counted with [`charge_of`]), if the scope's sessions would then pin at most 1/[`PINNED_SHARE`] of the
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
        let evicted = index.evict();
        drop(index);
        self.cache.cleaner.remove(evicted);
        if let Some(settler) = &self.cache.settler {
            settler.queue(key, size);
        }
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
        let charge = charge_of(size);
        self.charged = self.charged.saturating_sub(charge);
        self.cache.release(&self.scope, charge);
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
    /// Unpins what it pinned, evicts what no longer fits and frees its slot: on the
    /// blocking pool when it pinned many entries and is dropped on an async worker.
    fn drop(&mut self) {
        let release = Release {
            cache: self.cache.clone(),
            scope: self.scope,
            pinned: std::mem::take(&mut self.pinned),
            charged: self.charged,
        };
        let heavy = release.pinned.len() as u64 > RELEASE_ON_CALLER
            || self.charged / MIN_CHARGE > RELEASE_ON_CALLER;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if heavy => drop(runtime.spawn_blocking(move || release.run())),
            _ => release.run(),
        }
    }
}

/// What a dropped [`Session`] gives back.
struct Release {
    cache: Arc<ContentCache>,
    scope: [u8; 32],
    pinned: Vec<Key>,
    charged: u64,
}

impl Release {
    fn run(self) {
        let mut index = self.cache.lock();
        for key in &self.pinned {
            index.unpin(key);
        }
        let evicted = index.evict();
        drop(index);
        self.cache.cleaner.remove(evicted);
        self.cache.close_session(&self.scope, self.charged);
        #[cfg(test)]
        (self.cache.released_by.lock())
            .unwrap_or_else(PoisonError::into_inner)
            .push(std::thread::current().id());
    }
}

#[cfg(test)]
mod tests;
