//! What the extension keeps per process: the tokio runtime its nodes run on and the
//! registry of shared client nodes. A Python process has one of each, made on first use;
//! these are the module's only statics, as a Python extension has no other owner to hang
//! them on.
//!
//! A child forked from a process that had them (`multiprocessing`, a pre-forking server)
//! inherits their memory but none of their threads: it starts its own on first use and
//! leaves the parent's untouched (never dropped, since dropping would wait for threads that
//! do not exist in the child).

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};

use crate::shared::Registry;

/// Worker threads of the runtime: the node's mesh driver, its link crypto and the jobs'
/// streams. Python threads drive their own calls (`block_on`), so two suffice.
const WORKER_THREADS: usize = 2;

/// The runtime and the registry of the process that made them.
struct PerProcess {
    pid: u32,
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
}

/// This process's [`PerProcess`], or a forked parent's (replaced on first use).
static CURRENT: Mutex<Option<PerProcess>> = Mutex::new(None);

/// The runtime and registry of this process, made on first use.
///
/// # Errors
/// The runtime's threads could not be started.
pub(crate) fn current() -> std::io::Result<(Arc<Runtime>, Arc<Registry>)> {
    let pid = std::process::id();
    let mut slot = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(current) = slot.as_ref()
        && current.pid == pid
    {
        return Ok((Arc::clone(&current.runtime), Arc::clone(&current.registry)));
    }
    if let Some(inherited) = slot.take() {
        // A forked child: those threads do not exist here.
        std::mem::forget(inherited);
    }
    let runtime = Arc::new(
        Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("warren-client")
            .enable_all()
            .build()?,
    );
    let registry = Registry::new(&runtime);
    *slot = Some(PerProcess {
        pid,
        runtime: Arc::clone(&runtime),
        registry: Arc::clone(&registry),
    });
    Ok((runtime, registry))
}

/// Runs `future` to completion on the calling thread, within this process's runtime (its
/// timers and sockets work); `None` if the runtime could not be started.
pub(crate) fn block_on<F: Future>(future: F) -> std::io::Result<F::Output> {
    let (runtime, _) = current()?;
    Ok(runtime.block_on(future))
}

/// Closes every shared node (their links are told why), waiting at most `timeout`.
pub(crate) fn shutdown_all(timeout: Duration) {
    let Ok((runtime, registry)) = current() else {
        return;
    };
    runtime.block_on(async {
        let _ = tokio::time::timeout(timeout, registry.shutdown_all()).await;
    });
}

/// How many shared nodes this process holds.
pub(crate) fn node_count() -> usize {
    current().map_or(0, |(_, registry)| registry.len())
}
