//! The work core: every unit's life on this node as a state machine, with no IO.
//!
//! Owns the units' statuses (the store's files are written from them), the queue under
//! `max-running`, placement (run here, or mirror a unit running on another node), who may see
//! a unit, cancel and release, retention of finished units, and what a restart resumes. It
//! takes events and the time, and says what to do as [`Action`]s; requests that complete
//! later carry a [`Ticket`] that an [`Action::Answer`] settles.
//!
//! # Driving contract
//!
//! After every call the driver drains [`Core::poll_action`] until `None`, executing each
//! action in order (status writes may be batched, but not reordered for one unit), then
//! re-arms its timer with [`Core::poll_timeout`] and calls [`Core::handle_timeout`] when it
//! fires. Outcomes of actions come back through the `*_ended`, `*_created` and similar calls.
//! Status writes carry increasing numbers; the driver reports with
//! [`Core::statuses_durable`] how far they are on the disk, and the core holds back what
//! must not happen before (a remote submission waits for the status naming its nonce).
//! Before it stops its store, the driver calls [`Core::shutting_down`] and runs the writes
//! it asks for.

mod action;
pub mod durable;
mod error;
pub mod flow;
mod held;
pub mod recover;
mod timers;

pub use action::{Action, Answered, Ticket};
pub use error::{PayloadError, RemoteFailure, TicketError};

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::error::WorkError;
use super::protocol::RemoteStatus;
use super::status::{Component, UnitStatus};
use super::store::StoreError;
use super::unit::{SubmitNonce, UnitId, UnitState};
use crate::id::NodeId;
use crate::keys::PublicKey;

/// How long a release waits for a cancelled local unit to stop before removing it anyway.
pub const RELEASE_WAIT: Duration = Duration::from_secs(15);

/// Limits and timing of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Units that may run at once; more wait in the queue.
    pub max_running: usize,
    /// How long a finished unit is kept before it is released (its files removed);
    /// `None` keeps it until someone releases it.
    pub keep_finished: Option<Duration>,
    /// Most units one peer may hold here (submitted to run here and not yet released).
    pub max_units_per_submitter: usize,
}

/// Who asks: an operator (the local control socket, or a mesh peer allowed control) sees
/// and may act on every unit; a peer only on the units it submitted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requester {
    /// Full rights.
    Operator,
    /// Only units whose submitter proved this key.
    Peer(PublicKey),
}

/// What a work type offers, as the core needs to know it for a submission.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offer {
    /// Whether submissions may add runtime `params`.
    pub allow_runtime_params: bool,
}

/// A new unit.
#[derive(Debug, Clone)]
pub struct NewUnit {
    /// Its id (drawn by the caller; refused if taken).
    pub id: UnitId,
    /// The work type.
    pub work_type: String,
    /// The submission's parameters.
    pub params: BTreeMap<String, String>,
    /// The submitting node, and the key it proved (`None`: the local control socket).
    pub submitter: (NodeId, Option<PublicKey>),
    /// Where it runs: this node, or another node it is mirrored from.
    pub node: NodeId,
    /// Remote work: when the unit fails if the remote node has not started it (ms since the
    /// UNIX epoch).
    pub expires_at: Option<u64>,
    /// Remote work: sign the submission.
    pub sign_work: bool,
    /// Remote work, on the submitting node: the nonce its submission will carry. On the
    /// running node: the nonce the submitter gave (a second submission with the same
    /// nonce and key finds this unit instead of making another).
    pub nonce: Option<SubmitNonce>,
}

/// A unit's payload, once stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadInfo {
    /// Its size in bytes.
    pub size: u64,
}

/// How a locally run unit ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerEnd {
    /// The state it ends in.
    pub state: UnitState,
    /// Why.
    pub detail: String,
    /// Bytes of output.
    pub stdout_size: u64,
}

/// Where a unit is in its life here.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Created; its files are being made.
    Creating { ticket: Ticket },
    /// Waiting for its payload.
    AwaitingPayload,
    /// Local: waiting for a free slot.
    Queued,
    /// Local: its handler runs.
    Running,
    /// Remote: being submitted.
    Submitting,
    /// Remote: its output is followed.
    Following,
    /// Remote: its release is under way.
    Releasing { ticket: Ticket, force: bool },
    /// Finished.
    Done,
}

#[derive(Debug)]
struct Entry {
    status: UnitStatus,
    phase: Phase,
    /// A cancel was asked for (a running handler is stopping, or a remote unit must be
    /// cancelled once it exists).
    cancel: bool,
    /// Releases waiting for the local unit to stop.
    release_waiters: Vec<Ticket>,
    /// Cancels waiting for the running node's answer.
    cancel_waiters: Vec<Ticket>,
    /// The entry's one timer (retention, release wait, or remote expiry).
    wake_at: Option<Instant>,
    /// Remote work: when it fails unless the running node has started it.
    expires: Option<Instant>,
    /// The number of the unit's latest status write (0: none since it was loaded).
    written: u64,
    /// The status changed in a way written only once `written` is durable (a job's
    /// containment record, see `durable.rs`), and has not been written since.
    unwritten: bool,
    /// Why a running unit fails once its handler, asked to stop, ends (its status did not
    /// reach the disk while its submitter waited): it keeps its slot and its job
    /// directory until then.
    fail_when_ended: Option<String>,
}

/// The work core. See the module doc for the driving contract.
#[derive(Debug)]
pub struct Core {
    me: NodeId,
    config: CoreConfig,
    units: HashMap<UnitId, Entry>,
    queue: VecDeque<UnitId>,
    running: usize,
    timers: BTreeSet<(Instant, UnitId)>,
    actions: VecDeque<Action>,
    /// Draining before a stop: no new local units, nothing more started from the queue.
    draining: bool,
    /// The number of the last status write asked for.
    write_seq: u64,
    /// Status writes up to this number are durable.
    durable_seq: u64,
    /// Actions waiting for a status write to be durable, with its number.
    gated: VecDeque<(u64, Action)>,
    /// Units whose status is written once their write in flight is durable (each at most
    /// once; see `durable.rs`).
    deferred: Vec<UnitId>,
    /// Units submitted by a peer under a nonce, by the peer's key and the nonce.
    nonces: HashMap<(PublicKey, SubmitNonce), UnitId>,
    /// How many units each peer holds here (see `held.rs`).
    held: HashMap<PublicKey, usize>,
}

impl Core {
    /// A core for node `me` with no units.
    pub fn new(me: NodeId, config: CoreConfig) -> Self {
        Self {
            me,
            config,
            units: HashMap::new(),
            queue: VecDeque::new(),
            running: 0,
            timers: BTreeSet::new(),
            actions: VecDeque::new(),
            draining: false,
            write_seq: 0,
            durable_seq: 0,
            gated: VecDeque::new(),
            deferred: Vec::new(),
            nonces: HashMap::new(),
            held: HashMap::new(),
        }
    }

    /// This node's id.
    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The next thing to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Core::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(t, _)| *t)
    }

    /// Units running here now.
    pub fn running(&self) -> usize {
        self.running
    }

    /// Units waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Applies new limits (a reload): more slots start queued units at once; a new
    /// retention applies to units that finish from now on.
    pub fn set_config(&mut self, config: CoreConfig) {
        self.config = config;
        self.start_queued();
    }

    /// Starts draining before a stop: new units to run here are refused
    /// ([`WorkError::Draining`]) and queued ones wait (they start after the next start);
    /// running units go on. Mirrors of remote units are unaffected (they resume after a
    /// restart).
    pub fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether draining is done: draining, and no unit runs here.
    pub fn is_drained(&self) -> bool {
        self.draining && self.running == 0
    }

    /// Creates a unit; its files are made by [`Action::CreateFiles`] and `ticket` answered
    /// with its id once they exist (`files_created`). `offer` says what this node offers.
    ///
    /// # Errors
    /// [`WorkError::UnknownWorkType`] or [`WorkError::BadParameters`] for a local unit this
    /// node cannot run; [`WorkError::UnitIdTaken`] for an id already taken (draw another).
    pub fn create(
        &mut self,
        now: Instant,
        wall_ms: u64,
        ticket: Ticket,
        unit: NewUnit,
        offer: impl FnOnce(&str) -> Option<Offer>,
    ) -> Result<(), WorkError> {
        if self.units.contains_key(&unit.id) {
            return Err(WorkError::UnitIdTaken(unit.id));
        }
        if unit.node == self.me && self.draining {
            return Err(WorkError::Draining {
                node: self.me.clone(),
            });
        }
        if unit.node == self.me {
            let offer = offer(&unit.work_type).ok_or_else(|| WorkError::UnknownWorkType {
                node: self.me.clone(),
                work_type: unit.work_type.clone(),
            })?;
            check_params(&unit.work_type, &unit.params, offer)?;
            if let Some(existing) = self.resubmitted(&unit) {
                self.answer(ticket, Ok(Answered::Existing(existing)));
                return Ok(());
            }
            self.check_held(unit.submitter.1.as_ref())?;
        }
        let (submitter, key) = unit.submitter;
        let mut status =
            UnitStatus::new(unit.work_type, unit.params, submitter, unit.node, wall_ms);
        status.submitter_key = key;
        status.expires_at = unit.expires_at;
        status.sign_work = unit.sign_work;
        status.submit_nonce = unit.nonce;
        self.write_seq += 1;
        self.actions.push_back(Action::CreateFiles {
            id: unit.id,
            status: Box::new(status.clone()),
            seq: self.write_seq,
        });
        self.index_nonce(unit.id, &status);
        self.insert(unit.id, status, Phase::Creating { ticket });
        if let Some(entry) = self.units.get_mut(&unit.id) {
            entry.written = self.write_seq;
        }
        if let (Some(entry), Some(at)) = (self.units.get_mut(&unit.id), unit.expires_at) {
            entry.expires = Some(now + Duration::from_millis(at.saturating_sub(wall_ms)));
        }
        Ok(())
    }

    fn insert(&mut self, id: UnitId, status: UnitStatus, phase: Phase) {
        self.count_held(&status);
        self.units.insert(
            id,
            Entry {
                status,
                phase,
                cancel: false,
                release_waiters: Vec::new(),
                cancel_waiters: Vec::new(),
                wake_at: None,
                expires: None,
                written: 0,
                unwritten: false,
                fail_when_ended: None,
            },
        );
    }

    /// The unit's files exist (or could not be made).
    pub fn files_created(&mut self, id: UnitId, result: Result<(), StoreError>) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        let Phase::Creating { ticket } = entry.phase else {
            return;
        };
        match result {
            Ok(()) => {
                entry.phase = Phase::AwaitingPayload;
                entry.status.detail = "Waiting for Input Data".into();
                self.persist(id);
                self.answer(ticket, Ok(Answered::Created(id)));
            }
            Err(e) => {
                if let Some(entry) = self.units.remove(&id) {
                    self.uncount_held(&entry.status);
                }
                self.answer(ticket, Err(TicketError::CreateFiles(Arc::new(e))));
            }
        }
    }

    /// A unit's status as `by` may see it.
    ///
    /// # Errors
    /// [`WorkError::UnknownUnit`] when there is no such unit (or `by` may not see it).
    pub fn status(&self, id: UnitId, by: &Requester) -> Result<&UnitStatus, WorkError> {
        self.visible(id, by).map(|e| &e.status)
    }

    /// Every unit `by` may see, sorted by id.
    pub fn list(&self, by: &Requester) -> Vec<(UnitId, &UnitStatus)> {
        let mut units: Vec<(UnitId, &UnitStatus)> = self
            .units
            .iter()
            .filter(|(_, e)| !matches!(e.phase, Phase::Creating { .. }) && may_see(e, by))
            .map(|(id, e)| (*id, &e.status))
            .collect();
        units.sort_by_key(|(id, _)| *id);
        units
    }

    fn visible(&self, id: UnitId, by: &Requester) -> Result<&Entry, WorkError> {
        self.units
            .get(&id)
            .filter(|e| !matches!(e.phase, Phase::Creating { .. }) && may_see(e, by))
            .ok_or(WorkError::UnknownUnit(id))
    }

    /// Whether the unit's output is complete (it is finished, or gone).
    pub fn is_ended(&self, id: UnitId) -> bool {
        self.units
            .get(&id)
            .is_none_or(|e| e.status.state.is_terminal())
    }

    fn persist(&mut self, id: UnitId) {
        if let Some(entry) = self.units.get_mut(&id) {
            self.write_seq += 1;
            entry.written = self.write_seq;
            entry.unwritten = false;
            self.actions.push_back(Action::WriteStatus {
                id,
                status: Box::new(entry.status.clone()),
                seq: self.write_seq,
            });
        }
    }

    fn answer(&mut self, ticket: Ticket, result: Result<Answered, TicketError>) {
        self.actions.push_back(Action::Answer { ticket, result });
    }

    /// Records the end of a unit: state, detail, size; wakes followers, drops secrets,
    /// starts its retention.
    fn finish(&mut self, now: Instant, id: UnitId, state: UnitState, detail: String) {
        let Some(entry) = self.units.get_mut(&id) else {
            return;
        };
        if entry.status.state.is_terminal() {
            return;
        }
        if entry.phase == Phase::Running {
            self.running = self.running.saturating_sub(1);
        }
        if entry.phase == Phase::Queued {
            self.queue.retain(|q| *q != id);
        }
        entry.status.state = state;
        entry.status.detail = detail;
        entry.phase = Phase::Done;
        let waiters = std::mem::take(&mut entry.release_waiters);
        let cancels = std::mem::take(&mut entry.cancel_waiters);
        tracing::info!(unit = %id, %state, detail = %entry.status.detail, "unit finished");
        self.persist(id);
        self.actions.push_back(Action::DropSecrets { id });
        self.actions.push_back(Action::Ended { id });
        for t in cancels {
            self.answer(t, Ok(Answered::Done));
        }
        if waiters.is_empty() {
            let keep = self.config.keep_finished.map(|k| now + k);
            self.set_timer(id, keep);
        } else {
            self.drop_unit(id);
            for t in waiters {
                self.answer(t, Ok(Answered::Done));
            }
        }
        self.start_queued();
    }

    fn drop_unit(&mut self, id: UnitId) {
        self.set_timer(id, None);
        if let Some(entry) = self.units.remove(&id) {
            self.unindex_nonce(&entry.status);
            self.uncount_held(&entry.status);
            if entry.phase == Phase::Running {
                self.running = self.running.saturating_sub(1);
            }
            self.queue.retain(|q| *q != id);
            self.actions.push_back(Action::Ended { id });
            self.actions.push_back(Action::DropUnit { id });
        }
        self.start_queued();
    }

    fn start_queued(&mut self) {
        while self.running < self.config.max_running && !self.draining {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let Some(entry) = self.units.get_mut(&id) else {
                continue;
            };
            entry.phase = Phase::Running;
            entry.status.state = UnitState::Running;
            entry.status.detail = "Running".into();
            self.running += 1;
            self.persist(id);
            self.actions.push_back(Action::Start { id });
        }
    }

    /// The handler of a running unit reports which component serves it.
    pub fn handler_started(&mut self, id: UnitId, component: Component) {
        if let Some(entry) = self.units.get_mut(&id) {
            entry.status.component = Some(component);
            self.persist(id);
        }
    }

    /// A running unit's host recorded how its programs are contained (its `ExtraData`),
    /// as it does at every program's start and stop: written behind the unit's write in
    /// flight (see `durable.rs`).
    pub fn extra_data(&mut self, id: UnitId, value: serde_json::Value) {
        if let Some(entry) = self.units.get_mut(&id) {
            entry.status.extra_data = value;
            self.persist_behind(id);
        }
    }

    /// A locally run unit ended (or, after a restart, was found ended or gone).
    pub fn handler_ended(&mut self, now: Instant, id: UnitId, end: HandlerEnd) {
        let (mut state, mut detail) = (end.state, end.detail);
        if let Some(entry) = self.units.get_mut(&id) {
            entry.status.stdout_size = end.stdout_size;
            if let Some(reason) = entry.fail_when_ended.take() {
                (state, detail) = (UnitState::Failed, reason);
            }
        }
        self.finish(now, id, state, detail);
    }

    /// The remote unit finished and its output is all here (or the mirror failed for good).
    pub fn mirror_ended(
        &mut self,
        now: Instant,
        id: UnitId,
        local_size: u64,
        outcome: Result<RemoteStatus, RemoteFailure>,
    ) {
        if let Some(entry) = self.units.get_mut(&id) {
            entry.status.stdout_size = local_size;
        }
        // The node goes on producing what nobody here will keep: stop it there.
        let cancel = match &outcome {
            Err(RemoteFailure::OverCap { node, remote, .. }) => Some(Action::CancelRemote {
                id,
                node: node.clone(),
                remote: *remote,
            }),
            _ => None,
        };
        let (state, detail) = match outcome {
            Ok(status) => (status.state, status.detail),
            Err(e) if e.is_local() => (UnitState::Failed, format!("writing results: {e}")),
            Err(e) => (UnitState::Failed, e.to_string()),
        };
        self.finish(now, id, state, detail);
        self.actions.extend(cancel);
    }
}

fn may_see(entry: &Entry, by: &Requester) -> bool {
    match by {
        Requester::Operator => true,
        Requester::Peer(key) => entry.status.submitter_key.as_ref() == Some(key),
    }
}

/// The submission's parameter names checked against what the work type takes (the names
/// themselves belong to [`crate::host::params`]).
fn check_params(
    work_type: &str,
    params: &BTreeMap<String, String>,
    offer: Offer,
) -> Result<(), WorkError> {
    crate::host::params::check_submission(work_type, params, offer.allow_runtime_params)
        .map_err(|e| WorkError::BadParameters(e.to_string()))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_durable;
