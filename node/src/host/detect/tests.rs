use std::path::{Path, PathBuf};

use super::*;

/// Behaves like ansible-runner 2: rejects unknown flags, has `worker`, prints a version.
fn real(version: &str) -> String {
    format!(
        r#"case "$1" in
  --version) echo "{version}"; echo "extra line"; exit 0;;
  worker) echo "usage: ansible-runner worker [-h] [--private-data-dir PRIVATE_DATA_DIR]"; exit 0;;
  *) echo "ansible-runner: error: unrecognized arguments: $1" >&2; exit 2;;
esac"#
    )
}

/// Behaves like Warren's front end: answers the probe (and would pass the others).
const FRONTEND: &str = r#"case "$1" in
  --warren-frontend) echo warren; exit 0;;
  --version) echo 9.9.9; exit 0;;
  worker) echo "--private-data-dir"; exit 0;;
esac
exit 2"#;

/// An ansible-runner 1.x: no worker subcommand.
const NO_WORKER: &str = r#"case "$1" in
  --version) echo 1.4.7; exit 0;;
  *) echo "ansible-runner: error: invalid choice: '$1'" >&2; exit 2;;
esac"#;

/// Writes an executable `#!/bin/sh` script `dir/name`.
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn runner(dir: &Path, body: &str) -> PathBuf {
    script(dir, "ansible-runner", body)
}

fn path_env(dirs: &[&Path]) -> OsString {
    std::env::join_paths(dirs).unwrap()
}

fn prober(timeout: Duration) -> Prober {
    Prober {
        env: vec![("HOME".into(), "/nonexistent".into())],
        timeout,
    }
}

fn find(configured: Option<&Path>, dirs: &[&Path]) -> Result<AnsibleRunner, DetectError> {
    let path = path_env(dirs);
    prober(PROBE_TIMEOUT).find(configured, Some(&path))
}

#[test]
fn finds_a_real_runner_on_path_with_its_version() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    runner(&bin, &real("2.4.0"));
    let found = find(None, &[&tmp.path().join("empty"), &bin]).unwrap();
    assert_eq!(
        found,
        AnsibleRunner {
            path: bin.canonicalize().unwrap().join("ansible-runner"),
            version: "2.4.0".into(),
        }
    );
    assert!(found.path.is_absolute());
}

#[test]
fn path_order_wins_and_refused_candidates_are_skipped() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b, c, d) = (
        tmp.path().join("a"),
        tmp.path().join("b"),
        tmp.path().join("c"),
        tmp.path().join("d"),
    );
    runner(&a, FRONTEND);
    runner(&b, NO_WORKER);
    runner(&c, &real("2.3.1"));
    runner(&d, &real("2.4.0"));
    let found = find(None, &[&a, &b, &c, &d]).unwrap();
    assert_eq!(found.version, "2.3.1");
    assert!(found.path.starts_with(c.canonicalize().unwrap()));
    assert_eq!(find(None, &[&d, &c]).unwrap().version, "2.4.0");
}

#[test]
fn configured_path_wins_over_path() {
    let tmp = tempfile::tempdir().unwrap();
    let on_path = tmp.path().join("bin");
    runner(&on_path, &real("2.4.0"));
    let venv = script(
        &tmp.path().join("venv/bin"),
        "ansible-runner",
        &real("2.5.0"),
    );
    assert_eq!(find(Some(&venv), &[&on_path]).unwrap().version, "2.5.0");
}

#[test]
fn configured_path_failures_name_the_path_and_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let frontend = script(tmp.path(), "front", FRONTEND);
    let err = find(Some(&frontend), &[]).unwrap_err();
    assert!(matches!(err, DetectError::Frontend { .. }), "{err}");
    assert!(err.to_string().contains("front end"), "{err}");

    let old = script(tmp.path(), "old", NO_WORKER);
    let err = find(Some(&old), &[]).unwrap_err();
    assert!(
        matches!(&err, DetectError::NoWorker { output, .. } if output.contains("invalid choice"))
    );
    assert!(err.to_string().contains("old has no worker mode"), "{err}");

    let silent = script(
        tmp.path(),
        "silent",
        "case \"$1\" in worker) echo private-data-dir;; esac\nexit 0",
    );
    let err = find(Some(&silent), &[]).unwrap_err();
    assert!(matches!(err, DetectError::NoVersion { .. }), "{err}");

    let missing = tmp.path().join("missing");
    let err = find(Some(&missing), &[]).unwrap_err();
    assert!(matches!(err, DetectError::NotExecutable { .. }), "{err}");
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, real("2.4.0")).unwrap();
    assert!(matches!(
        find(Some(&plain), &[]),
        Err(DetectError::NotExecutable { .. })
    ));
    assert!(matches!(
        find(Some(tmp.path()), &[]),
        Err(DetectError::NotExecutable { .. })
    ));
}

#[test]
fn not_found_lists_what_was_searched_and_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    runner(&a, FRONTEND);
    std::fs::create_dir_all(&b).unwrap();
    let path = std::env::join_paths([a.as_os_str(), "relative".as_ref(), b.as_os_str()]).unwrap();
    let err = prober(PROBE_TIMEOUT).find(None, Some(&path)).unwrap_err();
    let DetectError::NotFound { searched, rejected } = &err else {
        panic!("{err}");
    };
    assert_eq!(
        searched,
        &[a.clone(), b.clone()],
        "relative entries are not searched"
    );
    assert!(matches!(rejected[..], [DetectError::Frontend { .. }]));
    let text = err.to_string();
    for needle in [
        a.display().to_string(),
        b.display().to_string(),
        "rejected:".into(),
        "front end".into(),
        "--ansible-runner".into(),
    ] {
        assert!(text.contains(&needle), "{needle} missing: {text}");
    }
    let err = prober(PROBE_TIMEOUT).find(None, None).unwrap_err();
    assert!(err.to_string().contains("PATH is empty or unset"), "{err}");
}

#[test]
fn a_hanging_probe_times_out() {
    let tmp = tempfile::tempdir().unwrap();
    let hang = runner(tmp.path(), "while :; do :; done");
    let started = Instant::now();
    let err = prober(Duration::from_millis(300))
        .find(Some(&hang), None)
        .unwrap_err();
    assert!(
        matches!(&err, DetectError::Timeout { probe, .. } if probe == FRONTEND_PROBE_FLAG),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        err.to_string().contains("did not finish within 0.3s"),
        "{err}"
    );
}

#[test]
fn probes_see_only_path_home_and_lang() {
    let tmp = tempfile::tempdir().unwrap();
    // `export -p` is a shell builtin: the probe's PATH holds no other tools.
    let body = format!(
        "{}\n",
        real("2.4.0").replace(
            "--version) ",
            "--version) export -p > \"${0%/*}/env.txt\"; "
        )
    );
    let bin = tmp.path().join("bin");
    runner(&bin, &body);
    let path = path_env(&[&bin]);
    let prober = Prober {
        env: vec![
            ("PATH".into(), path.clone()),
            ("HOME".into(), "/home/w".into()),
        ],
        timeout: PROBE_TIMEOUT,
    };
    prober.find(None, Some(&path)).unwrap();
    let env = std::fs::read_to_string(bin.join("env.txt")).unwrap();
    assert!(env.contains("HOME") && env.contains("/home/w"), "{env}");
    assert!(env.contains(&*path.to_string_lossy()), "{env}");
    for line in env.lines() {
        let ok = ["PATH", "HOME", "PWD", "OLDPWD"]
            .iter()
            .any(|name| line.contains(&format!(" {name}")));
        assert!(ok, "unexpected variable: {line}");
    }
}

#[test]
fn resolves_command_programs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let first = script(&a, "tool", "exit 0");
    script(&b, "tool", "exit 0");
    std::fs::write(a.join("data"), "not executable").unwrap();
    script(&b, "data", "exit 0");
    let path = path_env(&[&a, &b]);
    assert_eq!(
        resolve_program(Path::new("tool"), Some(&path)),
        Some(first.clone())
    );
    assert_eq!(
        resolve_program(Path::new("data"), Some(&path)),
        Some(b.join("data")),
        "non-executable files are skipped"
    );
    assert_eq!(resolve_program(Path::new("nope"), Some(&path)), None);
    assert_eq!(resolve_program(Path::new("tool"), None), None);
    assert_eq!(resolve_program(&first, None), Some(first.clone()));
    assert_eq!(resolve_program(&a.join("data"), None), None);
    assert_eq!(
        resolve_program(&a, None),
        None,
        "directories are not programs"
    );
    assert_eq!(resolve_program(Path::new(""), Some(&path)), None);
    assert_eq!(
        resolve_program(Path::new("sh"), Some(OsStr::new("/bin:/usr/bin"))),
        ["/bin/sh", "/usr/bin/sh"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    );
}
