//! Which cgroup paths a restarted node takes from a detached job's record: only the
//! cgroups this node could have made for that very unit.
//!
//! The job runs as the node's user and can rewrite its record. A path there must be a
//! directory on a cgroup file system (`fstatfs` on the directory itself, opened without
//! following a symlink), named `<unit>-<pid>-<n>-d` for the record's own unit, in the
//! node's own `warren` directory of a hierarchy (the parent opened and compared by device
//! and inode). Otherwise the record could name another job's cgroup (the node would kill
//! and remove it), or a plain directory whose `cgroup.procs` lists any process of the user
//! (the node would SIGKILL them), or one holding a `cgroup.kill` symlink (the node would
//! write to its target).
//!
//! The group then acts through the parent it checked, held open
//! (`/proc/self/fd/<parent>/<name>`), never through the recorded path again: a job cannot
//! swap a symlink on that path between the check and the kill.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::super::detect::own_cgroups;
use super::{DETACHED_SUFFIX, JobCgroup, PARENT, classify};

/// `statfs.f_type` of the cgroup v2 file system.
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
/// `statfs.f_type` of a cgroup v1 hierarchy.
const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;

/// The job cgroups of `unit`'s detached job, from the paths its record names: those that
/// pass [`adopt`]; the rest are logged and left alone.
pub(crate) fn from_record(paths: &[PathBuf], unit: &str) -> JobCgroup {
    let parents = own_parents();
    let mut kept = Vec::new();
    let mut held = Vec::new();
    for path in paths {
        match adopt(path, unit, &parents) {
            Some((through, parent)) => {
                kept.push(through);
                held.push(parent);
            }
            None => {
                tracing::warn!(%unit, path = %path.display(), "a job record names a cgroup this node did not make for its unit: left alone");
            }
        }
    }
    classify(&kept, held)
}

/// The node's own `warren` directories (where it makes job cgroups), by device and inode.
fn own_parents() -> Vec<(u64, u64)> {
    let own = own_cgroups();
    own.v2
        .iter()
        .chain(own.v1.iter().map(|(_, dir)| dir))
        .filter_map(|dir| std::fs::metadata(dir.join(PARENT)).ok())
        .map(|meta| (meta.dev(), meta.ino()))
        .collect()
}

/// When `path` is a cgroup directory named as this node names `unit`'s detached ones, in
/// one of the node's own `parents`: the path to act on it through its parent's descriptor,
/// and that descriptor (to hold open meanwhile).
fn adopt(path: &Path, unit: &str, parents: &[(u64, u64)]) -> Option<(PathBuf, Arc<OwnedFd>)> {
    if !named_for(path, unit) {
        return None;
    }
    let name = path.file_name()?;
    let parent = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path.parent()?)
        .ok()?;
    let meta = parent.metadata().ok()?;
    if !parents.contains(&(meta.dev(), meta.ino())) {
        return None;
    }
    let c_name = CString::new(name.as_bytes()).ok()?;
    let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: openat with a descriptor we own and a NUL-terminated name; the result, if
    // not -1, is a new descriptor we then own.
    let dir = unsafe { libc::openat(parent.as_raw_fd(), c_name.as_ptr(), flags) };
    if dir < 0 {
        return None;
    }
    // SAFETY: `dir` was just returned by openat and is owned by nothing else.
    let dir = unsafe { OwnedFd::from_raw_fd(dir) };
    if !is_cgroupfs(&dir) {
        return None;
    }
    let through = PathBuf::from(format!("/proc/self/fd/{}", parent.as_raw_fd())).join(name);
    Some((through, Arc::new(OwnedFd::from(parent))))
}

/// `<unit>-<pid>-<n>-d`, `unit` cut as the node cuts it (ASCII letters and digits, at most 32).
fn named_for(path: &Path, unit: &str) -> bool {
    let unit: String = unit
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(32)
        .collect();
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    let Some(rest) = name
        .strip_prefix(unit.as_str())
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix(DETACHED_SUFFIX))
    else {
        return false;
    };
    let mut numbers = rest.split('-');
    let digits =
        |s: Option<&str>| s.is_some_and(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()));
    !unit.is_empty() && digits(numbers.next()) && digits(numbers.next()) && numbers.next().is_none()
}

/// Whether `path` is a directory (not a symlink to one) on a cgroup file system.
#[cfg(test)]
fn on_cgroupfs(path: &Path) -> bool {
    let dir = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path);
    dir.is_ok_and(|dir| is_cgroupfs(&OwnedFd::from(dir)))
}

/// Whether `dir` is on a cgroup file system.
fn is_cgroupfs(dir: &OwnedFd) -> bool {
    // SAFETY: statfs is plain data; fstatfs fills it from a descriptor we own.
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a valid out pointer.
    if unsafe { libc::fstatfs(dir.as_raw_fd(), &mut fs) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's width differs between targets
    let kind = fs.f_type as i64;
    kind == CGROUP2_SUPER_MAGIC || kind == CGROUP_SUPER_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_records_own_units_detached_names_pass() {
        let at = |name: &str| PathBuf::from(format!("/sys/fs/cgroup/warren/{name}"));
        assert!(named_for(&at("abc123-4242-7-d"), "abc123"));
        for (name, unit) in [
            ("other1-4242-7-d", "abc123"),
            ("abc123-4242-7", "abc123"),
            ("abc123-4242-d", "abc123"),
            ("abc123-42x2-7-d", "abc123"),
            ("abc123-4242-7-8-d", "abc123"),
            ("abc1234-4242-7-d", "abc123"),
            ("-4242-7-d", ""),
        ] {
            assert!(!named_for(&at(name), unit), "{name} for {unit}");
        }
    }

    #[test]
    fn a_plain_directory_that_lists_a_process_is_not_adopted_and_the_process_lives() {
        // Found by an attacker's review: a job rewrote its record to name a directory it
        // made, `.../warren/<unit>-1-1-d` with `pids.max` and a `cgroup.procs` listing any
        // process of the user, and the restarted node SIGKILLed that process.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("warren").join("abc123-1-1-d");
        std::fs::create_dir_all(&fake).unwrap();
        let mut victim = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        std::fs::write(fake.join("pids.max"), "max\n").unwrap();
        std::fs::write(fake.join("cgroup.procs"), format!("{}\n", victim.id())).unwrap();
        let fake = fake.canonicalize().unwrap();
        from_record(&[fake], "abc123").remove();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let alive = victim.try_wait().unwrap().is_none();
        let _ = victim.kill();
        let _ = victim.wait();
        assert!(alive, "the process a forged record listed was killed");
    }

    #[test]
    fn a_cgroup_mount_is_on_cgroupfs_and_a_temp_dir_is_not() {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        let cgroup = mounts.lines().find_map(|line| {
            let mut f = line.split(' ');
            let (at, kind) = (f.nth(1)?, f.next()?);
            (kind == "cgroup2" || kind == "cgroup").then(|| PathBuf::from(at))
        });
        let Some(cgroup) = cgroup else {
            eprintln!("no cgroup file system mounted here: only the negative case is checked");
            return assert!(!on_cgroupfs(tempfile::tempdir().unwrap().path()));
        };
        assert!(on_cgroupfs(&cgroup), "{}", cgroup.display());
        assert!(!on_cgroupfs(tempfile::tempdir().unwrap().path()));
    }

    #[test]
    fn a_symlink_to_a_cgroup_is_not_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("abc123-1-1-d");
        std::os::unix::fs::symlink("/sys/fs/cgroup", &link).unwrap();
        assert!(!on_cgroupfs(&link));
    }

    /// A cgroup v2 mount here, if any.
    fn cgroup2_mount() -> Option<PathBuf> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        mounts.lines().find_map(|line| {
            let mut f = line.split(' ');
            let (at, kind) = (f.nth(1)?, f.next()?);
            (kind == "cgroup2").then(|| PathBuf::from(at))
        })
    }

    #[test]
    fn a_cgroup_named_for_the_unit_under_another_warren_directory_is_not_adopted() {
        // Found by the s22 review: only the last component was checked, so a record could
        // name any cgroup called `<unit>-<pid>-<n>-d` under any directory called `warren`
        // (the node would kill what runs there and remove it).
        let Some(mount) = cgroup2_mount() else {
            eprintln!("no cgroup v2 mounted here: nothing to check");
            return;
        };
        let other = mount.join(format!("s22-adopt-{}", std::process::id()));
        let forged = other.join("warren").join("abc123-1-1-d");
        std::fs::create_dir_all(&forged).unwrap();
        from_record(std::slice::from_ref(&forged), "abc123").remove();
        let kept = forged.is_dir();
        let _ = std::fs::remove_dir(&forged);
        let _ = std::fs::remove_dir(other.join("warren"));
        let _ = std::fs::remove_dir(&other);
        assert!(
            kept,
            "another warren directory's cgroup was adopted and removed"
        );
    }

    #[test]
    fn the_nodes_own_detached_cgroup_is_adopted_through_its_parent_and_removed() {
        let Some(own) = own_cgroups().v2 else {
            eprintln!("no cgroup v2 of our own here: nothing to check");
            return;
        };
        let name = format!("abc123-{}-2-d", std::process::id());
        let made = own.join(PARENT).join(&name);
        std::fs::create_dir_all(&made).unwrap();
        let group = from_record(std::slice::from_ref(&made), "abc123");
        let through = group.paths();
        assert_eq!(through.len(), 1, "{through:?}");
        assert!(through[0].starts_with("/proc/self/fd"), "{through:?}");
        group.remove();
        assert!(!made.exists(), "adopted and removed");
    }
}
