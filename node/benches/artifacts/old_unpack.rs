//! The artifacts unpacking as it was before the client refused symlinks on the way and
//! capped sizes (paths joined and checked with `lstat`, then opened by path, following a
//! symlink at the last component). Kept only here, as the baseline of the `unpack` bench.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use zip::{DateTime, ZipArchive};

/// Extracts the zip in `input` into `target` the old way.
pub(crate) fn unpack<R: Read + Seek>(input: R, target: &Path) -> anyhow::Result<()> {
    let mut archive = ZipArchive::new(input)?;
    for index in 0..archive.len() {
        let mut entry = archive.by_index(index)?;
        let name = entry.name()?.into_owned();
        let out_path = safe_join(target, &name)?;
        let mode = entry.unix_mode();
        let mtime = entry.last_modified().map(system_time);
        if let Ok(existing) = fs::symlink_metadata(&out_path) {
            use std::os::unix::fs::FileTypeExt;
            if existing.file_type().is_fifo() {
                fs::remove_file(&out_path)?;
                continue;
            }
            if existing.is_symlink() {
                fs::remove_file(&out_path)?;
            } else if existing.is_dir() {
                continue;
            }
        }
        if let Some(parent) = out_path.parent() {
            fs::create_dir_all(parent)?;
        }
        if entry.is_symlink() {
            let mut link = String::new();
            entry.read_to_string(&mut link)?;
            std::os::unix::fs::symlink(&link, &out_path)?;
            continue;
        }
        let file = if entry.is_dir() {
            fs::create_dir(&out_path)?;
            File::open(&out_path)?
        } else {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&out_path)
                .with_context(|| out_path.display().to_string())?;
            io::copy(&mut entry, &mut file)?;
            file
        };
        if let Some(mode) = mode {
            fs::set_permissions(&out_path, fs::Permissions::from_mode(mode & 0o7777))?;
        }
        if let Some(mtime) = mtime {
            file.set_modified(mtime)?;
        }
    }
    Ok(())
}

fn safe_join(target: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let mut out = target.to_path_buf();
    let components: Vec<_> = Path::new(name).components().collect();
    for (index, component) in components.iter().enumerate() {
        match component {
            Component::Normal(part) => {
                out.push(part);
                let is_last = index + 1 == components.len();
                let is_link = fs::symlink_metadata(&out).is_ok_and(|meta| meta.is_symlink());
                if is_link && !is_last {
                    bail!("{name} escapes");
                }
            }
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                bail!("{name} escapes")
            }
        }
    }
    Ok(out)
}

fn system_time(time: DateTime) -> SystemTime {
    // SAFETY: `tm` is plain data owned here; mktime only reads and normalises it.
    let secs = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        tm.tm_year = libc::c_int::from(time.year()) - 1900;
        tm.tm_mon = libc::c_int::from(time.month()) - 1;
        tm.tm_mday = libc::c_int::from(time.day());
        tm.tm_hour = libc::c_int::from(time.hour());
        tm.tm_min = libc::c_int::from(time.minute());
        tm.tm_sec = libc::c_int::from(time.second());
        tm.tm_isdst = -1;
        libc::mktime(&mut tm)
    };
    UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0))
}
