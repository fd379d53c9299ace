//! The native streams against real ansible-runner (from `.venv/`, see `testing`) on a copy
//! of `examples/demo/`: our transmit into the real worker, the real worker into our process.

use std::io::Write as _;
use std::path::Path;
use std::sync::OnceLock;

use super::kwargs::{RunOptions, cli_kwargs};
use super::process::{ProcessConfig, ProcessError, process};
use super::testing::{demo_copy, file_set, run_ok, run_with_input, runner_command};
use super::transmit::transmit;
use super::unpack::{ArtifactLimits, NOTE_FILE, UnpackError};

fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(future)
}

fn our_transmit(pdd: &Path, options: &RunOptions) -> Vec<u8> {
    let kwargs = cli_kwargs(pdd, options).expect("kwargs");
    let mut stream = Vec::new();
    block_on(transmit(pdd, &kwargs, &mut stream)).expect("transmit");
    stream
}

fn real_worker(stream: &[u8]) -> Vec<u8> {
    let worker_dir = tempfile::tempdir().expect("tempdir");
    real_worker_in(stream, &worker_dir.path().join("pdd"))
}

/// The real worker's stream for `stream`, unpacking into `pdd` (left for inspection).
fn real_worker_in(stream: &[u8], pdd: &Path) -> Vec<u8> {
    let mut worker = runner_command(&["worker", "--private-data-dir"]);
    worker.arg(pdd);
    // The worker exits with the job's rc; a failed job still streams everything.
    run_with_input(worker, stream).stdout
}

fn playbook(ident: &str, playbook: &str) -> RunOptions {
    RunOptions {
        ident: Some(ident.into()),
        playbook: Some(playbook.into()),
        ..RunOptions::default()
    }
}

/// The real `transmit | worker` stream for the demo with ident `demo`, made once.
fn real_demo_stream() -> &'static [u8] {
    static STREAM: OnceLock<Vec<u8>> = OnceLock::new();
    STREAM.get_or_init(|| {
        let (_temp, demo) = demo_copy();
        let mut transmit = runner_command(&["transmit", "-p", "test.yml", "-i", "demo"]);
        transmit.arg(&demo);
        let stream = run_ok(transmit, b"");
        real_worker(&stream)
    })
}

#[test]
fn kwargs_line_matches_real_transmit() {
    let (_temp, demo) = demo_copy();
    let sets: [(&[&str], RunOptions); 3] = [
        (&["-i", "one"], playbook("one", "test.yml")),
        (
            &["-i", "two", "--inventory", "hosts"],
            RunOptions {
                inventory: Some("hosts".into()),
                ..playbook("two", "test.yml")
            },
        ),
        (
            &[
                "-i",
                "three",
                "--limit",
                "localhost",
                "--forks",
                "3",
                "-vv",
                "-j",
                "--rotate-artifacts",
                "2",
            ],
            RunOptions {
                limit: Some("localhost".into()),
                forks: Some(3),
                verbosity: Some(2),
                json_mode: true,
                rotate_artifacts: 2,
                ..playbook("three", "test.yml")
            },
        ),
    ];
    for (args, options) in sets {
        let mut real = runner_command(&["transmit", "-p", "test.yml"]);
        real.args(args).arg(&demo);
        let real = run_ok(real, b"");
        let real_line = real
            .split_inclusive(|&b| b == b'\n')
            .next()
            .expect("a line");
        let ours = cli_kwargs(&demo, &options).expect("kwargs").to_line();
        assert_eq!(String::from_utf8_lossy(real_line), ours, "options {args:?}");
    }
}

#[test]
fn real_worker_accepts_our_transmit() {
    let (_temp, demo) = demo_copy();
    let stream = our_transmit(&demo, &playbook("ours", "test.yml"));
    let worker_stream = real_worker(&stream);
    let out = tempfile::tempdir().expect("tempdir");
    let mut real_process = runner_command(&["process", "-i", "ours"]);
    real_process.arg(out.path());
    let printed = run_ok(real_process, &worker_stream);
    let artifacts = out.path().join("artifacts/ours");
    let rc = std::fs::read_to_string(artifacts.join("rc")).expect("rc");
    let status = std::fs::read_to_string(artifacts.join("status")).expect("status");
    assert_eq!((rc.trim(), status.trim()), ("0", "successful"));
    assert!(String::from_utf8_lossy(&printed).contains("Test!"));
    assert!(file_set(&artifacts.join("job_events")).len() >= 6);
}

#[test]
fn our_process_matches_real_process() {
    let stream = real_demo_stream();
    let real = tempfile::tempdir().expect("tempdir");
    let mut real_process = runner_command(&["process", "-i", "demo"]);
    real_process.arg(real.path());
    let real_printed = run_ok(real_process, stream);

    let ours = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig::new(ours.path(), Some("demo"));
    let mut printed = Vec::new();
    let outcome = block_on(process(stream, &config, &mut printed)).expect("process");

    assert_eq!(
        String::from_utf8_lossy(&printed),
        String::from_utf8_lossy(&real_printed)
    );
    assert!(String::from_utf8_lossy(&printed).contains("\"msg\": \"Test!\""));
    assert_eq!(outcome.status.as_deref(), Some("successful"));
    assert_eq!(outcome.rc, Some(0));
    assert!(outcome.events >= 6, "{outcome:?}");
    let real_dir = real.path().join("artifacts/demo");
    let files = file_set(&config.artifact_dir);
    assert_eq!(files, file_set(&real_dir));
    let events: Vec<_> = files
        .iter()
        .filter(|f| f.starts_with("job_events/") && f.ends_with(".json"))
        .collect();
    assert_eq!(outcome.events, events.len() as u64);
    for file in files.iter().filter(|f| !f.ends_with('/')) {
        let ours = std::fs::read(config.artifact_dir.join(file)).expect("ours");
        let theirs = std::fs::read(real_dir.join(file)).expect("theirs");
        assert!(ours == theirs, "{file} differs");
        let mode = |path: &Path| {
            std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(path).expect("meta").permissions(),
            )
        };
        assert_eq!(
            mode(&config.artifact_dir.join(file)),
            mode(&real_dir.join(file)),
            "{file} mode"
        );
    }
}

#[test]
fn failing_playbook_reports_failed_and_rc() {
    let (_temp, demo) = demo_copy();
    std::fs::write(
        demo.join("project/fail.yml"),
        "---\n- hosts: all\n  gather_facts: false\n  tasks:\n    - fail: msg=boom\n",
    )
    .expect("write playbook");
    let worker_stream = real_worker(&our_transmit(&demo, &playbook("bad", "fail.yml")));
    let out = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig {
        quiet: true,
        ..ProcessConfig::new(out.path(), Some("bad"))
    };
    let mut printed = Vec::new();
    let outcome = block_on(process(&worker_stream[..], &config, &mut printed)).expect("process");
    assert_eq!(outcome.status.as_deref(), Some("failed"));
    assert!(outcome.rc.is_some_and(|rc| rc != 0), "{outcome:?}");
    assert!(printed.is_empty());
}

#[test]
fn truncated_stream_is_an_error_and_keeps_partial_artifacts() {
    let stream = real_demo_stream();
    let zip_at = find(stream, b"{\"zipfile\"").expect("artifacts in the stream");
    for (cut, inside_zip) in [(zip_at, false), (zip_at + 40, true)] {
        let out = tempfile::tempdir().expect("tempdir");
        let config = ProcessConfig::new(out.path(), Some("demo"));
        let error = block_on(process(&stream[..cut], &config, tokio::io::sink())).unwrap_err();
        if inside_zip {
            assert!(
                matches!(error, ProcessError::ArtifactsTruncated { .. }),
                "{error}"
            );
        } else {
            assert!(matches!(error, ProcessError::UnexpectedEnd), "{error}");
        }
        assert!(!file_set(&config.artifact_dir.join("job_events")).is_empty());
    }
}

#[test]
fn refuses_zip_slip_entries() {
    let outside = tempfile::tempdir().expect("tempdir");
    let evil = outside.path().join("evil");
    let link_target = outside.path().to_string_lossy().into_owned();
    type Case<'a> = (&'a [(&'a str, Option<&'a str>)], fn(&UnpackError) -> bool);
    let cases: [Case<'_>; 3] = [
        (&[("../evil", None)], |e| {
            matches!(e, UnpackError::Escapes { .. })
        }),
        (
            &[("link", Some(link_target.as_str())), ("link/evil", None)],
            |e| matches!(e, UnpackError::UnsafeSymlink { .. }),
        ),
        // A link that stays inside is made, but nothing is ever written through it.
        (&[("link", Some("sub")), ("link/evil", None)], |e| {
            matches!(e, UnpackError::Escapes { .. })
        }),
    ];
    for (entries, expected) in cases {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default();
        for (name, target) in entries {
            match target {
                Some(target) => zip.add_symlink(*name, *target, options).expect("symlink"),
                None => {
                    zip.start_file(*name, options).expect("file");
                    zip.write_all(b"pwned").expect("data");
                }
            }
        }
        let zip = zip.finish().expect("zip").into_inner();
        let mut stream = format!("{{\"zipfile\": {}}}\n", zip.len()).into_bytes();
        stream.extend(
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &zip).bytes(),
        );
        stream.extend(b"{\"eof\": true}\n");
        let out = tempfile::tempdir().expect("tempdir");
        let config = ProcessConfig::new(out.path(), Some("x"));
        let error = block_on(process(&stream[..], &config, tokio::io::sink())).unwrap_err();
        let ProcessError::Artifacts(error) = &error else {
            panic!("{error}");
        };
        assert!(expected(error), "{entries:?}: {error}");
        assert!(!evil.exists());
        assert!(config.artifact_dir.join(NOTE_FILE).is_file());
    }
}

#[test]
fn transmit_stream_round_trips_symlinks_and_skips_fifos() {
    let source = tempfile::tempdir().expect("tempdir");
    let root = source.path();
    std::fs::create_dir_all(root.join("project/sub")).expect("dirs");
    std::fs::create_dir(root.join("empty")).expect("empty dir");
    std::fs::write(root.join("project/sub/a.yml"), "a: 1\n").expect("file");
    let script = root.join("project/run.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750))
        .expect("chmod");
    std::os::unix::fs::symlink("sub/a.yml", root.join("project/link.yml")).expect("symlink");
    let fifo = root.join("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(status.success());

    let kwargs = super::kwargs::Kwargs::from(serde_json::Map::new());
    let mut stream = Vec::new();
    block_on(transmit(root, &kwargs, &mut stream)).expect("transmit");
    let text = String::from_utf8(stream).expect("ascii stream");
    let mut lines = text.splitn(3, '\n');
    assert_eq!(lines.next(), Some("{\"kwargs\": {}}"));
    let size: serde_json::Value =
        serde_json::from_str(lines.next().expect("zipfile line")).expect("json");
    let size = size["zipfile"].as_u64().expect("size");
    let rest = lines.next().expect("payload");
    let encoded = rest
        .strip_suffix("{\"eof\": true}\n")
        .expect("eof glued to the base64");
    assert_eq!(encoded.len() as u64, size.div_ceil(3) * 4);
    let zip = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, encoded)
        .expect("base64");
    assert_eq!(zip.len() as u64, size);

    let out = tempfile::tempdir().expect("tempdir");
    super::unpack::unpack(
        std::io::Cursor::new(zip),
        out.path(),
        &ArtifactLimits::DEFAULT,
    )
    .expect("unpack");
    assert_eq!(
        file_set(out.path()),
        [
            "empty/",
            "project/",
            "project/link.yml",
            "project/run.sh",
            "project/sub/",
            "project/sub/a.yml"
        ]
    );
    let link = std::fs::read_link(out.path().join("project/link.yml")).expect("a symlink");
    assert_eq!(link, Path::new("sub/a.yml"));
    let mode = std::fs::metadata(out.path().join("project/run.sh"))
        .expect("meta")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o750
    );
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// The demo plus what a real project carries: a big incompressible file (stored), a big log
/// (deflated twice, not held), an archive by extension, an empty file, a UTF-8 name, a
/// symlink and an executable script.
fn mixed_demo() -> (tempfile::TempDir, std::path::PathBuf) {
    use super::transmit::tests::{random_bytes, text_bytes};
    let (temp, demo) = demo_copy();
    let project = demo.join("project");
    std::fs::write(project.join("blob.bin"), random_bytes(3 << 20, 11)).expect("blob");
    std::fs::write(project.join("big.log"), text_bytes(6 << 20)).expect("log");
    std::fs::write(project.join("vendored.tgz"), random_bytes(100_000, 12)).expect("tgz");
    std::fs::write(project.join("empty"), b"").expect("empty");
    std::fs::write(project.join("café.txt"), "crème\n").expect("utf8 name");
    std::os::unix::fs::symlink("test.yml", project.join("alias.yml")).expect("symlink");
    let script = project.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o750))
        .expect("chmod");
    (temp, demo)
}

#[test]
fn real_worker_unpacks_a_streamed_mixed_payload_byte_for_byte() {
    let (_temp, demo) = mixed_demo();
    let stream = our_transmit(&demo, &playbook("mixed", "alias.yml"));
    let worker_dir = tempfile::tempdir().expect("tempdir");
    let unpacked = worker_dir.path().join("pdd");
    let worker_stream = real_worker_in(&stream, &unpacked);
    let out = tempfile::tempdir().expect("tempdir");
    let config = ProcessConfig::new(out.path(), Some("mixed"));
    let mut printed = Vec::new();
    let outcome = block_on(process(&worker_stream[..], &config, &mut printed)).expect("process");
    assert_eq!(outcome.status.as_deref(), Some("successful"), "{outcome:?}");
    assert!(String::from_utf8_lossy(&printed).contains("Test!"));
    for file in [
        "blob.bin",
        "big.log",
        "vendored.tgz",
        "empty",
        "café.txt",
        "run.sh",
    ] {
        let sent = std::fs::read(demo.join("project").join(file)).expect("source");
        let got = std::fs::read(unpacked.join("project").join(file)).expect(file);
        assert!(
            sent == got,
            "{file} differs after the real worker unpacked it"
        );
    }
    let link = std::fs::read_link(unpacked.join("project/alias.yml")).expect("a symlink");
    assert_eq!(link, Path::new("test.yml"));
    let mode = std::fs::metadata(unpacked.join("project/run.sh"))
        .expect("meta")
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o750
    );
}

#[test]
fn real_worker_refuses_a_stream_cut_short_by_a_file_that_grew() {
    let (_temp, demo) = mixed_demo();
    let kwargs = cli_kwargs(&demo, &playbook("cut", "test.yml")).expect("kwargs");
    let mut stream = Vec::new();
    let error = block_on(async {
        let prepared = super::transmit::Transmit::prepare(&demo, &kwargs)
            .await
            .expect("prepare");
        let mut blob = std::fs::OpenOptions::new()
            .append(true)
            .open(demo.join("project/blob.bin"))
            .expect("open blob");
        blob.write_all(b"appended after the length was sent")
            .expect("append");
        prepared.send(&mut stream).await.unwrap_err()
    });
    assert!(
        matches!(&error, super::transmit::TransmitError::Changed { path } if path.ends_with("blob.bin")),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("changed while it was being sent")
    );
    assert!(
        find(&stream, b"{\"eof\"").is_none(),
        "the cut stream must not end cleanly"
    );
    let worker_stream = real_worker(&stream);
    let text = String::from_utf8_lossy(&worker_stream);
    assert!(text.contains("\"status\": \"error\""), "{text}");
    assert!(!text.contains("Test!"), "the worker ran the job: {text}");
}
