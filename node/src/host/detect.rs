//! Finding the executables work types run: ansible-runner, probed before it is offered,
//! and the programs of command work types.
//!
//! ansible-runner is the configured path, or else the first `ansible-runner` on `PATH`
//! that passes the probes: it is not Warren's own front end (which answers
//! [`FRONTEND_PROBE_FLAG`]), `worker --help` mentions `private-data-dir`, and `--version`
//! prints a version. Each probe runs with a [`PROBE_TIMEOUT`], no stdin, and an environment
//! of only `PATH`, `HOME` and `LANG`.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The flag Warren's own `ansible-runner` front end answers by printing
/// [`FRONTEND_PROBE_REPLY`] and exiting 0; the real ansible-runner rejects it.
pub const FRONTEND_PROBE_FLAG: &str = "--warren-frontend";

/// What Warren's front end prints (one line) when given [`FRONTEND_PROBE_FLAG`].
pub const FRONTEND_PROBE_REPLY: &str = "warren";

/// How long one probe of a candidate may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The executable name searched for on `PATH`.
const RUNNER_NAME: &str = "ansible-runner";

/// Most bytes of a probe's output kept (for the check and for error messages).
const OUTPUT_CAP: usize = 64 << 10;

/// Most bytes of a probe's output quoted in an error.
const QUOTE_CAP: usize = 500;

/// A usable ansible-runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsibleRunner {
    /// Its executable: absolute and canonical.
    pub path: PathBuf,
    /// What `--version` printed (first line, trimmed), such as `2.4.0`.
    pub version: String,
}

/// Why no usable ansible-runner was found: names what was tried and why it failed.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// No candidate on `PATH` passed the probes.
    #[error(
        "no usable ansible-runner on PATH (searched: {}){}; install ansible-runner 2 or \
         later, or set [ansible-runner] path (--ansible-runner)",
        list_dirs(searched),
        list_rejected(rejected)
    )]
    NotFound {
        /// The `PATH` directories searched, in order (relative entries are skipped).
        searched: Vec<PathBuf>,
        /// The candidates found there and why each was refused.
        rejected: Vec<Self>,
    },
    /// The path is not an executable file.
    #[error("{} is not an executable file", path.display())]
    NotExecutable {
        /// The path tried.
        path: PathBuf,
    },
    /// The path is Warren's own ansible-runner front end.
    #[error("{} is Warren's own ansible-runner front end, not ansible-runner", path.display())]
    Frontend {
        /// The front end's path.
        path: PathBuf,
    },
    /// `worker --help` failed or does not mention `private-data-dir`.
    #[error(
        "{} has no worker mode (`worker --help` did not describe --private-data-dir; \
         ansible-runner 2 or later is needed): {}",
        path.display(),
        quote(output)
    )]
    NoWorker {
        /// The candidate.
        path: PathBuf,
        /// What the probe printed (stdout, then stderr).
        output: String,
    },
    /// `--version` failed or printed nothing.
    #[error("{} --version printed no version: {}", path.display(), quote(output))]
    NoVersion {
        /// The candidate.
        path: PathBuf,
        /// What the probe printed (stdout, then stderr).
        output: String,
    },
    /// A probe did not finish in time; it was killed.
    #[error("{} {probe} did not finish within {}s", path.display(), timeout.as_secs_f32())]
    Timeout {
        /// The candidate.
        path: PathBuf,
        /// The probe's arguments.
        probe: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// The candidate could not be started.
    #[error("cannot run {}: {source}", path.display())]
    Spawn {
        /// The candidate.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

fn list_dirs(dirs: &[PathBuf]) -> String {
    if dirs.is_empty() {
        return "nothing: PATH is empty or unset".to_owned();
    }
    let dirs: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    dirs.join(", ")
}

fn list_rejected(rejected: &[DetectError]) -> String {
    let mut text = String::new();
    for (i, e) in rejected.iter().enumerate() {
        let sep = if i == 0 { "; rejected: " } else { "; " };
        let _ = write!(text, "{sep}{e}");
    }
    text
}

fn quote(output: &str) -> String {
    let output = output.trim();
    if output.is_empty() {
        return "(no output)".to_owned();
    }
    let end = (0..=QUOTE_CAP.min(output.len()))
        .rev()
        .find(|&i| output.is_char_boundary(i))
        .unwrap_or(0);
    let more = if end < output.len() { "..." } else { "" };
    format!("{:?}{more}", &output[..end])
}

/// Finds a usable ansible-runner: `configured` if given, else the first `ansible-runner`
/// on `path_env` (the node's `PATH`) that passes the probes. Probes get `path_env` as
/// their `PATH` and the node's `HOME` and `LANG`.
///
/// # Errors
/// For a configured path, the [`DetectError`] of the probe that failed; without one,
/// [`DetectError::NotFound`] listing the directories searched and the candidates refused.
pub fn find_ansible_runner(
    configured: Option<&Path>,
    path_env: Option<&OsStr>,
) -> Result<AnsibleRunner, DetectError> {
    let mut env = Vec::new();
    if let Some(path) = path_env {
        env.push(("PATH".into(), path.to_owned()));
    }
    for name in ["HOME", "LANG"] {
        if let Some(value) = std::env::var_os(name) {
            env.push((name.into(), value));
        }
    }
    let prober = Prober {
        env,
        timeout: PROBE_TIMEOUT,
    };
    prober.find(configured, path_env)
}

/// Finds a command work type's program: a path (anything with a `/`) if it is an
/// executable file, made absolute; a bare name as the first executable file of that name
/// in `path_env`'s absolute directories. Symlinks are kept, since a multi-call binary
/// tells what to do by the name it is run as.
pub fn resolve_program(name_or_path: &Path, path_env: Option<&OsStr>) -> Option<PathBuf> {
    if name_or_path.as_os_str().is_empty() {
        return None;
    }
    if name_or_path.components().count() > 1 || name_or_path.is_absolute() {
        return is_executable(name_or_path)
            .then(|| std::path::absolute(name_or_path).ok())
            .flatten();
    }
    search_dirs(path_env)
        .into_iter()
        .map(|dir| dir.join(name_or_path))
        .find(|candidate| is_executable(candidate))
}

/// The absolute directories of a `PATH` value, in order. Empty and relative entries
/// (which mean the current directory) are skipped: a node does not run what happens to be
/// in its working directory.
fn search_dirs(path_env: Option<&OsStr>) -> Vec<PathBuf> {
    path_env
        .map(|p| {
            std::env::split_paths(p)
                .filter(|d| d.is_absolute())
                .collect()
        })
        .unwrap_or_default()
}

/// An executable regular file (after following symlinks).
fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs the probes with a fixed environment and timeout.
struct Prober {
    env: Vec<(OsString, OsString)>,
    timeout: Duration,
}

/// What a probe printed, and whether it exited 0.
struct ProbeOutput {
    success: bool,
    stdout: String,
    stderr: String,
}

impl ProbeOutput {
    fn both(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl Prober {
    fn find(
        &self,
        configured: Option<&Path>,
        path_env: Option<&OsStr>,
    ) -> Result<AnsibleRunner, DetectError> {
        if let Some(path) = configured {
            return self.check(path);
        }
        let searched = search_dirs(path_env);
        let mut rejected = Vec::new();
        let mut seen = Vec::new();
        for dir in &searched {
            let candidate = dir.join(RUNNER_NAME);
            if !candidate.exists() {
                continue;
            }
            // The same file through two PATH entries (/bin -> /usr/bin) is tried once.
            let canonical = candidate
                .canonicalize()
                .unwrap_or_else(|_| candidate.clone());
            if seen.contains(&canonical) {
                continue;
            }
            seen.push(canonical);
            match self.check(&candidate) {
                Ok(runner) => return Ok(runner),
                Err(e) => rejected.push(e),
            }
        }
        Err(DetectError::NotFound { searched, rejected })
    }

    /// Probes one candidate.
    fn check(&self, path: &Path) -> Result<AnsibleRunner, DetectError> {
        let not_executable = || DetectError::NotExecutable {
            path: path.to_owned(),
        };
        if !is_executable(path) {
            return Err(not_executable());
        }
        let path = path.canonicalize().map_err(|_| not_executable())?;
        let frontend = self.probe(&path, &[FRONTEND_PROBE_FLAG])?;
        if frontend.success && frontend.stdout.trim() == FRONTEND_PROBE_REPLY {
            return Err(DetectError::Frontend { path });
        }
        let help = self.probe(&path, &["worker", "--help"])?;
        if !help.success || !help.both().contains("private-data-dir") {
            let output = help.both();
            return Err(DetectError::NoWorker { path, output });
        }
        let version = self.probe(&path, &["--version"])?;
        let line = version
            .stdout
            .lines()
            .next()
            .unwrap_or("")
            .trim()
            .to_owned();
        if !version.success || line.is_empty() {
            let output = version.both();
            return Err(DetectError::NoVersion { path, output });
        }
        Ok(AnsibleRunner {
            path,
            version: line,
        })
    }

    /// Runs `path args` in its own process group; on timeout the group is killed.
    fn probe(&self, path: &Path, args: &[&str]) -> Result<ProbeOutput, DetectError> {
        let mut child = self.spawn(path, args)?;
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            let tx = tx.clone();
            std::thread::spawn(move || tx.send((true, read_capped(out))));
        }
        if let Some(err) = child.stderr.take() {
            std::thread::spawn(move || tx.send((false, read_capped(err))));
        }
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Ok(None) | Err(_) => {
                    kill_group(&mut child);
                    return Err(DetectError::Timeout {
                        path: path.to_owned(),
                        probe: args.join(" "),
                        timeout: self.timeout,
                    });
                }
            }
        };
        let mut output = ProbeOutput {
            success: status.success(),
            stdout: String::new(),
            stderr: String::new(),
        };
        // A leftover grandchild may hold a pipe open: wait no longer than the deadline.
        for _ in 0..2 {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.max(Duration::from_millis(100))) {
                Ok((true, text)) => output.stdout = text,
                Ok((false, text)) => output.stderr = text,
                Err(_) => break,
            }
        }
        Ok(output)
    }

    fn spawn(&self, path: &Path, args: &[&str]) -> Result<Child, DetectError> {
        let mut command = Command::new(path);
        command
            .args(args)
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        // A script written a moment ago may still be open for writing in a child forked
        // meanwhile by another thread (ETXTBSY); that passes once the child execs, which
        // on a loaded machine can take a while: up to 2 s.
        let mut tries = 0;
        loop {
            match command.spawn() {
                Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && tries < 200 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                result => {
                    return result.map_err(|source| DetectError::Spawn {
                        path: path.to_owned(),
                        source,
                    });
                }
            }
        }
    }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_CAP`] bytes as text.
fn read_capped(mut pipe: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Kills a probe's whole process group and reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) has no memory effects; the group is the probe's own (process_group(0)).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests;
