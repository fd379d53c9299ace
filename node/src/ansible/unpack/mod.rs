//! Unpacking a worker's artifacts zip on the client, as ansible-runner's `unstream_dir`
//! does (modes and mtimes restored, existing directories left alone, FIFOs removed), but
//! unable to write outside the artifacts dir or to fill the disk.
//!
//! - Every file is opened through `beneath`: relative to the artifacts
//!   dir's fd, no symlink followed, on the way or at the end.
//! - A symlink entry is created only when its target is relative and made of plain names
//!   (no `..`, no absolute path): it can then only point beneath its own directory, however
//!   links chain. A real `ansible-runner` artifacts dir has no symlinks at all (`rc`,
//!   `status`, `stdout`, `stderr`, `command`, `job_events/`, `fact_cache/`), so this
//!   refuses nothing a real worker sends while keeping links a custom one might.
//! - Modes are masked to 0o777.
//! - [`ArtifactLimits`] caps the zip's size, the bytes written, the entry count and each
//!   entry's compression ratio. Sizes declared in the zip are checked before anything is
//!   written, and the bytes actually decompressed are counted as they are written, so the
//!   bytes on disk never pass the cap. An entry over a cap is cut (not written) and the
//!   rest goes on, so `rc` and `status` still land; the run then fails naming the cap.
//!
//! Whenever unpacking stops short, [`NOTE_FILE`] in the artifacts dir says what was cut and
//! why.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use zip::ZipArchive;
use zip::read::ZipFile;

mod eocd;
mod limits;
mod note;

pub use limits::{ArtifactLimits, Limit, LimitEnvError, LimitValueError, SizeError, parse_size};

use super::archive::system_time;
use super::beneath::{self, Kind, Tree};
use eocd::declared_entries;
use note::note_text;
pub(crate) use note::{events_note_text, leave_note};

/// The note left in an artifacts dir that was not unpacked in full.
pub const NOTE_FILE: &str = "warren-incomplete.txt";

/// Entries at most this large are exempt from the ratio cap: a small file of repeated
/// bytes compresses far better than text and is no threat.
pub const RATIO_FLOOR: u64 = 1 << 20;

/// How many cut entries a note and an error name; the rest are counted.
const NAMED_CUTS: usize = 20;

/// Longest symlink target read from an entry.
const MAX_LINK_LEN: u64 = 4096;

/// A failure to unpack the artifacts. What was written before it stays, with [`NOTE_FILE`].
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// The zip is malformed.
    #[error("bad zip archive")]
    Zip(#[from] zip::result::ZipError),
    /// An entry's data could not be read (corrupt, or longer than it declared).
    #[error("cannot read zip entry {name:?}")]
    Read {
        /// The entry.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing into the artifacts dir failed.
    #[error("cannot write {path:?}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry names a path outside the artifacts dir (absolute, `..`) or through a
    /// symlink: the "zip slip" attack. Nothing of it is written.
    #[error("zip entry {name:?} escapes the artifacts directory")]
    Escapes {
        /// The entry's name as stored.
        name: String,
    },
    /// A symlink entry points somewhere a link may not (see the module docs).
    #[error(
        "zip entry {name:?} is a symlink to {target:?}; only relative links without `..` \
         (that stay beneath their directory) are created"
    )]
    UnsafeSymlink {
        /// The entry's name.
        name: String,
        /// Where it pointed.
        target: String,
    },
    /// Over one of the [`ArtifactLimits`]: the entries named were not written.
    #[error(
        "the worker's artifacts exceed the {}: {} not unpacked; raise it with {} or {}",
        limit.describe(*cap), list_cut(cut, *cut_count), limit.flag(), limit.env()
    )]
    OverLimit {
        /// The cap.
        limit: Limit,
        /// Its value.
        cap: u64,
        /// The first entries cut, quoted (at most `NAMED_CUTS`), or what was cut.
        cut: Vec<String>,
        /// How many entries were cut in all.
        cut_count: u64,
    },
}

/// The cut entries (quoted names, or what was cut) and how many more there are.
fn list_cut(names: &[String], count: u64) -> String {
    let mut text = names.join(", ");
    let more = count.saturating_sub(names.len() as u64);
    if more > 0 {
        let _ = write!(text, " and {more} more entries");
    }
    if text.is_empty() {
        text = "nothing".to_owned();
    }
    text
}

/// What an unpacking wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// File bytes written.
    pub bytes: u64,
}

/// Extracts the zip in `input` into `target`, within `limits` (see the module docs). On
/// error, [`NOTE_FILE`] in `target` says what was and was not unpacked.
///
/// # Errors
/// [`UnpackError`]; an over-cap zip is [`UnpackError::OverLimit`] after the rest of it was
/// unpacked.
pub fn unpack<R: Read + Seek>(
    input: R,
    target: &Path,
    limits: &ArtifactLimits,
) -> Result<Unpacked, UnpackError> {
    let mut tree = Tree::open(target).map_err(|source| UnpackError::Io {
        path: target.to_owned(),
        source,
    })?;
    let mut run = Run::new(*limits, target);
    let result = run.all(&mut tree, input);
    if let Err(error) = &result {
        leave_note(tree.root(), target, &note_text(error, &run));
    }
    result
}

/// The error for a zip of `zip_len` bytes over `limits.zip_bytes`, refused before any of
/// it is read; leaves the note in `target`.
pub fn refuse_zip(target: &Path, zip_len: u64, limits: &ArtifactLimits) -> UnpackError {
    let error = UnpackError::OverLimit {
        limit: Limit::ZipBytes,
        cap: limits.zip_bytes,
        cut: vec![format!("the whole {zip_len}-byte zip")],
        cut_count: 1,
    };
    match Tree::open(target) {
        Ok(tree) => {
            let run = Run::new(*limits, target);
            leave_note(tree.root(), target, &note_text(&error, &run));
        }
        Err(e) => tracing::warn!(error = %e, dir = %target.display(), "cannot leave a note"),
    }
    error
}

/// One unpacking's progress and the caps left.
struct Run {
    limits: ArtifactLimits,
    target: PathBuf,
    total: Option<u64>,
    done: Unpacked,
    /// The entry being unpacked when a fatal error came.
    current: Option<String>,
    cut: Vec<String>,
    cut_count: u64,
    cut_limit: Option<Limit>,
}

/// How copying one entry ended badly.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Over(Limit),
}

impl Run {
    fn new(limits: ArtifactLimits, target: &Path) -> Self {
        Self {
            limits,
            target: target.to_owned(),
            total: None,
            done: Unpacked::default(),
            current: None,
            cut: Vec::new(),
            cut_count: 0,
            cut_limit: None,
        }
    }

    fn all<R: Read + Seek>(
        &mut self,
        tree: &mut Tree,
        mut input: R,
    ) -> Result<Unpacked, UnpackError> {
        if let Some(declared) = declared_entries(&mut input) {
            self.total = Some(declared);
            self.check_entries(declared)?;
        }
        let mut archive = ZipArchive::new(input)?;
        self.total = Some(archive.len() as u64);
        self.check_entries(archive.len() as u64)?;
        for index in 0..archive.len() {
            let entry = archive.by_index(index)?;
            let name = entry.name()?.into_owned();
            self.current = Some(name.clone());
            self.entry(tree, entry, &name)?;
        }
        self.current = None;
        match self.cut_limit {
            Some(limit) => Err(UnpackError::OverLimit {
                limit,
                cap: self.limits.cap(limit),
                cut: self.cut.clone(),
                cut_count: self.cut_count,
            }),
            None => Ok(self.done),
        }
    }

    fn check_entries(&mut self, count: u64) -> Result<(), UnpackError> {
        if count <= self.limits.entries {
            return Ok(());
        }
        Err(UnpackError::OverLimit {
            limit: Limit::Entries,
            cap: self.limits.entries,
            cut: vec![format!("all {count} entries")],
            cut_count: count,
        })
    }

    fn cut(&mut self, name: &str, limit: Limit) {
        if self.cut.len() < NAMED_CUTS {
            // Quoted: a name is the worker's text, its control characters are escaped.
            self.cut.push(format!("{name:?}"));
        }
        self.cut_count += 1;
        self.cut_limit.get_or_insert(limit);
    }

    fn entry<R: Read>(
        &mut self,
        tree: &mut Tree,
        mut entry: ZipFile<'_, R>,
        name: &str,
    ) -> Result<(), UnpackError> {
        let (parts, leaf) = split_name(name)?;
        let dir = tree
            .dir(&parts)
            .map_err(|e| self.walk_error(name, &parts, e))?;
        match beneath::kind_at(dir, leaf).map_err(|e| self.io(name, e))? {
            // As the reference: an old FIFO (say a left-over ssh_key_data) is removed and
            // its entry skipped; existing directories are left alone.
            Some(Kind::Fifo) => return self.remove(dir, name, leaf, Kind::Fifo),
            Some(Kind::Dir) => return Ok(()),
            Some(kind @ (Kind::Symlink | Kind::Other)) => self.remove(dir, name, leaf, kind)?,
            Some(Kind::File) | None => {}
        }
        if entry.is_symlink() {
            return self.symlink(dir, leaf, name, &mut entry);
        }
        let mode = entry.unix_mode();
        let mtime = entry.last_modified().map(system_time);
        let file = if entry.is_dir() {
            beneath::make_dir_at(dir, leaf).map_err(|e| self.io(name, e))?
        } else {
            match self.file(dir, leaf, name, &mut entry)? {
                Some(file) => file,
                None => return Ok(()),
            }
        };
        if let Some(mode) = mode {
            beneath::set_mode(&file, mode).map_err(|e| self.io(name, e))?;
        }
        if let Some(mtime) = mtime {
            file.set_modified(mtime).map_err(|e| self.io(name, e))?;
        }
        self.done.entries += 1;
        Ok(())
    }

    /// Writes a file entry within the caps; `None` when it was cut.
    fn file<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        leaf: &str,
        name: &str,
        entry: &mut ZipFile<'_, R>,
    ) -> Result<Option<File>, UnpackError> {
        let packed = entry.compressed_size();
        let left = self.limits.unpacked_bytes.saturating_sub(self.done.bytes);
        let by_ratio = packed.saturating_mul(self.limits.ratio).max(RATIO_FLOOR);
        let declared = entry.size();
        if declared > left || declared > by_ratio {
            let limit = if declared > left {
                Limit::UnpackedBytes
            } else {
                Limit::Ratio
            };
            self.cut(name, limit);
            return Ok(None);
        }
        let (allowed, limit) = if left <= by_ratio {
            (left, Limit::UnpackedBytes)
        } else {
            (by_ratio, Limit::Ratio)
        };
        let mut file = beneath::create_file_at(dir, leaf, 0o600).map_err(|e| self.io(name, e))?;
        match copy_capped(entry, &mut file, allowed, limit) {
            Ok(written) => {
                self.done.bytes += written;
                Ok(Some(file))
            }
            Err(CopyError::Over(limit)) => {
                drop(file);
                self.remove(dir, name, leaf, Kind::File)?;
                self.cut(name, limit);
                Ok(None)
            }
            Err(CopyError::Read(source)) => Err(UnpackError::Read {
                name: name.to_owned(),
                source,
            }),
            Err(CopyError::Write(e)) => Err(self.io(name, e)),
        }
    }

    fn symlink<R: Read>(
        &mut self,
        dir: BorrowedFd<'_>,
        leaf: &str,
        name: &str,
        entry: &mut ZipFile<'_, R>,
    ) -> Result<(), UnpackError> {
        let mut target = String::new();
        entry
            .by_ref()
            .take(MAX_LINK_LEN)
            .read_to_string(&mut target)
            .map_err(|source| UnpackError::Read {
                name: name.to_owned(),
                source,
            })?;
        if !is_safe_link_target(&target) {
            return Err(UnpackError::UnsafeSymlink {
                name: name.to_owned(),
                target,
            });
        }
        beneath::symlink_at(&target, dir, leaf).map_err(|e| self.io(name, e))?;
        self.done.entries += 1;
        Ok(())
    }

    fn remove(
        &self,
        dir: BorrowedFd<'_>,
        name: &str,
        leaf: &str,
        kind: Kind,
    ) -> Result<(), UnpackError> {
        beneath::remove_at(dir, leaf, kind).map_err(|e| self.io(name, e))
    }

    fn io(&self, name: &str, source: io::Error) -> UnpackError {
        UnpackError::Io {
            path: self.target.join(name),
            source,
        }
    }

    /// A directory on the way could not be opened: a symlink or file there is an escape
    /// attempt, anything else an IO error.
    fn walk_error(&self, name: &str, parts: &[&str], source: io::Error) -> UnpackError {
        match source.raw_os_error() {
            Some(libc::ELOOP | libc::EXDEV) => UnpackError::Escapes {
                name: name.to_owned(),
            },
            _ => UnpackError::Io {
                path: self.target.join(parts.join("/")),
                source,
            },
        }
    }
}

/// An entry's name as its directory's components and its own: plain names only.
fn split_name(name: &str) -> Result<(Vec<&str>, &str), UnpackError> {
    let escapes = || UnpackError::Escapes {
        name: name.to_owned(),
    };
    if name.starts_with('/') {
        return Err(escapes());
    }
    let mut parts: Vec<&str> = name
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.iter().any(|p| !beneath::is_plain_name(p)) {
        return Err(escapes());
    }
    let leaf = parts.pop().ok_or_else(escapes)?;
    Ok((parts, leaf))
}

/// A link target that can only resolve beneath the link's own directory: relative, and
/// nothing but plain names (and `.`).
fn is_safe_link_target(target: &str) -> bool {
    !target.is_empty()
        && !target.starts_with('/')
        && target
            .split('/')
            .all(|part| part.is_empty() || part == "." || beneath::is_plain_name(part))
}

/// Copies `entry` into `file`, failing with `Over(limit)` before more than `allowed` bytes
/// are written.
fn copy_capped(
    entry: &mut impl Read,
    file: &mut File,
    allowed: u64,
    limit: Limit,
) -> Result<u64, CopyError> {
    let mut buf = vec![0u8; 128 * 1024];
    let mut written = 0u64;
    loop {
        let read = match entry.read(&mut buf) {
            Ok(0) => return Ok(written),
            Ok(read) => read,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        if written + read as u64 > allowed {
            return Err(CopyError::Over(limit));
        }
        file.write_all(&buf[..read]).map_err(CopyError::Write)?;
        written += read as u64;
    }
}
