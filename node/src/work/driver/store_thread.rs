//! The unit store's own thread: every file operation of the work layer runs here, off the
//! async workers, in the order it was asked for. Status writes that pile up while the disk
//! is busy are committed together (one `syncfs` before and one after their renames), so a
//! burst of small jobs does not pay two disk flushes per status change.

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use super::Command;
use crate::work::status::UnitStatus;
use crate::work::store::UnitStore;
use crate::work::unit::UnitId;

/// Status writes committed in one batch at most.
const MAX_BATCH: usize = 512;

/// A job for the store thread.
pub(super) enum StoreJob {
    /// Make the unit's directory and files; answer `FilesCreated`.
    Create { id: UnitId, status: Box<UnitStatus> },
    /// Write a status (batched).
    Write { id: UnitId, status: Box<UnitStatus> },
    /// Remove the unit's payload and job directory.
    DropSecrets { id: UnitId },
    /// Remove the unit's files.
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

fn run(
    store: &UnitStore,
    rx: &std_mpsc::Receiver<StoreJob>,
    events: &mpsc::UnboundedSender<Command>,
) {
    while let Ok(first) = rx.recv() {
        let mut writes: Vec<(UnitId, UnitStatus)> = Vec::new();
        let mut job = Some(first);
        while let Some(current) = job.take() {
            match current {
                StoreJob::Write { id, status } => {
                    // A later status of the same unit replaces an earlier one in the batch.
                    writes.retain(|(w, _)| *w != id);
                    writes.push((id, *status));
                }
                other => {
                    // Keep the order: pending writes go first.
                    commit(store, &mut writes);
                    perform(store, other, events);
                }
            }
            if writes.len() < MAX_BATCH {
                job = rx.try_recv().ok();
            }
        }
        commit(store, &mut writes);
    }
}

fn commit(store: &UnitStore, writes: &mut Vec<(UnitId, UnitStatus)>) {
    if writes.is_empty() {
        return;
    }
    for ((id, _), result) in writes.iter().zip(store.write_batch(writes)) {
        if let Err(e) = result {
            tracing::error!(unit = %id, error = %e, "cannot write a unit's status");
        }
    }
    writes.clear();
}

fn perform(store: &UnitStore, job: StoreJob, events: &mpsc::UnboundedSender<Command>) {
    match job {
        StoreJob::Create { id, status } => {
            let result = store
                .create_unit(id, &status)
                .map(|_| ())
                .map_err(|e| e.to_string());
            let _ = events.send(Command::FilesCreated { id, result });
        }
        StoreJob::DropSecrets { id } => {
            if let Err(e) = store.drop_secrets(id) {
                tracing::error!(unit = %id, error = %e, "cannot remove a finished unit's payload and job directory");
            }
        }
        StoreJob::Drop { id } => {
            match store.release(id) {
                Ok(()) | Err(crate::work::store::StoreError::UnknownUnit { .. }) => {}
                Err(e) => tracing::error!(unit = %id, error = %e, "cannot remove a released unit"),
            }
            let _ = events.send(Command::Dropped { id });
        }
        StoreJob::Write { .. } => {}
    }
}
