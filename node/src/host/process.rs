//! The host side of `process`: spawn an allow-listed program (piped or detached), and the
//! child resource with its pipes, exit pollable and signals.
//!
//! Every request is checked against the work type's [`super::policy::Policy`] first; a
//! refusal is a WIT error value. Children run with a cleared environment inside their own
//! containment ([`super::contain`]: a cgroup, else a subreaper supervisor, with rlimits),
//! and a child is killed with everything it started when its resource is dropped, which
//! happens at the latest when the job's store is dropped: children never outlive their job
//! (a detached child outlives it only when the node is stopping and will re-attach).

use std::sync::Arc;

use tokio::io::AsyncRead;
use tokio::sync::watch;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::pipe::{AsyncReadStream, AsyncWriteStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, Pollable, subscribe};

use super::bindings::warren::worker::process::{self as wit, ExitStatus as WitExit, SpawnError};
use super::contain::Containment;
use super::contain::record::ProgramExit;
use super::contain::spawn::{self, BoxedWrite, Pipes, Resolved, Spawned};
use super::contain::watch::Killer;
use super::fds::{CHILD_DESCRIPTORS, FdToken, Held};
use super::policy::{Denied, resolve_cwd};
use super::state::JobState;

/// Bytes the guest may have buffered towards a child's stdin before it must wait.
const STDIN_WRITE_BUDGET: usize = 64 * 1024;

/// A running child process (the `child` resource).
pub struct Child {
    pid: u32,
    stdin: Option<Held<BoxedWrite>>,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    exit: watch::Receiver<Option<ProgramExit>>,
    /// Stops the child and everything it started.
    killer: Killer,
    /// For a detached child: the node's containment, which says whether detached jobs are
    /// to be left running (the node is stopping).
    detached: Option<Arc<Containment>>,
    /// Counts the child's descriptors against the job's cap while it or a pipe lives.
    _fds: FdToken,
}

impl std::fmt::Debug for Child {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.pid)
            .finish_non_exhaustive()
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let leave = self.detached.as_ref().is_some_and(|c| c.leaves_detached());
        if self.exit.borrow().is_none() && !leave {
            self.killer.kill();
        }
    }
}

impl Child {
    /// The child resource; its pipes keep `fds` (its count against the job's descriptor
    /// cap) alive as long as any of them lives.
    fn new(spawned: Spawned, detached: Option<Arc<Containment>>, fds: FdToken) -> Self {
        let held = |s: Box<dyn AsyncRead + Send + Unpin>| -> Box<dyn AsyncRead + Send + Unpin> {
            Box::new(Held::new(s, fds.clone()))
        };
        Self {
            pid: spawned.pid,
            stdin: spawned.stdin.map(|s| Held::new(s, fds.clone())),
            stdout: spawned.stdout.map(held),
            stderr: spawned.stderr.map(held),
            exit: spawned.exit,
            killer: spawned.killer,
            detached,
            _fds: fds,
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Child {
    async fn ready(&mut self) {
        let _ = self.exit.wait_for(Option::is_some).await;
    }
}

fn denied(d: Denied) -> SpawnError {
    match d {
        Denied::NotAllowed(_) => SpawnError::NotAllowed(d.to_string()),
        Denied::NotFound { .. } => SpawnError::NotFound(d.to_string()),
        Denied::BadWorkingDirectory(_) => SpawnError::BadWorkingDirectory(d.to_string()),
        Denied::EnvNotAllowed(_) => SpawnError::EnvNotAllowed(d.to_string()),
        Denied::ArgNotAllowed { .. } => SpawnError::NotAllowed(d.to_string()),
    }
}

impl JobState {
    /// Checks a spawn request against the policy and resolves it.
    fn resolve(&self, cmd: &wit::Command) -> Result<Resolved, SpawnError> {
        let policy = &self.policy;
        let program = policy.resolve_program(&cmd.program).map_err(denied)?;
        let env = policy.child_env(&self.job_dir, &cmd.env).map_err(denied)?;
        let cwd = resolve_cwd(&self.job_dir, cmd.cwd.as_deref()).map_err(denied)?;
        (policy.check_args(&cmd.program, &cmd.args, &self.job_dir, &cwd)).map_err(denied)?;
        Ok(Resolved {
            program: program.to_owned(),
            args: cmd.args.clone(),
            env,
            cwd,
        })
    }

    async fn spawn_child(
        &mut self,
        cmd: &wit::Command,
        merge_stderr: bool,
    ) -> Result<Child, SpawnError> {
        let resolved = self.resolve(cmd)?;
        self.admit(CHILD_DESCRIPTORS, 1)
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        let io = |e: std::io::Error| SpawnError::Io(format!("cannot start {:?}: {e}", cmd.program));
        let pipes = Pipes::new(merge_stderr).map_err(io)?;
        let spawned = spawn::piped(&mut self.contain, &self.unit, &resolved, pipes)
            .await
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        tracing::info!(unit = %self.unit, program = %cmd.program, pid = spawned.pid, "spawned child");
        let fds = self.track_child();
        Ok(Child::new(spawned, None, fds))
    }

    async fn spawn_detached_child(
        &mut self,
        cmd: &wit::Command,
        label: &str,
    ) -> Result<Child, SpawnError> {
        let resolved = self.resolve(cmd)?;
        self.admit(CHILD_DESCRIPTORS, 1)
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        let label = printable_label(label);
        let spawned = spawn::detached(&mut self.contain, &self.unit, &resolved, &label)
            .await
            .map_err(|e| SpawnError::Io(e.to_string()))?;
        tracing::info!(unit = %self.unit, program = %cmd.program, pid = spawned.pid, "spawned detached child");
        let containment = self.contain.containment.clone();
        // It writes into the job directory like any child: its disk is watched from now.
        let fds = self.track_child();
        Ok(Child::new(
            spawned,
            containment.or_else(|| Some(Arc::new(Containment::process_groups()))),
            fds,
        ))
    }

    fn push_child(
        &mut self,
        program: &str,
        spawned: Result<Child, SpawnError>,
    ) -> wasmtime::Result<Result<Resource<Child>, SpawnError>> {
        match spawned {
            Ok(child) => Ok(Ok(self.table.push(child)?)),
            Err(e) => {
                tracing::warn!(unit = %self.unit, %program, error = ?e, "spawn refused");
                Ok(Err(e))
            }
        }
    }
}

/// Longest label kept from a guest (it ends up in records and unit details).
const MAX_LABEL: usize = 128;

/// A guest's label for a detached program, safe to store and print: control characters
/// (terminal escapes) dropped, at most [`MAX_LABEL`] characters, never empty.
fn printable_label(label: &str) -> String {
    let clean: String = label
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_LABEL)
        .collect();
    if clean.trim().is_empty() {
        "program".to_owned()
    } else {
        clean
    }
}

fn exit_status(status: ProgramExit) -> WitExit {
    match status {
        ProgramExit::Exited(code) => WitExit::Exited(code),
        ProgramExit::Signaled(signal) => WitExit::Signaled(signal),
    }
}

impl wit::Host for JobState {
    async fn spawn(
        &mut self,
        cmd: wit::Command,
        merge_stderr: bool,
    ) -> wasmtime::Result<Result<Resource<Child>, SpawnError>> {
        let spawned = self.spawn_child(&cmd, merge_stderr).await;
        self.push_child(&cmd.program, spawned)
    }

    async fn can_detach(&mut self) -> wasmtime::Result<bool> {
        let supervisor = self
            .contain
            .containment
            .as_ref()
            .is_some_and(|c| c.supervisor().is_some());
        Ok(supervisor && self.contain.files.is_some() && !self.contain.detached_started)
    }

    async fn spawn_detached(
        &mut self,
        cmd: wit::Command,
        label: String,
    ) -> wasmtime::Result<Result<Resource<Child>, SpawnError>> {
        let spawned = self.spawn_detached_child(&cmd, &label).await;
        self.push_child(&cmd.program, spawned)
    }
}

impl wit::HostChild for JobState {
    async fn take_stdin(
        &mut self,
        child: Resource<Child>,
    ) -> wasmtime::Result<Option<Resource<DynOutputStream>>> {
        let Some(stdin) = self.table.get_mut(&child)?.stdin.take() else {
            return Ok(None);
        };
        let stream: DynOutputStream = Box::new(AsyncWriteStream::new(STDIN_WRITE_BUDGET, stdin));
        Ok(Some(self.table.push(stream)?))
    }

    async fn take_stdout(
        &mut self,
        child: Resource<Child>,
    ) -> wasmtime::Result<Option<Resource<DynInputStream>>> {
        let Some(stdout) = self.table.get_mut(&child)?.stdout.take() else {
            return Ok(None);
        };
        let stream: DynInputStream = Box::new(AsyncReadStream::new(stdout));
        Ok(Some(self.table.push(stream)?))
    }

    async fn take_stderr(
        &mut self,
        child: Resource<Child>,
    ) -> wasmtime::Result<Option<Resource<DynInputStream>>> {
        let Some(stderr) = self.table.get_mut(&child)?.stderr.take() else {
            return Ok(None);
        };
        let stream: DynInputStream = Box::new(AsyncReadStream::new(stderr));
        Ok(Some(self.table.push(stream)?))
    }

    async fn subscribe_exit(
        &mut self,
        child: Resource<Child>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        let borrowed = Resource::<Child>::new_borrow(child.rep());
        subscribe(&mut self.table, borrowed)
    }

    async fn try_wait(&mut self, child: Resource<Child>) -> wasmtime::Result<Option<WitExit>> {
        let status = *self.table.get(&child)?.exit.borrow();
        Ok(status.map(exit_status))
    }

    async fn signal(&mut self, child: Resource<Child>, sig: wit::Signal) -> wasmtime::Result<()> {
        let c = self.table.get(&child)?;
        if c.exit.borrow().is_none() {
            match sig {
                // ansible-runner handles SIGTERM itself and stops its own children.
                wit::Signal::Terminate => c.killer.terminate(),
                wit::Signal::Kill => c.killer.kill(),
            }
        }
        Ok(())
    }

    async fn pid(&mut self, child: Resource<Child>) -> wasmtime::Result<u32> {
        Ok(self.table.get(&child)?.pid)
    }

    async fn drop(&mut self, child: Resource<Child>) -> wasmtime::Result<()> {
        self.table.delete(child)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hostile_label_is_cleaned_and_bounded() {
        assert_eq!(
            printable_label("ansible-runner worker"),
            "ansible-runner worker"
        );
        assert_eq!(printable_label("\u{1b}]0;pwned\u{7}x"), "]0;pwnedx");
        assert_eq!(printable_label(&"a".repeat(10_000)).len(), MAX_LABEL);
        assert_eq!(printable_label("\n\t"), "program");
    }
}
