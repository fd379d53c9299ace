//! Where job cgroups can go: [`Roots`], probed once at start in the node's own cgroup of
//! each hierarchy (v2 where the node can delegate controllers, else the v1 `memory`, `pids`
//! and `freezer` hierarchies), with the `warren` parents made and removed there.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::super::detect::OwnCgroups;
use super::{PARENT, make, make_parent, write};

/// Where job cgroups go, found once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Roots {
    /// The v2 parent directory, with which limits v2 enforces there.
    pub(crate) v2: Option<V2Root>,
    /// The v1 `memory` hierarchy's parent directory (used when v2 has no memory controller).
    pub(crate) memory: Option<PathBuf>,
    /// The v1 `pids` hierarchy's parent directory (used when v2 has no pids controller).
    pub(crate) pids: Option<PathBuf>,
    /// The v1 `freezer` hierarchy's parent directory (used to kill when v2 cannot).
    pub(crate) freezer: Option<PathBuf>,
}

/// The v2 parent directory and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct V2Root {
    /// `<own v2 cgroup>/warren`.
    pub(crate) dir: PathBuf,
    /// Whether job cgroups get the memory controller.
    pub(crate) memory: bool,
    /// Whether job cgroups get the pids controller.
    pub(crate) pids: bool,
    /// Whether job cgroups have `cgroup.kill` (Linux 5.14+).
    pub(crate) kill: bool,
}

impl Roots {
    /// Whether anything usable was found: a v2 parent, or a v1 hierarchy that can kill (or
    /// at least list) the group.
    pub(crate) fn is_usable(&self) -> bool {
        self.v2.is_some() || self.memory.is_some() || self.pids.is_some() || self.freezer.is_some()
    }

    /// Whether memory is bounded per group.
    pub(crate) fn bounds_memory(&self) -> bool {
        self.v2.as_ref().is_some_and(|v| v.memory) || self.memory.is_some()
    }

    /// Whether processes are bounded per group.
    pub(crate) fn bounds_pids(&self) -> bool {
        self.v2.as_ref().is_some_and(|v| v.pids) || self.pids.is_some()
    }

    /// Every `warren` parent directory, with the v2 controllers its children get.
    fn parents(&self) -> Vec<(&Path, Vec<&'static str>)> {
        let v2 = self.v2.iter().map(|v| {
            let controllers = [("memory", v.memory), ("pids", v.pids)]
                .into_iter()
                .filter_map(|(c, on)| on.then_some(c))
                .collect();
            (v.dir.as_path(), controllers)
        });
        let v1 = [&self.memory, &self.pids, &self.freezer]
            .into_iter()
            .flatten()
            .map(|dir| (dir.as_path(), Vec::new()));
        v2.chain(v1).collect()
    }

    /// Creates the `warren` parents once, so each job creates (and removes) only its own
    /// directories; a missing parent is still recreated by the job that finds it gone.
    pub(crate) fn make_parents(&self) {
        for (dir, controllers) in self.parents() {
            if let Err(e) = make_parent(dir, &controllers) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot create the job cgroups' parent");
            }
        }
    }

    /// Removes the `warren` parents where empty (the node is done with them; a detached
    /// job's cgroup keeps its parent).
    pub(crate) fn remove_parents(&self) {
        for (dir, _) in self.parents() {
            let _ = fs::remove_dir(dir);
        }
    }

    /// For status: `cgroup v2 (memory, pids, kill)`, `cgroup v1 (memory, pids, freezer) +
    /// cgroup v2 (kill)`, ...
    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        let v1: Vec<&str> = [
            ("memory", &self.memory),
            ("pids", &self.pids),
            ("freezer", &self.freezer),
        ]
        .into_iter()
        .filter(|(_, dir)| dir.is_some())
        .map(|(name, _)| name)
        .collect();
        if !v1.is_empty() {
            parts.push(format!("cgroup v1 ({})", v1.join(", ")));
        }
        if let Some(v2) = &self.v2 {
            let features: Vec<&str> = [("memory", v2.memory), ("pids", v2.pids), ("kill", v2.kill)]
                .into_iter()
                .filter(|(_, on)| *on)
                .map(|(name, _)| name)
                .collect();
            let features = if features.is_empty() {
                "membership".to_owned()
            } else {
                features.join(", ")
            };
            parts.push(format!("cgroup v2 ({features})"));
        }
        parts.join(" + ")
    }
}

/// Probes `own` for where job cgroups can be created. Every failure only drops that
/// hierarchy; the reasons are returned for the log.
pub(crate) fn probe(own: &OwnCgroups) -> (Roots, Vec<String>) {
    let mut roots = Roots::default();
    let mut notes = Vec::new();
    if let Some(dir) = &own.v2 {
        match probe_v2(dir) {
            Ok(root) => roots.v2 = Some(root),
            Err(e) => notes.push(format!("cgroup v2 at {}: {e}", dir.display())),
        }
    }
    let v2_memory = roots.v2.as_ref().is_some_and(|v| v.memory);
    let v2_pids = roots.v2.as_ref().is_some_and(|v| v.pids);
    let v2_kill = roots.v2.as_ref().is_some_and(|v| v.kill);
    for (controller, dir) in &own.v1 {
        let slot = match *controller {
            "memory" if !v2_memory => &mut roots.memory,
            "pids" if !v2_pids => &mut roots.pids,
            "freezer" if !v2_kill => &mut roots.freezer,
            _ => continue,
        };
        match probe_dir(&dir.join(PARENT)) {
            Ok(()) => *slot = Some(dir.join(PARENT)),
            Err(e) => notes.push(format!("cgroup v1 {controller} at {}: {e}", dir.display())),
        }
    }
    (roots, notes)
}

/// Checks a job cgroup can be made and removed under `dir` (created for the check and
/// removed again when empty: jobs recreate it, and an empty directory left behind would
/// keep whoever manages the node's own cgroup from removing that).
fn probe_dir(dir: &Path) -> io::Result<()> {
    let probe = make(dir, &format!("probe-{}", std::process::id()), &[])?;
    fs::remove_dir(&probe)?;
    let _ = fs::remove_dir(dir);
    Ok(())
}

pub(super) fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Sets up `<own>/warren` in the v2 hierarchy with the memory and pids controllers where
/// the kernel lets this node delegate them.
fn probe_v2(own: &Path) -> io::Result<V2Root> {
    let available = fs::read_to_string(own.join("cgroup.controllers"))?;
    let wanted: Vec<&str> = ["memory", "pids"]
        .into_iter()
        .filter(|c| available.split_whitespace().any(|a| a == *c))
        .collect();
    // A non-root v2 cgroup with processes in it cannot hand controllers to children ("no
    // internal processes"); then job cgroups get membership and kill only.
    let mut enabled = Vec::new();
    for controller in wanted {
        if write(
            &own.join("cgroup.subtree_control"),
            &format!("+{controller}"),
        )
        .is_ok()
        {
            enabled.push(controller);
        }
    }
    let dir = own.join(PARENT);
    let probe = make(&dir, &format!("probe-{}", std::process::id()), &enabled)?;
    let delegated = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let has = |c: &str| delegated.split_whitespace().any(|d| d == c);
    let kill = probe.join("cgroup.kill").exists();
    fs::remove_dir(&probe)?;
    let _ = fs::remove_dir(&dir);
    Ok(V2Root {
        memory: has("memory"),
        pids: has("pids"),
        dir,
        kill,
    })
}
