//! Test support: the real ansible-runner from the repository's `.venv/` and a copy of
//! `examples/demo/`. Tests that need them fail with the setup command, never skip.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The workspace root (the crate lives in `node/`).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("invariant: node/ has a parent")
        .to_path_buf()
}

/// `.venv/bin/ansible-runner`.
///
/// # Panics
///
/// When the venv is missing, naming the script that creates it.
pub(crate) fn ansible_runner() -> PathBuf {
    let path = workspace_root().join(".venv/bin/ansible-runner");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup-python.sh",
        path.display()
    );
    path
}

/// A command for `ansible-runner ARGS` with the venv's tools first on PATH (the worker runs
/// `ansible-playbook` by name) and a UTF-8 locale (ansible-core refuses others).
pub(crate) fn runner_command(args: &[&str]) -> Command {
    let runner = ansible_runner();
    let bin = runner.parent().expect("invariant: bin/ holds the runner");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.to_path_buf()];
    paths.extend(std::env::split_paths(&path));
    let mut command = Command::new(&runner);
    command
        .args(args)
        .env(
            "PATH",
            std::env::join_paths(paths).expect("PATH entries are valid"),
        )
        .env("LC_ALL", "C.UTF-8")
        .env("ANSIBLE_NOCOLOR", "1");
    command
}

/// Runs `command` with `input` on stdin and returns its output.
pub(crate) fn run_with_input(mut command: Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ansible-runner");
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        // The reader may stop early (e.g. on a bad line); a broken pipe is its business.
        let _ = stdin.write_all(&input);
    });
    let output = child.wait_with_output().expect("wait for ansible-runner");
    writer.join().expect("stdin writer");
    output
}

/// Like [`run_with_input`], failing the test with stderr when the exit status is not 0.
pub(crate) fn run_ok(command: Command, input: &[u8]) -> Vec<u8> {
    let output = run_with_input(command, input);
    assert!(
        output.status.success(),
        "ansible-runner failed: {}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// A fresh copy of `examples/demo/` as `<tempdir>/demo`.
pub(crate) fn demo_copy() -> (tempfile::TempDir, PathBuf) {
    let temp = tempfile::tempdir().expect("tempdir");
    let demo = temp.path().join("demo");
    copy_tree(&workspace_root().join("examples/demo"), &demo);
    (temp, demo)
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for entry in std::fs::read_dir(from).expect("read demo dir") {
        let entry = entry.expect("demo entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy demo file");
        }
    }
}

/// Every path under `dir`, relative, sorted (dirs with a trailing `/`).
pub(crate) fn file_set(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).expect("read artifacts") {
            let path = entry.expect("entry").path();
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                out.push(format!("{rel}/"));
                walk(root, &path, out);
            } else {
                out.push(rel);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
