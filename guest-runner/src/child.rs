//! Running one child to its end, for every handler: spawn it, relay the job's streams
//! through it (or, detached, let it use the unit's files directly), and turn how it ended
//! into the job's outcome.
//!
//! A refused spawn is an outcome, never a trap. [`outcome`] is pure; the node words a
//! re-attached detached job's outcome the same way (`host/contain/detached.rs`), so keep
//! the two in step.

use crate::bindings::warren::worker::cancel;
use crate::bindings::warren::worker::job_io::{self, Level};
use crate::bindings::warren::worker::process::{
    self, Child, Command, ExitStatus, Signal, SpawnError,
};
use crate::bindings::warren::worker::types::{Failure, Outcome};
use crate::bindings::wasi::io::poll::{self, Pollable};
use crate::relay::{self, Ended, Streams};

/// Spawns `cmd`, relays payload → stdin and stdout → results (stderr to the log unless
/// `merge_stderr`), and returns the job's outcome. `label` names the child in details.
pub(crate) fn run(label: &str, cmd: &Command, merge_stderr: bool) -> Outcome {
    if cancel::is_cancelled() {
        return Outcome::Canceled(Failure {
            detail: format!("canceled before {label} started"),
            exit_code: None,
        });
    }
    let child = match process::spawn(cmd, merge_stderr) {
        Ok(child) => child,
        Err(error) => return spawn_failed(label, &error),
    };
    job_io::log(
        Level::Info,
        &format!("started {label} as pid {}", child.pid()),
    );
    let streams = Streams {
        payload: job_io::payload(),
        stdin: child.take_stdin(),
        stdout: child.take_stdout(),
        results: job_io::results(),
        stderr: child.take_stderr(),
    };
    let ended = relay::run(&child, streams, cancel::subscribe());
    outcome(label, ended)
}

/// Runs `cmd` detached where the node can (its stdin is the job's payload file and its
/// stdout goes straight to the results file, under a supervisor that survives a restart of
/// the node), else relayed as [`run`] does with stderr logged. On cancel the child gets
/// `terminate` once and is waited for; the node kills it after its grace period.
pub(crate) fn run_detached(label: &str, cmd: &Command) -> Outcome {
    if !process::can_detach() {
        job_io::log(
            Level::Debug,
            &format!("this node cannot detach {label}; relaying its streams"),
        );
        return run(label, cmd, false);
    }
    if cancel::is_cancelled() {
        return Outcome::Canceled(Failure {
            detail: format!("canceled before {label} started"),
            exit_code: None,
        });
    }
    let child = match process::spawn_detached(cmd, label) {
        Ok(child) => child,
        Err(error) => return spawn_failed(label, &error),
    };
    job_io::log(
        Level::Info,
        &format!("started {label} detached as pid {}", child.pid()),
    );
    outcome(label, wait(&child, &cancel::subscribe()))
}

/// Waits for a child without streams; sends it `terminate` once when the job is cancelled.
fn wait(child: &Child, cancel: &Pollable) -> Ended {
    let exit = child.subscribe_exit();
    let mut canceled = false;
    loop {
        if let Some(status) = child.try_wait() {
            return Ended {
                status: Some(status),
                canceled,
            };
        }
        let ready = if canceled {
            poll::poll(&[&exit])
        } else {
            poll::poll(&[&exit, cancel])
        };
        if !canceled && ready.contains(&1) {
            canceled = true;
            child.signal(Signal::Terminate);
        }
    }
}

/// The outcome for a refused spawn: the node's message already names the program and what
/// its policy refused (program, arguments, directory, variable) or why it could not start.
fn spawn_failed(label: &str, error: &SpawnError) -> Outcome {
    let (SpawnError::NotAllowed(reason)
    | SpawnError::NotFound(reason)
    | SpawnError::BadWorkingDirectory(reason)
    | SpawnError::EnvNotAllowed(reason)
    | SpawnError::Io(reason)) = error;
    Outcome::Failed(Failure {
        detail: format!("cannot start {label}: {reason}"),
        exit_code: None,
    })
}

/// The job's outcome from how its child ended. A cancelled job is `canceled` whatever the
/// child's status; otherwise only exit code 0 succeeds.
pub(crate) fn outcome(label: &str, ended: Ended) -> Outcome {
    let (how, exit_code) = match ended.status {
        Some(ExitStatus::Exited(0)) if !ended.canceled => return Outcome::Succeeded,
        Some(ExitStatus::Exited(code)) => (format!("{label} exited with code {code}"), Some(code)),
        Some(ExitStatus::Signaled(signal)) => {
            (format!("{label} was killed by signal {signal}"), None)
        }
        None => (format!("{label} ended without an exit status"), None),
    };
    if ended.canceled {
        Outcome::Canceled(Failure {
            detail: format!("canceled; {how}"),
            exit_code,
        })
    } else {
        Outcome::Failed(Failure {
            detail: how,
            exit_code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outcome as (kind, detail, exit code): the generated types have no `PartialEq`.
    fn summary(outcome: &Outcome) -> (&'static str, String, Option<i32>) {
        match outcome {
            Outcome::Succeeded => ("succeeded", String::new(), None),
            Outcome::Failed(f) => ("failed", f.detail.clone(), f.exit_code),
            Outcome::Canceled(f) => ("canceled", f.detail.clone(), f.exit_code),
        }
    }

    fn ended(status: Option<ExitStatus>, canceled: bool) -> Ended {
        Ended { status, canceled }
    }

    #[test]
    fn exit_zero_succeeds() {
        let outcome = outcome("w", ended(Some(ExitStatus::Exited(0)), false));
        assert_eq!(summary(&outcome).0, "succeeded");
    }

    #[test]
    fn non_zero_exit_fails_with_its_code() {
        let outcome = outcome(
            "ansible-runner worker",
            ended(Some(ExitStatus::Exited(2)), false),
        );
        assert_eq!(
            summary(&outcome),
            (
                "failed",
                "ansible-runner worker exited with code 2".into(),
                Some(2)
            )
        );
    }

    #[test]
    fn signal_fails_without_code() {
        let outcome = outcome("cat", ended(Some(ExitStatus::Signaled(9)), false));
        assert_eq!(
            summary(&outcome),
            ("failed", "cat was killed by signal 9".into(), None)
        );
    }

    #[test]
    fn cancelled_job_is_canceled_even_after_clean_exit() {
        let outcome = outcome("cat", ended(Some(ExitStatus::Exited(0)), true));
        assert_eq!(
            summary(&outcome),
            (
                "canceled",
                "canceled; cat exited with code 0".into(),
                Some(0)
            )
        );
    }

    #[test]
    fn cancelled_job_killed_by_signal_is_canceled() {
        let outcome = outcome("cat", ended(Some(ExitStatus::Signaled(15)), true));
        assert_eq!(
            summary(&outcome),
            (
                "canceled",
                "canceled; cat was killed by signal 15".into(),
                None
            )
        );
    }

    #[test]
    fn missing_status_fails() {
        let outcome = outcome("cat", ended(None, false));
        assert_eq!(
            summary(&outcome),
            ("failed", "cat ended without an exit status".into(), None)
        );
    }

    #[test]
    fn refused_spawn_names_the_reason() {
        let refused = "program \"ssh\" is not allowed for this work type";
        let outcome = spawn_failed("ssh", &SpawnError::NotAllowed(refused.into()));
        assert_eq!(
            summary(&outcome),
            ("failed", format!("cannot start ssh: {refused}"), None)
        );
    }
}
