//! Which files are deflated and what that gives, decided before the zip is written (its
//! length comes first in the stream).
//!
//! A file is stored as is when its extension names an already-compressed format, or when
//! deflating its first [`SAMPLE_LEN`] bytes saves less than a tenth; the rest are deflated,
//! in parallel on up to [`MAX_THREADS`] threads. Small results are held in memory (at most
//! [`Holding::DEFAULT`]); a big one is only measured here and deflated again while
//! it is sent, so no compressed copy of a big file is ever kept, in memory or on disk.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use flate2::{Compress, Compression, FlushCompress, Status};

use super::TransmitError;
use super::plan::{Body, Entry, Stamp};
use super::source;

/// Bytes of a file deflated to judge whether deflating it pays.
pub(super) const SAMPLE_LEN: usize = 64 * 1024;

/// How many deflated bytes may wait in memory between planning and sending.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holding {
    /// Most compressed bytes held over all files.
    pub(super) budget: u64,
    /// Largest file whose deflated bytes are held (bigger ones are deflated twice instead).
    pub(super) file_max: u64,
}

impl Holding {
    /// 32 MiB in all, files up to 4 MiB: a private data dir of playbooks and roles is held
    /// whole; big compressible files cost a second deflate rather than memory.
    pub(super) const DEFAULT: Self = Self {
        budget: 32 << 20,
        file_max: 4 << 20,
    };
}

/// Most threads deflating at once.
const MAX_THREADS: usize = 8;

/// zlib level 6, the level Python's `zipfile` (and so `ansible-runner transmit`) uses.
const LEVEL: u32 = 6;

/// Extensions of formats that are compressed already: deflate cannot shrink them.
const INCOMPRESSIBLE: &[&str] = &[
    "7z", "aab", "apk", "avif", "br", "bz2", "cab", "deb", "docx", "ear", "egg", "flac", "gif",
    "gpg", "gz", "heic", "iso", "jar", "jpeg", "jpg", "lz", "lz4", "lzma", "lzo", "m4a", "m4v",
    "mkv", "mov", "mp3", "mp4", "nupkg", "odp", "ods", "odt", "ogg", "opus", "png", "pptx",
    "qcow2", "rar", "rpm", "sqfs", "squashfs", "tbz", "tbz2", "tgz", "txz", "tzst", "war", "webm",
    "webp", "whl", "woff", "woff2", "xlsx", "xz", "z", "zip", "zst",
];

/// How one entry's data goes into the zip.
#[derive(Debug)]
pub(super) enum Data {
    /// As is: a file read from disk while it is sent (CRC in a data descriptor), or a
    /// directory or symlink.
    Stored,
    /// Deflated; the compressed bytes are here.
    Held { bytes: Vec<u8>, crc: u32 },
    /// Deflated; too big to hold, so deflated again while sent, which must give these.
    Again { compressed: u64, crc: u32 },
}

/// Whether `name`'s extension marks a compressed format.
pub(super) fn is_incompressible_name(name: &str) -> bool {
    let Some((_, ext)) = name.rsplit_once('.') else {
        return false;
    };
    !ext.contains('/') && INCOMPRESSIBLE.contains(&ext.to_ascii_lowercase().as_str())
}

/// Decides every entry's [`Data`], deflating what pays.
///
/// # Errors
///
/// [`TransmitError::Read`] for a file that cannot be read, [`TransmitError::Changed`] for
/// one that changed while it was read.
pub(super) fn choose(entries: &[Entry], holding: Holding) -> Result<Vec<Data>, TransmitError> {
    let jobs: Vec<usize> = (0..entries.len())
        .filter(|&i| matches!(entries[i].body, Body::File { .. }))
        .collect();
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .clamp(1, MAX_THREADS)
        .min(jobs.len().max(1));
    let held = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<(usize, Result<Data, TransmitError>)>> = Mutex::new(Vec::new());
    let work = || {
        let mut mine = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let Some(&index) = jobs.get(next.fetch_add(1, Ordering::Relaxed)) else {
                break;
            };
            let result = choose_one(&entries[index], holding, &held);
            failed.fetch_or(result.is_err(), Ordering::Relaxed);
            mine.push((index, result));
        }
        results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(mine);
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(work);
        }
        work();
    });
    let mut data: Vec<Data> = entries.iter().map(|_| Data::Stored).collect();
    let results = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (index, result) in results {
        data[index] = result?;
    }
    Ok(data)
}

/// One file's [`Data`].
fn choose_one(entry: &Entry, holding: Holding, held: &AtomicU64) -> Result<Data, TransmitError> {
    let Body::File { path, stamp } = &entry.body else {
        return Ok(Data::Stored);
    };
    if stamp.len == 0 || is_incompressible_name(&entry.name) {
        // Opened now so that an unreadable file fails before anything is sent.
        source::open(path, stamp)?;
        return Ok(Data::Stored);
    }
    if stamp.len > SAMPLE_LEN as u64 {
        let head = source::read_head(path, stamp, SAMPLE_LEN)?;
        if !pays(&head) {
            return Ok(Data::Stored);
        }
    }
    if stamp.len > holding.file_max {
        let measured = deflate(path, stamp, |_| Ok(()))?;
        return Ok(if measured.compressed < stamp.len {
            Data::Again {
                compressed: measured.compressed,
                crc: measured.crc,
            }
        } else {
            Data::Stored
        });
    }
    let mut bytes = Vec::new();
    let measured = deflate(path, stamp, |chunk| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })?;
    if measured.compressed >= stamp.len {
        return Ok(Data::Stored);
    }
    let before = held.fetch_add(measured.compressed, Ordering::Relaxed);
    if before + measured.compressed > holding.budget {
        held.fetch_sub(measured.compressed, Ordering::Relaxed);
        return Ok(Data::Again {
            compressed: measured.compressed,
            crc: measured.crc,
        });
    }
    Ok(Data::Held {
        bytes,
        crc: measured.crc,
    })
}

/// Whether deflating `sample` saves at least a tenth of it.
pub(super) fn pays(sample: &[u8]) -> bool {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    let mut out = vec![0u8; sample.len() + sample.len() / 8 + 64];
    let deflated = match compress.compress(sample, &mut out, FlushCompress::Finish) {
        Ok(Status::StreamEnd) => compress.total_out(),
        // The output did not fit: it is bigger than the sample.
        _ => return false,
    };
    deflated * 10 <= sample.len() as u64 * 9
}

/// What deflating a file gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deflated {
    pub(super) compressed: u64,
    pub(super) crc: u32,
}

/// Deflates a planned file into `out` piece by piece; the same unchanged file gives the same
/// bytes every time.
pub(super) fn deflate(
    path: &Path,
    stamp: &Stamp,
    mut out: impl FnMut(&[u8]) -> Result<(), TransmitError>,
) -> Result<Deflated, TransmitError> {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; source::READ_LEN];
    let mut step = |input: &[u8], flush| -> Result<bool, TransmitError> {
        let mut input = input;
        loop {
            let (before_in, before_out) = (compress.total_in(), compress.total_out());
            let status = compress
                .compress(input, &mut buf, flush)
                .map_err(|e| TransmitError::Deflate(e.to_string()))?;
            let consumed = (compress.total_in() - before_in) as usize;
            let produced = (compress.total_out() - before_out) as usize;
            input = &input[consumed..];
            out(&buf[..produced])?;
            if status == Status::StreamEnd {
                return Ok(true);
            }
            if input.is_empty() && produced < buf.len() && flush == FlushCompress::None {
                return Ok(false);
            }
        }
    };
    source::read_all(path, stamp, |piece| {
        crc.update(piece);
        step(piece, FlushCompress::None).map(drop)
    })?;
    while !step(&[], FlushCompress::Finish)? {}
    Ok(Deflated {
        compressed: compress.total_out(),
        crc: crc.finalize(),
    })
}
