//! A compromised worker against the client's stream processor: symlinks that aim outside
//! the artifacts dir, zip bombs, hostile modes and terminal escapes, each sent as a real
//! worker stream through [`process`] (what `warren run` does with a worker's results).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::craft::{RawEntry, crc32, deflate_zeros, raw_zip};
use super::process::{ProcessConfig, ProcessError, process};
use super::unpack::{ArtifactLimits, Limit, NOTE_FILE, UnpackError};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

/// A worker stream: `before` lines, the artifacts zip, `after` lines, then eof.
fn worker_stream(before: &[&str], zip: &[u8], after: &[&str]) -> Vec<u8> {
    let mut stream = Vec::new();
    for line in before {
        stream.extend_from_slice(line.as_bytes());
        stream.push(b'\n');
    }
    stream.extend(format!("{{\"zipfile\": {}}}\n", zip.len()).bytes());
    stream.extend(STANDARD.encode(zip).bytes());
    for line in after {
        stream.extend_from_slice(line.as_bytes());
        stream.push(b'\n');
    }
    stream.extend(b"{\"eof\": true}\n");
    stream
}

/// Runs the client's processor on `stream` into `<pdd>/artifacts/x`.
fn run(
    pdd: &Path,
    stream: &[u8],
    limits: ArtifactLimits,
) -> (
    ProcessConfig,
    Result<super::process::ProcessOutcome, ProcessError>,
    Vec<u8>,
) {
    let config = ProcessConfig {
        limits,
        ..ProcessConfig::new(pdd, Some("x"))
    };
    let mut printed = Vec::new();
    let result = block_on(process(stream, &config, &mut printed));
    (config, result, printed)
}

fn unpack_error(result: Result<super::process::ProcessOutcome, ProcessError>) -> UnpackError {
    match result {
        Err(ProcessError::Artifacts(error)) => error,
        other => panic!("expected an artifacts error, got {other:?}"),
    }
}

/// Bytes of regular files under `dir`, not following symlinks.
fn bytes_on_disk(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let entry = entry.expect("entry");
        let meta = entry.path().symlink_metadata().expect("lstat");
        if meta.is_dir() {
            total += bytes_on_disk(&entry.path());
        } else if meta.is_file() {
            total += meta.len();
        }
    }
    total
}

#[test]
fn the_bomb_generator_makes_valid_deflate() {
    let data = deflate_zeros(1 + 258 * 1000);
    let zip = raw_zip(&[RawEntry {
        name: "z",
        method: 8,
        data: &data,
        declared: 1 + 258 * 1000,
        crc: crc32(&vec![0; 1 + 258 * 1000]),
        mode: 0o100644,
    }]);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(zip)).expect("zip");
    let mut out = Vec::new();
    std::io::copy(&mut archive.by_index(0).expect("entry"), &mut out).expect("inflate");
    assert_eq!(out.len(), 1 + 258 * 1000);
    assert!(out.iter().all(|&b| b == 0));
}

#[test]
fn a_symlink_entry_then_an_event_cannot_overwrite_a_file_outside() {
    let home = tempfile::tempdir().expect("tempdir");
    let victim = home.path().join(".bashrc");
    std::fs::write(&victim, "# the user's shell setup\n").expect("victim");
    let pdd = home.path().join("pdd");
    let absolute = victim.to_string_lossy().into_owned();
    for target in [
        absolute.as_str(),
        "../../../.bashrc",
        "./../x",
        "a/../../..",
    ] {
        let zip = raw_zip(&[
            RawEntry::stored("rc", b"0", 0o100644),
            RawEntry::stored("job_events/1-pwn.json", target.as_bytes(), 0o120777),
        ]);
        let event = r#"{"uuid": "pwn", "counter": 1, "stdout": "", "event": "verbose"}"#;
        let stream = worker_stream(&[], &zip, &[event]);
        let (config, result, _) = run(&pdd, &stream, ArtifactLimits::DEFAULT);
        let error = unpack_error(result);
        assert!(
            matches!(error, UnpackError::UnsafeSymlink { .. }),
            "{target}: {error}"
        );
        assert!(
            error.to_string().contains("job_events/1-pwn.json"),
            "{error}"
        );
        let link = config.artifact_dir.join("job_events/1-pwn.json");
        assert!(
            link.symlink_metadata().is_err(),
            "{target}: the link was made"
        );
        let note = std::fs::read_to_string(config.artifact_dir.join(NOTE_FILE)).expect("note");
        assert!(note.contains("1-pwn.json"), "{note}");
        assert_eq!(
            std::fs::read_to_string(&victim).expect("victim"),
            "# the user's shell setup\n"
        );
    }
}

#[test]
fn an_event_is_never_written_through_a_symlink() {
    let home = tempfile::tempdir().expect("tempdir");
    let victim = home.path().join("victim");
    std::fs::write(&victim, "keep").expect("victim");
    let pdd = home.path().join("pdd");
    // However a link got there (an earlier run, another tool), the event does not follow it.
    let events = pdd.join("artifacts/x/job_events");
    std::fs::create_dir_all(&events).expect("events dir");
    std::os::unix::fs::symlink(&victim, events.join("1-pwn.json")).expect("link");
    let event = r#"{"uuid": "pwn", "counter": 1, "stdout": "hi"}"#;
    let stream = worker_stream(&[event], &raw_zip(&[]), &[]);
    let (_, result, _) = run(&pdd, &stream, ArtifactLimits::DEFAULT);
    let error = result.expect_err("refused");
    assert!(
        matches!(error, ProcessError::NotPlainFile { .. }),
        "{error}"
    );
    assert!(error.to_string().contains("1-pwn.json"), "{error}");
    assert_eq!(std::fs::read_to_string(&victim).expect("victim"), "keep");

    // A link the zip may make (relative, inside) is not written through either.
    let pdd = home.path().join("pdd2");
    let zip = raw_zip(&[RawEntry::stored(
        "job_events/2-u.json",
        b"3-v.json",
        0o120777,
    )]);
    let event = r#"{"uuid": "u", "counter": 2, "stdout": "hi"}"#;
    let (config, result, _) = run(
        &pdd,
        &worker_stream(&[], &zip, &[event]),
        ArtifactLimits::DEFAULT,
    );
    assert!(
        matches!(result, Err(ProcessError::NotPlainFile { .. })),
        "{result:?}"
    );
    assert!(!config.artifact_dir.join("job_events/3-v.json").exists());
}

#[test]
fn a_zip_bomb_is_refused_before_the_cap_is_reached_on_disk() {
    // 3.9 MB of zip that inflates to 4 GB, between two small files.
    let size = 1 + 258 * 15_503_875;
    let bomb = deflate_zeros(size);
    let zip = raw_zip(&[
        RawEntry::stored("rc", b"0", 0o100600),
        RawEntry {
            name: "stdout",
            method: 8,
            data: &bomb,
            declared: u32::try_from(size).expect("fits"),
            crc: 0,
            mode: 0o100600,
        },
        RawEntry::stored("status", b"successful", 0o100600),
    ]);
    assert!(zip.len() < 4_000_000, "{}", zip.len());
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&[], &zip, &[]),
        ArtifactLimits::DEFAULT,
    );
    let error = unpack_error(result);
    let text = error.to_string();
    assert!(
        matches!(
            error,
            UnpackError::OverLimit {
                limit: Limit::UnpackedBytes,
                ..
            }
        ),
        "{text}"
    );
    assert!(
        text.contains("stdout") && text.contains("--artifacts-max-bytes"),
        "{text}"
    );
    assert!(text.contains("WARREN_ARTIFACTS_MAX_BYTES"), "{text}");
    assert!(bytes_on_disk(&config.artifact_dir) < 4096);
    let dir = &config.artifact_dir;
    assert_eq!(
        std::fs::read_to_string(dir.join("status")).expect("status"),
        "successful"
    );
    assert!(!dir.join("stdout").exists());
    let note = std::fs::read_to_string(dir.join(NOTE_FILE)).expect("note");
    assert!(
        note.contains("stdout") && note.contains("--artifacts-max-bytes"),
        "{note}"
    );
}

#[test]
fn a_bomb_that_lies_about_its_size_stops_at_what_it_declared() {
    let size = 1 + 258 * 4_000_000;
    let bomb = deflate_zeros(size);
    let zip = raw_zip(&[RawEntry {
        name: "stdout",
        method: 8,
        data: &bomb,
        declared: 1000,
        crc: 0,
        mode: 0o100600,
    }]);
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&[], &zip, &[]),
        ArtifactLimits::DEFAULT,
    );
    let error = unpack_error(result);
    assert!(matches!(error, UnpackError::Read { .. }), "{error}");
    assert!(bytes_on_disk(&config.artifact_dir) <= 1000 + 4096);
}

#[test]
fn entries_over_the_byte_cap_are_cut_and_the_rest_still_lands() {
    let cap = 8 << 20;
    let blob: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let names = [
        "fact_cache/a",
        "fact_cache/b",
        "fact_cache/c",
        "fact_cache/d",
    ];
    let mut entries: Vec<RawEntry<'_>> = names
        .iter()
        .map(|n| RawEntry::stored(n, &blob, 0o100644))
        .collect();
    entries.push(RawEntry::stored("status", b"failed", 0o100600));
    let zip = raw_zip(&entries);
    let limits = ArtifactLimits {
        unpacked_bytes: cap,
        ..ArtifactLimits::DEFAULT
    };
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(home.path(), &worker_stream(&[], &zip, &[]), limits);
    let error = unpack_error(result);
    let UnpackError::OverLimit {
        limit,
        cut,
        cut_count,
        ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!((*limit, cut_count), (Limit::UnpackedBytes, &2), "{error}");
    assert_eq!(cut, &["\"fact_cache/c\"", "\"fact_cache/d\""]);
    assert!(bytes_on_disk(&config.artifact_dir) <= cap);
    assert_eq!(
        std::fs::read(config.artifact_dir.join("fact_cache/b")).expect("b"),
        blob
    );
    assert!(config.artifact_dir.join("status").is_file());
}

#[test]
fn an_entry_over_the_ratio_cap_is_cut() {
    let size = 1 + 258 * 16_000;
    let zeros = deflate_zeros(size);
    let zip = raw_zip(&[RawEntry {
        name: "stdout",
        method: 8,
        data: &zeros,
        declared: u32::try_from(size).expect("fits"),
        crc: 0,
        mode: 0o100600,
    }]);
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&[], &zip, &[]),
        ArtifactLimits::DEFAULT,
    );
    let error = unpack_error(result);
    assert!(
        matches!(
            error,
            UnpackError::OverLimit {
                limit: Limit::Ratio,
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("--artifacts-max-ratio"),
        "{error}"
    );
    assert!(!config.artifact_dir.join("stdout").exists());
}

#[test]
fn a_zip_over_the_size_cap_is_refused_unread() {
    // Only the announcement: nothing follows it, and nothing needs to.
    let stream = b"{\"zipfile\": 2147483648}\n";
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(home.path(), stream, ArtifactLimits::DEFAULT);
    let error = unpack_error(result);
    assert!(
        matches!(
            error,
            UnpackError::OverLimit {
                limit: Limit::ZipBytes,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("--artifacts-max-zip"), "{error}");
    assert!(config.artifact_dir.join(NOTE_FILE).is_file());
}

#[test]
fn a_zip_with_too_many_entries_is_refused_before_its_directory_is_read() {
    let names: Vec<String> = (0..10).map(|i| format!("fact_cache/h{i}")).collect();
    let entries: Vec<RawEntry<'_>> = names
        .iter()
        .map(|n| RawEntry::stored(n, b"{}", 0o100644))
        .collect();
    let limits = ArtifactLimits {
        entries: 5,
        ..ArtifactLimits::DEFAULT
    };
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&[], &raw_zip(&entries), &[]),
        limits,
    );
    let error = unpack_error(result);
    assert!(
        matches!(
            error,
            UnpackError::OverLimit {
                limit: Limit::Entries,
                ..
            }
        ),
        "{error}"
    );
    assert!(!config.artifact_dir.join("fact_cache").exists());
}

#[test]
fn modes_lose_setuid_setgid_and_sticky_bits() {
    let zip = raw_zip(&[
        RawEntry::stored("bin/", b"", 0o041777),
        RawEntry::stored("bin/suid", b"x", 0o104755),
        RawEntry::stored("bin/sgid", b"x", 0o102750),
        RawEntry::stored("rc", b"0", 0o100640),
    ]);
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&[], &zip, &[]),
        ArtifactLimits::DEFAULT,
    );
    result.expect("processed");
    let mode = |name: &str| {
        let meta = std::fs::symlink_metadata(config.artifact_dir.join(name)).expect("meta");
        meta.permissions().mode() & 0o7777
    };
    assert_eq!(mode("bin"), 0o777);
    assert_eq!(mode("bin/suid"), 0o755);
    assert_eq!(mode("bin/sgid"), 0o750);
    assert_eq!(mode("rc"), 0o640);
}

#[test]
fn an_osc_title_in_event_stdout_is_dropped_and_colour_kept() {
    let event = r#"{"uuid": "u", "counter": 1, "stdout": "\u001b]0;pwned\u0007\u001b[0;32mok: [localhost]\u001b[0m\u001b[2J\u009b6n"}"#;
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, printed) = run(
        home.path(),
        &worker_stream(&[event], &raw_zip(&[]), &[]),
        ArtifactLimits::DEFAULT,
    );
    result.expect("processed");
    assert_eq!(
        String::from_utf8(printed).expect("utf-8"),
        "\x1b[0;32mok: [localhost]\x1b[0m6n\n"
    );
    // The event file keeps what the worker sent, as ansible-runner keeps it.
    let saved =
        std::fs::read_to_string(config.artifact_dir.join("job_events/1-u.json")).expect("event");
    assert!(saved.contains("\\u001b]0;pwned"), "{saved}");
}

#[test]
fn event_names_with_controls_or_huge_lengths_are_refused() {
    let long = "u".repeat(300);
    for uuid in ["a\nb", "a\u{1b}b", long.as_str()] {
        let event = serde_json::json!({"uuid": uuid, "counter": 1}).to_string();
        let home = tempfile::tempdir().expect("tempdir");
        let (_, result, _) = run(
            home.path(),
            &worker_stream(&[&event], &raw_zip(&[]), &[]),
            ArtifactLimits::DEFAULT,
        );
        assert!(
            matches!(result, Err(ProcessError::UnsafeEventName { .. })),
            "{uuid:?}: {result:?}"
        );
    }
}

/// `n` job events with distinct counters and uuids, each printing `line <i>`.
fn events(n: u64) -> Vec<String> {
    (1..=n)
        .map(|i| {
            serde_json::json!({"uuid": format!("u{i}"), "counter": i, "stdout": format!("line {i}")})
                .to_string()
        })
        .collect()
}

/// The names in `job_events/` under `dir`, sorted.
fn event_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("job_events"))
        .expect("job_events")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_stream_of_one_event_more_than_the_cap_is_cut_at_the_cap_and_noted() {
    let limits = ArtifactLimits {
        events: 5,
        ..ArtifactLimits::DEFAULT
    };
    let lines = events(6);
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, printed) = run(
        home.path(),
        &worker_stream(&lines, &raw_zip(&[]), &[]),
        limits,
    );
    let Err(error @ ProcessError::EventsOverLimit { .. }) = result else {
        panic!("the sixth event is refused: {result:?}");
    };
    assert!(
        matches!(
            error,
            ProcessError::EventsOverLimit {
                limit: Limit::Events,
                cap: 5
            }
        ),
        "{error}"
    );
    assert!(
        error.to_string().contains("--artifacts-max-events"),
        "{error}"
    );
    let written: Vec<String> = (1..=5).map(|i| format!("{i}-u{i}.json")).collect();
    assert_eq!(event_files(&config.artifact_dir), written);
    assert_eq!(
        String::from_utf8(printed).expect("utf-8"),
        "line 1\nline 2\nline 3\nline 4\nline 5\n"
    );
    let note = std::fs::read_to_string(config.artifact_dir.join(NOTE_FILE)).expect("note");
    assert!(
        note.contains("cap of 5 events") && note.contains("Written: 5 events"),
        "{note}"
    );
    assert!(note.contains("WARREN_ARTIFACTS_MAX_EVENTS"), "{note}");
}

#[test]
fn job_events_past_the_byte_cap_are_not_written() {
    let lines = events(10);
    let each = lines[0].len() as u64;
    // Room for three events and a bit of a fourth.
    let limits = ArtifactLimits {
        event_bytes: 3 * each + each / 2,
        ..ArtifactLimits::DEFAULT
    };
    let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
    let home = tempfile::tempdir().expect("tempdir");
    let (config, result, _) = run(
        home.path(),
        &worker_stream(&lines, &raw_zip(&[]), &[]),
        limits,
    );
    assert!(
        matches!(
            result,
            Err(ProcessError::EventsOverLimit {
                limit: Limit::EventBytes,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(event_files(&config.artifact_dir).len(), 3);
    assert!(bytes_on_disk(&config.artifact_dir.join("job_events")) <= limits.event_bytes);
    let note = std::fs::read_to_string(config.artifact_dir.join(NOTE_FILE)).expect("note");
    assert!(note.contains("--artifacts-max-event-bytes"), "{note}");
}

/// The Python package writes each event its own `Processor` parsed through
/// `write_event_file`: the same caps hold there.
#[test]
fn event_files_the_python_package_writes_are_cut_at_the_cap() {
    let home = tempfile::tempdir().expect("tempdir");
    let dir = home.path().join("artifacts/x");
    let limits = ArtifactLimits {
        events: 2,
        ..ArtifactLimits::DEFAULT
    };
    let dirs = super::artifact_dir::ArtifactDirs::create(&dir, limits).expect("dirs");
    for i in 1..=2 {
        block_on(dirs.write_event_file(&format!("{i}-u.json"), b"{}".to_vec()))
            .expect("under the cap");
    }
    let refused = block_on(dirs.write_event_file("3-u.json", b"{}".to_vec()));
    assert!(
        matches!(
            refused,
            Err(ProcessError::EventsOverLimit {
                limit: Limit::Events,
                cap: 2
            })
        ),
        "{refused:?}"
    );
    assert_eq!(event_files(&dir), ["1-u.json", "2-u.json"]);
    assert!(dir.join(NOTE_FILE).is_file());
}
