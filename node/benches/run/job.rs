//! One measured process: spawned with its output in files, reaped with `wait4` for its wall
//! time, exit code and peak RSS; and the peak RSS of a live process from `/proc`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

/// A started process whose output goes to `<prefix>.stdout` and `<prefix>.stderr`.
pub(crate) struct Running {
    child: Child,
    started: Instant,
    prefix: PathBuf,
}

/// A finished process.
pub(crate) struct Finished {
    /// Wall time from spawn to reaping, seconds.
    pub(crate) secs: f64,
    /// Exit code (None if killed by a signal).
    pub(crate) code: Option<i32>,
    /// Peak RSS in MiB: the kernel's high-water mark (`ru_maxrss`, what `VmHWM` shows).
    pub(crate) peak_mib: f64,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    /// Fails with the output unless the process exited 0.
    pub(crate) fn check(&self, what: &str) -> anyhow::Result<()> {
        if self.code != Some(0) {
            bail!(
                "{what} exited {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(())
    }
}

/// Spawns `cmd` with its output in files named by `prefix`.
pub(crate) fn spawn(mut cmd: Command, prefix: &Path) -> anyhow::Result<Running> {
    let stdout = std::fs::File::create(prefix.with_extension("stdout"))?;
    let stderr = std::fs::File::create(prefix.with_extension("stderr"))?;
    let started = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    Ok(Running {
        child,
        started,
        prefix: prefix.to_owned(),
    })
}

impl Running {
    /// Reaps the process with `wait4`, which also reports its peak RSS.
    pub(crate) fn wait(self) -> anyhow::Result<Finished> {
        let pid = self.child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: an all-zero rusage is a valid value of this plain C struct.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: wait4 writes only into the two valid out-pointers; `pid` is our unreaped
        // child, and nothing else waits for it (the `Child` is dropped without waiting).
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        let secs = self.started.elapsed().as_secs_f64();
        if reaped != pid {
            bail!("wait4({pid}): {}", std::io::Error::last_os_error());
        }
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        Ok(Finished {
            secs,
            code,
            peak_mib: usage.ru_maxrss as f64 / 1024.0,
            stdout: std::fs::read_to_string(self.prefix.with_extension("stdout"))?,
            stderr: std::fs::read_to_string(self.prefix.with_extension("stderr"))?,
        })
    }
}

/// Spawns `cmd` and waits for it.
pub(crate) fn run(cmd: Command, prefix: &Path) -> anyhow::Result<Finished> {
    spawn(cmd, prefix)?.wait()
}

/// `VmHWM` (peak RSS) of a live process, MiB.
pub(crate) fn peak_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .context("no VmHWM line")?
        .parse()?;
    Ok(kib / 1024.0)
}

/// Resets a live process's `VmHWM` to its current RSS (`clear_refs` 5, Linux >= 4.0), so a
/// later [`peak_mib`] covers only what happened since.
pub(crate) fn reset_peak(pid: u32) -> anyhow::Result<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("resetting the peak RSS of {pid}"))
}
