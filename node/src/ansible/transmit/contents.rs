//! Content-addressed transmit, both ends. The client plans the private data dir as the
//! streaming transmit does and hashes every regular file outside `env/` ([`ContentPlan`]);
//! once the node has said which contents it lacks, it sends those and the inline ones, raw,
//! in manifest order. The node, holding every entry's bytes, assembles the exact transmit
//! stream the worker expects with the same zip writer ([`Transmit::assemble`]).
//!
//! Synchronous file IO runs on blocking threads; no network IO here (the caller gives the
//! output).

use std::collections::hash_map::Entry as Stat;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::compress::Data;
use super::emit::Zip;
use super::layout::DosTime;
use super::manifest::{Content, ContentHash, Manifest, ManifestEntry, NEVER_CACHED};
use super::plan::{self, Body, Entry, Stamp};
use super::{CHUNKS_IN_FLIGHT, Transmit, TransmitError, source};
use crate::ansible::kwargs::Kwargs;

/// A private data dir planned for a content-addressed submission: its manifest, and where
/// each regular file's bytes are read from.
#[derive(Debug)]
pub struct ContentPlan {
    manifest: Manifest,
    /// Per entry: the file and what it looked like when hashed (`None`: not a file).
    sources: Vec<Option<(PathBuf, Stamp)>>,
}

impl ContentPlan {
    /// Walks `private_data_dir` and hashes its regular files outside `env/` (SHA-256), on
    /// a blocking thread.
    ///
    /// # Errors
    /// [`TransmitError`] when the dir cannot be read or a file changes while hashed.
    pub async fn prepare(private_data_dir: &Path, kwargs: &Kwargs) -> Result<Self, TransmitError> {
        let dir = private_data_dir.to_owned();
        let kwargs_line = kwargs.to_line();
        tokio::task::spawn_blocking(move || {
            let entries = plan::walk(&dir)?;
            let mut manifest = Manifest {
                kwargs_line,
                entries: Vec::with_capacity(entries.len()),
            };
            let mut sources = Vec::with_capacity(entries.len());
            for entry in entries {
                let (listed, source) = describe(entry)?;
                manifest.entries.push(listed);
                sources.push(source);
            }
            Ok(Self { manifest, sources })
        })
        .await
        .map_err(|join| TransmitError::Worker(join.to_string()))?
    }

    /// What the node is told.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Bytes of every regular file: what a full send would carry before encoding.
    pub fn file_bytes(&self) -> u64 {
        self.manifest.entries.iter().map(|e| e.size).sum()
    }

    /// The indices of the entries whose bytes are sent when the node lacks `lacking`: those
    /// it lacks (regular files only, whatever else it names) and every inline one.
    pub fn to_send(&self, lacking: &[u32]) -> Vec<usize> {
        let lacking: HashSet<usize> = lacking.iter().map(|&i| i as usize).collect();
        (self.manifest.entries.iter().enumerate())
            .filter(|(i, e)| match e.content {
                Content::Inline => true,
                Content::Hashed(_) => lacking.contains(i),
                _ => false,
            })
            .map(|(i, _)| i)
            .collect()
    }

    /// Bytes [`ContentPlan::send`] writes for `indices`.
    pub fn send_len(&self, indices: &[usize]) -> u64 {
        indices.iter().map(|&i| self.manifest.entries[i].size).sum()
    }

    /// Writes the bytes of the entries at `indices` (from [`ContentPlan::to_send`]) to
    /// `out`, raw, in order, each checked unchanged since it was hashed; flushed.
    ///
    /// # Errors
    /// [`TransmitError::Changed`] when a file changed, [`TransmitError::Write`] when `out`
    /// fails.
    pub async fn send(
        self,
        indices: Vec<usize>,
        mut out: impl AsyncWrite + Unpin,
    ) -> Result<(), TransmitError> {
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        let reader = tokio::task::spawn_blocking(move || {
            for index in indices {
                let Some(Some((path, stamp))) = self.sources.get(index) else {
                    continue;
                };
                source::read_all(path, stamp, |piece| {
                    tx.blocking_send(piece.to_vec())
                        .map_err(|_| TransmitError::Write(std::io::ErrorKind::BrokenPipe.into()))
                })?;
            }
            Ok::<_, TransmitError>(())
        });
        while let Some(chunk) = rx.recv().await {
            out.write_all(&chunk).await.map_err(TransmitError::Write)?;
        }
        reader
            .await
            .map_err(|join| TransmitError::Worker(join.to_string()))??;
        out.flush().await.map_err(TransmitError::Write)
    }
}

/// An entry as the manifest lists it, and its source if it is a regular file.
fn describe(entry: Entry) -> Result<(ManifestEntry, Option<(PathBuf, Stamp)>), TransmitError> {
    let time = (entry.time.date, entry.time.time);
    let (content, size, source) = match entry.body {
        Body::Dir => (Content::Dir, 0, None),
        Body::Link { target } => (Content::Link(target), 0, None),
        Body::Bytes(_) => {
            return Err(TransmitError::Worker("a walk reads no bytes".into()));
        }
        Body::File { path, stamp } => {
            let content = if entry.name.starts_with(NEVER_CACHED) {
                Content::Inline
            } else {
                Content::Hashed(hash(&path, &stamp)?)
            };
            (content, stamp.len, Some((path, stamp)))
        }
    };
    let listed = ManifestEntry {
        name: entry.name,
        mode: entry.mode,
        time,
        size,
        content,
    };
    Ok((listed, source))
}

/// SHA-256 of a planned file, refusing one that changed while read.
fn hash(path: &Path, stamp: &Stamp) -> Result<ContentHash, TransmitError> {
    let mut hasher = Sha256::new();
    source::read_all(path, stamp, |piece| {
        hasher.update(piece);
        Ok(())
    })?;
    Ok(hasher.finalize().into())
}

/// An entry's bytes as the node holds them.
#[derive(Debug)]
pub enum Held {
    /// A directory or a symlink: the manifest has all of it.
    Listed,
    /// A file in the content cache (pinned while the stream is written).
    File(PathBuf),
    /// A file sent inline.
    Bytes(Vec<u8>),
}

impl Transmit {
    /// The transmit stream of `manifest` with every entry's bytes in `held` (one per
    /// entry), every file stored as is. Reads file metadata only, once per distinct file
    /// (a manifest may list one content 200,000 times); blocking, so an async caller runs
    /// it on a blocking thread.
    ///
    /// # Errors
    /// [`TransmitError::Changed`] when a held file's size is not the manifest's, or `held`
    /// does not match the manifest; [`TransmitError::Read`] when a file cannot be read.
    pub fn assemble(manifest: Manifest, held: Vec<Held>) -> Result<Self, TransmitError> {
        if held.len() != manifest.entries.len() {
            return Err(TransmitError::Worker(
                "the held contents do not match the manifest".into(),
            ));
        }
        let mut entries = Vec::with_capacity(held.len());
        let mut stated = Stated::default();
        for (listed, held) in manifest.entries.into_iter().zip(held) {
            entries.push(assembled_entry(listed, held, &mut stated)?);
        }
        let data = entries.iter().map(|_| Data::Stored).collect();
        Ok(Self {
            kwargs_line: manifest.kwargs_line,
            zip: Zip::new(entries, data),
            #[cfg(test)]
            stat_threads: stated.threads,
        })
    }
}

/// The metadata of each file held, taken once.
#[derive(Default)]
struct Stated {
    files: HashMap<PathBuf, std::fs::Metadata>,
    /// The thread of each `lstat`, for tests.
    #[cfg(test)]
    threads: Vec<std::thread::ThreadId>,
}

impl Stated {
    /// `path`'s metadata (not following a link), from the first time it was asked for.
    fn of(&mut self, path: &Path) -> Result<&std::fs::Metadata, TransmitError> {
        match self.files.entry(path.to_owned()) {
            Stat::Occupied(known) => Ok(known.into_mut()),
            Stat::Vacant(new) => {
                #[cfg(test)]
                self.threads.push(std::thread::current().id());
                let meta =
                    std::fs::symlink_metadata(path).map_err(|source| TransmitError::Read {
                        path: path.to_owned(),
                        source,
                    })?;
                Ok(new.insert(meta))
            }
        }
    }
}

fn assembled_entry(
    listed: ManifestEntry,
    held: Held,
    stated: &mut Stated,
) -> Result<Entry, TransmitError> {
    let mismatch = |name: &str| TransmitError::Changed {
        path: PathBuf::from(name),
    };
    let body = match (listed.content, held) {
        (Content::Dir, Held::Listed) => Body::Dir,
        (Content::Link(target), Held::Listed) => Body::Link { target },
        (Content::Hashed(_) | Content::Inline, Held::Bytes(bytes)) => {
            if bytes.len() as u64 != listed.size {
                return Err(mismatch(&listed.name));
            }
            Body::Bytes(bytes)
        }
        (Content::Hashed(_), Held::File(path)) => {
            let meta = stated.of(&path)?;
            let stamp = Stamp::of(meta);
            if !meta.is_file() || stamp.len != listed.size {
                return Err(mismatch(&listed.name));
            }
            Body::File { path, stamp }
        }
        _ => return Err(mismatch(&listed.name)),
    };
    Ok(Entry {
        name: listed.name,
        mode: listed.mode,
        time: DosTime {
            date: listed.time.0,
            time: listed.time.1,
        },
        body,
    })
}
