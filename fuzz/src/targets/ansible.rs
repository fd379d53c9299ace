//! What a worker sends back: the worker stream (status lines, events written as files and
//! printed, the artifacts zip in base64, eof) and the artifacts zip itself. Each input gets
//! a fresh directory tree; nothing may be written outside its artifacts dir, and what is
//! printed must be safe for a terminal.

use std::io::Cursor;

use warren::ansible::process::{ProcessConfig, ProcessError, process};
use warren::ansible::unpack::{ArtifactLimits, UnpackError, unpack};

use super::Reached;
use super::text::assert_terminal_safe;
use crate::scratch::Scratch;

/// Caps small enough that inputs reach them: 64 KiB zipped, 256 KiB unpacked, 64 entries,
/// 100:1 (above the 1 MiB ratio floor only, so the ratio cap is reached by big entries);
/// 8 job events of 16 KiB in all.
const SMALL: ArtifactLimits = ArtifactLimits {
    zip_bytes: 64 << 10,
    unpacked_bytes: 256 << 10,
    entries: 64,
    ratio: 100,
    events: 8,
    event_bytes: 16 << 10,
};

/// The input (after a first byte choosing `-q`, `-j`, skipping empty output and the caps)
/// as `ansible-runner worker`'s stdout, processed as `warren run` does.
pub fn worker_stream(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let Some((&setup, input)) = data.split_first() else {
        return reached;
    };
    let scratch = Scratch::new();
    let mut config = ProcessConfig::new(&scratch.private_data_dir(), Some("ident"));
    config.quiet = setup & 1 == 1;
    config.json = setup & 2 == 2;
    config.skip_empty_stdout = setup & 4 == 4;
    config.limits = if setup & 8 == 8 {
        SMALL
    } else {
        ArtifactLimits::DEFAULT
    };
    let mut printed = Vec::new();
    let result = crate::runtime().block_on(process(input, &config, &mut printed));
    scratch.check();
    assert_terminal_safe(&printed, !config.json);
    match result {
        Ok(outcome) => {
            reached.push("eof");
            if outcome.events > 0 {
                reached.push("events");
            }
            if outcome.rc.is_some() {
                reached.push("rc");
            }
        }
        Err(error) => {
            let _ = error.to_string();
            match error {
                ProcessError::Artifacts(UnpackError::OverLimit { .. }) => {
                    reached.push("over-limit");
                }
                ProcessError::Artifacts(_) => reached.push("bad-artifacts"),
                ProcessError::EventsOverLimit { .. } => reached.push("events-over-limit"),
                _ => reached.push("error"),
            }
        }
    }
    reached
}

/// The input (after a first byte choosing the caps) as a worker's artifacts zip, unpacked
/// into a fresh artifacts dir.
pub fn artifacts_unpack(data: &[u8]) -> Reached {
    let mut reached = Reached::new();
    let Some((&setup, zip)) = data.split_first() else {
        return reached;
    };
    let scratch = Scratch::new();
    let target = scratch.artifact_dir();
    std::fs::create_dir(&target).expect("the artifacts dir is made");
    let limits = if setup & 1 == 1 {
        SMALL
    } else {
        ArtifactLimits::DEFAULT
    };
    let result = unpack(Cursor::new(zip), &target, &limits);
    scratch.check();
    match result {
        Ok(unpacked) => {
            assert!(
                unpacked.bytes <= limits.unpacked_bytes,
                "the unpacked cap holds"
            );
            assert!(unpacked.entries <= limits.entries, "the entry cap holds");
            reached.push(if unpacked.entries > 0 {
                "unpacked"
            } else {
                "empty"
            });
        }
        Err(error) => {
            let _ = error.to_string();
            reached.push(match error {
                UnpackError::OverLimit { .. } => "over-limit",
                UnpackError::Escapes { .. } => "escapes",
                UnpackError::UnsafeSymlink { .. } => "unsafe-symlink",
                UnpackError::Zip(_) => "bad-zip",
                _ => "error",
            });
        }
    }
    let written = du(&target);
    assert!(
        written <= limits.unpacked_bytes + 64 * 1024,
        "{written} bytes on disk, over the {} cap",
        limits.unpacked_bytes
    );
    reached
}

/// Bytes in regular files beneath `dir` (the note file included).
fn du(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    for entry in entries.flatten() {
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else {
            continue;
        };
        if meta.is_dir() {
            total += du(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}
