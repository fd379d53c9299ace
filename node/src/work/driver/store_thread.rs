//! The unit store's own thread: every file operation of the work layer runs here, off the
//! async workers, in the order it was asked for. Status writes and releases that pile up
//! while the disk is busy are committed together (one flush of the store's journal for the
//! batch), and the owner is told how far the writes are durable, so that whatever depends
//! on a status being on the disk (a remote submission) waits for exactly that.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use super::Command;
use crate::work::status::UnitStatus;
use crate::work::store::{Entry, UnitStore};
use crate::work::unit::UnitId;

/// Changes committed in one batch at most.
const MAX_BATCH: usize = 512;

/// A job for the store thread. `seq` numbers the core's status writes (see
/// [`crate::work::core::Core::statuses_durable`]).
pub(super) enum StoreJob {
    /// Make the unit's directory and files; answer `FilesCreated`; its first status is
    /// committed with the next batch.
    Create {
        id: UnitId,
        status: Box<UnitStatus>,
        seq: u64,
    },
    /// Write a status (batched).
    Write {
        id: UnitId,
        status: Box<UnitStatus>,
        seq: u64,
    },
    /// Remove the unit's payload and job directory.
    DropSecrets { id: UnitId },
    /// Remove the unit's files (journaled first); answer `Dropped`.
    Drop { id: UnitId },
}

/// Starts the thread; it ends when every sender is dropped.
pub(super) fn start(
    store: Arc<UnitStore>,
    events: mpsc::UnboundedSender<Command>,
) -> std_mpsc::Sender<StoreJob> {
    let (tx, rx) = std_mpsc::channel();
    let spawned = std::thread::Builder::new()
        .name("warren-store".into())
        .spawn(move || run(&store, &rx, &events));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the unit store's thread");
    }
    tx
}

/// What waits for the next commit.
#[derive(Default)]
struct Batch {
    entries: Vec<Entry>,
    /// The highest status write sequence in it.
    seq: Option<u64>,
    /// Units whose release is answered once it is committed.
    dropped: Vec<UnitId>,
}

impl Batch {
    fn status(&mut self, id: UnitId, status: Box<UnitStatus>, seq: u64) {
        // A later status of the same unit replaces an earlier one in the batch.
        self.entries
            .retain(|e| !matches!(e, Entry::Status { unit, .. } if *unit == id));
        self.entries.push(Entry::Status { unit: id, status });
        self.seq = Some(self.seq.map_or(seq, |s| s.max(seq)));
    }
}

fn run(
    store: &UnitStore,
    rx: &std_mpsc::Receiver<StoreJob>,
    events: &mpsc::UnboundedSender<Command>,
) {
    let mut batch = Batch::default();
    while let Ok(first) = rx.recv() {
        let mut job = Some(first);
        while let Some(current) = job.take() {
            match current {
                StoreJob::Write { id, status, seq } => batch.status(id, status, seq),
                StoreJob::Create { id, status, seq } => {
                    let result = store.create_unit(id, &status).map(|_| ());
                    if result.is_ok() {
                        batch.status(id, status, seq);
                    } else {
                        // Nothing to commit for it, but its write number is done with.
                        batch.seq = Some(batch.seq.map_or(seq, |s| s.max(seq)));
                    }
                    let _ = events.send(Command::FilesCreated { id, result });
                }
                StoreJob::Drop { id } => {
                    batch
                        .entries
                        .retain(|e| !matches!(e, Entry::Status { unit, .. } if *unit == id));
                    batch.entries.push(Entry::Released { unit: id });
                    batch.dropped.push(id);
                }
                StoreJob::DropSecrets { id } => {
                    // Keep the order: what was asked before goes first.
                    commit(store, &mut batch, events);
                    if let Err(e) = store.drop_secrets(id) {
                        tracing::error!(unit = %id, error = %e, "cannot remove a finished unit's payload and job directory");
                    }
                }
            }
            if batch.entries.len() < MAX_BATCH {
                job = rx.try_recv().ok();
            }
        }
        commit(store, &mut batch, events);
    }
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
                (Entry::Status { unit, .. }, Err(e)) => {
                    tracing::error!(unit = %unit, error = %e, "cannot write a unit's status");
                }
                (Entry::Released { unit }, Err(e)) => {
                    tracing::error!(unit = %unit, error = %e, "cannot remove a released unit");
                }
            }
        }
    }
    if let Some(upto) = batch.seq {
        let _ = events.send(Command::Durable { upto });
    }
    for id in batch.dropped {
        let _ = events.send(Command::Dropped { id });
    }
}
