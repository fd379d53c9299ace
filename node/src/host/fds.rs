//! Per-job caps on the host resources a guest holds: operating-system descriptors (files
//! and directories it opened, its children's pipes) and resource-table entries (those plus
//! streams, pollables and children).
//!
//! One guest must not take the descriptors the node needs for its sockets, its store and
//! its other jobs. The node keeps a reserve of its `RLIMIT_NOFILE` and shares the rest
//! among `[work] max-running` jobs ([`per_job_budget`]); each job's [`FdLedger`] refuses
//! what would take it past its share, and the calls that open descriptors return that
//! refusal to the guest as an error value. Calls without an error channel (a pollable, a
//! stream taken from a child) trap the job when its resource table is full, which fails
//! that job only.
//!
//! The ledger counts what is really held: a descriptor stays counted while any stream or
//! handle still refers to it, through weak references, so dropping the guest's handle but
//! keeping a stream open does not free a slot.

use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Descriptors the node keeps for itself however small its limit: listeners, mesh links,
/// control sessions, the unit store, logs and the engine.
pub const MIN_NODE_RESERVE: u64 = 256;

/// The node keeps at least this fraction (1/N) of its descriptor limit for itself.
pub const NODE_RESERVE_DIVISOR: u64 = 8;

/// The most descriptors a job gets by default: guest-runner holds about eight (its
/// directory, payload, results and one child's pipes); no work handler needs a thousand.
pub const MAX_DEFAULT_PER_JOB: usize = 1024;

/// The fewest descriptors a job gets: below this, guest-runner cannot run its child.
pub const MIN_PER_JOB: usize = 16;

/// Descriptors the node opens for every job before the guest runs: the job directory (the
/// guest's preopen), the payload and the results.
pub const JOB_BASELINE: usize = 3;

/// Descriptors one child takes from the node: its stdin, stdout and stderr pipes and the
/// pidfd that reaps it. Counted while the child or any stream taken from it lives.
pub const CHILD_DESCRIPTORS: usize = 4;

/// Resource-table entries a job may hold per descriptor of its cap: a file, a stream or two
/// over it, and the pollables that wait on them.
pub const RESOURCES_PER_DESCRIPTOR: usize = 4;

/// The fewest resource-table entries a job gets.
pub const MIN_RESOURCES: usize = 256;

/// Resource-table entries of a job without a descriptor cap (benchmarks and tests).
pub const UNCAPPED_RESOURCES: usize = 65_536;

/// How the node divides its descriptors between itself and its jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Descriptors each running job gets by default.
    pub per_job: usize,
    /// The most a job may be configured to hold: its equal share of what the reserve
    /// leaves (at least [`MIN_PER_JOB`]).
    pub share: usize,
    /// Descriptors kept for the node itself.
    pub reserve: u64,
    /// Whether the limit was too small to give `max_running` jobs [`MIN_PER_JOB`] each
    /// beside the reserve (the node should get a higher `RLIMIT_NOFILE`).
    pub squeezed: bool,
}

/// The per-job descriptor cap for a node whose descriptor limit is `nofile` running up to
/// `max_running` jobs: the reserve (an eighth, at least [`MIN_NODE_RESERVE`]) off the top,
/// the rest shared equally, at most [`MAX_DEFAULT_PER_JOB`] and at least [`MIN_PER_JOB`].
pub fn per_job_budget(nofile: u64, max_running: usize) -> Budget {
    let reserve = (nofile / NODE_RESERVE_DIVISOR).max(MIN_NODE_RESERVE);
    let jobs = u64::try_from(max_running.max(1)).unwrap_or(u64::MAX);
    let share = nofile.saturating_sub(reserve) / jobs;
    let share = usize::try_from(share).unwrap_or(usize::MAX);
    Budget {
        per_job: share.clamp(MIN_PER_JOB, MAX_DEFAULT_PER_JOB),
        share: share.max(MIN_PER_JOB),
        reserve,
        squeezed: share < MIN_PER_JOB,
    }
}

/// The resource-table entries a job may hold, given its descriptor cap.
pub fn resource_cap(descriptors: Option<usize>) -> usize {
    descriptors.map_or(UNCAPPED_RESOURCES, |d| {
        d.saturating_mul(RESOURCES_PER_DESCRIPTOR)
            .max(MIN_RESOURCES)
    })
}

/// This process's soft `RLIMIT_NOFILE`; `None` if it cannot be read.
pub fn nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into `limit`, which lives for the call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

/// A guest asked for more descriptors than its job may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many open files: the job holds {held} host descriptors and may hold {cap}")]
pub struct FdLimit {
    /// The job's cap.
    pub cap: usize,
    /// What it holds now.
    pub held: usize,
}

/// The host descriptors one job holds, against its cap.
#[derive(Debug)]
pub struct FdLedger {
    /// `None`: counted but never refused.
    cap: Option<usize>,
    /// Files and directories the guest opened; dead once every handle and stream is gone.
    files: Vec<Weak<std::fs::File>>,
    /// One per child; dead once the child and every stream taken from it are gone.
    children: Vec<Weak<()>>,
    /// The first refusal, for the unit's detail.
    refused: Option<FdLimit>,
    /// Whether the job ever started a child.
    spawned: bool,
}

impl FdLedger {
    /// An empty ledger for a job capped at `cap` descriptors.
    pub fn new(cap: Option<usize>) -> Self {
        Self {
            cap,
            files: Vec::new(),
            children: Vec::new(),
            refused: None,
            spawned: false,
        }
    }

    /// Descriptors the job holds now, its baseline included.
    pub fn held(&mut self) -> usize {
        self.files.retain(|f| f.strong_count() > 0);
        self.children.retain(|c| c.strong_count() > 0);
        JOB_BASELINE + self.files.len() + CHILD_DESCRIPTORS * self.children.len()
    }

    /// Whether the job may open `more` descriptors.
    ///
    /// # Errors
    /// [`FdLimit`] when that would take it past its cap (remembered for the detail).
    pub fn check(&mut self, more: usize) -> Result<(), FdLimit> {
        let Some(cap) = self.cap else {
            return Ok(());
        };
        let held = self.held();
        if held.saturating_add(more) <= cap {
            return Ok(());
        }
        let refusal = FdLimit { cap, held };
        self.refused.get_or_insert(refusal);
        Err(refusal)
    }

    /// Counts a file or directory the guest opened until its last handle is gone.
    pub fn track_file(&mut self, file: &Arc<std::fs::File>) {
        // Drop the dead before the list would grow: amortised O(1), and bounded by what is
        // alive even when nothing is ever refused.
        if self.files.len() == self.files.capacity() {
            self.files.retain(|f| f.strong_count() > 0);
        }
        self.files.push(Arc::downgrade(file));
    }

    /// Counts a child's descriptors until the child and everything holding its token are
    /// gone.
    pub fn track_child(&mut self) -> FdToken {
        self.spawned = true;
        if self.children.len() == self.children.capacity() {
            self.children.retain(|c| c.strong_count() > 0);
        }
        let token = Arc::new(());
        self.children.push(Arc::downgrade(&token));
        FdToken { _alive: token }
    }

    /// Whether the job ever started a child (whose writes only a measurement sees).
    pub fn has_spawned(&self) -> bool {
        self.spawned
    }

    /// The first refusal, if the job was ever refused a descriptor.
    pub fn refused(&self) -> Option<FdLimit> {
        self.refused
    }
}

/// Keeps a child's descriptors counted while held; clones share one count.
#[derive(Debug, Clone)]
pub struct FdToken {
    _alive: Arc<()>,
}

/// A pipe end that keeps its child's [`FdToken`] alive.
#[derive(Debug)]
pub struct Held<T> {
    inner: T,
    _token: FdToken,
}

impl<T> Held<T> {
    /// `inner`, counted under `token`.
    pub fn new(inner: T, token: FdToken) -> Self {
        Self {
            inner,
            _token: token,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Held<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Held<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_keeps_a_reserve_and_shares_the_rest() {
        // The node: 20,000 descriptors, 4 jobs: capped at the default maximum.
        let b = per_job_budget(20_000, 4);
        assert_eq!(b.reserve, 2_500);
        assert_eq!(b.per_job, MAX_DEFAULT_PER_JOB);
        assert_eq!(b.share, 4_375);
        assert!(!b.squeezed);
        // A common soft limit: 1024 descriptors, 4 jobs: 256 kept, 192 each.
        let b = per_job_budget(1_024, 4);
        assert_eq!((b.reserve, b.per_job), (256, 192));
        assert!(4 * b.per_job as u64 + b.reserve <= 1_024);
        // Many jobs on a small limit: each still gets the minimum, and the node says so.
        let b = per_job_budget(1_024, 100);
        assert_eq!(b.per_job, MIN_PER_JOB);
        assert!(b.squeezed);
        // Degenerate inputs do not panic.
        assert_eq!(per_job_budget(0, 0).per_job, MIN_PER_JOB);
        assert_eq!(per_job_budget(u64::MAX, 1).per_job, MAX_DEFAULT_PER_JOB);
    }

    #[test]
    fn every_job_fits_beside_the_reserve_whenever_the_limit_allows() {
        for nofile in [512u64, 1_024, 4_096, 20_000, 65_536, 1 << 20] {
            for running in [1usize, 2, 4, 16, 64] {
                let b = per_job_budget(nofile, running);
                if !b.squeezed {
                    let used = b.per_job as u64 * running as u64 + b.reserve;
                    assert!(used <= nofile, "{nofile} {running}: {b:?}");
                }
            }
        }
    }

    #[test]
    fn resource_cap_scales_with_descriptors() {
        assert_eq!(resource_cap(Some(1024)), 4096);
        assert_eq!(resource_cap(Some(16)), MIN_RESOURCES);
        assert_eq!(resource_cap(None), UNCAPPED_RESOURCES);
    }

    #[test]
    fn ledger_counts_live_files_and_children_and_refuses_past_the_cap() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = FdLedger::new(Some(JOB_BASELINE + 2 + CHILD_DESCRIPTORS));
        assert_eq!(ledger.held(), JOB_BASELINE);
        let a = Arc::new(std::fs::File::open(dir.path()).unwrap());
        let b = Arc::new(std::fs::File::open(dir.path()).unwrap());
        ledger.track_file(&a);
        ledger.track_file(&b);
        let token = ledger.track_child();
        assert_eq!(ledger.check(0), Ok(()));
        let refusal = ledger.check(1).unwrap_err();
        assert_eq!(refusal.held, JOB_BASELINE + 2 + CHILD_DESCRIPTORS);
        assert!(refusal.to_string().contains("too many open files"));
        // A stream still holding a file keeps it counted.
        let stream = a.clone();
        drop(a);
        assert!(ledger.check(1).is_err());
        drop(stream);
        assert_eq!(ledger.check(1), Ok(()));
        // A child stays counted while a pipe holds its token.
        let pipe = Held::new(tokio::io::empty(), token.clone());
        drop(token);
        assert_eq!(ledger.held(), JOB_BASELINE + 1 + CHILD_DESCRIPTORS);
        drop(pipe);
        assert_eq!(ledger.held(), JOB_BASELINE + 1);
        assert_eq!(ledger.refused().map(|r| r.cap), Some(9));
        drop(b);
    }

    #[test]
    fn an_uncapped_ledger_never_refuses() {
        let mut ledger = FdLedger::new(None);
        let tokens: Vec<FdToken> = (0..1000).map(|_| ledger.track_child()).collect();
        assert_eq!(ledger.check(1_000_000), Ok(()));
        assert_eq!(ledger.refused(), None);
        drop(tokens);
    }

    #[test]
    fn an_uncapped_ledger_forgets_closed_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = FdLedger::new(None);
        for _ in 0..10_000 {
            let file = Arc::new(std::fs::File::open(dir.path()).unwrap());
            ledger.track_file(&file);
        }
        assert!(ledger.files.len() < 100, "{}", ledger.files.len());
    }

    #[test]
    fn reads_this_process_descriptor_limit() {
        assert!(nofile_limit().is_some_and(|n| n > 0));
    }
}
