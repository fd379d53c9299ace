//! A small bounded pool of prepared, empty job cgroups, so a piped program's job does not
//! pay for creating its directories, writing its limits and removing them again (a
//! cgroup's creation and removal are among the costliest steps of a tiny job).
//!
//! A group goes back to the pool only when its job ended cleanly and nothing of that job
//! can reach the next one: no process left in it (a job that left a daemon behind has its
//! group killed and removed, never reused), no child cgroup under it, no limit hit (the
//! kernel's breach counters never reset, so a reused group would report the old job's
//! breach), almost nothing still charged to it (a job's files in tmpfs or page cache stay
//! charged after it exits and would count against the next job's memory limit), never
//! sent a kill (a cancelled job's; on some kernels a process later cloned into a group
//! that was sent `cgroup.kill` is killed at birth), not frozen, and its limit files still holding what the node wrote (a job running as the
//! node's user can rewrite them). Anything else is removed as before. The handle the
//! ended job's killer holds is retired when its group is pooled, so a late kill of that
//! job cannot reach the next job in the same directories.
//!
//! Only piped programs' groups are pooled; a detached program's group outlives its node
//! and is always removed. The pool is emptied (its directories removed) when the node's
//! containment is dropped; a node killed outright leaves them to the next start's sweep,
//! as their names are `job-<node pid>-<n>`.

use std::fs;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use super::{JobCgroup, Limits};

/// How many empty groups are kept at most.
pub(crate) const POOL_CAP: usize = 64;

/// The most memory (bytes) still charged to an ended job's group for it to be reused.
pub(crate) const REUSE_CHARGE: u64 = 2 << 20;

/// The node's pool of empty job cgroups.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    idle: Mutex<Vec<JobCgroup>>,
}

impl Pool {
    /// A new, empty pool.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An idle group for a job with `limits`: one whose limits are already these if there
    /// is one, else any (its limits rewritten). `None` when the pool is empty or a group
    /// could not be prepared (the caller creates one).
    pub(crate) fn take(&self, limits: &Limits) -> Option<JobCgroup> {
        let group = {
            let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let at = idle
                .iter()
                .rposition(|g| g.limits == *limits)
                .or_else(|| idle.len().checked_sub(1))?;
            idle.swap_remove(at)
        };
        // Someone may have removed the directories meanwhile.
        if !group.paths().iter().all(|d| d.is_dir()) {
            return None;
        }
        if group.limits != *limits {
            let mut group = group;
            group.set_limits(limits).ok()?;
            group.limits = *limits;
            return Some(group);
        }
        Some(group)
    }

    /// Keeps `group` for a later job; hands it back when the pool is full.
    fn put(&self, group: JobCgroup) -> Result<(), JobCgroup> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() >= POOL_CAP {
            return Err(group);
        }
        idle.push(group);
        Ok(())
    }

    /// How many groups wait.
    pub(crate) fn len(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Removes every waiting group's directories.
    pub(crate) fn drain(&self) {
        let idle = std::mem::take(&mut *self.idle.lock().unwrap_or_else(PoisonError::into_inner));
        drop(idle);
    }
}

impl JobCgroup {
    /// The job that used this group has ended; `left_running` says whether anything of it
    /// was still in the group when its program ended (before the final kill). The group
    /// goes back to its pool when it is fit for another job, else it is removed. Blocking
    /// cgroupfs IO: call it off the async threads.
    pub(crate) fn end_of_job(&self, left_running: bool) {
        let Some(pool) = self.pool.as_ref().and_then(Weak::upgrade) else {
            return self.remove();
        };
        let fresh = {
            let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
            if *retired {
                return;
            }
            if left_running || !self.fit_for_reuse() {
                drop(retired);
                return self.remove();
            }
            *retired = true;
            JobCgroup {
                v2: self.v2.clone(),
                memory: self.memory.clone(),
                pids: self.pids.clone(),
                freezer: self.freezer.clone(),
                limits: self.limits,
                retired: Mutex::new(false),
                pool: self.pool.clone(),
                killed: AtomicBool::new(false),
            }
        };
        // A full pool gives it back: dropping it removes the directories.
        drop(pool.put(fresh));
    }

    /// Whether nothing of the ended job can reach the next one through this group.
    fn fit_for_reuse(&self) -> bool {
        let dirs = self.paths();
        !self.killed.load(Ordering::Acquire)
            && self.pids_listed().is_empty()
            && dirs.iter().all(|d| !has_child_group(d))
            && self.hit_now().is_none()
            && self.charged().is_some_and(|bytes| bytes <= REUSE_CHARGE)
            && !self.frozen()
            && self.limits_hold()
    }

    /// Memory still charged to the group (bytes); zero without a memory controller,
    /// `None` when it cannot be read.
    fn charged(&self) -> Option<u64> {
        let file = match (self.v2.as_ref().filter(|(_, r)| r.memory), &self.memory) {
            (Some((dir, _)), _) => dir.join("memory.current"),
            (None, Some(dir)) => dir.join("memory.usage_in_bytes"),
            (None, None) => return Some(0),
        };
        read_number(&file)
    }

    /// Whether the group is frozen (v2 `cgroup.freeze`, v1 `freezer.state`).
    fn frozen(&self) -> bool {
        let v2 = self.v2.as_ref().is_some_and(|(dir, _)| {
            fs::read_to_string(dir.join("cgroup.freeze")).is_ok_and(|t| t.trim() != "0")
        });
        let v1 = self.freezer.as_ref().is_some_and(|dir| {
            fs::read_to_string(dir.join("freezer.state")).map_or(true, |t| t.trim() != "THAWED")
        });
        v2 || v1
    }

    /// Whether the limit files still say what the node wrote.
    fn limits_hold(&self) -> bool {
        let memory = self.limits.memory_bytes;
        let pids = self.limits.pids;
        let mut files: Vec<(PathBuf, u64)> = Vec::new();
        if let Some((dir, root)) = &self.v2 {
            if root.memory {
                files.push((dir.join("memory.max"), memory));
                files.push((dir.join("memory.oom.group"), 1));
            }
            if root.pids {
                files.push((dir.join("pids.max"), pids));
            }
        }
        if let Some(dir) = &self.pids {
            files.push((dir.join("pids.max"), pids));
        }
        // v1 rounds the memory limit to pages, and may not show memsw: a differing value
        // there is taken as changed, which only costs a reuse.
        if let Some(dir) = &self.memory {
            files.push((dir.join("memory.limit_in_bytes"), memory & !4095));
        }
        files
            .iter()
            .all(|(file, want)| read_number(file) == Some(*want))
    }
}

/// A cgroupfs number; `max` reads as `u64::MAX`.
fn read_number(file: &std::path::Path) -> Option<u64> {
    let text = fs::read_to_string(file).ok()?;
    match text.trim() {
        "max" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Whether `dir` has a child cgroup (a job that made its own groups under its group).
fn has_child_group(dir: &std::path::Path) -> bool {
    fs::read_dir(dir).map_or(true, |entries| {
        entries
            .filter_map(Result::ok)
            .any(|e| e.file_type().is_ok_and(|t| t.is_dir()))
    })
}

#[cfg(all(test, feature = "host"))]
mod tests;
