//! Where every user may write: the shared directories a job's uid can leave files in,
//! found on this host at each sweep rather than taken from a fixed list, since hosts differ
//! (`/var/crash`, `/var/lib/php/sessions`, `/run/screen`, `/var/spool/samba`, ...).
//!
//! A shared directory is a world-writable directory (sticky or not) that is one of
//! [`KNOWN`] or a child of one of [`PARENTS`]: a few dozen `statx` calls per sweep, never a
//! walk of the file system. The known ones come first, so a sweep that runs out of time
//! has swept them. Symlinks are not followed (`/var/lock` is `/run/lock`, swept once), and
//! a directory seen under two names (a bind mount) is swept once.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, Mode};

use super::{dir_flags, is_open_dir};

/// The shared directories most hosts have and jobs use most, swept first.
pub(crate) const KNOWN: [&str; 5] = ["/tmp", "/var/tmp", "/dev/shm", "/run/lock", "/dev/mqueue"];

/// The directories whose world-writable children are shared: `/var/crash`,
/// `/var/spool/*`, `/var/lib/*` and PHP's session directories are among them where the
/// host has them.
pub(crate) const PARENTS: [&str; 7] = [
    "/",
    "/var",
    "/dev",
    "/run",
    "/var/spool",
    "/var/lib",
    "/var/lib/php",
];

/// Most shared directories swept: a host that made more than this world-writable at these
/// levels is not a real host, and each costs a bounded sweep.
pub(crate) const MAX_PLACES: usize = 32;

/// The shared directories of this host (see the module doc).
pub(crate) fn shared_dirs() -> Vec<PathBuf> {
    let known: Vec<&Path> = KNOWN.iter().map(Path::new).collect();
    let parents: Vec<&Path> = PARENTS.iter().map(Path::new).collect();
    shared_dirs_in(&known, &parents)
}

/// The world-writable directories among `known` and the children of `parents`, in that
/// order, each once, at most [`MAX_PLACES`].
pub(crate) fn shared_dirs_in(known: &[&Path], parents: &[&Path]) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut places = Vec::new();
    for dir in known {
        if let Ok(stat) = rustix::fs::lstat(*dir)
            && is_open_dir(&stat)
            && seen.insert((stat.st_dev, stat.st_ino))
        {
            places.push(dir.to_path_buf());
        }
    }
    for parent in parents {
        let Ok(fd) = rustix::fs::open(*parent, dir_flags(), Mode::empty()) else {
            continue;
        };
        let Ok(entries) = Dir::read_from(&fd) else {
            continue;
        };
        for entry in entries {
            let Ok(entry) = entry else { break };
            let name = entry.file_name();
            if matches!(name.to_bytes(), b"." | b"..") {
                continue;
            }
            let Ok(stat) = rustix::fs::statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) else {
                continue;
            };
            if is_open_dir(&stat) && seen.insert((stat.st_dev, stat.st_ino)) {
                places.push(parent.join(OsStr::from_bytes(name.to_bytes())));
                if places.len() == MAX_PLACES {
                    tracing::warn!(
                        "more than {MAX_PLACES} world-writable directories; what a job leaves is removed from the first {MAX_PLACES}"
                    );
                    return places;
                }
            }
        }
    }
    places
}
