//! A started node's life until it stops: SIGHUP reloads the config, SIGINT or SIGTERM stops
//! it (draining running units first when `[work] drain-on-stop` says so, a second signal
//! stops at once), and what the process sets up before it starts (the open-files limit, the
//! config's log level).

use std::path::Path;

use tokio::sync::watch;

use super::{ConfigSource, StartError, start};
use crate::config::Config;
use crate::work::Work;

/// Applies the config's `[node] log-level` to the process's log filter, saying so when a
/// higher source (`RUST_LOG`, `-v`) keeps its own.
pub(crate) fn apply_log_level(config: &Config) {
    use crate::logging::LogChange;
    match crate::logging::apply_config(config.log_level.as_deref()) {
        Ok(LogChange::Applied) => tracing::info!(
            level = config.log_level.as_deref().unwrap_or("the default"),
            "log level set from the config"
        ),
        Ok(LogChange::Pinned(by)) if config.log_level.is_some() => tracing::info!(
            pinned_by = by,
            "[node] log-level not applied: {by} sets the log filter"
        ),
        Ok(_) => {}
        // Validated when the config was read; a failure here is the subscriber's.
        Err(e) => tracing::warn!(error = %e, "cannot change the log level"),
    }
}

/// Runs a node until SIGINT or SIGTERM; `source` as for [`start`].
///
/// # Errors
/// [`StartError`] when the node cannot start.
pub async fn run(
    config: &Config,
    ready_file: Option<&Path>,
    source: Option<ConfigSource>,
) -> Result<(), StartError> {
    raise_fd_limit();
    forbid_inspection();
    apply_log_level(config);
    let node = start(config, source).await?;
    if let Some(path) = ready_file {
        node.write_ready_file(path)?;
    }
    let mut signals = Signals::new();
    loop {
        match signals.next().await {
            Signal::Stop => break,
            Signal::Reload => {
                tracing::info!("SIGHUP: reloading the config");
                let _ = node.reloader.reload().await;
            }
        }
    }
    if node.reloader.current().await.work.drain_on_stop {
        tokio::select! {
            () = drain(&node.work, node.work_sessions.clone()) => {}
            () = signals.next_stop() => tracing::warn!("second signal: stopping without waiting for running units"),
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

/// Waits for the units running here to end, refusing new ones meanwhile (logging how many
/// remain every [`DRAIN_REPORT`]), then for their followers on the mesh to read the end
/// (at most [`DRAIN_FOLLOWERS`]).
async fn drain(work: &Work, mut sessions: watch::Receiver<usize>) {
    let Ok(mut running) = work.drain().await else {
        return;
    };
    loop {
        let left = *running.borrow_and_update();
        if left == 0 {
            tracing::info!("drained: no unit runs here; letting followers read the end");
            let followers = sessions.wait_for(|n| *n == 0);
            let _ = tokio::time::timeout(DRAIN_FOLLOWERS, followers).await;
            return;
        }
        tracing::info!(
            running = left,
            "draining: waiting for running units to end (a second signal stops at once)"
        );
        if let Ok(Err(_gone)) = tokio::time::timeout(DRAIN_REPORT, running.changed()).await {
            // The work layer stopped: nothing left to wait for.
            return;
        }
    }
}

/// How often draining reports the units still running.
const DRAIN_REPORT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a drained node waits for results followers on the mesh to finish.
const DRAIN_FOLLOWERS: std::time::Duration = std::time::Duration::from_secs(30);

/// Makes the node non-dumpable: no core file (its memory holds payloads, `secret_*`
/// parameters and its private keys), and no process of the same user but root may trace it
/// or open its `/proc/<pid>/` files. Jobs run as the node's user: without this, a job could
/// open another job's stdin or stdout pipe through `/proc/<node>/fd` (the node holds their
/// other ends) and read its payload or output, or read the node's memory. A job gets the
/// usual setting back at its `exec`; root is not held back by it.
fn forbid_inspection() {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::warn!(error = %e, "cannot make the node non-dumpable: jobs of its user could open its descriptors through /proc");
    }
}

/// Raises the soft limit on open files to the hard limit: links, streams, jobs and the
/// control socket all take descriptors, and the usual soft limit of 1024 is low for a relay.
/// The connection caps keep a flood of half-open connections from using them up.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                tracing::debug!(
                    from = limit.rlim_cur,
                    to = limit.rlim_max,
                    "raised the open files limit"
                );
            }
        }
    }
}

/// What a signal asks of the node.
enum Signal {
    /// SIGINT or SIGTERM.
    Stop,
    /// SIGHUP.
    Reload,
}

/// SIGINT, SIGTERM and SIGHUP.
struct Signals {
    handlers: Option<[tokio::signal::unix::Signal; 3]>,
}

impl Signals {
    fn new() -> Self {
        use tokio::signal::unix::{SignalKind, signal};
        let handlers = match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) {
            (Ok(int), Ok(term), Ok(hup)) => Some([int, term, hup]),
            _ => None,
        };
        Self { handlers }
    }

    /// The next signal (never, without handlers: the node runs until killed).
    async fn next(&mut self) -> Signal {
        let Some([int, term, hup]) = &mut self.handlers else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => Signal::Stop,
            _ = term.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
        }
    }

    /// The next SIGINT or SIGTERM (SIGHUP is ignored meanwhile).
    async fn next_stop(&mut self) {
        while let Signal::Reload = self.next().await {}
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_node_process_is_made_non_dumpable() {
        // In a child, so that this test binary keeps its own setting.
        // SAFETY: the child only calls async-signal-safe prctl and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            super::forbid_inspection();
            // SAFETY: prctl with integer arguments; _exit ends the child at once.
            unsafe {
                let dumpable = libc::prctl(libc::PR_GET_DUMPABLE, 0, 0, 0, 0);
                libc::_exit(if dumpable == 0 { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}
