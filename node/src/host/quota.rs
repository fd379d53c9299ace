//! One job's disk quota while it runs: a [`DiskLedger`] of what the job directory holds,
//! and [`watch()`], which re-measures the directory while the job runs.
//!
//! Two writers fill a job directory. The guest writes through WASI, and the host charges
//! each of its writes and creates before doing them ([`DiskLedger::admit`]): a write past
//! the quota is refused with an error value (nothing was written, so the guest may go on;
//! its job fails when it ends). The programs the guest spawns (ansible-runner unpacking the private data dir, playbooks writing artifacts)
//! write with their own system calls, so [`watch()`] measures the directory again and again,
//! sooner the nearer the job is to its quota, and stops the job once it is over.
//!
//! Why measuring rather than a kernel quota: a per-job tmpfs or loop-mounted file system
//! has a real quota but needs `CAP_SYS_ADMIN` (the node runs as an unprivileged user) and,
//! for tmpfs, holds the job's files in memory; project quotas need both privilege and a
//! file system mounted for them; `RLIMIT_FSIZE` bounds one file, not a directory. On the
//! 2-core development machine (root), a tmpfs `mount(2)` + `umount(2)` took 57 µs median
//! (3 ms at p90) beside an 85-99 µs job start, and a loop-mounted ext4 40-170 ms to set up
//! and 120 ms to remove. A measurement costs 1.6-5 µs per entry
//! (`cargo bench -p warren --bench host -- quota`) and runs off the async threads; how far
//! a program gets past the quota before it is stopped is its write rate times
//! [`MIN_SCAN_INTERVAL`] plus one measurement, while it writes no faster than
//! [`ASSUMED_WRITE_RATE`] (measured: 1-32 MiB past a 64 MiB quota at 0.4-1 GB/s).
//!
//! The node's free-space floor is watched too: a job whose directory grows while the file
//! system is below the floor is stopped, so that jobs that each keep their quota cannot
//! together take the space the node keeps for results and status.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::disk::{self, BelowFloor, DiskQuota, Usage};

/// The soonest the watcher measures again: bounds how far past its quota a program writing
/// flat out gets (about 20 MB at 1 GB/s).
pub const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(20);

/// The longest the watcher waits between measurements, however far from its quota a job
/// is.
pub const MAX_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// The write rate the watcher plans for when it decides how long a job's headroom lasts:
/// above what one process sustains into the page cache on the machines measured.
pub const ASSUMED_WRITE_RATE: u64 = 2 << 30;

/// Measurements take at most this share of the watcher's time (1/N): a directory that
/// takes 50 ms to measure is measured at most every 500 ms.
pub const SCAN_DUTY_DIVISOR: u32 = 10;

/// Why a job was stopped for disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskStop {
    /// The job directory holds more than its quota allows.
    Quota {
        /// The quota.
        quota: DiskQuota,
        /// What the directory held (or would have held, for a refused guest write).
        usage: Usage,
    },
    /// The job directory could not be measured (unreadable, nested too deep).
    Unmeasurable {
        /// Why.
        reason: String,
    },
    /// The node's file system fell below its floor while the job wrote.
    Floor(BelowFloor),
}

impl fmt::Display for DiskStop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Quota { quota, usage } => write!(
                f,
                "job directory exceeded its disk quota ({} bytes in {} files and directories; \
                 the quota is {} bytes and {} inodes)",
                usage.bytes, usage.inodes, quota.bytes, quota.inodes
            ),
            Self::Unmeasurable { reason } => write!(
                f,
                "job directory could not be measured against its disk quota ({reason})"
            ),
            Self::Floor(below) => write!(
                f,
                "stopped while writing: the node's file system has {below}, kept for results \
                 and status"
            ),
        }
    }
}

/// What one job directory holds, against its quota. Shared by the job's store (guest
/// writes), its file streams and its watcher.
#[derive(Debug)]
pub struct DiskLedger {
    dir: PathBuf,
    quota: DiskQuota,
    /// The node's free-space floor in bytes; 0 is not checked.
    floor: u64,
    /// The last measurement plus what the guest was allowed to write since.
    bytes: AtomicU64,
    inodes: AtomicU64,
    /// Whether the directory was measured yet: the guest's first write measures it, so
    /// the estimate starts from what is really there.
    measured: std::sync::atomic::AtomicBool,
    /// Serialises measurements.
    scan: tokio::sync::Mutex<()>,
    /// Set once, when the job must stop at once (the directory is over its quota).
    stop: watch::Sender<Option<DiskStop>>,
    /// The first guest write refused for the quota: the job fails when it ends.
    refused: std::sync::Mutex<Option<DiskStop>>,
    /// Turns true when the job starts its first child: only then is there anything to
    /// watch.
    children: watch::Sender<bool>,
}

impl DiskLedger {
    /// A ledger for `dir`, measured when first needed.
    pub fn new(dir: PathBuf, quota: DiskQuota, floor: u64) -> Arc<Self> {
        Arc::new(Self {
            dir,
            quota,
            floor,
            bytes: AtomicU64::new(0),
            inodes: AtomicU64::new(0),
            measured: std::sync::atomic::AtomicBool::new(false),
            scan: tokio::sync::Mutex::new(()),
            stop: watch::channel(None).0,
            refused: std::sync::Mutex::new(None),
            children: watch::channel(false).0,
        })
    }

    /// The quota.
    pub fn quota(&self) -> DiskQuota {
        self.quota
    }

    fn estimate(&self) -> Usage {
        Usage {
            bytes: self.bytes.load(Ordering::Relaxed),
            inodes: self.inodes.load(Ordering::Relaxed),
        }
    }

    /// Adds `more` to the estimate if that stays within the quota.
    pub fn try_charge(&self, more: Usage) -> bool {
        let bytes = self.bytes.fetch_add(more.bytes, Ordering::Relaxed);
        let inodes = self.inodes.fetch_add(more.inodes, Ordering::Relaxed);
        let after = Usage { bytes, inodes }.plus(more);
        if after.exceeds(self.quota) {
            self.bytes.fetch_sub(more.bytes, Ordering::Relaxed);
            self.inodes.fetch_sub(more.inodes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Whether the directory has been measured at least once.
    pub fn is_measured(&self) -> bool {
        self.measured.load(Ordering::Relaxed)
    }

    /// Bytes the guest may still write by the current estimate.
    pub fn room_bytes(&self) -> u64 {
        self.quota
            .bytes
            .saturating_sub(self.bytes.load(Ordering::Relaxed))
    }

    /// Charges a guest write or create of `more`; when the estimate says no, measures the
    /// directory (the guest may have deleted or overwritten) and tries again. A write that
    /// still does not fit is refused, and fails the job when it ends.
    pub async fn admit(&self, more: Usage) -> bool {
        if self.is_stopped() || (!self.is_measured() && self.rescan().await.is_err()) {
            return false;
        }
        if self.try_charge(more) {
            return true;
        }
        if self.rescan().await.is_ok() && self.try_charge(more) {
            return true;
        }
        self.refuse(more);
        false
    }

    /// Records a guest write of `more` refused for the quota (the first one is the reason
    /// the job fails).
    pub fn refuse(&self, more: Usage) {
        let usage = self.estimate().plus(more);
        let refusal = DiskStop::Quota {
            quota: self.quota,
            usage,
        };
        if let Ok(mut first) = self.refused.lock() {
            first.get_or_insert(refusal);
        }
    }

    /// Why the job fails for its disk, if it does: a stop, else a refused guest write.
    pub fn verdict(&self) -> Option<DiskStop> {
        let refused = self.refused.lock().ok().and_then(|r| r.clone());
        self.stopped().or(refused)
    }

    /// Measures the directory and replaces the estimate; stops the job when it is over its
    /// quota, cannot be measured, or grew while the file system is below the floor.
    ///
    /// # Errors
    /// The [`DiskStop`] that stopped the job.
    pub async fn rescan(&self) -> Result<Usage, DiskStop> {
        let _one_at_a_time = self.scan.lock().await;
        let before = self.estimate();
        let (dir, quota, floor) = (self.dir.clone(), self.quota, self.floor);
        let measured = tokio::task::spawn_blocking(move || {
            let usage = disk::measure(&dir, Some(quota))?;
            let space = (floor > 0).then(|| disk::space(&dir)).transpose();
            Ok::<_, disk::ScanError>((usage, space.ok().flatten()))
        })
        .await;
        let (usage, space) = match measured {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => return Err(self.stop(unmeasurable(e.to_string()))),
            Err(e) => return Err(self.stop(unmeasurable(e.to_string()))),
        };
        self.bytes.store(usage.bytes, Ordering::Relaxed);
        self.inodes.store(usage.inodes, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
        if usage.exceeds(quota) {
            return Err(self.stop(DiskStop::Quota { quota, usage }));
        }
        let grew = usage.bytes > before.bytes || usage.inodes > before.inodes;
        if let Some(space) = space
            && grew
            && let Err(below) = disk::check_floor(space, floor)
        {
            return Err(self.stop(DiskStop::Floor(below)));
        }
        Ok(usage)
    }

    /// Records why the job must stop at once (the first reason wins) and returns it.
    pub fn stop(&self, why: DiskStop) -> DiskStop {
        self.stop.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(why.clone());
                true
            } else {
                false
            }
        });
        self.stopped().unwrap_or(why)
    }

    /// Why the job must stop at once, once it must.
    pub fn stopped(&self) -> Option<DiskStop> {
        self.stop.borrow().clone()
    }

    /// Whether the job must stop at once.
    pub fn is_stopped(&self) -> bool {
        self.stop.borrow().is_some()
    }

    /// Resolves once the job must stop.
    pub fn subscribe(&self) -> watch::Receiver<Option<DiskStop>> {
        self.stop.subscribe()
    }

    /// Notes that the job started a program, whose writes only a measurement sees.
    pub fn child_started(&self) {
        self.children
            .send_if_modified(|started| !std::mem::replace(started, true));
    }
}

fn unmeasurable(reason: String) -> DiskStop {
    DiskStop::Unmeasurable { reason }
}

/// Measures the job directory from the job's first child on, until the job must stop (or
/// the future is dropped when the job ends). A job directory starts empty and the guest's
/// own writes are charged, so nothing is measured before a child exists, and the first
/// measurement comes [`MIN_SCAN_INTERVAL`] after it starts.
pub async fn watch(ledger: Arc<DiskLedger>) {
    let mut children = ledger.children.subscribe();
    if children.wait_for(|started| *started).await.is_err() {
        return;
    }
    tokio::time::sleep(MIN_SCAN_INTERVAL).await;
    loop {
        let started = Instant::now();
        let Ok(usage) = ledger.rescan().await else {
            return;
        };
        let wait = next_scan(ledger.quota(), usage, started.elapsed());
        tokio::time::sleep(wait).await;
    }
}

/// How long to wait before measuring again: the time the headroom lasts at
/// [`ASSUMED_WRITE_RATE`], within [`MIN_SCAN_INTERVAL`] and [`MAX_SCAN_INTERVAL`], and at
/// least [`SCAN_DUTY_DIVISOR`] times what the last measurement took.
pub fn next_scan(quota: DiskQuota, usage: Usage, took: Duration) -> Duration {
    let headroom = quota.bytes.saturating_sub(usage.bytes);
    let lasts = Duration::from_secs_f64(headroom as f64 / ASSUMED_WRITE_RATE as f64);
    let duty = took.saturating_mul(SCAN_DUTY_DIVISOR);
    lasts.clamp(MIN_SCAN_INTERVAL, MAX_SCAN_INTERVAL).max(duty)
}

#[cfg(test)]
mod tests;
