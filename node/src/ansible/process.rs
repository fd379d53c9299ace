//! Reads a worker stream (`ansible-runner worker`'s stdout) as `ansible-runner process`
//! does: records status lines, prints each event's `stdout` live and writes its
//! `job_events/<counter>-<uuid>.json`, extracts the artifacts zip into the artifact dir, and
//! stops at `{"eof": true}`.
//!
//! [`Processor`] decides what each line means and does no IO; [`process`] is the async
//! driver that reads lines and prints; the files go through `artifact_dir`, never through a
//! symlink. Event `stdout` is printed through [`crate::terminal`]: colour passes, other
//! escape sequences do not.
//! The `starting` status line carries the job's full environment, which may hold secrets:
//! it is neither kept, printed nor logged.

use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, BufReader};

use super::artifact_dir::{ArtifactDirs, receive_artifacts};
use super::beneath;
use super::pyjson;
use super::unpack::{ArtifactLimits, Limit, UnpackError};
use crate::terminal;

/// The longest line accepted from a worker. Events carry module results, which can be large,
/// but an unbounded line would let a broken worker exhaust memory.
pub const MAX_LINE_LEN: usize = 64 * 1024 * 1024;

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
    /// Caps on the artifacts zip and the job events.
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
    /// The worker sent more job events than a cap allows: those before are in
    /// `job_events/`, the one that passed it and the rest were not written, and
    /// [`NOTE_FILE`](super::unpack::NOTE_FILE) says so.
    #[error(
        "the worker sent more job events than the {}: the events before it are in \
         job_events/, the rest were not written (see {}); raise it with {} or {}",
        limit.describe(*cap), super::unpack::NOTE_FILE, limit.flag(), limit.env()
    )]
    EventsOverLimit {
        /// The cap.
        limit: Limit,
        /// Its value.
        cap: u64,
    },
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
        check_event_name(&file_name)?;
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

/// Refuses an event file name that is not one plain component (a worker chooses the
/// counter and uuid it is made of), or that holds control characters.
///
/// # Errors
/// [`ProcessError::UnsafeEventName`].
pub fn check_event_name(file_name: &str) -> Result<(), ProcessError> {
    if beneath::is_plain_name(file_name) && !file_name.contains(char::is_control) {
        Ok(())
    } else {
        Err(ProcessError::UnsafeEventName {
            name: file_name.to_owned(),
        })
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
    let dirs = ArtifactDirs::create(&config.artifact_dir, config.limits)?;
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
