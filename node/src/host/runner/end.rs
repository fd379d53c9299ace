//! How a job ends: what may stop it besides its handler (its deadline, a cancel and its
//! grace period, its disk), the call of the handler under those limits, and how a trap, a
//! limit broken by its programs or a refused descriptor reads in the unit's [`Outcome`].

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use wasmtime::Store;

use super::super::bindings::warren::worker::types::Outcome as WitOutcome;
use super::super::contain::Breach;
use super::super::fds::FdLimit;
use super::super::quota::{self, DiskLedger, DiskStop};
use super::super::state::JobState;
use super::{Handler, Job, Outcome};

/// How long a job's end waits for its uid's processes to be killed and the uid given back
/// (`[work] job-users`): the kill's own bound plus time for the job's last watcher to see
/// its program's end.
const UID_RETURN_WAIT: Duration = Duration::from_secs(15);

/// Waits (at most [`UID_RETURN_WAIT`]) until every process of the job's uid has been killed
/// and the uid is back in the pool, so that a unit recorded as ended has nothing left
/// running, whatever escaped its containment.
pub(super) async fn wait_uid_returned(mut returned: watch::Receiver<bool>) {
    let back = returned.wait_for(|back| *back);
    if tokio::time::timeout(UID_RETURN_WAIT, back).await.is_err() {
        tracing::warn!("a job's uid was not given back within {UID_RETURN_WAIT:?} of its end");
    }
}

/// What may stop a job besides its deadline: a cancel, and its disk.
pub(super) struct Stops {
    pub(super) cancelled: watch::Receiver<bool>,
    /// `None` when the job's disk is not watched.
    pub(super) disk: Option<Arc<DiskLedger>>,
}

/// Watches the job's directory (once the job has a child: the guest's own writes are
/// charged as they happen) and resolves with the reason once the job must stop; never
/// without a quota. Part of the job's own task, so a job without children pays nothing.
pub(in crate::host) async fn disk_stopped(disk: Option<Arc<DiskLedger>>) -> DiskStop {
    let Some(disk) = disk else {
        return std::future::pending().await;
    };
    let mut stop = disk.subscribe();
    tokio::select! {
        () = quota::watch(disk.clone()) => {}
        _ = stop.wait_for(Option::is_some) => {}
    }
    match disk.stopped() {
        Some(stop) => stop,
        None => std::future::pending().await,
    }
}

/// Removes what a job that failed for its disk left in its directory: it holds nothing
/// anyone reads (results are separate), and keeping it would keep the disk full until
/// release.
pub(in crate::host) async fn free_job_dir(job_dir: &Path, unit: &str, stop: &DiskStop) {
    let dir = job_dir.to_owned();
    let removed = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&dir)).await;
    match removed {
        Ok(Ok(())) => {
            tracing::warn!(%unit, reason = %stop, "job failed for its disk; its directory was removed")
        }
        Ok(Err(e)) => {
            tracing::error!(%unit, reason = %stop, error = %e, "job failed for its disk; its directory could not be removed")
        }
        Err(e) => tracing::error!(%unit, error = %e, "removing a job directory failed"),
    }
}

/// A failed job that was refused a descriptor says so in its detail.
pub(super) fn with_fd_note(outcome: Outcome, refusal: Option<FdLimit>) -> Outcome {
    match (outcome, refusal) {
        (Outcome::Failed { detail, exit_code }, Some(limit)) => Outcome::Failed {
            detail: format!(
                "{detail} (the job reached its limit of {} open host descriptors)",
                limit.cap
            ),
            exit_code,
        },
        (outcome, _) => outcome,
    }
}

/// A job whose programs broke a limit failed, whatever the handler made of their end; the
/// detail names the limit first. A cancelled job stays cancelled.
pub(super) fn with_breach(outcome: Outcome, breach: Option<Breach>) -> Outcome {
    let Some(breach) = breach else {
        return outcome;
    };
    match outcome {
        Outcome::Succeeded => Outcome::failed(breach.to_string()),
        Outcome::Failed { detail, exit_code } => Outcome::Failed {
            detail: format!("{breach}; {detail}"),
            exit_code,
        },
        canceled @ Outcome::Canceled { .. } => canceled,
    }
}

pub(super) async fn call_with_limits(
    store: &mut Store<JobState>,
    handler: &Handler,
    job: &Job,
    limits: &super::super::policy::Limits,
    stops: Stops,
) -> Outcome {
    let Stops {
        mut cancelled,
        disk,
    } = stops;
    let wit_job = super::super::world::job(job);
    let call = async {
        let instance = handler.pre.instantiate_async(&mut *store).await?;
        instance
            .warren_worker_handler()
            .call_handle(&mut *store, &wit_job)
            .await
    };
    let grace = limits.cancel_grace;
    let cancel_expired = async {
        let _ = cancelled.wait_for(|c| *c).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = call => match result {
            Ok(outcome) => outcome.into(),
            Err(e) => trap_outcome(&e, limits),
        },
        () = tokio::time::sleep(limits.deadline) => {
            Outcome::failed(format!("job deadline of {:?} exceeded", limits.deadline))
        }
        () = cancel_expired => Outcome::Canceled {
            detail: format!("handler did not finish within {grace:?} of the cancel; stopped"),
        },
        stop = disk_stopped(disk) => Outcome::failed(stop.to_string()),
    }
}

fn trap_outcome(e: &wasmtime::Error, limits: &super::super::policy::Limits) -> Outcome {
    let text = format!("{e:#}");
    if text.contains("deadline exceeded") {
        return Outcome::failed(format!("job deadline of {:?} exceeded", limits.deadline));
    }
    if text.contains("forcing trap when growing memory")
        || text.contains("memory") && text.contains("limit")
    {
        return Outcome::failed(format!(
            "handler exceeded its memory limit of {} bytes",
            limits.memory_bytes
        ));
    }
    if text.contains("resource table has no free keys") {
        return Outcome::failed(format!(
            "handler exceeded its limit of {} open resources (handles, streams, pollables)",
            super::super::fds::resource_cap(limits.descriptors)
        ));
    }
    Outcome::failed(format!("handler trapped: {text}"))
}

impl From<WitOutcome> for Outcome {
    fn from(outcome: WitOutcome) -> Self {
        match outcome {
            WitOutcome::Succeeded => Self::Succeeded,
            WitOutcome::Failed(f) => Self::Failed {
                detail: f.detail,
                exit_code: f.exit_code,
            },
            WitOutcome::Canceled(f) => Self::Canceled { detail: f.detail },
        }
    }
}
