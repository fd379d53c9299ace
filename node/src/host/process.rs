//! The host side of `process`: spawn an allow-listed program, and the child resource with
//! its pipes, exit pollable and signals.
//!
//! Every request is checked against the work type's [`super::policy::Policy`] first; a
//! refusal is a WIT error value. Children run in their own process group with a cleared
//! environment, and a child is killed (with its group) when its resource is dropped, which
//! happens at the latest when the job's store is dropped: children never outlive their job.

use std::process::{ExitStatus, Stdio};

use tokio::io::AsyncRead;
use tokio::process::{ChildStdin, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use wasmtime::component::Resource;
use wasmtime_wasi::p2::pipe::{AsyncReadStream, AsyncWriteStream};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, Pollable, subscribe};

use super::bindings::warren::worker::process::{self as wit, ExitStatus as WitExit, SpawnError};
use super::fds::{CHILD_DESCRIPTORS, FdToken, Held};
use super::policy::{Denied, resolve_cwd};
use super::state::JobState;

/// Bytes the guest may have buffered towards a child's stdin before it must wait.
const STDIN_WRITE_BUDGET: usize = 64 * 1024;

/// A running child process (the `child` resource).
pub struct Child {
    pid: u32,
    stdin: Option<Held<ChildStdin>>,
    stdout: Option<Box<dyn AsyncRead + Send + Unpin>>,
    stderr: Option<Box<dyn AsyncRead + Send + Unpin>>,
    exit: watch::Receiver<Option<ExitStatus>>,
    /// Owns the `tokio::process::Child` and reaps it; aborting it kills the child.
    waiter: JoinHandle<()>,
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
        if self.exit.borrow().is_none() {
            kill_group(self.pid, libc::SIGKILL);
        }
        self.waiter.abort();
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Child {
    async fn ready(&mut self) {
        let _ = self.exit.wait_for(Option::is_some).await;
    }
}

/// Sends `signal` to the process group led by `pid` (children spawn their own group).
fn kill_group(pid: u32, signal: i32) {
    if let Ok(pid) = i32::try_from(pid) {
        // SAFETY: kill(2) has no memory effects; a stale pid at worst hits nothing.
        unsafe {
            libc::kill(-pid, signal);
        }
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
    /// Checks a spawn request against the policy and builds the command.
    fn command(&self, cmd: &wit::Command) -> Result<Command, SpawnError> {
        let policy = &self.policy;
        let program = policy.resolve_program(&cmd.program).map_err(denied)?;
        let env = policy.child_env(&self.job_dir, &cmd.env).map_err(denied)?;
        let cwd = resolve_cwd(&self.job_dir, cmd.cwd.as_deref()).map_err(denied)?;
        (policy.check_args(&cmd.program, &cmd.args, &self.job_dir, &cwd)).map_err(denied)?;
        let mut command = Command::new(program);
        command
            .args(&cmd.args)
            .env_clear()
            .envs(env)
            .current_dir(cwd)
            .process_group(0)
            .kill_on_drop(true)
            .stdin(Stdio::piped());
        Ok(command)
    }

    fn spawn_child(&mut self, cmd: &wit::Command, merge_stderr: bool) -> Result<Child, SpawnError> {
        let mut command = self.command(cmd)?;
        self.admit(CHILD_DESCRIPTORS, 1).map_err(SpawnError::Io)?;
        let io = |e: std::io::Error| SpawnError::Io(format!("cannot start {:?}: {e}", cmd.program));
        let merged = if merge_stderr {
            let (reader, writer) = std::io::pipe().map_err(io)?;
            command
                .stdout(writer.try_clone().map_err(io)?)
                .stderr(writer);
            Some(reader)
        } else {
            command.stdout(Stdio::piped()).stderr(Stdio::piped());
            None
        };
        let mut child = command.spawn().map_err(io)?;
        // The command (holding the pipe's write ends) must be gone before EOF can come.
        drop(command);
        let pid = child.id().unwrap_or(0);
        let fds = self.track_child();
        let stdout: Option<Box<dyn AsyncRead + Send + Unpin>> = match merged {
            Some(reader) => Some(Box::new(Held::new(
                pipe_reader(reader).map_err(io)?,
                fds.clone(),
            ))),
            None => child
                .stdout
                .take()
                .map(|s| Box::new(Held::new(s, fds.clone())) as _),
        };
        let stderr = child
            .stderr
            .take()
            .map(|s| Box::new(Held::new(s, fds.clone())) as _);
        let stdin = child.stdin.take().map(|s| Held::new(s, fds.clone()));
        let (tx, exit) = watch::channel(None);
        let waiter = tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                let _ = tx.send(Some(status));
            }
        });
        tracing::info!(unit = %self.unit, program = %cmd.program, pid, "spawned child");
        Ok(Child {
            pid,
            stdin,
            stdout,
            stderr,
            exit,
            waiter,
            _fds: fds,
        })
    }
}

/// The read end of an OS pipe as a tokio reader.
fn pipe_reader(reader: std::io::PipeReader) -> std::io::Result<tokio::net::unix::pipe::Receiver> {
    let fd = std::os::fd::OwnedFd::from(reader);
    tokio::net::unix::pipe::Receiver::from_owned_fd(fd)
}

fn exit_status(status: ExitStatus) -> WitExit {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => WitExit::Exited(code),
        (None, Some(signal)) => WitExit::Signaled(signal),
        (None, None) => WitExit::Exited(-1),
    }
}

impl wit::Host for JobState {
    async fn spawn(
        &mut self,
        cmd: wit::Command,
        merge_stderr: bool,
    ) -> wasmtime::Result<Result<Resource<Child>, SpawnError>> {
        match self.spawn_child(&cmd, merge_stderr) {
            Ok(child) => Ok(Ok(self.table.push(child)?)),
            Err(e) => {
                tracing::warn!(unit = %self.unit, program = %cmd.program, error = ?e, "spawn refused");
                Ok(Err(e))
            }
        }
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
                wit::Signal::Terminate => {
                    if let Ok(pid) = i32::try_from(c.pid) {
                        // SAFETY: kill(2) has no memory effects.
                        unsafe {
                            libc::kill(pid, libc::SIGTERM);
                        }
                    }
                }
                wit::Signal::Kill => kill_group(c.pid, libc::SIGKILL),
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
