//! The host side of `job-io` and `cancel`: the job's payload and results streams, its log,
//! and the cancellation pollable.

use tokio::sync::watch;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, Pollable, subscribe};

use super::bindings::warren::worker::{cancel, job_io, types};
use super::state::JobState;

impl types::Host for JobState {}

impl job_io::Host for JobState {
    async fn payload(&mut self) -> wasmtime::Result<Option<Resource<DynInputStream>>> {
        let Some(stream) = self.payload.take() else {
            return Ok(None);
        };
        Ok(Some(self.table.push(stream)?))
    }

    async fn results(&mut self) -> wasmtime::Result<Option<Resource<DynOutputStream>>> {
        let Some(stream) = self.results.take() else {
            return Ok(None);
        };
        Ok(Some(self.table.push(stream)?))
    }

    async fn log(&mut self, level: job_io::Level, message: String) -> wasmtime::Result<()> {
        let unit = &self.unit;
        match level {
            job_io::Level::Debug => tracing::debug!(%unit, "{message}"),
            job_io::Level::Info => tracing::info!(%unit, "{message}"),
            job_io::Level::Warn => tracing::warn!(%unit, "{message}"),
            job_io::Level::Error => tracing::error!(%unit, "{message}"),
        }
        Ok(())
    }
}

/// Ready once the job is cancelled.
struct CancelPollable(watch::Receiver<bool>);

#[wasmtime_wasi::async_trait]
impl Pollable for CancelPollable {
    async fn ready(&mut self) {
        // An error means the sender is gone: the job is ending, which is as good as a cancel.
        let _ = self.0.wait_for(|cancelled| *cancelled).await;
    }
}

impl cancel::Host for JobState {
    async fn subscribe(&mut self) -> wasmtime::Result<Resource<DynPollable>> {
        let pollable = self.table.push(CancelPollable(self.cancelled.clone()))?;
        subscribe(&mut self.table, pollable)
    }

    async fn is_cancelled(&mut self) -> wasmtime::Result<bool> {
        Ok(*self.cancelled.borrow())
    }
}
