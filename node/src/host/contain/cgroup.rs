//! Job cgroups: finding where the node may create them (v2 where it can, the v1 `memory`,
//! `pids` and `freezer` controllers where that is what the kernel offers, both on hybrid
//! machines), and per program one cgroup per hierarchy with its limits, a kill of the whole
//! group, its breach counters and its removal.
//!
//! Job cgroups live under a `warren` directory inside the node's own cgroup in each
//! hierarchy, so a node confined by its service manager keeps its jobs inside that
//! confinement. Blocking `std::fs` IO on cgroupfs (microseconds); callers on the async
//! runtime keep it short. Where job cgroups can go (`Roots`, probed at start) is in
//! `roots`.

use std::fs;
use std::io::{self, Write as _};
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::ContainError;
use super::limits::ProgramLimits;
use super::setup::{ChildSetup, MAX_CGROUP_FDS};

mod adopt;
mod roots;

pub(crate) use adopt::from_record;
use roots::create_dir;
pub(crate) use roots::{Roots, V2Root, probe};

/// The directory job cgroups are created in, inside the node's own cgroup.
const PARENT: &str = "warren";

/// How long removal of a killed group's directories is retried while its processes exit
/// (SIGKILLed processes exit in microseconds; one stuck in the kernel can take longer).
const REMOVE_RETRY: Duration = Duration::from_secs(10);

fn write(path: &Path, value: &str) -> io::Result<()> {
    let mut file = fs::OpenOptions::new().write(true).open(path)?;
    file.write_all(value.as_bytes())
}

/// A limit hit by a program's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Hit {
    /// The kernel killed a process for exceeding the memory limit.
    Memory,
    /// A fork failed at the pids limit.
    Pids,
}

/// One program's cgroups: one directory per hierarchy in use, removed on drop.
#[derive(Debug)]
pub(crate) struct JobCgroup {
    /// The v2 directory, and whether it has `cgroup.kill` and memory/pids files.
    v2: Option<(PathBuf, V2Root)>,
    /// The v1 memory directory.
    memory: Option<PathBuf>,
    /// The v1 pids directory.
    pids: Option<PathBuf>,
    /// The v1 freezer directory.
    freezer: Option<PathBuf>,
    /// Set once removed, so drop does nothing more.
    removed: AtomicBool,
    /// An adopted group's verified parent directories, held open: its paths go through
    /// them (`/proc/self/fd/<parent>/<name>`), never through a path a job could swap.
    held: Vec<Arc<OwnedFd>>,
}

impl JobCgroup {
    /// Creates the cgroups `name` under `roots` with `limits`.
    ///
    /// # Errors
    /// The first directory or limit file that could not be written (what was created is
    /// removed again).
    pub(crate) fn create(roots: &Roots, name: &str, limits: &ProgramLimits) -> io::Result<Self> {
        let mut cgroup = Self {
            v2: None,
            memory: None,
            pids: None,
            freezer: None,
            removed: AtomicBool::new(false),
            held: Vec::new(),
        };
        if let Some(root) = &roots.v2 {
            let controllers: Vec<&str> = [("memory", root.memory), ("pids", root.pids)]
                .into_iter()
                .filter_map(|(c, on)| on.then_some(c))
                .collect();
            cgroup.v2 = Some((make(&root.dir, name, &controllers)?, root.clone()));
        }
        for (root, slot) in [
            (&roots.memory, &mut cgroup.memory),
            (&roots.pids, &mut cgroup.pids),
            (&roots.freezer, &mut cgroup.freezer),
        ] {
            if let Some(root) = root {
                *slot = Some(make(root, name, &[])?);
            }
        }
        cgroup.set_limits(limits)?;
        Ok(cgroup)
    }

    fn set_limits(&self, limits: &ProgramLimits) -> io::Result<()> {
        let memory = limits.memory_bytes.to_string();
        let pids = limits.pids.to_string();
        if let Some((dir, root)) = &self.v2 {
            if root.memory {
                write(&dir.join("memory.max"), &memory)?;
                // One OOM kill takes the whole program tree, as a failed job should end.
                write(&dir.join("memory.oom.group"), "1")?;
            }
            if root.pids {
                write(&dir.join("pids.max"), &pids)?;
            }
        }
        if let Some(dir) = &self.memory {
            write(&dir.join("memory.limit_in_bytes"), &memory)?;
            // Memory plus swap too, where swap accounting is on; otherwise a job could
            // swap its way past the limit.
            let memsw = dir.join("memory.memsw.limit_in_bytes");
            if memsw.exists() {
                write(&memsw, &memory)?;
            }
        }
        if let Some(dir) = &self.pids {
            write(&dir.join("pids.max"), &pids)?;
        }
        Ok(())
    }

    /// Where the program's cgroups are, for records and `ExtraData`.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let v2 = self.v2.as_ref().map(|(d, _)| d);
        v2.into_iter()
            .chain(&self.memory)
            .chain(&self.pids)
            .chain(&self.freezer)
            .cloned()
            .collect()
    }

    /// Opens what the program's process joins its cgroups through and puts the descriptors
    /// into `setup`, so it is in them before it runs any code of its own: the v2 directory
    /// (the process is created in it) and its `cgroup.procs` (for a kernel that cannot), and
    /// each v1 directory's `tasks` (the process moves its one thread, which does not wait
    /// for an RCU grace period as a `cgroup.procs` move does). The descriptors must
    /// outlive the spawn.
    ///
    /// # Errors
    /// [`ContainError::CgroupAttach`] naming a file that cannot be opened.
    pub(crate) fn join_on_exec(
        &self,
        setup: &mut ChildSetup,
    ) -> Result<Vec<OwnedFd>, ContainError> {
        let open = |path: PathBuf, directory: bool| {
            let mut options = fs::OpenOptions::new();
            if directory {
                options.read(true).custom_flags(libc::O_DIRECTORY);
            } else {
                options.write(true);
            }
            match options.open(&path) {
                Ok(file) => Ok(OwnedFd::from(file)),
                Err(source) => Err(ContainError::CgroupAttach { path, source }),
            }
        };
        let mut fds = Vec::new();
        if let Some((dir, _)) = &self.v2 {
            let (into, procs) = (
                open(dir.clone(), true)?,
                open(dir.join("cgroup.procs"), false)?,
            );
            (setup.into_cgroup, setup.v2_procs) = (into.as_raw_fd(), procs.as_raw_fd());
            fds.extend([into, procs]);
        }
        let v1 = [&self.memory, &self.pids, &self.freezer];
        let mut joined = 0;
        for dir in v1.into_iter().flatten().take(MAX_CGROUP_FDS) {
            let fd = open(dir.join("tasks"), false)?;
            setup.procs[joined] = fd.as_raw_fd();
            joined += 1;
            fds.push(fd);
        }
        setup.procs_len = joined;
        Ok(fds)
    }

    /// Kills every process in the group: `cgroup.kill` where v2 has it, else freeze, kill
    /// each listed process, thaw, until the group is empty (so a fork cannot slip through).
    pub(crate) fn kill(&self) {
        if let Some((dir, root)) = &self.v2
            && root.kill
            && write(&dir.join("cgroup.kill"), "1").is_ok()
        {
            return;
        }
        let freezer = self.freezer.as_ref();
        for _ in 0..100 {
            if let Some(dir) = freezer {
                let _ = write(&dir.join("freezer.state"), "FROZEN");
            }
            let pids = self.pids_listed();
            for pid in &pids {
                // SAFETY: kill(2) has no memory effects; the pid is in our job's cgroup.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
            if let Some(dir) = freezer {
                let _ = write(&dir.join("freezer.state"), "THAWED");
            }
            if pids.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Every process listed in any of the group's hierarchies.
    fn pids_listed(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .paths()
            .iter()
            .filter_map(|dir| fs::read_to_string(dir.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect::<Vec<_>>()
            })
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether no process is left in the group.
    pub(crate) fn is_empty(&self) -> bool {
        self.pids_listed().is_empty()
    }

    /// Which limit the group hit, if any: an OOM kill (v2 `memory.events`, v1
    /// `memory.oom_control`) or a fork refused at the pids limit (`pids.events`).
    pub(crate) fn hit(&self) -> Option<Hit> {
        let counter = |file: PathBuf, key: &str| -> u64 {
            let text = fs::read_to_string(file).unwrap_or_default();
            text.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
                .unwrap_or(0)
        };
        let v2 = self.v2.as_ref();
        let oom = match (v2.filter(|(_, r)| r.memory), &self.memory) {
            (Some((dir, _)), _) => counter(dir.join("memory.events"), "oom_kill "),
            (None, Some(dir)) => counter(dir.join("memory.oom_control"), "oom_kill "),
            (None, None) => 0,
        };
        if oom > 0 {
            return Some(Hit::Memory);
        }
        let max = match (v2.filter(|(_, r)| r.pids), &self.pids) {
            (Some((dir, _)), _) => counter(dir.join("pids.events"), "max "),
            (None, Some(dir)) => counter(dir.join("pids.events"), "max "),
            (None, None) => 0,
        };
        (max > 0).then_some(Hit::Pids)
    }

    /// Kills what is left and removes the directories (and the `warren` parents when no
    /// other job uses them). Never blocks: a group still emptying after the kill is removed
    /// by a background thread that retries for a while.
    pub(crate) fn remove(&self) {
        if self.removed.swap(true, Ordering::AcqRel) {
            return;
        }
        let dirs = self.paths();
        if !self.is_empty() {
            self.kill();
        }
        if remove_dirs(&dirs) {
            return;
        }
        // The parents an adopted group's paths go through stay open while they are used.
        let held = self.held.clone();
        let spawned = std::thread::Builder::new()
            .name("warren-cgroup-rm".into())
            .spawn(move || {
                let _held = held;
                let start = Instant::now();
                while start.elapsed() < REMOVE_RETRY {
                    std::thread::sleep(Duration::from_millis(2));
                    if remove_dirs(&dirs) {
                        return;
                    }
                }
                tracing::warn!(cgroups = ?dirs, "job cgroups still busy; left in place");
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to remove job cgroups");
        }
    }
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Removes each existing directory; true when none is left. The `warren` parents stay
/// (the next job's cgroups go there) until the node's containment is dropped.
fn remove_dirs(dirs: &[PathBuf]) -> bool {
    let mut all = true;
    for dir in dirs {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(_) => all = false,
        }
    }
    all
}

/// Creates `<root>/<name>`. The `warren` parent `root` normally exists (made at start,
/// kept while the node runs: [`Roots::make_parents`]); when someone removed it, it is
/// recreated and handed the v2 `controllers`.
fn make(root: &Path, name: &str, controllers: &[&str]) -> io::Result<PathBuf> {
    let dir = root.join(name);
    for _ in 0..3 {
        match fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        make_parent(root, controllers)?;
    }
    fs::create_dir(&dir).map(|()| dir)
}

/// Creates `root` (if missing) and enables the v2 `controllers` for its children.
fn make_parent(root: &Path, controllers: &[&str]) -> io::Result<()> {
    create_dir(root)?;
    for controller in controllers {
        // Already enabled is fine; a real failure shows as a missing limit file.
        let _ = write(
            &root.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        );
    }
    Ok(())
}

/// A job cgroup recorded by path (a detached job's record), for killing and removing it
/// after a node restart without knowing the roots it was made under.
/// Whether a path read from a job record names a directory a node made: `.../warren/<name>`
/// as written, with no `.` or `..` in it and no symlink on the way. A job runs as the
/// node's user and can rewrite its record; a path like `.../memory/warren/..` (the
/// hierarchy's root) or a symlink under a directory named `warren` must not make the node
/// kill or remove another cgroup.
fn made_by_a_node(path: &Path) -> bool {
    use std::path::Component;
    path.parent().and_then(Path::file_name) == Some(PARENT.as_ref())
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
        && fs::canonicalize(path).is_ok_and(|real| real == path)
}

pub(crate) fn from_paths(paths: &[PathBuf]) -> JobCgroup {
    let made: Vec<PathBuf> = paths
        .iter()
        .filter(|p| made_by_a_node(p))
        .cloned()
        .collect();
    classify(&made, Vec::new())
}

/// The group of cgroup directories `paths`, sorted by hierarchy from the files each has,
/// holding `held` open while it lives.
fn classify(paths: &[PathBuf], held: Vec<Arc<OwnedFd>>) -> JobCgroup {
    let mut cgroup = JobCgroup {
        v2: None,
        memory: None,
        pids: None,
        freezer: None,
        removed: AtomicBool::new(false),
        held,
    };
    for path in paths {
        if path.join("cgroup.kill").exists() || path.join("cgroup.type").exists() {
            let root = V2Root {
                dir: path.parent().map(Path::to_owned).unwrap_or_default(),
                memory: path.join("memory.max").exists(),
                pids: path.join("pids.max").exists(),
                kill: path.join("cgroup.kill").exists(),
            };
            cgroup.v2 = Some((path.clone(), root));
        } else if path.join("memory.limit_in_bytes").exists() {
            cgroup.memory = Some(path.clone());
        } else if path.join("pids.max").exists() {
            cgroup.pids = Some(path.clone());
        } else if path.join("freezer.state").exists() {
            cgroup.freezer = Some(path.clone());
        }
    }
    cgroup
}

/// Suffix of a detached program's cgroup name: it outlives its node on purpose, and is
/// never swept.
pub(crate) const DETACHED_SUFFIX: &str = "-d";

/// Kills and removes the job cgroups of node processes that are gone (killed outright, so
/// they could not clean up): a piped program's cgroup is named `<unit>-<node pid>-<n>`, and
/// its programs cannot be re-attached. Detached programs' cgroups are left alone. Returns
/// how many were swept.
pub(crate) fn sweep(roots: &Roots) -> usize {
    let parents = roots
        .v2
        .iter()
        .map(|v| &v.dir)
        .chain(&roots.memory)
        .chain(&roots.pids)
        .chain(&roots.freezer);
    // One program's directories in every hierarchy share its name.
    let mut stale: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for parent in parents {
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.path().is_dir() && node_is_gone(&name) {
                stale.entry(name).or_default().push(entry.path());
            }
        }
    }
    for (name, paths) in &stale {
        tracing::warn!(cgroup = %name, "killing what a job of a vanished node left running");
        from_paths(paths).remove();
    }
    stale.len()
}

/// Whether `name` is a piped program's cgroup whose node process no longer exists.
fn node_is_gone(name: &str) -> bool {
    if name.ends_with(DETACHED_SUFFIX) {
        return false;
    }
    let mut parts = name.rsplitn(3, '-');
    let (Some(serial), Some(pid), Some(_unit)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(_), Ok(pid)) = (serial.parse::<u64>(), pid.parse::<i32>()) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid > 0
        && unsafe { libc::kill(pid, 0) } != 0
        && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_piped_cgroups_of_dead_nodes_are_stale() {
        let me = std::process::id();
        assert!(
            !node_is_gone(&format!("unit1-{me}-0")),
            "this process lives"
        );
        // Pids are below 2^22 on Linux.
        assert!(node_is_gone("unit1-99999999-3"));
        assert!(
            !node_is_gone("unit1-99999999-3-d"),
            "detached jobs outlive their node"
        );
        assert!(!node_is_gone("probe-12"));
        assert!(!node_is_gone("something-else"));
    }
}

#[cfg(test)]
mod record_path_tests {
    use super::*;

    #[test]
    fn a_recorded_path_out_of_a_warren_directory_is_never_taken() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let made = root.join(PARENT).join("unit-d");
        let other = root.join("elsewhere");
        for d in [&made, &other] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("pids.max"), "max").unwrap();
        }
        fs::write(root.join("pids.max"), "max").unwrap();
        std::os::unix::fs::symlink(&other, root.join(PARENT).join("link")).unwrap();
        assert!(made_by_a_node(&made));
        for forged in [
            root.join(PARENT).join(".."),
            root.join(PARENT).join("link"),
            root.join(PARENT).join("unit-d").join("..").join("unit-d"),
            PathBuf::from("warren/unit-d"),
        ] {
            assert!(!made_by_a_node(&forged), "{}", forged.display());
            assert!(from_paths(&[forged]).pids.is_none());
        }
        assert_eq!(from_paths(std::slice::from_ref(&made)).pids, Some(made));
    }
}
