//! The note left in an artifacts dir that was not unpacked in full, or whose job events were
//! cut: why, what was written, what was not, and how to accept more.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::os::fd::BorrowedFd;
use std::path::Path;

use super::{Limit, NOTE_FILE, Run, UnpackError, list_cut};
use crate::ansible::beneath;

/// The note's text: why unpacking stopped short, what was written and what was not.
pub(super) fn note_text(error: &UnpackError, run: &Run) -> String {
    let mut text = String::from(
        "Warren did not unpack all of the worker's artifacts into this directory.\n\n",
    );
    let _ = writeln!(text, "Reason: {}", error_chain(error));
    let total = run.total.map_or_else(|| "?".to_owned(), |t| t.to_string());
    let _ = writeln!(
        text,
        "Unpacked: {} of {total} zip entries, {} bytes.",
        run.done.entries, run.done.bytes
    );
    if let Some(current) = &run.current {
        let _ = writeln!(
            text,
            "Stopped at entry: {current:?} (it and the entries after it were not unpacked)."
        );
    }
    if !run.cut.is_empty() {
        let _ = writeln!(
            text,
            "Not unpacked (over a cap): {}.",
            list_cut(&run.cut, run.cut_count)
        );
    }
    if let UnpackError::OverLimit { limit, .. } = error {
        let _ = writeln!(
            text,
            "\nTo accept larger artifacts, run again with {} (or set {}); see `warren run --help`.",
            limit.flag(),
            limit.env()
        );
    }
    text
}

/// The note's text when the worker's job events passed `limit` (of value `cap`) after
/// `events` events of `bytes` bytes were written.
pub(crate) fn events_note_text(limit: Limit, cap: u64, (events, bytes): (u64, u64)) -> String {
    let mut text =
        String::from("Warren did not write all of the worker's job events into job_events/.\n\n");
    let _ = writeln!(
        text,
        "Reason: the worker sent more job events than the {}.",
        limit.describe(cap)
    );
    let _ = writeln!(text, "Written: {events} events, {bytes} bytes.");
    let _ = writeln!(
        text,
        "Not written: the event that passed the cap and everything the worker sent after it \
         (the run was stopped there)."
    );
    let _ = writeln!(
        text,
        "\nTo accept more, run again with {} (or set {}); see `warren run --help`.",
        limit.flag(),
        limit.env()
    );
    text
}

fn error_chain(error: &UnpackError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let _ = write!(text, ": {cause}");
        source = cause.source();
    }
    text
}

/// Writes [`NOTE_FILE`] into `root`, replacing whatever has that name (never following a
/// link there). A failure is logged: the error that caused the note matters more.
pub(crate) fn leave_note(root: BorrowedFd<'_>, target: &Path, text: &str) {
    let write = || -> io::Result<()> {
        if let Some(kind) = beneath::kind_at(root, NOTE_FILE)? {
            beneath::remove_at(root, NOTE_FILE, kind)?;
        }
        beneath::create_new_at(root, NOTE_FILE, 0o644)?.write_all(text.as_bytes())
    };
    if let Err(error) = write() {
        tracing::warn!(%error, dir = %target.display(), "cannot leave {NOTE_FILE}");
    }
}
