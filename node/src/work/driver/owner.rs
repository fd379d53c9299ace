//! The owner task: feeds the core, executes its actions, answers the callers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::results::Progress;
use super::store_thread::{StoreJob, StoreThread};
use super::tasks::{self, TaskCtx};
use super::{Command, Created, WorkSetup};
use crate::host::registry::Registry;
use crate::work::core::flow::CancelOutcome;
use crate::work::core::{
    Action, Answered, Core, CoreConfig, Offer, Requester, Ticket, TicketError,
};
use crate::work::error::WorkError;
use crate::work::status::UnitStatus;
use crate::work::store::{StoreError, UnitStore};
use crate::work::unit::{UnitId, UnitState};

pub(super) struct OwnerSetup {
    pub(super) setup: WorkSetup,
    pub(super) core_config: CoreConfig,
    pub(super) store: Arc<UnitStore>,
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) rx: mpsc::UnboundedReceiver<Command>,
    pub(super) recovered: Vec<(UnitId, UnitStatus)>,
}

/// Where a request's answer goes.
type Reply = oneshot::Sender<Answer>;

/// A request's answer.
type Answer = Result<Answered, WorkError>;

/// The owner task's state besides the core.
struct Owner {
    core: Core,
    store: Arc<UnitStore>,
    /// The store's thread (`None` once stopped).
    store_thread: Option<StoreThread>,
    /// The highest held-back write a flush was asked for.
    flush_asked: u64,
    registry: watch::Receiver<Arc<Registry>>,
    /// `[work] mirror-output-mb` in bytes: the cap on what a remote unit of a work type not
    /// offered here may send back.
    mirror_output: u64,
    ctx: TaskCtx,
    /// Requests waiting for the core's answer, with the unit a release removes.
    tickets: HashMap<Ticket, (Option<UnitId>, Reply)>,
    /// Units whose files are being removed, and the releases answered once they are.
    dropping: HashMap<UnitId, Vec<(Reply, Answer)>>,
    creates: HashMap<Ticket, oneshot::Sender<Result<Created, WorkError>>>,
    next_ticket: u64,
    /// Each unit's output progress, watched by its results followers.
    progress: HashMap<UnitId, watch::Sender<Progress>>,
    /// Each running handler's stop switch.
    stops: HashMap<UnitId, watch::Sender<bool>>,
    /// Tasks working for a unit (handler, submission, mirror); aborted when it is dropped.
    tasks: HashMap<UnitId, Vec<JoinHandle<()>>>,
    /// Callers waiting for a unit to be taken (queued here, or started remotely, or failed).
    taken_waiters: HashMap<UnitId, Vec<oneshot::Sender<Result<UnitStatus, WorkError>>>>,
    /// Units whose payload is stored and whose submitter has not been answered yet.
    unanswered: std::collections::HashSet<UnitId>,
    /// Units whose status did not reach the disk before their submitter was answered: a
    /// later wait for them is answered with this error at once.
    unstored: HashMap<UnitId, Arc<StoreError>>,
    /// Once draining: how many units still run here.
    draining: Option<watch::Sender<usize>>,
}

/// How long after its last command the owner gives the freed heap back to the system, so
/// an idle node's resident memory is not that of its busiest moment
/// ([`crate::heap::give_back_freed_memory`]; through a [`crate::heap::TrimGate`]: at most
/// once a minute, unless a burst of commands came since the last).
const IDLE_TRIM_AFTER: Duration = Duration::from_secs(1);

pub(super) fn spawn(o: OwnerSetup) {
    let store_thread = StoreThread::start(
        o.store.clone(),
        o.commands.clone(),
        o.setup.config.commit_delay,
    );
    let ctx = TaskCtx {
        store: o.store.clone(),
        host: o.setup.host.clone(),
        client: o
            .setup
            .mesh
            .clone()
            .map(crate::work::client::WorkClient::new),
        signing_key: o.setup.signing_key.clone().map(Arc::new),
        node: o.setup.node.clone(),
        commands: o.commands.clone(),
        metrics: o.setup.config.metrics.clone(),
    };
    let mut owner = Owner {
        core: Core::new(o.setup.node.clone(), o.core_config),
        store: o.store,
        store_thread: Some(store_thread),
        flush_asked: 0,
        registry: o.setup.registry,
        mirror_output: o.setup.config.mirror_output,
        ctx,
        tickets: HashMap::new(),
        dropping: HashMap::new(),
        creates: HashMap::new(),
        next_ticket: 0,
        progress: HashMap::new(),
        stops: HashMap::new(),
        tasks: HashMap::new(),
        taken_waiters: HashMap::new(),
        unanswered: std::collections::HashSet::new(),
        unstored: HashMap::new(),
        draining: None,
    };
    let recovered = o.recovered;
    let mut rx = o.rx;
    tokio::spawn(async move {
        let now = Instant::now().into_std();
        owner.core.recover(now, crate::clock::now_ms(), recovered);
        owner.run_actions();
        // When the heap is next given back: a while after the last command (work went
        // quiet), once.
        let mut trim_at: Option<Instant> = None;
        let mut trims = crate::heap::TrimGate::default();
        loop {
            let deadline = owner.core.poll_timeout().map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            let trim = async {
                match trim_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = trim => {
                    trim_at = trims.trim_off_worker(Instant::now().into_std()).map(Instant::from_std);
                    continue;
                }
                command = rx.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        // What the core holds back is sent to the store before it stops.
                        owner.core.shutting_down();
                        owner.run_actions();
                        owner.stop_store().await;
                        log_unstored(&mut rx);
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => {
                        trim_at = Some(Instant::now() + IDLE_TRIM_AFTER);
                        trims.note_work();
                        owner.handle(command);
                    }
                    None => break,
                },
                () = sleep => {
                    owner.core.handle_timeout(Instant::now().into_std(), crate::clock::now_ms());
                }
            }
            owner.run_actions();
        }
    });
}

/// Logs the status writes the store's last commit could not make: nobody is left to act
/// on them, and a restarted node finds the unit's last durable status.
fn log_unstored(rx: &mut mpsc::UnboundedReceiver<Command>) {
    while let Ok(command) = rx.try_recv() {
        if let Command::NotStored { id, error } = command {
            tracing::error!(unit = %id, %error, "a unit's status did not reach the disk before the work layer stopped");
        }
    }
}

impl Owner {
    fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        Ticket(self.next_ticket)
    }

    fn handle(&mut self, command: Command) {
        let now = Instant::now().into_std();
        match command {
            Command::Create { unit, reply } => self.create(now, unit, reply),
            Command::PayloadStored { id, result } => {
                if result.is_ok() {
                    self.unanswered.insert(id);
                }
                self.core.payload_stored(now, id, result);
            }
            Command::WaitTaken { id, reply } => match self.unstored.get(&id) {
                Some(error) => {
                    let error = error.clone();
                    let _ = reply.send(Err(WorkError::NotStored { unit: id, error }));
                }
                None => self.taken_waiters.entry(id).or_default().push(reply),
            },
            Command::Status { id, by, reply } => {
                let _ = reply.send(self.status(id, &by));
            }
            Command::List { by, reply } => {
                let units = self.core.list(&by);
                let units = units
                    .into_iter()
                    .map(|(id, s)| (id, self.live(id, s.clone())))
                    .collect();
                let _ = reply.send(units);
            }
            Command::Follow { id, by, reply } => {
                let _ = reply.send(self.follow(id, &by));
            }
            Command::Cancel { id, by, reply } => self.cancel(now, id, &by, reply),
            Command::Release {
                id,
                force,
                by,
                reply,
            } => {
                let ticket = self.ticket();
                match self.core.release(now, id, force, &by, ticket) {
                    Ok(()) => {
                        self.tickets.insert(ticket, (Some(id), reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            other => self.report(now, other),
        }
    }

    /// Outcomes of actions, reported by the store thread and the tasks.
    fn report(&mut self, now: std::time::Instant, command: Command) {
        match command {
            Command::FilesCreated { id, result } => self.core.files_created(id, result),
            Command::HandlerStarted { id, component } => {
                self.core.handler_started(id, component);
            }
            Command::ExtraData { id, value } => self.core.extra_data(id, value),
            Command::HandlerEnded { id, end } => {
                self.stops.remove(&id);
                self.core.handler_ended(now, id, end);
            }
            Command::RemoteCreated { id, remote } => self.core.remote_created(id, remote),
            Command::RemoteStarted {
                id,
                node,
                remote,
                followed,
            } => {
                self.core.remote_started(now, id, node, remote, followed);
            }
            Command::RemoteSubmitFailed { id, failure } => {
                self.core.remote_submit_failed(now, id, failure);
            }
            Command::MirrorEnded {
                id,
                local_size,
                outcome,
            } => self.core.mirror_ended(now, id, local_size, outcome),
            Command::RemoteCancelled { id, result } => self.core.remote_cancelled(id, result),
            Command::RemoteReleased { id, result } => self.core.remote_released(now, id, result),
            Command::Reconfigure {
                core,
                signing_key,
                mirror_output,
            } => {
                self.ctx.signing_key = signing_key.map(Arc::new);
                self.mirror_output = mirror_output;
                self.core.set_config(core);
            }
            Command::Drain { reply } => {
                self.core.drain();
                let running = self
                    .draining
                    .get_or_insert_with(|| watch::channel(self.core.running()).0);
                let _ = reply.send(running.subscribe());
            }
            Command::Durable { upto } => self.core.statuses_durable(upto),
            Command::NotStored { id, error } => self.not_stored(now, id, error),
            #[cfg(test)]
            Command::StallStore(time) => self.job(StoreJob::Stall(time)),
            Command::Dropped { id } => {
                self.unanswered.remove(&id);
                self.unstored.remove(&id);
                for (reply, result) in self.dropping.remove(&id).unwrap_or_default() {
                    let _ = reply.send(result);
                }
            }
            _ => {}
        }
    }

    fn create(
        &mut self,
        now: std::time::Instant,
        unit: crate::work::core::NewUnit,
        reply: oneshot::Sender<Result<Created, WorkError>>,
    ) {
        if unit.node != *self.core.me() && self.ctx.client.is_none() {
            let _ = reply.send(Err(WorkError::NoMesh));
            return;
        }
        let ticket = self.ticket();
        let registry = self.registry.borrow().clone();
        let offer = |work_type: &str| {
            registry.get(work_type).map(|a| Offer {
                allow_runtime_params: a.allow_runtime_params,
            })
        };
        match self
            .core
            .create(now, crate::clock::now_ms(), ticket, unit, offer)
        {
            Ok(()) => {
                self.creates.insert(ticket, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn status(&self, id: UnitId, by: &Requester) -> Result<UnitStatus, WorkError> {
        let status = self.core.status(id, by)?.clone();
        Ok(self.live(id, status))
    }

    /// A status with the live output size of a running unit.
    fn live(&self, id: UnitId, mut status: UnitStatus) -> UnitStatus {
        if !status.state.is_terminal()
            && let Some(progress) = self.progress.get(&id)
        {
            status.stdout_size = progress.borrow().size;
        }
        status
    }

    fn follow(
        &mut self,
        id: UnitId,
        by: &Requester,
    ) -> Result<(std::path::PathBuf, watch::Receiver<Progress>), WorkError> {
        let status = self.core.status(id, by)?;
        let ended = status.state.is_terminal();
        let path = self.store.stdout_path(id);
        let sender = self.progress_of(id);
        if ended {
            sender.send_modify(|p| p.ended = true);
        }
        Ok((path, sender.subscribe()))
    }

    fn progress_of(&mut self, id: UnitId) -> &watch::Sender<Progress> {
        self.progress
            .entry(id)
            .or_insert_with(|| watch::channel(Progress::default()).0)
    }

    fn cancel(
        &mut self,
        now: std::time::Instant,
        id: UnitId,
        by: &Requester,
        reply: oneshot::Sender<Result<Answered, WorkError>>,
    ) {
        let ticket = self.ticket();
        match self.core.cancel(now, id, by, ticket) {
            Ok(CancelOutcome::Done) => {
                let _ = reply.send(Ok(Answered::Done));
            }
            Ok(CancelOutcome::Waiting) => {
                self.tickets.insert(ticket, (None, reply));
            }
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// Executes the core's actions, then answers whoever waits for a unit to be taken.
    fn run_actions(&mut self) {
        while let Some(action) = self.core.poll_action() {
            self.execute(action);
        }
        let answer_waits = self.settle_taken();
        // A held-back action (a remote submission) or a submitter's answer waits for a
        // status write: commit now.
        if let Some(seq) = self.core.awaited_write().max(answer_waits)
            && seq > self.flush_asked
        {
            self.flush_asked = seq;
            self.job(StoreJob::Flush);
        }
        if let Some(running) = &self.draining {
            running.send_if_modified(|n| std::mem::replace(n, self.core.running()) != *n);
        }
        self.ctx.metrics.queue_depth(self.core.queued());
    }

    /// A status write of `id` failed. A submitter not answered yet is told the unit was
    /// not taken (never that it was; now, or when it next asks), and the core fails the
    /// unit, stopping its job if it already started: nothing runs that its submitter was
    /// told is not taken.
    fn not_stored(&mut self, now: std::time::Instant, id: UnitId, error: Arc<StoreError>) {
        let waiters = self.taken_waiters.remove(&id).unwrap_or_default();
        let unanswered = self.unanswered.remove(&id) || !waiters.is_empty();
        for waiter in waiters {
            let _ = waiter.send(Err(WorkError::NotStored {
                unit: id,
                error: error.clone(),
            }));
        }
        let reason = error.to_string();
        if unanswered {
            self.unstored.insert(id, error);
        }
        self.core.status_not_stored(now, id, &reason, unanswered);
    }

    /// Answers the submitters whose units are taken: a remote unit once it left Pending,
    /// a local one once it has its payload and its status saying so is on the disk.
    /// Returns the status write a local unit's answer waits for, if any.
    fn settle_taken(&mut self) -> Option<u64> {
        let ids: Vec<UnitId> = self.taken_waiters.keys().copied().collect();
        let mut awaited = None;
        for id in ids {
            let status = self.core.status(id, &Requester::Operator).ok().cloned();
            let taken = match &status {
                None => true,
                Some(s) if s.node == *self.core.me() => {
                    let has_payload = s.state != UnitState::Pending || s.payload_size.is_some();
                    let pending = self.core.unit_write_pending(id);
                    if has_payload && pending.is_some() {
                        awaited = awaited.max(pending);
                    }
                    has_payload && pending.is_none()
                }
                Some(s) => s.state != UnitState::Pending,
            };
            if !taken {
                continue;
            }
            self.unanswered.remove(&id);
            for waiter in self.taken_waiters.remove(&id).unwrap_or_default() {
                if let Some(s) = &status {
                    let _ = waiter.send(Ok(s.clone()));
                }
            }
        }
        awaited
    }

    fn execute(&mut self, action: Action) {
        match action {
            Action::CreateFiles { id, status, seq } => {
                self.job(StoreJob::Create { id, status, seq });
            }
            Action::WriteStatus { id, status, seq } => {
                self.job(StoreJob::Write { id, status, seq });
            }
            Action::DropSecrets { id } => self.job(StoreJob::DropSecrets { id }),
            Action::DropUnit { id } => {
                self.dropping.entry(id).or_default();
                self.abort_tasks(id);
                self.stops.remove(&id);
                if let Some(progress) = self.progress.remove(&id) {
                    progress.send_modify(|p| p.ended = true);
                }
                self.job(StoreJob::Drop { id });
            }
            Action::Ended { id } => {
                // The unit's tasks are finishing on their own; forget their handles. A
                // progress nobody watches is made again, ended, for a later follower.
                self.tasks.remove(&id);
                if let Some(progress) = self.progress.get(&id) {
                    progress.send_modify(|p| p.ended = true);
                    if progress.receiver_count() == 0 {
                        self.progress.remove(&id);
                    }
                }
            }
            Action::Start { id } => self.start(id),
            Action::Reattach { id } => self.reattach(id),
            Action::Stop { id } => {
                if let Some(stop) = self.stops.get(&id) {
                    let _ = stop.send(true);
                }
            }
            Action::Answer { ticket, result } => self.answer(ticket, result),
            remote => self.remote(remote),
        }
    }

    /// The most results a remote unit of `work_type` may send back: the work type's own
    /// output cap when it is offered here, else `[work] mirror-output-mb`.
    fn mirror_cap(&self, work_type: &str) -> u64 {
        let offered = self.registry.borrow().get(work_type);
        offered.map_or(self.mirror_output, |active| {
            active.policy.limits.output_bytes
        })
    }

    fn remote(&mut self, action: Action) {
        let ctx = self.ctx.clone();
        match action {
            Action::Submit { id, node } => {
                let status = self.core.status(id, &Requester::Operator).ok().cloned();
                if let Some(status) = status {
                    let cap = self.mirror_cap(&status.work_type);
                    let progress = self.progress_of(id).clone();
                    let mirror = tasks::Mirror { progress, cap };
                    let task = tokio::spawn(tasks::submit(ctx, id, node, status, mirror));
                    self.tasks.entry(id).or_default().push(task);
                }
            }
            Action::Follow { id, node, remote } => {
                let work_type = self.core.status(id, &Requester::Operator).ok();
                let cap = self.mirror_cap(work_type.map_or("", |s| s.work_type.as_str()));
                let progress = self.progress_of(id).clone();
                let mirror = tasks::Mirror { progress, cap };
                let task = tokio::spawn(tasks::follow(ctx, id, (node, remote), mirror));
                self.tasks.entry(id).or_default().push(task);
            }
            Action::CancelRemote { id, node, remote } => {
                tokio::spawn(tasks::cancel_remote(ctx, id, node, remote));
            }
            Action::ReleaseRemote { id, node, remote } => {
                tokio::spawn(tasks::release_remote(ctx, id, node, remote));
            }
            _ => {}
        }
    }

    fn start(&mut self, id: UnitId) {
        let Ok(status) = self.core.status(id, &Requester::Operator).cloned() else {
            return;
        };
        // The unit takes its work type's handler now: a deploy after this does not change it.
        let active = self.registry.borrow().get(&status.work_type);
        let (stop, stopped) = watch::channel(false);
        self.stops.insert(id, stop);
        let progress = self.progress_of(id).clone();
        let run = tasks::run_handler(self.ctx.clone(), id, status, active, stopped, progress);
        let task = tokio::spawn(run);
        self.tasks.entry(id).or_default().push(task);
    }

    fn reattach(&mut self, id: UnitId) {
        let Ok(status) = self.core.status(id, &Requester::Operator) else {
            return;
        };
        let work_type = status.work_type.clone();
        // The job is held to its work type's quota as configured now (the record has none).
        let registry = self.registry.clone();
        let (stop, stopped) = watch::channel(false);
        self.stops.insert(id, stop);
        let progress = self.progress_of(id).clone();
        let run = tasks::reattach(self.ctx.clone(), id, work_type, registry, stopped, progress);
        let task = tokio::spawn(run);
        self.tasks.entry(id).or_default().push(task);
    }

    fn answer(&mut self, ticket: Ticket, result: Result<Answered, TicketError>) {
        if let Some(reply) = self.creates.remove(&ticket) {
            let result = match result {
                Ok(Answered::Created(id)) => Ok(Created::New(id)),
                Ok(Answered::Existing(id)) => Ok(Created::Existing(id)),
                Ok(Answered::Done) => Err(WorkError::Internal("no unit created".into())),
                Err(e) => Err(e.into()),
            };
            let _ = reply.send(result);
        } else if let Some((unit, reply)) = self.tickets.remove(&ticket) {
            let result = result.map_err(WorkError::from);
            // A release is answered once the unit's files are gone.
            match unit.and_then(|u| self.dropping.get_mut(&u)) {
                Some(waiting) => waiting.push((reply, result)),
                None => {
                    let _ = reply.send(result);
                }
            }
        }
    }

    fn abort_tasks(&mut self, id: UnitId) {
        for task in self.tasks.remove(&id).unwrap_or_default() {
            task.abort();
        }
    }

    fn job(&self, job: StoreJob) {
        let sent = self.store_thread.as_ref().is_some_and(|t| t.send(job));
        if !sent {
            tracing::error!("the unit store's thread has stopped");
        }
    }

    /// Commits what the store thread holds and joins it: the work layer is stopping.
    async fn stop_store(&mut self) {
        if let Some(thread) = self.store_thread.take()
            && tokio::task::spawn_blocking(move || thread.stop())
                .await
                .is_err()
        {
            tracing::error!("cannot join the unit store's thread");
        }
    }
}
