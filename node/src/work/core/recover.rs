//! What a restarted node does with the units its last run left: finished ones keep their
//! retention, queued ones queue again, running ones are re-attached (or failed), mirrors
//! resume following their remote unit from the output they already have.

use std::time::{Duration, Instant};

use super::{Action, Core, Phase};
use crate::work::status::UnitStatus;
use crate::work::store::{DETAIL_RESTARTED_PENDING, DETAIL_RESTARTED_RUNNING};
use crate::work::unit::{UnitId, UnitState};

impl Core {
    /// Takes over the units found on disk at start (`wall_ms`: the wall clock now).
    pub fn recover(&mut self, now: Instant, wall_ms: u64, mut units: Vec<(UnitId, UnitStatus)>) {
        // Running units first: they hold their slots before anything queued may start.
        units.sort_by_key(|(id, s)| (s.state != UnitState::Running, *id));
        for (id, status) in units {
            let local = status.node == self.me;
            let phase = match (status.state, local) {
                (state, _) if state.is_terminal() => Phase::Done,
                (UnitState::Pending, true) if status.payload_size.is_some() => Phase::Queued,
                (UnitState::Running, true) => Phase::Running,
                // Submitted under a nonce but not known to have started: sent again under
                // it, it finds the remote unit if that has its payload, or replaces it.
                (UnitState::Pending, false)
                    if status.payload_size.is_some() && status.submit_nonce.is_some() =>
                {
                    Phase::Submitting
                }
                (_, false) if status.remote_unit_id.is_some() => Phase::Following,
                (UnitState::Pending, false) if status.payload_size.is_some() => Phase::Submitting,
                _ => Phase::AwaitingPayload,
            };
            let retention = retention_left(&status, wall_ms, self.config.keep_finished);
            let expires = status
                .expires_at
                .map(|at| now + Duration::from_millis(at.saturating_sub(wall_ms)));
            self.index_nonce(id, &status);
            self.insert(id, status, phase.clone());
            if let Some(entry) = self.units.get_mut(&id) {
                entry.expires = expires;
            }
            match phase {
                Phase::Done => {
                    let at = retention.map(|left| now + left);
                    self.set_timer(id, at);
                }
                Phase::Queued => self.queue.push_back(id),
                Phase::Running => {
                    // Re-attach to its job if it survived, else the driver reports it ended.
                    self.running += 1;
                    self.actions.push_back(Action::Reattach { id });
                }
                Phase::Following => self.resume_following(id),
                Phase::Submitting => {
                    tracing::info!(unit = %id, "submitting again after a restart, under the same nonce");
                    self.submit(now, id);
                }
                _ => {
                    let detail = if local {
                        DETAIL_RESTARTED_PENDING
                    } else {
                        "node restarted before the unit was submitted"
                    };
                    // Not `finish`: the phase is not one it leaves from; set it up directly.
                    if let Some(entry) = self.units.get_mut(&id) {
                        entry.phase = Phase::AwaitingPayload;
                    }
                    self.finish(now, id, UnitState::Failed, detail.to_owned());
                }
            }
        }
        self.start_queued();
    }

    fn resume_following(&mut self, id: UnitId) {
        let Some(entry) = self.units.get(&id) else {
            return;
        };
        let (node, Some(remote)) = (entry.status.node.clone(), entry.status.remote_unit_id) else {
            return;
        };
        tracing::info!(unit = %id, %node, %remote, "resuming a remote unit's output after a restart");
        self.actions.push_back(Action::Follow { id, node, remote });
    }
}

/// How much of its retention a finished unit has left.
fn retention_left(status: &UnitStatus, wall_ms: u64, keep: Option<Duration>) -> Option<Duration> {
    let keep = keep?;
    let age = Duration::from_millis(wall_ms.saturating_sub(status.updated_at));
    Some(keep.saturating_sub(age))
}

/// The detail of a running unit that could not be re-attached.
pub fn not_reattached() -> &'static str {
    DETAIL_RESTARTED_RUNNING
}
