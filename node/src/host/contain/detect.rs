//! Where this process's cgroups are: parsing `/proc/self/mountinfo` and `/proc/self/cgroup`
//! into the directories the node may create job cgroups under.
//!
//! The parsers are pure (tested on text from real machines); [`own_cgroups`] reads the two
//! files. Deciding what to use and probing that it works is `cgroup.rs`'s job.

use std::path::{Path, PathBuf};

/// The cgroup v1 controllers Warren uses: limits (`memory`, `pids`) and a race-free kill of
/// the whole group where v2's `cgroup.kill` is missing (`freezer`).
pub(crate) const V1_CONTROLLERS: [&str; 3] = ["memory", "pids", "freezer"];

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mount {
    /// Where it is mounted.
    pub(crate) point: PathBuf,
    /// Which part of the hierarchy the mount shows (`/` unless a container mounted only its
    /// own subtree).
    pub(crate) root: String,
    /// v1 with these controllers, or v2 (`None`).
    pub(crate) controllers: Option<Vec<String>>,
}

/// Parses `/proc/self/mountinfo`, keeping the cgroup (v1) and cgroup2 mounts.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines().filter_map(parse_mount_line).collect()
}

/// One mountinfo line: `id parent dev root point options [optional...] - type source super`.
fn parse_mount_line(line: &str) -> Option<Mount> {
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let root = unescape(fields.get(3)?);
    let point = PathBuf::from(unescape(fields.get(4)?));
    let mut right = right.split(' ');
    let fstype = right.next()?;
    let _source = right.next()?;
    let options = right.next().unwrap_or("");
    let controllers = match fstype {
        "cgroup2" => None,
        "cgroup" => Some(
            options
                .split(',')
                .filter(|o| V1_CONTROLLERS.contains(o))
                .map(str::to_owned)
                .collect(),
        ),
        _ => return None,
    };
    Some(Mount {
        point,
        root,
        controllers,
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and so on).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| bytes[i] == b'\\' && d.iter().all(|b| (b'0'..=b'7').contains(b)));
        if let Some(d) = octal {
            let value = d.iter().fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
            out.push(u8::try_from(value).unwrap_or(b'?'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// This process's place in each hierarchy, from `/proc/self/cgroup`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Membership {
    /// v1 hierarchies: their controllers (named hierarchies such as `name=systemd`
    /// included) and our path in each.
    pub(crate) v1: Vec<(Vec<String>, String)>,
    /// Our path in the v2 hierarchy (the `0::` line), if there is one.
    pub(crate) v2: Option<String>,
}

/// Parses `/proc/self/cgroup` (`id:controllers:path` per line).
pub(crate) fn parse_proc_cgroup(text: &str) -> Membership {
    let mut membership = Membership::default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if id == "0" && controllers.is_empty() {
            membership.v2 = Some(path.to_owned());
        } else {
            let names = controllers.split(',').map(str::to_owned).collect();
            membership.v1.push((names, path.to_owned()));
        }
    }
    membership
}

/// The directory of our own cgroup inside `mount`, given our `path` in its hierarchy:
/// `None` when the mount does not show that part of the hierarchy.
pub(crate) fn own_dir(mount: &Mount, path: &str) -> Option<PathBuf> {
    let root = mount.root.trim_end_matches('/');
    let rest = path.strip_prefix(root)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    let rest = rest.trim_start_matches('/');
    if rest.split('/').any(|part| part == "..") {
        return None;
    }
    Some(if rest.is_empty() {
        mount.point.clone()
    } else {
        mount.point.join(rest)
    })
}

/// Our own cgroup directories: the v2 one (if a cgroup2 hierarchy is mounted and we are in
/// it), and for each v1 controller Warren uses, the directory of its hierarchy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct OwnCgroups {
    /// Our v2 cgroup's directory.
    pub(crate) v2: Option<PathBuf>,
    /// `(controller, our directory in its v1 hierarchy)`.
    pub(crate) v1: Vec<(&'static str, PathBuf)>,
}

/// Combines the mounts and our membership into directories, without IO.
pub(crate) fn locate(mounts: &[Mount], membership: &Membership) -> OwnCgroups {
    let mut own = OwnCgroups::default();
    if let Some(path) = &membership.v2 {
        own.v2 = mounts
            .iter()
            .filter(|m| m.controllers.is_none())
            .find_map(|m| own_dir(m, path));
    }
    for controller in V1_CONTROLLERS {
        let mount = mounts.iter().find(|m| {
            m.controllers
                .as_ref()
                .is_some_and(|c| c.iter().any(|n| n == controller))
        });
        let path = membership
            .v1
            .iter()
            .find(|(names, _)| names.iter().any(|n| n == controller))
            .map(|(_, path)| path);
        if let (Some(mount), Some(path)) = (mount, path)
            && let Some(dir) = own_dir(mount, path)
        {
            own.v1.push((controller, dir));
        }
    }
    own
}

/// Reads `/proc/self/mountinfo` and `/proc/self/cgroup`; empty when either is unreadable.
pub(crate) fn own_cgroups() -> OwnCgroups {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let mounts = parse_mountinfo(&read("/proc/self/mountinfo"));
    let membership = parse_proc_cgroup(&read("/proc/self/cgroup"));
    locate(&mounts, &membership)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This project's build machine: v1 controllers plus a v2 `unified` mount.
    const HYBRID_MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const HYBRID_CGROUP: &str = "\
9:name=systemd:/
8:pids:/
6:freezer:/
4:memory:/process_api/4db4
1:cpu:/
0::/
";

    #[test]
    fn hybrid_machine_gives_v1_controllers_and_the_unified_v2_dir() {
        let own = locate(
            &parse_mountinfo(HYBRID_MOUNTINFO),
            &parse_proc_cgroup(HYBRID_CGROUP),
        );
        assert_eq!(own.v2, Some(PathBuf::from("/sys/fs/cgroup/unified")));
        assert_eq!(
            own.v1,
            vec![
                (
                    "memory",
                    PathBuf::from("/sys/fs/cgroup/memory/process_api/4db4")
                ),
                ("pids", PathBuf::from("/sys/fs/cgroup/pids")),
                ("freezer", PathBuf::from("/sys/fs/cgroup/freezer")),
            ]
        );
    }

    #[test]
    fn pure_v2_systemd_service() {
        let mountinfo = "29 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n";
        let cgroup = "0::/system.slice/warren.service\n";
        let own = locate(&parse_mountinfo(mountinfo), &parse_proc_cgroup(cgroup));
        assert_eq!(
            own.v2,
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/warren.service"))
        );
        assert!(own.v1.is_empty());
    }

    #[test]
    fn container_mount_of_its_own_subtree_strips_the_root() {
        let mountinfo = "700 600 0:26 /docker/abc /sys/fs/cgroup ro,nosuid - cgroup2 cgroup2 rw\n";
        let own = locate(
            &parse_mountinfo(mountinfo),
            &parse_proc_cgroup("0::/docker/abc/app\n"),
        );
        assert_eq!(own.v2, Some(PathBuf::from("/sys/fs/cgroup/app")));
        let elsewhere = locate(
            &parse_mountinfo(mountinfo),
            &parse_proc_cgroup("0::/docker/abcd\n"),
        );
        assert_eq!(elsewhere.v2, None, "a sibling named with the same prefix");
    }

    #[test]
    fn co_mounted_controllers_and_escaped_paths() {
        let mountinfo =
            "40 31 0:40 / /sys/fs/cgroup/mem\\040ory rw - cgroup cgroup rw,memory,pids\n";
        let mounts = parse_mountinfo(mountinfo);
        assert_eq!(mounts[0].point, PathBuf::from("/sys/fs/cgroup/mem ory"));
        let own = locate(&mounts, &parse_proc_cgroup("5:memory,pids:/a\n"));
        assert_eq!(own.v1.len(), 2);
        assert_eq!(
            own.v1[1],
            ("pids", PathBuf::from("/sys/fs/cgroup/mem ory/a"))
        );
    }

    #[test]
    fn no_cgroups_at_all() {
        let own = locate(
            &parse_mountinfo("garbage\n\n- -\n"),
            &parse_proc_cgroup("x\n"),
        );
        assert_eq!(own, OwnCgroups::default());
    }

    #[test]
    fn dot_dot_in_a_cgroup_path_is_refused() {
        let mount = Mount {
            point: PathBuf::from("/sys/fs/cgroup"),
            root: "/".into(),
            controllers: None,
        };
        assert_eq!(own_dir(&mount, "/a/../../etc"), None);
        assert_eq!(own_dir(&mount, "/"), Some(PathBuf::from("/sys/fs/cgroup")));
    }
}
