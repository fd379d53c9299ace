//! The unit scheduler: the one task that owns the queue of units waiting to run, the
//! running units and each one's cancel switch. [`super::Work`] sends it messages.

use std::collections::{HashMap, VecDeque};

use tokio::sync::{mpsc, oneshot, watch};

use super::manager::Work;
use super::unit::{UnitId, UnitState};

/// What the scheduler is told.
pub(super) enum SchedCmd {
    Queue(UnitId),
    Done(UnitId),
    Cancel(UnitId, oneshot::Sender<()>),
}

/// The scheduler: owns the queue, the running units and their cancel switches.
pub(super) struct Scheduler {
    work: Work,
    rx: mpsc::UnboundedReceiver<SchedCmd>,
    queue: VecDeque<UnitId>,
    running: HashMap<UnitId, watch::Sender<bool>>,
}

impl Scheduler {
    pub(super) fn new(work: Work, rx: mpsc::UnboundedReceiver<SchedCmd>) -> Self {
        Self {
            work,
            rx,
            queue: VecDeque::new(),
            running: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self) {
        while let Some(cmd) = self.rx.recv().await {
            match cmd {
                SchedCmd::Queue(id) => self.queue.push_back(id),
                SchedCmd::Done(id) => {
                    self.running.remove(&id);
                }
                SchedCmd::Cancel(id, done) => {
                    self.cancel(id);
                    let _ = done.send(());
                }
            }
            self.start_queued();
            self.work.metrics().queue_depth(self.queue.len());
        }
    }

    fn cancel(&mut self, id: UnitId) {
        if let Some(switch) = self.running.get(&id) {
            let _ = switch.send(true);
        } else if let Some(pos) = self.queue.iter().position(|q| *q == id) {
            self.queue.remove(pos);
            let _ = self
                .work
                .finish(id, UnitState::Canceled, "Canceled before it started".into());
        } else if let Ok(status) = self.work.store().status(id) {
            // Created but its payload never came (or is still coming): nothing runs yet.
            if status.state == UnitState::Pending {
                let _ =
                    self.work
                        .finish(id, UnitState::Canceled, "Canceled before it started".into());
            }
        }
    }

    fn start_queued(&mut self) {
        while self.running.len() < self.work.max_running() {
            let Some(id) = self.queue.pop_front() else {
                return;
            };
            let (switch, cancelled) = watch::channel(false);
            self.running.insert(id, switch);
            tokio::spawn(self.work.clone().run_unit(id, cancelled));
        }
    }
}
