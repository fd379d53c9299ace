//! The zip of a directory as ansible-runner's `stream_dir`/`unstream_dir` make and read it.
//!
//! Synchronous file IO only (callers run it on a blocking thread); no streams, no base64.
//! Packing walks like Python's `os.walk` (each dir's files, then its subdirs, then each
//! subdir in turn), stores directory entries and symlinks (mode `0o120777`, data = target)
//! and skips FIFOs. Unpacking, which takes what a worker sent, is [`super::unpack`]'s.

use std::fs::{self, File};
use std::io::{self, Seek, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

/// A failure to pack or unpack a directory zip.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading the directory or writing the zip failed.
    #[error("io error on {path}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The zip itself is malformed, or could not be written.
    #[error("bad zip archive")]
    Zip(#[from] zip::result::ZipError),
    /// A path that is not UTF-8 cannot be named in the zip as the reference names it.
    #[error("path is not UTF-8: {path}")]
    NonUtf8 {
        /// The path.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes the zip of `dir` to `out` and returns its size in bytes.
pub(crate) fn pack_dir<W: Write + Seek>(dir: &Path, out: W) -> Result<u64, ArchiveError> {
    let mut writer = ZipWriter::new(out);
    walk(&mut writer, dir, "")?;
    let mut out = writer.finish()?;
    out.stream_position().map_err(io_err(dir))
}

/// One level of `os.walk`: this dir's entries (files first, then subdirs), then each subdir.
fn walk<W: Write + Seek>(
    writer: &mut ZipWriter<W>,
    dir: &Path,
    rel: &str,
) -> Result<(), ArchiveError> {
    let mut files = Vec::new();
    let mut dirs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|_| ArchiveError::NonUtf8 { path: entry.path() })?;
        // `os.walk` sorts by `is_dir()`, which follows symlinks.
        match fs::metadata(entry.path()) {
            Ok(meta) if meta.is_dir() => dirs.push(name),
            _ => files.push(name),
        }
    }
    for name in files.iter().chain(&dirs) {
        add_entry(writer, &dir.join(name), &join_rel(rel, name))?;
    }
    for name in &dirs {
        let path = dir.join(name);
        let is_link = fs::symlink_metadata(&path)
            .map_err(io_err(&path))?
            .is_symlink();
        if !is_link {
            walk(writer, &path, &join_rel(rel, name))?;
        }
    }
    Ok(())
}

fn join_rel(rel: &str, name: &str) -> String {
    if rel.is_empty() {
        name.to_owned()
    } else {
        format!("{rel}/{name}")
    }
}

fn add_entry<W: Write + Seek>(
    writer: &mut ZipWriter<W>,
    path: &Path,
    name: &str,
) -> Result<(), ArchiveError> {
    let meta = fs::symlink_metadata(path).map_err(io_err(path))?;
    let options = SimpleFileOptions::default()
        .large_file(meta.len() >= u64::from(u32::MAX))
        .last_modified_time(dos_time(meta.modified().unwrap_or(UNIX_EPOCH)))
        .unix_permissions(meta.permissions().mode());
    let kind = meta.file_type();
    if kind.is_symlink() {
        let target = fs::read_link(path).map_err(io_err(path))?;
        let target = target.to_str().ok_or_else(|| ArchiveError::NonUtf8 {
            path: path.to_owned(),
        })?;
        writer.add_symlink(name, target, options.unix_permissions(0o777))?;
    } else if kind.is_dir() {
        writer.add_directory(name, options)?;
    } else if kind.is_file() {
        writer.start_file(
            name,
            options.compression_method(CompressionMethod::Deflated),
        )?;
        let mut file = File::open(path).map_err(io_err(path))?;
        io::copy(&mut file, writer).map_err(io_err(path))?;
    }
    // FIFOs (e.g. a left-over ssh_key_data) would hang a reader; the reference skips them.
    // Sockets and devices, which make the reference fail, are skipped too.
    Ok(())
}

/// The zip timestamp for `time` in local time, clamped to the DOS range as Python's
/// `strict_timestamps=False` clamps it.
fn dos_time(time: SystemTime) -> DateTime {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let Some(tm) = local_tm(i64::try_from(secs).unwrap_or(i64::MAX)) else {
        return DateTime::default();
    };
    let year = tm.tm_year + 1900;
    if year < 1980 {
        return DateTime::default();
    }
    if year > 2107 {
        return DateTime::from_date_and_time(2107, 12, 31, 23, 59, 59).unwrap_or_default();
    }
    let field = |value: libc::c_int| u8::try_from(value).unwrap_or(0);
    DateTime::from_date_and_time(
        u16::try_from(year).unwrap_or(1980),
        field(tm.tm_mon + 1),
        field(tm.tm_mday),
        field(tm.tm_hour),
        field(tm.tm_min),
        field(tm.tm_sec.min(59)),
    )
    .unwrap_or_default()
}

fn local_tm(secs: i64) -> Option<libc::tm> {
    let time: libc::time_t = secs;
    // SAFETY: `tm` is plain data; localtime_r writes it or returns null, touching nothing else.
    unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        (!libc::localtime_r(&time, &mut tm).is_null()).then_some(tm)
    }
}

/// A zip timestamp read as local time (Python's `time.mktime`).
pub(super) fn system_time(time: DateTime) -> SystemTime {
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
