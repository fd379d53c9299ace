//! The core's requests and the outcomes of its actions: payloads, remote submission,
//! cancel and release.

use std::sync::Arc;
use std::time::Instant;

use super::{
    Action, Answered, Core, PayloadError, PayloadInfo, Phase, RELEASE_WAIT, RemoteFailure,
    Requester, Ticket, TicketError,
};
use crate::id::NodeId;
use crate::work::client::ClientError;
use crate::work::error::WorkError;
use crate::work::unit::{UnitId, UnitState};

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Done (or nothing to do).
    Done,
    /// The running node's answer settles the ticket.
    Waiting,
}

impl Core {
    /// The unit's payload is stored (or could not be): queue it, or submit it to its node.
    pub fn payload_stored(
        &mut self,
        now: Instant,
        id: UnitId,
        result: Result<PayloadInfo, PayloadError>,
    ) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        if entry.phase != Phase::AwaitingPayload {
            return;
        }
        let info = match result {
            Ok(info) => info,
            Err(e) => return self.finish(now, id, UnitState::Failed, e.to_string()),
        };
        entry.status.payload_size = Some(info.size);
        if entry.status.node == self.me {
            entry.phase = Phase::Queued;
            entry.status.detail = "Queued".into();
            self.persist(id);
            self.queue.push_back(id);
            self.start_queued();
        } else {
            self.submit(now, id);
        }
    }

    /// Starts (or restarts) the submission of a remote unit, bounded by its expiry.
    pub(super) fn submit(&mut self, now: Instant, id: UnitId) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        entry.phase = Phase::Submitting;
        entry.status.detail = format!("Submitting to {}", entry.status.node);
        let node = entry.status.node.clone();
        let expires = entry.expires;
        self.persist(id);
        // The status naming the submission's nonce must be on the disk before it leaves:
        // a node restarted after sending finds the remote unit again through it.
        self.after_durable(Action::Submit { id, node });
        self.set_timer(id, expires);
        let _ = now;
    }

    /// The running node created the remote unit (its payload is being sent).
    pub fn remote_created(&mut self, id: UnitId, remote: UnitId) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        entry.status.remote_unit_id = Some(remote);
        self.persist(id);
    }

    /// The remote unit started: follow its output (unless the submission `followed` it
    /// already, on its own stream). A unit cancelled or released meanwhile has the remote
    /// cancelled or released too. `node` names the running node even when the local unit is
    /// gone.
    pub fn remote_started(
        &mut self,
        now: Instant,
        id: UnitId,
        node: NodeId,
        remote: UnitId,
        followed: bool,
    ) {
        let Some(entry) = self.units.get_mut(&id) else {
            // Released while the submission was under way: release the remote unit too.
            self.actions
                .push_back(Action::ReleaseRemote { id, node, remote });
            return;
        };
        entry.status.remote_unit_id = Some(remote);
        if entry.phase != Phase::Submitting {
            return;
        }
        self.set_timer(id, None);
        let entry = self.units.get_mut(&id).expect("invariant: checked above");
        if entry.cancel {
            self.actions.push_back(Action::CancelRemote {
                id,
                node: node.clone(),
                remote,
            });
        }
        entry.phase = Phase::Following;
        entry.status.state = UnitState::Running;
        entry.status.detail = format!("Running on {node} as {remote}");
        self.persist(id);
        // The payload is with the running node now: the local copy may hold secrets.
        self.actions.push_back(Action::DropSecrets { id });
        if !followed {
            self.actions.push_back(Action::Follow { id, node, remote });
        }
        let _ = now;
    }

    /// The submission failed for good (a refusal), or could not reach the node before the
    /// unit's expiry.
    pub fn remote_submit_failed(&mut self, now: Instant, id: UnitId, failure: RemoteFailure) {
        self.finish(now, id, UnitState::Failed, failure.to_string());
    }

    /// Cancels a unit: a waiting one ends Canceled at once, a running one is asked to stop,
    /// a remote one is cancelled on its node (`ticket` answered when it acknowledges).
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when `by` may not see the unit.
    pub fn cancel(
        &mut self,
        now: Instant,
        id: UnitId,
        by: &Requester,
        ticket: Ticket,
    ) -> Result<CancelOutcome, WorkError> {
        self.visible(id, by)?;
        let entry = self.units.get_mut(&id).expect("invariant: visible");
        tracing::info!(unit = %id, ?by, "cancel requested");
        match entry.phase.clone() {
            Phase::Done => Ok(CancelOutcome::Done),
            Phase::Running => {
                entry.cancel = true;
                self.actions.push_back(Action::Stop { id });
                Ok(CancelOutcome::Done)
            }
            Phase::Following | Phase::Releasing { .. } => {
                let (node, remote) = remote_of(&entry.status);
                let Some(remote) = remote else {
                    return Ok(CancelOutcome::Done);
                };
                entry.cancel = true;
                entry.cancel_waiters.push(ticket);
                self.actions
                    .push_back(Action::CancelRemote { id, node, remote });
                Ok(CancelOutcome::Waiting)
            }
            Phase::Submitting => {
                // The remote unit is cancelled as soon as it exists.
                entry.cancel = true;
                self.finish(
                    now,
                    id,
                    UnitState::Canceled,
                    "Canceled before it started".into(),
                );
                Ok(CancelOutcome::Done)
            }
            Phase::Queued | Phase::AwaitingPayload | Phase::Creating { .. } => {
                self.finish(
                    now,
                    id,
                    UnitState::Canceled,
                    "Canceled before it started".into(),
                );
                Ok(CancelOutcome::Done)
            }
        }
    }

    /// The running node answered a cancel.
    pub fn remote_cancelled(&mut self, id: UnitId, result: Result<(), ClientError>) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        let waiters = std::mem::take(&mut entry.cancel_waiters);
        let result = result
            .map(|()| Answered::Done)
            .map_err(|e| TicketError::CancelRemote(Arc::new(e)));
        for t in waiters {
            self.answer(t, result.clone());
        }
    }

    /// Releases a unit: cancels it, waits for a local one to stop (up to
    /// [`RELEASE_WAIT`], not at all with `force`), releases a remote one on its node (with
    /// `force`, drops it here even if that fails), and removes its files. `ticket` is
    /// answered when done.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when `by` may not see the unit.
    pub fn release(
        &mut self,
        now: Instant,
        id: UnitId,
        force: bool,
        by: &Requester,
        ticket: Ticket,
    ) -> Result<(), WorkError> {
        self.visible(id, by)?;
        tracing::info!(unit = %id, force, ?by, "release requested");
        let entry = self.units.get_mut(&id).expect("invariant: visible");
        match entry.phase.clone() {
            Phase::Running if !force => {
                entry.cancel = true;
                entry.release_waiters.push(ticket);
                self.actions.push_back(Action::Stop { id });
                self.set_timer(id, Some(now + RELEASE_WAIT));
            }
            Phase::Releasing { .. } => self.answer(ticket, Err(TicketError::ReleaseUnderWay)),
            _ => {
                let (node, remote) = remote_of(&entry.status);
                match remote {
                    Some(remote) if node != self.me => {
                        entry.phase = Phase::Releasing { ticket, force };
                        self.actions
                            .push_back(Action::ReleaseRemote { id, node, remote });
                    }
                    _ => {
                        if entry.phase == Phase::Running {
                            self.actions.push_back(Action::Stop { id });
                        }
                        self.drop_unit(id);
                        self.answer(ticket, Ok(Answered::Done));
                    }
                }
            }
        }
        Ok(())
    }

    /// The running node answered a release.
    pub fn remote_released(&mut self, now: Instant, id: UnitId, result: Result<(), ClientError>) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        let Phase::Releasing { ticket, force } = entry.phase else {
            return;
        };
        match result {
            Ok(()) => {
                self.drop_unit(id);
                self.answer(ticket, Ok(Answered::Done));
            }
            Err(e) if force => {
                tracing::warn!(unit = %id, error = %e, "remote release failed; dropped here anyway (force)");
                self.drop_unit(id);
                self.answer(ticket, Ok(Answered::Done));
            }
            Err(e) => {
                // Back to what it was doing; the caller may retry or force.
                entry.phase = if entry.status.state.is_terminal() {
                    Phase::Done
                } else {
                    Phase::Following
                };
                self.answer(ticket, Err(TicketError::ReleasePending(Arc::new(e))));
                let _ = now;
            }
        }
    }
}

fn remote_of(status: &crate::work::status::UnitStatus) -> (NodeId, Option<UnitId>) {
    (status.node.clone(), status.remote_unit_id)
}
