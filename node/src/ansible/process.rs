//! Reads a worker stream (`ansible-runner worker`'s stdout) as `ansible-runner process`
//! does: records status lines, prints each event's `stdout` live and writes its
//! `job_events/<counter>-<uuid>.json`, extracts the artifacts zip into the artifact dir, and
//! stops at `{"eof": true}`.
//!
//! [`Processor`] decides what each line means and does no IO; [`process`] is the async
//! driver that reads lines, writes files and stdout, and decodes base64 in a streaming way.
//! The `starting` status line carries the job's full environment, which may hold secrets:
//! it is neither kept, printed nor logged.

use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::beneath;
use super::pyjson;
use super::unpack::{self, ArtifactLimits, UnpackError};
use crate::terminal;

/// The longest line accepted from a worker. Events carry module results, which can be large,
/// but an unbounded line would let a broken worker exhaust memory.
pub const MAX_LINE_LEN: usize = 64 * 1024 * 1024;

/// Base64 bytes decoded per step: a multiple of 4, so every chunk decodes on its own.
const B64_CHUNK_LEN: usize = 4 * 16 * 1024;

/// Where and how to process a worker stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessConfig {
    /// Artifacts land here: `stdout`, `rc`, `status`, `job_events/`, ...
    pub artifact_dir: PathBuf,
    /// Print nothing (`-q`).
    pub quiet: bool,
    /// Print nothing for events whose `stdout` is empty, as `ansible-runner run` shows a
    /// job (the reference's `process` prints a blank line for them).
    pub skip_empty_stdout: bool,
    /// Print each event's JSON line instead of its `stdout` (as `ansible-runner run -j`;
    /// the reference's `process` ignores `-j`).
    pub json: bool,
    /// Caps on the artifacts zip.
    pub limits: ArtifactLimits,
}

impl ProcessConfig {
    /// The reference's default: `<pdd>/artifacts/<ident>`, or `<pdd>/artifacts` itself
    /// when no ident is given.
    pub fn new(private_data_dir: &Path, ident: Option<&str>) -> Self {
        let artifacts = private_data_dir.join("artifacts");
        Self {
            artifact_dir: ident.map_or_else(|| artifacts.clone(), |ident| artifacts.join(ident)),
            quiet: false,
            json: false,
            skip_empty_stdout: false,
            limits: ArtifactLimits::DEFAULT,
        }
    }
}

/// What a processed stream left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessOutcome {
    /// The last status line's status (`successful`, `failed`, `error`, ...).
    pub status: Option<String>,
    /// The job's exit code, from the extracted `rc` file.
    pub rc: Option<i32>,
    /// The `job_explanation` of an `error` status line, if any.
    pub job_explanation: Option<String>,
    /// The command from the `starting` line (its environment is dropped).
    pub command: Option<Value>,
    /// The working directory from the `starting` line.
    pub cwd: Option<String>,
    /// How many event files were written.
    pub events: u64,
    /// Where the artifacts are.
    pub artifact_dir: PathBuf,
}

/// A failure while processing a worker stream. Artifacts written so far are kept.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// A line is not a JSON object (the reference's wording).
    #[error(
        "Failed to JSON parse a line from worker stream. Error: {error} Line with invalid JSON data: {line}"
    )]
    InvalidLine {
        /// Why it did not parse.
        error: String,
        /// The line's first 1000 bytes.
        line: String,
    },
    /// The input ended before `{"eof": true}` (ansible-runner 2.4's wording).
    #[error(
        "Unexpected empty line encountered during worker stream. Worker did not produce events or streaming was aborted, check execution node health."
    )]
    UnexpectedEnd,
    /// Reading the input failed.
    #[error("Failed to read from worker stream. Error: {0}")]
    Read(#[source] io::Error),
    /// A line is longer than [`MAX_LINE_LEN`].
    #[error("a worker stream line exceeds {limit} bytes")]
    LineTooLong {
        /// The limit.
        limit: usize,
    },
    /// `zipfile` is not a byte count.
    #[error("invalid zipfile length in worker stream: {value}")]
    InvalidZipLength {
        /// The value as sent.
        value: String,
    },
    /// An event's counter or uuid would put its file outside `job_events/`, or make a
    /// name the file system cannot hold.
    #[error("event file name {name:?} is not a plain file name")]
    UnsafeEventName {
        /// The name it would have had.
        name: String,
    },
    /// Something other than a regular file (a symlink, a FIFO) sits where an event file or
    /// `job_events/` goes: it is not followed, and nothing is written.
    #[error(
        "refusing to write {path}: a symlink or other non-regular file is there \
         (nothing outside the artifacts dir is written through it)"
    )]
    NotPlainFile {
        /// The path.
        path: PathBuf,
    },
    /// The input ended inside the artifacts' base64.
    #[error("worker stream ended inside the artifacts: {received} of {expected} base64 bytes")]
    ArtifactsTruncated {
        /// Base64 bytes announced.
        expected: u64,
        /// Base64 bytes received.
        received: u64,
    },
    /// The artifacts' base64 is malformed.
    #[error("invalid base64 in the artifacts")]
    Base64(#[from] base64::DecodeSliceError),
    /// The artifacts zip could not be extracted (zip-slip entries and unsafe links
    /// included), or is over a cap.
    #[error("cannot extract the artifacts")]
    Artifacts(#[source] UnpackError),
    /// Writing an artifact (event file, `job_events/`, temp file) failed.
    #[error("cannot write {path}")]
    Write {
        /// The file or dir.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Writing to stdout failed.
    #[error("writing job output")]
    Stdout(#[source] io::Error),
}

/// What a line asks the driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing (a status recorded, a keepalive, an event without counter or uuid).
    Nothing,
    /// Write an event file and print its console text.
    Event(EventRecord),
    /// The next bytes are the artifacts zip (`zip_len` raw bytes, base64-encoded).
    Artifacts {
        /// The raw zip size N from `{"zipfile": N}`.
        zip_len: u64,
    },
    /// `{"eof": true}`: the stream is complete.
    Eof,
}

/// One event to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// `<counter>-<uuid>.json`, inside `job_events/`.
    pub file_name: String,
    /// The file's content. The worker's line is Python's `json.dumps(event)` and the
    /// reference writes `json.dump(json.loads(line))`, which is the same bytes.
    pub json: Vec<u8>,
    /// What to print, newline included; `None` when quiet or the event has no `stdout`.
    pub console: Option<Vec<u8>>,
}

/// The worker-stream state machine: feed it lines, act on the [`Step`]s. No IO.
#[derive(Debug, Default)]
pub struct Processor {
    quiet: bool,
    json: bool,
    skip_empty_stdout: bool,
    status: Option<String>,
    job_explanation: Option<String>,
    command: Option<Value>,
    cwd: Option<String>,
    events: u64,
}

impl Processor {
    /// A processor that prints unless `quiet`, event JSON instead of text with `json`.
    pub fn new(quiet: bool, json: bool) -> Self {
        Self {
            quiet,
            json,
            ..Self::default()
        }
    }

    /// Interprets one line (with or without its newline).
    ///
    /// # Errors
    ///
    /// [`ProcessError::InvalidLine`], [`ProcessError::InvalidZipLength`] or
    /// [`ProcessError::UnsafeEventName`].
    pub fn handle_line(&mut self, line: &[u8]) -> Result<Step, ProcessError> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let data = parse_object(line)?;
        if let Some(status) = data.get("status") {
            self.handle_status(status, &data);
            Ok(Step::Nothing)
        } else if let Some(len) = data.get("zipfile") {
            let zip_len = len.as_u64().ok_or_else(|| ProcessError::InvalidZipLength {
                value: len.to_string(),
            })?;
            Ok(Step::Artifacts { zip_len })
        } else if data.contains_key("eof") {
            Ok(Step::Eof)
        } else if data.get("event").and_then(Value::as_str) == Some("keepalive") {
            Ok(Step::Nothing)
        } else {
            self.handle_event(line, &data)
        }
    }

    fn handle_status(&mut self, status: &Value, data: &serde_json::Map<String, Value>) {
        let status = py_str(status);
        if status == "starting" {
            // `env` is deliberately not read: it is the job's whole environment.
            self.command = data.get("command").cloned();
            self.cwd = data.get("cwd").map(py_str);
        }
        if let Some(explanation) = data.get("job_explanation") {
            self.job_explanation = Some(py_str(explanation));
        }
        self.status = Some(status);
    }

    fn handle_event(
        &mut self,
        line: &[u8],
        data: &serde_json::Map<String, Value>,
    ) -> Result<Step, ProcessError> {
        let (Some(counter), Some(uuid)) = (data.get("counter"), data.get("uuid")) else {
            return Ok(Step::Nothing);
        };
        if !is_truthy(counter) || !is_truthy(uuid) {
            return Ok(Step::Nothing);
        }
        let file_name = format!("{}-{}.json", py_str(counter), py_str(uuid));
        if !beneath::is_plain_name(&file_name) || file_name.contains(char::is_control) {
            return Err(ProcessError::UnsafeEventName { name: file_name });
        }
        // What the worker sends reaches the user's terminal: colour passes, other escape
        // sequences (titles, cursor moves, queries) do not.
        let console = match (self.quiet, self.json, data.get("stdout")) {
            (true, _, _) | (false, false, None) => None,
            (false, true, _) => Some(json_console(line)),
            (false, false, Some(stdout)) => {
                let text = py_str(stdout);
                (!(self.skip_empty_stdout && text.is_empty()))
                    .then(|| terminal::sanitize(&text).into_owned().into_bytes())
            }
        };
        self.events += 1;
        Ok(Step::Event(EventRecord {
            file_name,
            json: line.to_vec(),
            console: console.map(|mut text| {
                text.push(b'\n');
                text
            }),
        }))
    }

    /// The last status seen.
    pub fn status(&self) -> Option<&str> {
        self.status.as_deref()
    }

    /// The outcome, given where the artifacts are and the `rc` read from them.
    pub fn into_outcome(self, artifact_dir: PathBuf, rc: Option<i32>) -> ProcessOutcome {
        ProcessOutcome {
            status: self.status,
            rc,
            job_explanation: self.job_explanation,
            command: self.command,
            cwd: self.cwd,
            events: self.events,
            artifact_dir,
        }
    }
}

/// The event's JSON line for `-j`: it parsed, so it is UTF-8 with C0 controls escaped; C1
/// characters are escaped too.
fn json_console(line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    terminal::json_safe(&text).into_owned().into_bytes()
}

fn parse_object(line: &[u8]) -> Result<serde_json::Map<String, Value>, ProcessError> {
    let invalid = |error: String| ProcessError::InvalidLine {
        error,
        line: String::from_utf8_lossy(&line[..line.len().min(1000)]).into_owned(),
    };
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("not a JSON object".to_owned())),
        Err(error) => Err(invalid(error.to_string())),
    }
}

/// Python's truthiness of a JSON value.
fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Bool(flag) => *flag,
        Value::Number(number) => number.as_f64().is_some_and(|n| n != 0.0),
        Value::String(text) => !text.is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
    }
}

/// Python's `str()` of a JSON value (as `print` and f-strings render it).
fn py_str(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "None".to_owned(),
        Value::Bool(true) => "True".to_owned(),
        Value::Bool(false) => "False".to_owned(),
        other => {
            let mut out = String::new();
            pyjson::write_value(&mut out, other);
            out
        }
    }
}

/// Processes the worker stream on `input` into `config.artifact_dir`, printing to `stdout`
/// live, until `{"eof": true}`.
///
/// # Errors
///
/// [`ProcessError`] for a malformed line, input that ends before eof, a bad artifacts zip
/// or a failed write. What was written before the error stays.
pub async fn process(
    input: impl AsyncRead + Unpin,
    config: &ProcessConfig,
    mut stdout: impl AsyncWrite + Unpin,
) -> Result<ProcessOutcome, ProcessError> {
    let dirs = ArtifactDirs::create(&config.artifact_dir)?;
    let mut reader = BufReader::with_capacity(64 * 1024, input);
    let mut processor = Processor::new(config.quiet, config.json);
    processor.skip_empty_stdout = config.skip_empty_stdout;
    let mut line = Vec::new();
    loop {
        line.clear();
        if read_line(&mut reader, &mut line).await? == 0 {
            return Err(ProcessError::UnexpectedEnd);
        }
        match processor.handle_line(&line)? {
            Step::Nothing => {}
            Step::Event(record) => dirs.write_event(record, &mut stdout).await?,
            Step::Artifacts { zip_len } => receive_artifacts(&mut reader, zip_len, config).await?,
            Step::Eof => break,
        }
    }
    let rc = dirs.read_rc().await;
    Ok(processor.into_outcome(config.artifact_dir.clone(), rc))
}

/// The artifact dir and its `job_events/`, held open: event files are created relative to
/// the directory fd, never through a symlink.
struct ArtifactDirs {
    path: PathBuf,
    root: Arc<OwnedFd>,
    events: Arc<OwnedFd>,
}

impl ArtifactDirs {
    /// Creates the artifact dir (parents with the default mode) and `job_events/` in it
    /// with mode 0700, as the reference makes them, and opens both.
    fn create(dir: &Path) -> Result<Self, ProcessError> {
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
        })
    }

    /// Prints the event's text, then writes its file (mode 0600), in the reference's order.
    async fn write_event(
        &self,
        record: EventRecord,
        stdout: &mut (impl AsyncWrite + Unpin),
    ) -> Result<(), ProcessError> {
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

    /// The job's exit code from the artifacts' `rc` file, if there is a readable one.
    async fn read_rc(&self) -> Option<i32> {
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

/// Reads one line (newline included) of at most [`MAX_LINE_LEN`] bytes; 0 at end of input.
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    line: &mut Vec<u8>,
) -> Result<usize, ProcessError> {
    let limit = u64::try_from(MAX_LINE_LEN).map_or(u64::MAX, |limit| limit + 1);
    let read = reader
        .take(limit)
        .read_until(b'\n', line)
        .await
        .map_err(ProcessError::Read)?;
    if read > MAX_LINE_LEN {
        return Err(ProcessError::LineTooLong {
            limit: MAX_LINE_LEN,
        });
    }
    Ok(read)
}

/// Decodes the `zip_len`-byte zip's base64 from `reader` into a temp file, chunk by chunk,
/// then extracts it into the artifact dir within the config's limits. A zip over
/// `limits.zip_bytes` is refused before any of it is read.
async fn receive_artifacts<R: AsyncRead + Unpin>(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines_like_the_reference() {
        let mut processor = Processor::new(false, false);
        let starting = br#"{"status": "starting", "runner_ident": "x", "command": ["ansible-playbook"], "env": {"SECRET": "s"}, "cwd": "/p"}"#;
        assert_eq!(processor.handle_line(starting).unwrap(), Step::Nothing);
        assert_eq!(processor.status(), Some("starting"));
        let keepalive = br#"{"event": "keepalive", "counter": 0, "uuid": 0}"#;
        assert_eq!(processor.handle_line(keepalive).unwrap(), Step::Nothing);
        let no_uuid = br#"{"event": "verbose", "counter": 1, "stdout": "x"}"#;
        assert_eq!(processor.handle_line(no_uuid).unwrap(), Step::Nothing);
        let event = b"{\"uuid\": \"u\", \"counter\": 2, \"stdout\": \"ok\"}\n";
        let Step::Event(record) = processor.handle_line(event).unwrap() else {
            panic!("not an event");
        };
        assert_eq!(record.file_name, "2-u.json");
        assert_eq!(record.json, &event[..event.len() - 1]);
        assert_eq!(record.console.as_deref(), Some(&b"ok\n"[..]));
        assert_eq!(
            processor.handle_line(br#"{"zipfile": 10}"#).unwrap(),
            Step::Artifacts { zip_len: 10 }
        );
        assert_eq!(
            processor.handle_line(br#"{"eof": true}"#).unwrap(),
            Step::Eof
        );
        let outcome = processor.into_outcome(PathBuf::from("/a"), Some(0));
        assert_eq!(outcome.cwd.as_deref(), Some("/p"));
        assert_eq!(outcome.events, 1);
        assert!(!format!("{outcome:?}").contains("SECRET"));
    }

    #[test]
    fn rejects_non_json_with_the_reference_wording() {
        let error = Processor::new(true, false)
            .handle_line(b"not json\n")
            .unwrap_err();
        let text = error.to_string();
        assert!(
            text.starts_with("Failed to JSON parse a line from worker stream. Error: "),
            "{text}"
        );
        assert!(
            text.ends_with("Line with invalid JSON data: not json"),
            "{text}"
        );
    }

    #[test]
    fn refuses_event_names_with_slashes() {
        let line = br#"{"uuid": "../../x", "counter": 1}"#;
        let error = Processor::new(true, false).handle_line(line).unwrap_err();
        assert!(matches!(error, ProcessError::UnsafeEventName { .. }));
    }

    #[test]
    fn json_mode_prints_the_event_line() {
        let line = br#"{"uuid": "u", "counter": 1, "stdout": "text"}"#;
        let Step::Event(record) = Processor::new(false, true).handle_line(line).unwrap() else {
            panic!("not an event");
        };
        let mut expected = line.to_vec();
        expected.push(b'\n');
        assert_eq!(record.console, Some(expected));
    }
}
