//! The file modes that keep a job user ([`super::users`]) inside its own job directory:
//! the data dir, `units/` and the job's unit directory traversable but not listable
//! (0711), everything else in them the node's alone, and the job directory given to the
//! job's uid (mode 0700, with what the handler put there before the program started).
//!
//! [`lock_data_dir`] runs once at start (with the node's umask set to 077, so everything
//! it creates afterwards is its own); [`hand_over`] before each job's first program.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;

use crate::work::store::UNITS_DIR;

/// Traversable, not listable.
const PASS_THROUGH: u32 = 0o711;

/// Sets the node's umask to 077 and takes group and other permissions off everything in
/// the data dir to the depth a job could reach (the data dir's entries, `units/`'s
/// entries); the data dir and `units/` become 0711.
///
/// # Errors
/// The first directory that could not be read or changed.
pub fn lock_data_dir(data_dir: &Path) -> io::Result<()> {
    // SAFETY: umask cannot fail.
    unsafe { libc::umask(0o077) };
    close_data_dir(data_dir)
}

/// [`lock_data_dir`] without the umask: the data dir and `units/` 0711, each unit
/// directory 0711 (as [`hand_over`] leaves it, so a job re-attached after a restart still
/// reaches its job directory) and every other entry the node's alone.
fn close_data_dir(data_dir: &Path) -> io::Result<()> {
    set_mode(data_dir, PASS_THROUGH)?;
    private_entries(data_dir, &[UNITS_DIR])?;
    let units = data_dir.join(UNITS_DIR);
    if units.is_dir() {
        set_mode(&units, PASS_THROUGH)?;
        for entry in fs::read_dir(&units)? {
            let unit = entry?.path();
            let meta = fs::symlink_metadata(&unit)?;
            if meta.is_dir() {
                // As `hand_over` left it: a job re-attached after this start reaches its
                // job directory through it; the unit's files stay the node's alone.
                set_mode(&unit, PASS_THROUGH)?;
                private_entries(&unit, &[])?;
            } else if !meta.file_type().is_symlink() && meta.mode() & 0o077 != 0 {
                fs::set_permissions(&unit, fs::Permissions::from_mode(meta.mode() & 0o700))?;
            }
        }
    }
    Ok(())
}

/// Prepares `job_dir` (in the unit directory `unit_dir`, under `data_dir`) for a program
/// running as `uid`: the directories above it up to the data dir 0711, the unit
/// directory's other entries the node's alone, and the job directory with everything in it
/// owned by `uid` (gid too), the directory itself 0700. Links are changed, not followed.
///
/// # Errors
/// The first path that could not be changed.
pub fn hand_over(job_dir: &Path, unit_dir: &Path, data_dir: &Path, uid: u32) -> io::Result<()> {
    for dir in unit_dir.ancestors() {
        if !dir.starts_with(data_dir) {
            break;
        }
        set_mode(dir, PASS_THROUGH)?;
    }
    let keep = job_dir.file_name().and_then(|n| n.to_str());
    private_entries(unit_dir, keep.as_slice())?;
    give_tree(job_dir, uid)?;
    set_mode(job_dir, 0o700)
}

/// `chmod` of a directory (never a link: the caller names directories the node made).
fn set_mode(dir: &Path, mode: u32) -> io::Result<()> {
    let meta = fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() || meta.mode() & 0o7777 == mode {
        return Ok(());
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Takes group and other permissions off each entry of `dir` except `skip` (links are
/// left: their mode means nothing).
fn private_entries(dir: &Path, skip: &[&str]) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| skip.contains(&n))
        {
            continue;
        }
        let meta = fs::symlink_metadata(entry.path())?;
        let mode = meta.mode() & 0o7777;
        if meta.file_type().is_symlink() || mode & 0o077 == 0 {
            continue;
        }
        fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode & !0o077))?;
    }
    Ok(())
}

/// `lchown` of `root` and everything under it to `uid:uid`, not following links.
fn give_tree(root: &Path, uid: u32) -> io::Result<()> {
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path)?;
        if meta.uid() != uid || meta.gid() != uid {
            std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closing_the_data_dir_at_start_leaves_a_running_jobs_way_to_its_job_directory() {
        // Found by this stop's second review: at start every unit directory became 0700,
        // so a job re-attached after a restart lost its own job directory (its HOME and
        // TMPDIR) to EACCES.
        let data = tempfile::tempdir().unwrap();
        let unit = data.path().join("units/u1");
        let job = unit.join(crate::work::store::JOB_DIR);
        fs::create_dir_all(&job).unwrap();
        fs::write(unit.join("stdin"), b"secret").unwrap();
        fs::set_permissions(unit.join("stdin"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&unit, fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&job, Some(4_000_124), Some(4_000_124)).unwrap();
        fs::set_permissions(&job, fs::Permissions::from_mode(0o700)).unwrap();
        fs::write(data.path().join("node.key"), b"key").unwrap();
        fs::set_permissions(
            data.path().join("node.key"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        close_data_dir(data.path()).unwrap();
        for dir in [data.path(), &data.path().join("units"), &unit] {
            assert_eq!(mode(dir), 0o711, "{}", dir.display());
        }
        assert_eq!(mode(&unit.join("stdin")), 0o600);
        assert_eq!(mode(&data.path().join("node.key")), 0o600);
        let meta = fs::symlink_metadata(&job).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (4_000_124, 0o700));
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn handing_over_a_job_dir_gives_it_to_the_uid_and_leaves_its_neighbours_the_nodes() {
        let data = tempfile::tempdir().unwrap();
        let unit = data.path().join("units/u1");
        let job = unit.join("job");
        fs::create_dir_all(job.join("sub")).unwrap();
        fs::write(job.join("sub/input"), b"x").unwrap();
        fs::write(unit.join("stdin"), b"secret").unwrap();
        fs::set_permissions(unit.join("stdin"), fs::Permissions::from_mode(0o644)).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", job.join("link")).unwrap();
        hand_over(&job, &unit, data.path(), 4_000_123).unwrap();
        for dir in [data.path(), &data.path().join("units"), &unit] {
            assert_eq!(mode(dir), 0o711, "{}", dir.display());
        }
        assert_eq!(mode(&job), 0o700);
        assert_eq!(
            mode(&unit.join("stdin")),
            0o600,
            "a neighbour stays the node's"
        );
        for path in [
            &job,
            &job.join("sub"),
            &job.join("sub/input"),
            &job.join("link"),
        ] {
            let meta = fs::symlink_metadata(path).unwrap();
            assert_eq!(
                (meta.uid(), meta.gid()),
                (4_000_123, 4_000_123),
                "{}",
                path.display()
            );
        }
        let shadow = fs::metadata("/etc/shadow").unwrap();
        assert_ne!(
            shadow.uid(),
            4_000_123,
            "the link's target was not followed"
        );
    }
}
