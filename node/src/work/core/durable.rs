//! What waits for the disk, and submissions made twice.
//!
//! Every status write the core asks for carries a number; the driver reports how far the
//! writes are durable ([`Core::statuses_durable`]). An action that must not happen before
//! the unit's current status is on the disk — sending a remote submission, whose nonce a
//! restarted node needs to find the remote unit again — is held back until then.
//!
//! A change a job can repeat as fast as it likes (its containment record, at every program
//! it starts or stops) is written only once the unit's write in flight is durable: until
//! then the latest one waits in the unit's status, so the store thread's queue holds at
//! most one such write per unit however fast the job goes or however slow the disk is
//! (before, one status per program, about a kilobyte each, while the disk stalled). When
//! the node stops, [`Core::shutting_down`] writes what still waits, so that the store
//! commits it before it stops: a restarted node shows the job's last record.
//!
//! On the running node, a peer's submission carries a nonce: a second submission with the
//! same key and nonce (its submitter restarted without knowing whether the first arrived)
//! finds the unit made for the first one when that unit has its payload, or replaces it
//! when it has not (the first payload never arrived whole), so no unit is left behind
//! unowned and none runs twice.

use std::time::Instant;

use super::{Action, Core, NewUnit, Phase, TicketError};
use crate::work::status::UnitStatus;
use crate::work::unit::{UnitId, UnitState};

impl Core {
    /// Status writes up to number `upto` are durable: releases the actions that waited for
    /// them.
    pub fn statuses_durable(&mut self, upto: u64) {
        self.durable_seq = self.durable_seq.max(upto);
        self.write_deferred();
        while let Some((seq, _)) = self.gated.front() {
            if *seq > self.durable_seq {
                break;
            }
            let Some((_, action)) = self.gated.pop_front() else {
                break;
            };
            if self.still_wanted(&action) {
                self.actions.push_back(action);
            }
        }
    }

    /// A status write of unit `id` failed (`reason`): the disk does not have what the core
    /// holds. A unit not yet started fails with the reason rather than run with no record a
    /// restarted node would find, and so does a running one whose submitter was not yet
    /// answered (`unanswered`: it is told the unit was not taken, so its job is stopped; the
    /// unit keeps its slot and its job directory until its handler reports the end).
    /// Otherwise a running or ended unit keeps its state: its next write is tried again,
    /// and a restart finds its last durable status.
    pub fn status_not_stored(&mut self, now: Instant, id: UnitId, reason: &str, unanswered: bool) {
        let Some(entry) = self.units.get(&id) else {
            return;
        };
        tracing::error!(unit = %id, %reason, phase = ?entry.phase, "a unit's status did not reach the disk");
        let detail = format!("the node cannot store the unit's status: {reason}");
        match entry.phase {
            Phase::AwaitingPayload | Phase::Queued | Phase::Submitting => {
                self.finish(now, id, UnitState::Failed, detail);
            }
            Phase::Running if unanswered => {
                if let Some(entry) = self.units.get_mut(&id) {
                    entry.fail_when_ended = Some(detail);
                }
                self.actions.push_back(Action::Stop { id });
            }
            _ => {}
        }
    }

    /// The status write number the latest held-back action waits for, if any: the driver
    /// commits the pending writes at once rather than letting them wait for more company.
    pub fn awaited_write(&self) -> Option<u64> {
        self.gated.back().map(|(seq, _)| *seq)
    }

    /// The number of `id`'s latest status write while it is not yet durable: `None` when
    /// the unit's status on the disk is its current one (or the unit is gone). A driver
    /// tells a submitter its unit is taken only once this is `None`, so that a node that
    /// crashes right after cannot come back without the unit it accepted.
    pub fn unit_write_pending(&self, id: UnitId) -> Option<u64> {
        let written = self.units.get(&id)?.written;
        (written > self.durable_seq).then_some(written)
    }

    /// Writes unit `id`'s status now when its last write is durable, else once it is.
    pub(super) fn persist_behind(&mut self, id: UnitId) {
        let durable = self.durable_seq;
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        if entry.written <= durable {
            self.persist(id);
        } else if !entry.unwritten {
            entry.unwritten = true;
            self.deferred.push(id);
        }
    }

    /// The node stops: writes now every status held back behind its unit's write in
    /// flight (a job's latest containment record). The driver runs these writes, then
    /// stops its store, which commits everything it was sent, in order, before it ends.
    /// Actions waiting for the disk (remote submissions) stay held: a restarted node sends
    /// them again.
    pub fn shutting_down(&mut self) {
        for id in std::mem::take(&mut self.deferred) {
            if self.units.get(&id).is_some_and(|e| e.unwritten) {
                self.persist(id);
            }
        }
    }

    /// Writes the deferred statuses whose unit's last write is now durable.
    fn write_deferred(&mut self) {
        for id in std::mem::take(&mut self.deferred) {
            match self.units.get(&id) {
                Some(e) if e.unwritten && e.written <= self.durable_seq => self.persist(id),
                Some(e) if e.unwritten => self.deferred.push(id),
                // Written since with a later change, or gone.
                _ => {}
            }
        }
    }

    /// Queues `action` to run once every status write asked for so far is durable.
    pub(super) fn after_durable(&mut self, action: Action) {
        if self.write_seq <= self.durable_seq {
            self.actions.push_back(action);
        } else {
            self.gated.push_back((self.write_seq, action));
        }
    }

    /// Whether a held-back action still applies: a submission of a unit cancelled or
    /// released meanwhile is not sent.
    fn still_wanted(&self, action: &Action) -> bool {
        match action {
            Action::Submit { id, .. } => self
                .units
                .get(id)
                .is_some_and(|e| e.phase == Phase::Submitting),
            _ => true,
        }
    }

    /// The unit an earlier submission under `unit`'s key and nonce made, when it has its
    /// payload (answer with it); an earlier one without its payload is dropped, and its
    /// creator told, so that `unit` replaces it.
    pub(super) fn resubmitted(&mut self, unit: &NewUnit) -> Option<UnitId> {
        let key = unit.submitter.1?;
        let nonce = unit.nonce?;
        let existing = *self.nonces.get(&(key, nonce))?;
        let entry = self.units.get(&existing)?;
        if entry.status.payload_size.is_some() {
            tracing::info!(unit = %existing, %nonce, "submission made again after a restart of its submitter; answering with its unit");
            return Some(existing);
        }
        tracing::info!(unit = %existing, %nonce, "submission made again before its payload arrived whole; replacing its unit");
        if let Phase::Creating { ticket } = entry.phase {
            let replaced = TicketError::Resubmitted { unit: existing };
            self.answer(ticket, Err(replaced));
        }
        self.drop_unit(existing);
        None
    }

    /// Remembers a peer's unit under its nonce.
    pub(super) fn index_nonce(&mut self, id: UnitId, status: &UnitStatus) {
        if status.node != self.me {
            return;
        }
        if let (Some(key), Some(nonce)) = (status.submitter_key, status.submit_nonce) {
            self.nonces.insert((key, nonce), id);
        }
    }

    /// Forgets a unit's nonce (it was released).
    pub(super) fn unindex_nonce(&mut self, status: &UnitStatus) {
        if let (Some(key), Some(nonce)) = (status.submitter_key, status.submit_nonce) {
            self.nonces.remove(&(key, nonce));
        }
    }
}
