//! The artifact dir while a worker stream is processed: `job_events/` files, the artifacts
//! zip and the `rc` file, each reached through a held directory fd without following a
//! symlink (see `beneath`). The job events are counted against the
//! [`ArtifactLimits`]: a worker that streams events without end is cut at the cap, with
//! the note the artifacts' caps leave.
//!
//! `warren run` drives it from [`super::process::process`]; the Python package, whose line
//! handling is ansible-runner's own `Processor`, calls it for every file it writes.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::beneath;
use super::process::{EventRecord, ProcessConfig, ProcessError};
use super::unpack::{self, ArtifactLimits, Limit, UnpackError};

/// Base64 bytes decoded per step: a multiple of 4, so every chunk decodes on its own.
const B64_CHUNK_LEN: usize = 4 * 16 * 1024;

/// The artifact dir and its `job_events/`, held open: event files are created relative to
/// the directory fd, never through a symlink.
pub struct ArtifactDirs {
    path: PathBuf,
    root: Arc<OwnedFd>,
    events: Arc<OwnedFd>,
    limits: ArtifactLimits,
    /// The job events written so far; the Python package may write from several threads.
    tally: Mutex<EventTally>,
}

/// Job events written so far, against the caps. No IO.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct EventTally {
    events: u64,
    bytes: u64,
}

impl EventTally {
    /// Counts one more event of `len` bytes, or names the cap it would pass (then nothing
    /// is counted).
    fn admit(&mut self, len: u64, limits: &ArtifactLimits) -> Result<(), (Limit, u64)> {
        if self.events >= limits.events {
            return Err((Limit::Events, limits.events));
        }
        if self.bytes.saturating_add(len) > limits.event_bytes {
            return Err((Limit::EventBytes, limits.event_bytes));
        }
        self.events += 1;
        self.bytes += len;
        Ok(())
    }
}

impl ArtifactDirs {
    /// Creates the artifact dir (parents with the default mode) and `job_events/` in it
    /// with mode 0700, as the reference makes them, and opens both; the events written
    /// through it are held to `limits`.
    ///
    /// # Errors
    /// [`ProcessError::Write`], or [`ProcessError::NotPlainFile`] for a symlink at
    /// `job_events`.
    pub fn create(dir: &Path, limits: ArtifactLimits) -> Result<Self, ProcessError> {
        let write_err = |path: &Path| {
            let path = path.to_owned();
            move |source| ProcessError::Write { path, source }
        };
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
        let root = beneath::open_root(dir).map_err(write_err(dir))?;
        let events_path = dir.join("job_events");
        match std::fs::DirBuilder::new().mode(0o700).create(&events_path) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => {
                return Err(write_err(&events_path)(error));
            }
            _ => {}
        }
        let events = beneath::open_dir_at(root.as_fd(), "job_events")
            .map_err(|e| not_plain_or(&events_path, e))?;
        Ok(Self {
            path: dir.to_owned(),
            root: Arc::new(root),
            events: Arc::new(events),
            limits,
            tally: Mutex::new(EventTally::default()),
        })
    }

    /// Prints the event's text, then writes its file (mode 0600), in the reference's order;
    /// an event past a cap is neither printed nor written.
    ///
    /// # Errors
    /// [`ProcessError::EventsOverLimit`] (with the note left), [`ProcessError::Stdout`],
    /// [`ProcessError::Write`] or [`ProcessError::NotPlainFile`].
    pub async fn write_event(
        &self,
        record: EventRecord,
        stdout: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), ProcessError> {
        self.admit_event(record.json.len() as u64)?;
        if let Some(text) = &record.console {
            stdout.write_all(text).await.map_err(ProcessError::Stdout)?;
            stdout.flush().await.map_err(ProcessError::Stdout)?;
        }
        let path = self.path.join("job_events").join(&record.file_name);
        let events = Arc::clone(&self.events);
        let written = tokio::task::spawn_blocking(move || {
            let mut file = beneath::create_file_at(events.as_fd(), &record.file_name, 0o600)?;
            // An existing file keeps its mode on open; the reference chmods it.
            beneath::set_mode(&file, 0o600)?;
            file.write_all(&record.json)
        })
        .await
        .map_err(io::Error::other)
        .and_then(|written| written);
        written.map_err(|e| not_plain_or(&path, e))
    }

    /// Writes `job_events/<file_name>` (mode 0600) with `json`, once `file_name` is checked
    /// to be one plain component: what an event handler kept, for the Python package.
    ///
    /// # Errors
    /// [`ProcessError::UnsafeEventName`], [`ProcessError::Write`] or
    /// [`ProcessError::NotPlainFile`].
    pub async fn write_event_file(
        &self,
        file_name: &str,
        json: Vec<u8>,
    ) -> Result<(), ProcessError> {
        super::process::check_event_name(file_name)?;
        let record = EventRecord {
            file_name: file_name.to_owned(),
            json,
            console: None,
        };
        self.write_event(record, &mut tokio::io::sink()).await
    }

    /// Counts an event of `len` bytes against the caps; past one, leaves the note saying
    /// what was cut.
    fn admit_event(&self, len: u64) -> Result<(), ProcessError> {
        let mut tally = self.tally.lock().unwrap_or_else(PoisonError::into_inner);
        let Err((limit, cap)) = tally.admit(len, &self.limits) else {
            return Ok(());
        };
        let written = (tally.events, tally.bytes);
        drop(tally);
        let text = unpack::events_note_text(limit, cap, written);
        unpack::leave_note(self.root.as_fd(), &self.path, &text);
        Err(ProcessError::EventsOverLimit { limit, cap })
    }

    /// The job's exit code from the artifacts' `rc` file, if there is a readable one.
    pub async fn read_rc(&self) -> Option<i32> {
        let root = Arc::clone(&self.root);
        let text = tokio::task::spawn_blocking(move || {
            let mut text = String::new();
            let file = beneath::open_read_at(root.as_fd(), "rc")?;
            file.take(64).read_to_string(&mut text)?;
            Ok::<_, io::Error>(text)
        })
        .await
        .ok()?
        .ok()?;
        text.trim().parse().ok()
    }
}

/// [`ProcessError::NotPlainFile`] for a symlink or special file at `path`, else a write
/// error.
fn not_plain_or(path: &Path, source: io::Error) -> ProcessError {
    if beneath::is_not_plain(&source) {
        ProcessError::NotPlainFile {
            path: path.to_owned(),
        }
    } else {
        ProcessError::Write {
            path: path.to_owned(),
            source,
        }
    }
}

/// Decodes the `zip_len`-byte zip's base64 from `reader` into a temp file, chunk by chunk,
/// then extracts it into the artifact dir within the config's limits. A zip over
/// `limits.zip_bytes` is refused before any of it is read.
///
/// # Errors
/// [`ProcessError`]: a truncated or malformed stream, a zip over a cap or unsafe, a write.
pub async fn receive_artifacts<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    zip_len: u64,
    config: &ProcessConfig,
) -> Result<(), ProcessError> {
    let limits = config.limits;
    let target = config.artifact_dir.clone();
    if zip_len > limits.zip_bytes {
        let refused =
            tokio::task::spawn_blocking(move || unpack::refuse_zip(&target, zip_len, &limits));
        let error = refused.await.map_err(|join| ProcessError::Write {
            path: config.artifact_dir.clone(),
            source: io::Error::other(join),
        })?;
        return Err(ProcessError::Artifacts(error));
    }
    let file = receive_zip(reader, zip_len).await?;
    tokio::task::spawn_blocking(move || {
        let mut file = file;
        io::Seek::rewind(&mut file).map_err(|source| UnpackError::Io {
            path: target.clone(),
            source,
        })?;
        unpack::unpack(file, &target, &limits)
    })
    .await
    .map_err(|join| ProcessError::Write {
        path: config.artifact_dir.clone(),
        source: io::Error::other(join),
    })?
    .map(drop)
    .map_err(ProcessError::Artifacts)
}

/// Decodes the zip's base64 into an anonymous temp file.
async fn receive_zip<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    zip_len: u64,
) -> Result<std::fs::File, ProcessError> {
    let temp_err = |source| ProcessError::Write {
        path: std::env::temp_dir(),
        source,
    };
    let expected = zip_len.div_ceil(3) * 4;
    let mut file = tokio::fs::File::from_std(tempfile::tempfile().map_err(temp_err)?);
    let mut encoded = vec![0u8; B64_CHUNK_LEN];
    let mut decoded = vec![0u8; B64_CHUNK_LEN / 4 * 3];
    let mut received = 0u64;
    while received < expected {
        let want = usize::try_from(expected - received)
            .map_or(B64_CHUNK_LEN, |left| left.min(B64_CHUNK_LEN));
        let chunk = &mut encoded[..want];
        if let Err(error) = reader.read_exact(chunk).await {
            return Err(match error.kind() {
                io::ErrorKind::UnexpectedEof => {
                    ProcessError::ArtifactsTruncated { expected, received }
                }
                _ => ProcessError::Read(error),
            });
        }
        let len = STANDARD.decode_slice(&*chunk, &mut decoded)?;
        file.write_all(&decoded[..len]).await.map_err(temp_err)?;
        received += want as u64;
    }
    file.flush().await.map_err(temp_err)?;
    Ok(file.into_std().await)
}
