//! A unit's detached job taken over by a restarted node, as the host finishes it: what this
//! node adds to [`detached::reattach`] so that a re-attached job is held to what a job this
//! process started is held to. It owns three things:
//! - the node's containment, which decides whether a dropped wait kills the job;
//! - the work type's disk quota and the node's free-space floor, watched on the job
//!   directory while the job runs and checked once more at its end, stopping it with the
//!   same reason text as a job this process started;
//! - when the job really started (its supervisor's start time in the job record), so that
//!   the unit's duration counts from there and not from the restart.
//!
//! The quota is the one the work type has in the restarted node's configuration (the job
//! record does not keep it), known once the node offers the work type again: ansible-runner
//! is offered only after it was probed, a moment after the re-attach. A work type no
//! longer offered leaves the job unwatched.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::contain::UnitFiles;
use super::contain::detached::{self, DetachedJob, Reattach};
use super::contain::record::{self, ProcessRef};
use super::disk::DiskQuota;
use super::quota::DiskLedger;
use super::runner::{Host, Outcome, disk_stopped, free_job_dir};

impl Host {
    /// Finds the detached job of a unit that was running when the node stopped; see
    /// [`detached::reattach`]. Call it once per such unit at startup, before new jobs start.
    /// A job found running is killed with its containment if its wait is dropped before
    /// it ended, unless this host's containment leaves detached jobs running.
    pub fn reattach(&self, files: UnitFiles) -> Reattach {
        match detached::reattach(files) {
            Reattach::Running(job) => {
                Reattach::Running(Box::new((*job).with_containment(self.containment.clone())))
            }
            other => other,
        }
    }

    /// Finishes a job that [`Host::reattach`] found running, as [`Host::run`] finishes one
    /// it started: [`DetachedJob::finish`] (deadline, cancel, output cap, cgroup limits),
    /// and, once `quota` resolves to a quota, the job directory `job_dir` watched against it
    /// and the node's free-space floor. A job over its quota is killed with its
    /// containment, its directory is removed, and it fails with the quota's reason.
    pub async fn finish_reattached(
        &self,
        job: DetachedJob,
        job_dir: PathBuf,
        quota: impl Future<Output = Option<DiskQuota>>,
        cancelled: watch::Receiver<bool>,
    ) -> Outcome {
        let unit = job.record().unit.clone();
        let ledger = OnceLock::new();
        let watched = async {
            let Some(quota) = quota.await else {
                return std::future::pending().await;
            };
            let disk = ledger
                .get_or_init(|| DiskLedger::new(job_dir.clone(), quota, self.free_space_floor));
            // The job's programs run already: only measuring sees what they write.
            disk.child_started();
            disk_stopped(Some(disk.clone())).await
        };
        let outcome = tokio::select! {
            outcome = job.finish(cancelled) => outcome,
            // Dropping the wait kills the job's whole containment.
            stop = watched => Outcome::failed(stop.to_string()),
        };
        let disk = ledger.get();
        // The program may have written past the quota since the watcher last looked.
        if let Some(disk) = disk.filter(|d| !d.is_stopped()) {
            let _ = disk.rescan().await;
        }
        if let Some(stop) = disk.and_then(|d| d.verdict()) {
            free_job_dir(&job_dir, &unit, &stop).await;
            return Outcome::failed(stop.to_string());
        }
        outcome
    }
}

/// When the detached job of the unit whose directory is `unit_dir` started, by the wall
/// clock: its supervisor's start time in the job record. `None` without a record, a
/// supervisor, or from another boot. Reads a small file: call it off the async workers.
pub fn job_started(unit_dir: &Path) -> Option<SystemTime> {
    let dir = unit_dir.join(record::DETACHED_DIR);
    let record = record::read_job_log(&dir).ok()??.record;
    if record.boot_id != record::boot_id() {
        return None;
    }
    started_at(record.supervisor?)
}

/// How long a re-attached unit's job took, for the duration histogram: from `started`
/// ([`job_started`]) to `ended` (the end its supervisor recorded; `None` while it was found
/// running: now), as of `now`.
///
/// Both come from the job log, which the job can rewrite. The start is read through `/proc`
/// and lies in this boot, before now (`started_at`); the end is clamped to `now`. So a
/// sample is at most the node's uptime, however the log was forged. An end before the start
/// cannot both be true: then there is no sample (`None`), rather than a guess.
pub fn job_duration(
    started: Option<SystemTime>,
    ended: Option<SystemTime>,
    now: SystemTime,
) -> Option<Duration> {
    let ended = ended.map_or(now, |ended| ended.min(now));
    ended.duration_since(started?).ok()
}

/// The wall-clock time `process` (of this boot) started: its start time is clock ticks
/// after boot, on the clock that counts suspended time too.
fn started_at(process: ProcessRef) -> Option<SystemTime> {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec this function owns.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) } != 0 {
        return None;
    }
    let since_boot = Duration::new(
        u64::try_from(now.tv_sec).ok()?,
        u32::try_from(now.tv_nsec).ok()?,
    );
    let ticks = u64::try_from(ticks).ok()?;
    start_of(process.start_time, ticks, since_boot, SystemTime::now())
}

/// When something that started `start_ticks` clock ticks (`ticks_per_second`) after boot
/// started, when it is `now` and `since_boot` after boot.
fn start_of(
    start_ticks: u64,
    ticks_per_second: u64,
    since_boot: Duration,
    now: SystemTime,
) -> Option<SystemTime> {
    let millis = start_ticks
        .checked_mul(1000)?
        .checked_div(ticks_per_second)?;
    now.checked_sub(since_boot.checked_sub(Duration::from_millis(millis))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::contain::record::JobRecord;

    #[test]
    fn a_start_in_ticks_after_boot_is_the_time_that_long_before_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let boot = Duration::from_secs(500);
        let start = start_of(12_345, 100, boot, now).unwrap();
        assert_eq!(
            now.duration_since(start).unwrap(),
            Duration::from_millis(500_000 - 123_450)
        );
        assert_eq!(start_of(1, 0, boot, now), None, "no tick rate");
        assert_eq!(start_of(60_000, 100, boot, now), None, "after now");
        assert_eq!(start_of(u64::MAX, 100, boot, now), None);
    }

    /// The end comes from the job log, which the job can rewrite: `ended_at_ms` near
    /// `u64::MAX` made one sample about 5.8e8 years and spoiled the histogram's sum for
    /// good. The end is clamped to now, so a sample is at most the time since the job's
    /// start (which is after this boot's start: at most the uptime); an end before the start
    /// is not believed and the sample is dropped.
    #[test]
    fn a_job_logs_end_in_the_future_counts_no_later_than_now_and_one_before_the_start_not_at_all() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let started = Some(now - Duration::from_secs(300));
        let forged = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::MAX);
        assert_eq!(
            job_duration(started, Some(forged), now),
            Some(Duration::from_secs(300))
        );
        let real = now - Duration::from_secs(100);
        assert_eq!(
            job_duration(started, Some(real), now),
            Some(Duration::from_secs(200))
        );
        assert_eq!(
            job_duration(started, None, now),
            Some(Duration::from_secs(300))
        );
        let before = now - Duration::from_secs(400);
        assert_eq!(job_duration(started, Some(before), now), None);
        assert_eq!(job_duration(None, Some(real), now), None);
    }

    #[test]
    fn this_process_started_in_the_last_hour() {
        let me = ProcessRef::of(std::process::id() as i32).expect("own stat");
        let started = started_at(me).expect("own start time");
        let ago = SystemTime::now()
            .duration_since(started)
            .expect("in the past");
        assert!(ago < Duration::from_secs(3600), "{ago:?}");
    }

    #[test]
    fn a_record_from_another_boot_or_without_a_supervisor_has_no_start() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(job_started(dir.path()), None, "no record");
        let (detached, _) = record::detached_dir(dir.path()).unwrap();
        let me = ProcessRef::of(std::process::id() as i32).unwrap();
        let mut job = JobRecord {
            unit: "u".into(),
            label: "ansible-runner worker".into(),
            boot_id: record::boot_id(),
            supervisor: Some(me),
            program: None,
            containment: String::new(),
            cgroups: Vec::new(),
            limits: super::super::contain::ProgramLimits::default(),
            deadline_ms: 0,
            deadline_ms_total: 0,
            cancel_grace_ms: 0,
            output_bytes: 0,
            job_user: None,
        };
        record::create_job_log(&detached, &job).unwrap();
        let started = job_started(dir.path()).expect("a start from this boot's record");
        let ago = SystemTime::now().duration_since(started).unwrap();
        assert!(ago < Duration::from_secs(3600), "{ago:?}");
        job.boot_id = "another boot".into();
        record::create_job_log(&detached, &job).unwrap();
        assert_eq!(job_started(dir.path()), None);
        job.boot_id = record::boot_id();
        job.supervisor = None;
        record::create_job_log(&detached, &job).unwrap();
        assert_eq!(job_started(dir.path()), None);
    }
}
