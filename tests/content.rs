//! Content-addressed transfer of the private data dir: `ansible-runner run --via-receptor
//! node1` through the front end, across controller -> relay -> node1, with real
//! ansible-runner. What the user can see: the bytes the relay forwarded to node1 (its
//! `/metrics`), the run's output and artifacts, and node1's content cache dir.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::metrics::{get, metrics_addr, sample};
use crate::run::{Setup, copy_demo, frontend, random_bytes, relayed_setup, seed_args, text};

/// The big file's size: a second run must send under a twentieth of it.
const BIG: usize = 8 << 20;

/// The password under env/, which must never be cached.
const SECRET: &str = "correct-horse-battery-staple-7f3a";

fn metrics_flags() -> Vec<String> {
    vec!["--metrics".to_owned(), "127.0.0.1:0".to_owned()]
}

/// Bytes the relay has sent to node1 so far.
fn relay_to_node1(addr: &str) -> f64 {
    let (_, body) = get(addr, "/metrics");
    sample(&body, "warren_link_sent_bytes_total{peer=\"node1\"}").unwrap_or(0.0)
}

fn run(setup: &Setup, pdd: &Path, ident: &str) -> Output {
    let args = seed_args(setup, pdd, "test.yml", &["-i", ident]);
    let out = frontend(setup, &args).output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    out
}

/// Runs `ident` and returns its output and the bytes the relay forwarded to node1 for it.
fn measured(setup: &Setup, addr: &str, pdd: &Path, ident: &str) -> (Output, f64) {
    let before = relay_to_node1(addr);
    let out = run(setup, pdd, ident);
    (out, relay_to_node1(addr) - before)
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The names of an artifact dir's files, relative, with the job events' uuids cut off.
fn artifact_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = files_under(dir)
        .iter()
        .map(|p| p.strip_prefix(dir).unwrap().to_string_lossy().into_owned())
        .map(|n| match n.strip_prefix("job_events/") {
            Some(event) => format!("job_events/{}", event.split('-').next().unwrap()),
            None => n,
        })
        .collect();
    names.sort();
    names
}

#[test]
fn a_repeat_run_sends_almost_nothing_and_a_changed_file_sends_only_that_file() {
    let setup = relayed_setup(&metrics_flags(), None);
    let relay = setup.relay.unwrap();
    let addr = metrics_addr(&setup.mesh, relay);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    std::fs::write(pdd.join("project/blob.bin"), random_bytes(BIG, 1)).unwrap();
    std::fs::create_dir_all(pdd.join("env")).unwrap();
    std::fs::write(pdd.join("env/password"), SECRET).unwrap();

    let (first, first_bytes) = measured(&setup, &addr, &pdd, "first");
    assert!(
        first_bytes > BIG as f64,
        "the first run sent {first_bytes} bytes"
    );
    let (second, second_bytes) = measured(&setup, &addr, &pdd, "second");
    assert!(
        second_bytes < BIG as f64 / 20.0,
        "the repeat run sent {second_bytes} bytes to node1 (the first {first_bytes})"
    );
    assert_eq!(text(&second.stdout), text(&first.stdout));
    assert!(text(&second.stdout).contains("Test!"));
    let (a, b) = (pdd.join("artifacts/first"), pdd.join("artifacts/second"));
    assert_eq!(artifact_names(&a), artifact_names(&b));
    for file in ["status", "rc", "stdout"] {
        assert_eq!(
            std::fs::read_to_string(a.join(file)).unwrap(),
            std::fs::read_to_string(b.join(file)).unwrap(),
            "{file}"
        );
    }

    // One new file of 300 KB: about that much goes, not the big file again.
    let change = 300_000;
    std::fs::write(pdd.join("project/changed.bin"), random_bytes(change, 2)).unwrap();
    let (_, third_bytes) = measured(&setup, &addr, &pdd, "third");
    assert!(
        third_bytes > change as f64 && third_bytes < (change + BIG / 20) as f64,
        "a one-file change sent {third_bytes} bytes"
    );

    // node1 caches the project's contents, and never the password.
    let cache = setup.mesh.path("node1-data/content-cache");
    let cached = files_under(&cache);
    assert!(
        cached
            .iter()
            .any(|p| std::fs::metadata(p).unwrap().len() == BIG as u64),
        "{cached:?}"
    );
    for path in cached {
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the password",
            path.display()
        );
    }
}

#[test]
fn a_node_with_the_cache_off_gets_the_whole_stream_and_runs_the_job() {
    let setup = relayed_setup(&metrics_flags(), Some("content-cache-mb = 0"));
    let relay = setup.relay.unwrap();
    let addr = metrics_addr(&setup.mesh, relay);
    let pdd = setup.mesh.path("demo");
    copy_demo(&pdd);
    std::fs::write(pdd.join("project/blob.bin"), random_bytes(1 << 20, 3)).unwrap();
    for ident in ["one", "two"] {
        let (out, bytes) = measured(&setup, &addr, &pdd, ident);
        assert!(text(&out.stdout).contains("Test!"));
        assert!(bytes > (1 << 20) as f64, "run {ident} sent {bytes} bytes");
    }
    assert!(!setup.mesh.path("node1-data/content-cache").exists());
}
