//! Detached jobs after a restart of their node: [`reattach`] reads a unit's job record and
//! finds its supervisor again (or learns the job ended, or is gone), and
//! [`DetachedJob::finish`] waits for it with the remaining deadline and cancel enforced.
//!
//! The host finishes a re-attached unit alone, without the handler: a detached program's
//! outcome is a pure function of its exit status, whether it was cancelled, and any limit
//! it broke (`outcome`), and on cancel the host does what the handler would (SIGTERM to
//! the program, the grace period, then kill the containment). The label the handler
//! declared when it detached names the program in the detail, so the detail reads the same
//! as after an uninterrupted run.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch as tokio_watch;

use super::cgroup;
use super::record::{self, EndReason, ExitRecord, JobRecord, ProgramExit};
use super::supervised::pidfd_open;
use super::users::JobUser;
use super::watch::{self as watcher, BreachLog, Killer, SupervisorWait, Target, Watch};
use super::{Breach, Containment, ContainmentInfo, UnitFiles};
use crate::host::runner::Outcome;

/// Most bytes of a detached program's stderr copied to the node's log when it ends.
const STDERR_LOG_BYTES: u64 = 64 * 1024;

/// What [`reattach`] found for a unit that was running when its node stopped.
#[derive(Debug)]
pub enum Reattach {
    /// The job is still running: finish it with [`DetachedJob::finish`].
    Running(Box<DetachedJob>),
    /// The job ended while the node was away; this is its outcome.
    Ended {
        /// The unit's outcome.
        outcome: Outcome,
        /// What its supervisor recorded.
        exit: ExitRecord,
    },
    /// There is no job to re-attach: no record, no process and no recorded exit.
    Gone {
        /// Why, for the unit's detail.
        detail: String,
    },
}

/// A detached job found running by [`reattach`].
#[derive(Debug)]
pub struct DetachedJob {
    record: JobRecord,
    dir: PathBuf,
    wait: SupervisorWait,
    killer: Killer,
    files: UnitFiles,
    /// The node's containment, when known: whether a dropped wait leaves the job running
    /// (the node is stopping and will re-attach again).
    containment: Option<Arc<Containment>>,
    /// The job's uid (`[work] job-users`), held in the pool until the job has ended.
    user: Option<JobUser>,
}

/// Kills a re-attached job's whole containment when its wait is dropped before the job
/// ended (a release that did not wait, an aborted task), unless the node is stopping and
/// leaves detached jobs running: nothing of a unit outlives it here.
struct KillOnDrop {
    killer: Killer,
    containment: Option<Arc<Containment>>,
    armed: bool,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let leave = self
            .containment
            .as_ref()
            .is_some_and(|c| c.leaves_detached());
        if self.armed && !leave {
            tracing::info!("a re-attached job's wait was dropped; killing its containment");
            self.killer.kill();
            if let Some(cgroup) = &self.killer.cgroup {
                cgroup.remove();
            }
        }
    }
}

impl DetachedJob {
    /// The job's record.
    pub fn record(&self) -> &JobRecord {
        &self.record
    }

    /// Takes the node's containment into account when the wait is dropped (see
    /// [`Containment::leave_detached_running`]).
    #[must_use]
    pub fn with_containment(mut self, containment: Arc<Containment>) -> Self {
        if let (Some(users), Some(uid)) = (containment.job_users(), self.record.job_user) {
            self.user = users.claim(uid);
            if let Some(user) = &self.user {
                user.mark_detached();
            } else {
                tracing::warn!(unit = %self.record.unit, uid, range = %users.range(), "a re-attached job's uid is outside [work] job-users or held twice");
            }
        }
        self.containment = Some(containment);
        self
    }

    /// The uid the job runs as and holds in the pool, when it runs as a job user.
    pub fn job_user(&self) -> Option<u32> {
        self.user.as_ref().map(JobUser::uid)
    }

    /// Waits for the job to end and returns the unit's outcome. Enforces what is left of
    /// the deadline (kill, `Failed`), a cancel (SIGTERM to the program, then after the
    /// recorded grace period a kill of the containment, `Canceled`), the output cap and
    /// the cgroup limits; announces results growth through the unit files' `on_output`.
    /// Dropped before the job ended, it kills the job's containment (unless the node is
    /// stopping and leaves detached jobs running).
    pub async fn finish(self, mut cancelled: tokio_watch::Receiver<bool>) -> Outcome {
        let mut guard = KillOnDrop {
            killer: self.killer.clone(),
            containment: self.containment.clone(),
            armed: true,
        };
        let record = self.record;
        let breaches = BreachLog::default();
        let info = ContainmentInfo {
            kind: record.containment.clone(),
            cgroups: record.cgroups.clone(),
            limits: record.limits,
            supervised: true,
            detached: true,
            stopped: None,
        };
        let watch = Watch {
            killer: self.killer.clone(),
            limits: record.limits,
            breaches: breaches.clone(),
            info,
            files: Some(self.files),
            output_cap: Some(record.output_bytes),
        };
        let waiting = wait(self.wait, self.dir, watch, &record.unit);
        tokio::pin!(waiting);
        let left = Duration::from_millis(record.deadline_ms.saturating_sub(record::now_ms()));
        let deadline = tokio::time::sleep(left);
        tokio::pin!(deadline);
        let grace = Duration::from_millis(record.cancel_grace_ms);
        let (mut canceled, mut timed_out, mut grace_ends) = (false, false, None);
        // A dropped cancel sender means no cancel can come any more.
        let mut listening = true;
        let (status, reason) = loop {
            let grace_over = async {
                match grace_ends {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                ended = &mut waiting => break ended,
                () = &mut deadline, if !timed_out => {
                    timed_out = true;
                    self.killer.kill();
                }
                changed = cancelled.wait_for(|c| *c), if listening => {
                    listening = false;
                    if changed.is_ok() {
                        canceled = true;
                        self.killer.terminate();
                        grace_ends = Some(tokio::time::Instant::now() + grace);
                    }
                }
                () = grace_over => {
                    grace_ends = None;
                    self.killer.kill();
                }
            }
        };
        guard.armed = false;
        // The program has ended: its uid may go back to the pool.
        drop(self.user);
        let deadline_hit = timed_out || reason == EndReason::Deadline;
        outcome(&record, status, canceled, deadline_hit, breaches.get())
    }
}

/// Waits for a detached job's supervisor through [`watcher::detached`], then copies the
/// start of the program's stderr to the node's log (as the handler did with a piped
/// program's stderr).
pub(crate) async fn wait(
    wait: SupervisorWait,
    dir: PathBuf,
    watch: Watch,
    unit: &str,
) -> (ProgramExit, EndReason) {
    let ended = watcher::detached(wait, dir.clone(), watch).await;
    log_stderr(unit, &dir.join(record::STDERR_FILE));
    ended
}

fn log_stderr(unit: &str, path: &Path) {
    use std::io::Read as _;
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let mut text = String::new();
    let _ = file.take(STDERR_LOG_BYTES).read_to_string(&mut text);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        tracing::warn!(%unit, "{line}");
    }
}

/// The unit's outcome from how its detached program ended, worded as guest-runner words a
/// piped program's end (`<label> exited with code 2`), so a re-attached unit reads as an
/// uninterrupted one.
pub(crate) fn outcome(
    record: &JobRecord,
    status: ProgramExit,
    canceled: bool,
    deadline: bool,
    breach: Option<Breach>,
) -> Outcome {
    let label = &record.label;
    if deadline && !canceled {
        let limit = Duration::from_millis(record.deadline_ms_total);
        return Outcome::Failed {
            detail: format!("job deadline of {limit:?} exceeded"),
            exit_code: None,
        };
    }
    let (how, exit_code) = match status {
        ProgramExit::Exited(0) if !canceled && breach.is_none() => return Outcome::Succeeded,
        ProgramExit::Exited(code) => (format!("{label} exited with code {code}"), Some(code)),
        ProgramExit::Signaled(signal) => (format!("{label} was killed by signal {signal}"), None),
    };
    if canceled {
        return Outcome::Canceled {
            detail: format!("canceled; {how}"),
        };
    }
    let detail = match breach {
        Some(breach) => format!("{breach}; {how}"),
        None => how,
    };
    Outcome::Failed { detail, exit_code }
}

/// Finds the detached job of the unit whose files are `files` (call it at startup for each
/// unit that was `Running`). Never blocks for long: it reads two small files and `/proc`.
pub fn reattach(files: UnitFiles) -> Reattach {
    let dir = files.dir.join(record::DETACHED_DIR);
    let (record, exit) = match record::read_job_log(&dir) {
        Ok(Some(log)) => (log.record, log.exit),
        Ok(None) => {
            return Reattach::Gone {
                detail: "no detached job was recorded for this unit".into(),
            };
        }
        Err(e) => {
            return Reattach::Gone {
                detail: format!("the unit's job record is unreadable: {e}"),
            };
        }
    };
    // The unit's directory is named for it: a record naming another unit (a copy of that
    // unit's log) is not this unit's job.
    let unit = files
        .dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if record.unit != unit {
        return Reattach::Gone {
            detail: format!(
                "the unit's job record names another unit ({}): not adopted",
                crate::terminal::one_line(&record.unit.chars().take(64).collect::<String>())
            ),
        };
    }
    if let Some(exit) = exit {
        // The program ended; its supervisor may still be sweeping up. Finish that.
        cgroup::from_record(&record.cgroups, &unit).remove();
        let deadline = exit.reason == EndReason::Deadline;
        return Reattach::Ended {
            outcome: outcome(&record, exit.status, false, deadline, None),
            exit,
        };
    }
    let same_boot = record.boot_id == record::boot_id();
    let supervisor = record.supervisor.filter(|s| same_boot && s.is_alive());
    let Some(supervisor) = supervisor else {
        // Nothing runs the job any more: clean up whatever it left in its cgroups.
        cgroup::from_record(&record.cgroups, &unit).remove();
        return Reattach::Gone {
            detail: gone_detail(&record, same_boot),
        };
    };
    let pidfd = pidfd_open(supervisor.pid);
    // The pid could have been reused between the check and the open: check again, now that
    // the pidfd pins whichever process it is.
    if !supervisor.is_alive() {
        return reattach(files);
    }
    let pidfd = pidfd.map(Arc::<OwnedFd>::new);
    let cgroup =
        (!record.cgroups.is_empty()).then(|| Arc::new(cgroup::from_record(&record.cgroups, &unit)));
    let killer = Killer {
        cgroup,
        target: Target::Supervisor(supervisor, pidfd.clone()),
    };
    tracing::info!(unit = %record.unit, supervisor = supervisor.pid, "re-attached a detached job");
    Reattach::Running(Box::new(DetachedJob {
        wait: SupervisorWait {
            child: None,
            pidfd,
            process: supervisor,
        },
        killer,
        files,
        dir,
        record,
        containment: None,
        user: None,
    }))
}

fn gone_detail(record: &JobRecord, same_boot: bool) -> String {
    match (record.supervisor, same_boot) {
        (None, _) => "the node stopped before the job's program started".into(),
        (Some(_), false) => "the machine restarted while the job ran".into(),
        (Some(s), true) => format!(
            "the job's supervisor (pid {}) is gone without recording how {} ended",
            s.pid, record.label
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::contain::ProgramLimits;

    fn record() -> JobRecord {
        JobRecord {
            unit: "u".into(),
            label: "ansible-runner worker".into(),
            boot_id: String::new(),
            supervisor: None,
            program: None,
            containment: String::new(),
            cgroups: Vec::new(),
            limits: ProgramLimits::default(),
            deadline_ms: 0,
            deadline_ms_total: 21_600_000,
            cancel_grace_ms: 10_000,
            output_bytes: 1,
            job_user: None,
        }
    }

    #[test]
    fn a_record_naming_another_unit_is_not_adopted_and_its_process_left_alone() {
        // Found by this stop's review: a job could copy another unit's log (a regular file,
        // so the reader takes it) into its own unit's `detached/`: the node adopted that
        // job's supervisor and cgroups, and killed them on cancel or release.
        let units = tempfile::tempdir().unwrap();
        let mine = units.path().join("mine0001");
        std::fs::create_dir(&mine).unwrap();
        let (dir, _) = record::detached_dir(&mine).unwrap();
        let mut other = record();
        other.unit = "theirs01".into();
        other.boot_id = record::boot_id();
        other.supervisor = Some(record::ProcessRef::of(std::process::id() as i32).unwrap());
        record::create_job_log(&dir, &other).unwrap();
        let files = UnitFiles {
            dir: mine.clone(),
            payload: mine.join("stdin"),
            results: mine.join("stdout"),
            on_output: Arc::new(|| {}),
            on_extra_data: Arc::new(|_| {}),
        };
        let Reattach::Gone { detail } = reattach(files) else {
            panic!("another unit's job was adopted");
        };
        assert!(detail.contains("names another unit (theirs01)"), "{detail}");
    }

    /// The same words guest-runner's `child::outcome` tests expect.
    #[test]
    fn outcome_reads_as_the_guest_words_it() {
        let r = record();
        assert_eq!(
            outcome(&r, ProgramExit::Exited(0), false, false, None),
            Outcome::Succeeded
        );
        assert_eq!(
            outcome(&r, ProgramExit::Exited(2), false, false, None),
            Outcome::Failed {
                detail: "ansible-runner worker exited with code 2".into(),
                exit_code: Some(2)
            }
        );
        assert_eq!(
            outcome(&r, ProgramExit::Signaled(15), true, false, None),
            Outcome::Canceled {
                detail: "canceled; ansible-runner worker was killed by signal 15".into()
            }
        );
        assert_eq!(
            outcome(&r, ProgramExit::Exited(0), true, false, None),
            Outcome::Canceled {
                detail: "canceled; ansible-runner worker exited with code 0".into()
            }
        );
    }

    #[test]
    fn deadline_and_breaches_are_named() {
        let r = record();
        assert_eq!(
            outcome(&r, ProgramExit::Signaled(9), false, true, None),
            Outcome::Failed {
                detail: "job deadline of 21600s exceeded".into(),
                exit_code: None
            }
        );
        let Outcome::Failed { detail, .. } = outcome(
            &r,
            ProgramExit::Signaled(9),
            false,
            false,
            Some(Breach::Pids(64)),
        ) else {
            panic!("a breach fails the unit");
        };
        assert_eq!(
            detail,
            "stopped: the job's programs reached their limit of 64 processes; \
             ansible-runner worker was killed by signal 9"
        );
    }
}
