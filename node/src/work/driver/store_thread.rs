//! The unit store's own thread: every file operation of the work layer runs here, off the
//! async workers, in the order it was asked for.
//!
//! Status writes and releases are committed in groups: one flush of the store's journal for
//! everything that arrived together. A group is committed at once when something waits for
//! it — a release (answered once its files are gone), a unit's final status, or a
//! [`StoreJob::Flush`] the owner sends while the core holds an action back until a status is
//! durable (a remote submission). Writes nobody waits for (a unit queued, started, its
//! output size) stay in memory for at most [`FLUSH_DELAY`], so that the several statuses a
//! short job goes through reach the disk as one record, with its final one. The owner is
//! told how far the writes are durable. Work that must follow a commit (dropping a finished
//! unit's payload) waits for the next one instead of forcing its own. [`StoreThread::stop`]
//! commits what is left and joins the thread.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::Command;
use crate::work::status::UnitStatus;
use crate::work::store::{Entry, UnitStore};
use crate::work::unit::UnitId;

/// Changes committed in one batch at most.
const MAX_BATCH: usize = 512;

/// How long a status write nobody waits for may stay in memory before it is committed.
pub(super) const FLUSH_DELAY: Duration = Duration::from_millis(10);

/// A job for the store thread. `seq` numbers the core's status writes (see
/// [`crate::work::core::Core::statuses_durable`]).
pub(super) enum StoreJob {
    /// Make the unit's directory and files; answer `FilesCreated`; its first status is
    /// committed with a later batch.
    Create {
        id: UnitId,
        status: Box<UnitStatus>,
        seq: u64,
    },
    /// Write a status (batched; a final status is committed at once).
    Write {
        id: UnitId,
        status: Box<UnitStatus>,
        seq: u64,
    },
    /// Remove the unit's payload and job directory, once what was asked before is
    /// committed.
    DropSecrets { id: UnitId },
    /// Remove the unit's files (journaled first, at once); answer `Dropped`.
    Drop { id: UnitId },
    /// Commit what is pending now: something waits for it to be durable.
    Flush,
    /// Tests: the thread sleeps this long (a disk busy with a big removal).
    #[cfg(test)]
    Stall(Duration),
}

/// The running thread and the way to it.
pub(super) struct StoreThread {
    jobs: std_mpsc::Sender<StoreJob>,
    thread: Option<JoinHandle<()>>,
}

impl StoreThread {
    /// Starts the thread; writes nobody waits for are held back up to `delay`
    /// ([`FLUSH_DELAY`] outside tests).
    pub(super) fn start(
        store: Arc<UnitStore>,
        events: mpsc::UnboundedSender<Command>,
        delay: Duration,
    ) -> Self {
        let (jobs, rx) = std_mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("warren-store".into())
            .spawn(move || run(&store, &rx, &events, delay));
        let thread = match spawned {
            Ok(thread) => Some(thread),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the unit store's thread");
                None
            }
        };
        Self { jobs, thread }
    }

    /// Queues `job`; false when the thread has stopped.
    pub(super) fn send(&self, job: StoreJob) -> bool {
        self.jobs.send(job).is_ok()
    }

    /// Commits everything queued and waits for the thread to end (blocking).
    pub(super) fn stop(self) {
        let Self { jobs, thread } = self;
        drop(jobs);
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!("the unit store's thread panicked");
        }
    }
}

/// What waits for the next commit.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    /// The highest status write sequence in it.
    seq: Option<u64>,
    /// Units whose release is answered once it is committed.
    dropped: Vec<UnitId>,
    /// Units whose secrets go once the batch is committed.
    secrets: Vec<UnitId>,
    /// Whether something waits for this batch: commit it now.
    urgent: bool,
}

impl Batch {
    fn status(&mut self, id: UnitId, status: Box<UnitStatus>, seq: u64) {
        // A final status is an answer someone reads: it is not held back.
        self.urgent |= status.state.is_terminal();
        // A later status of the same unit replaces an earlier one in the batch.
        self.entries
            .retain(|e| !matches!(e, Entry::Status { unit, .. } if *unit == id));
        self.entries.push(Entry::Status { unit: id, status });
        self.seq_done(seq);
    }

    fn seq_done(&mut self, seq: u64) {
        self.seq = Some(self.seq.map_or(seq, |s| s.max(seq)));
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.seq.is_none() && self.secrets.is_empty()
    }

    /// Takes `job` into the batch (creating a unit's files at once).
    fn take(&mut self, store: &UnitStore, events: &mpsc::UnboundedSender<Command>, job: StoreJob) {
        match job {
            StoreJob::Write { id, status, seq } => self.status(id, status, seq),
            StoreJob::Create { id, status, seq } => {
                let result = store.create_unit(id, &status).map(|_| ());
                if result.is_ok() {
                    self.status(id, status, seq);
                } else {
                    // Nothing to commit for it, but its write number is done with.
                    self.seq_done(seq);
                }
                let _ = events.send(Command::FilesCreated { id, result });
            }
            StoreJob::Drop { id } => {
                self.entries
                    .retain(|e| !matches!(e, Entry::Status { unit, .. } if *unit == id));
                self.entries.push(Entry::Released { unit: id });
                self.dropped.push(id);
                self.urgent = true;
            }
            // Nothing asked before is pending: no need to wait for a commit.
            StoreJob::DropSecrets { id } if self.entries.is_empty() && self.seq.is_none() => {
                drop_secrets(store, id);
            }
            StoreJob::DropSecrets { id } => self.secrets.push(id),
            StoreJob::Flush => self.urgent = true,
            #[cfg(test)]
            StoreJob::Stall(time) => std::thread::sleep(time),
        }
    }
}

fn run(
    store: &UnitStore,
    rx: &std_mpsc::Receiver<StoreJob>,
    events: &mpsc::UnboundedSender<Command>,
    delay: Duration,
) {
    let mut batch = Batch::default();
    // When the oldest write nobody waits for must be committed.
    let mut due: Option<Instant> = None;
    loop {
        let job = match due {
            None => rx
                .recv()
                .map_err(|_| std_mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        match job {
            Ok(job) => batch.take(store, events, job),
            Err(std_mpsc::RecvTimeoutError::Timeout) => batch.urgent = true,
            Err(std_mpsc::RecvTimeoutError::Disconnected) => break,
        }
        // The clock starts at the first write held back.
        if due.is_none() && !batch.is_empty() {
            due = Some(Instant::now() + delay);
        }
        // Whatever arrived meanwhile joins this batch, a bounded number of jobs at a time:
        // one unit's writes replace each other, so a steady stream of them never fills it.
        for _ in 0..MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.take(store, events, job),
                Err(_) => break,
            }
        }
        // Jobs arriving without pause must not hold back a write past its due time.
        if due.is_some_and(|at| Instant::now() >= at) {
            batch.urgent = true;
        }
        if batch.urgent || batch.entries.len() >= MAX_BATCH {
            commit(store, &mut batch, events);
            due = None;
        }
    }
    // Every sender is gone (the work layer stops): nothing queued is lost.
    commit(store, &mut batch, events);
}

fn commit(store: &UnitStore, batch: &mut Batch, events: &mpsc::UnboundedSender<Command>) {
    let batch = std::mem::take(batch);
    if !batch.entries.is_empty() {
        for (entry, result) in batch.entries.iter().zip(store.commit(&batch.entries)) {
            match (entry, result) {
                (_, Ok(()))
                | (
                    Entry::Released { .. },
                    Err(crate::work::store::StoreError::UnknownUnit { .. }),
                ) => {}
                // Told before the batch is reported durable: the owner must not take
                // this write for a durable one.
                (Entry::Status { unit, .. }, Err(e)) => {
                    let (id, error) = (*unit, Arc::new(e));
                    let _ = events.send(Command::NotStored { id, error });
                }
                (Entry::Released { unit }, Err(e)) => {
                    tracing::error!(unit = %unit, error = %e, "cannot remove a released unit");
                }
            }
        }
    }
    for id in batch.secrets {
        drop_secrets(store, id);
    }
    if let Some(upto) = batch.seq {
        let _ = events.send(Command::Durable { upto });
    }
    for id in batch.dropped {
        let _ = events.send(Command::Dropped { id });
    }
}

fn drop_secrets(store: &UnitStore, id: UnitId) {
    if let Err(e) = store.drop_secrets(id) {
        tracing::error!(unit = %id, error = %e, "cannot remove a finished unit's payload and job directory");
    }
}

#[cfg(test)]
#[path = "store_thread_tests.rs"]
mod tests;
