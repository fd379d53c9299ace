//! `scripts/demo.sh`, really run, in a temp copy of the repository's scripts and examples:
//! it starts the example mesh with the controller on the default port and runs exactly
//! `ansible-runner run examples/demo -p test.yml --via-receptor node1`; the command it
//! tells the user to type next works again from the user's own shell; `--stop` stops the
//! nodes and frees port 8888.
//!
//! The script builds nothing here: `WARREN_DEMO_BIN` points it at a directory holding the
//! binaries under test, where `ansible-runner` is a wrapper that records its command line
//! and working directory, then runs Warren's front end.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::run::venv_bin;
use crate::support::{default_port_lock_path, warren_bin};

/// The command line the demo must run, as its words.
const SEED: &[&str] = &[
    "run",
    "examples/demo",
    "-p",
    "test.yml",
    "--via-receptor",
    "node1",
];

/// A temp copy of what the demo needs, with the user's home and the binaries' directory.
/// Dropping it stops any nodes the demo left running.
struct DemoCopy {
    dir: tempfile::TempDir,
}

impl DemoCopy {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("warren-demo")
            .tempdir()
            .unwrap();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        std::fs::create_dir_all(dir.path().join("examples")).unwrap();
        for what in ["scripts", "examples/demo", "examples/mesh"] {
            let status = Command::new("cp")
                .arg("-r")
                .arg(repo.join(what))
                .arg(dir.path().join(what))
                .status()
                .unwrap();
            assert!(status.success());
        }
        // A demo the developer ran in the worktree leaves state behind; a user's clone has none.
        for leftover in ["examples/mesh/data", "examples/demo/artifacts"] {
            let _ = std::fs::remove_dir_all(dir.path().join(leftover));
        }
        std::os::unix::fs::symlink(venv_bin().parent().unwrap(), dir.path().join(".venv")).unwrap();
        let copy = Self { dir };
        std::fs::create_dir_all(copy.path("home")).unwrap();
        copy.write_bin();
        copy
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `bin/warren`, and `bin/ansible-runner` recording `PWD<TAB>ARGS` to `commands`.
    fn write_bin(&self) {
        let bin = self.path("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::os::unix::fs::symlink(warren_bin(), bin.join("warren")).unwrap();
        let wrapper = format!(
            "#!/bin/sh\nprintf '%s\\t%s\\n' \"$PWD\" \"$*\" >> '{}'\nexec '{}' \"$@\"\n",
            self.path("commands").display(),
            crate::support::frontend_bin().display(),
        );
        let path = bin.join("ansible-runner");
        std::fs::write(&path, wrapper).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
    }

    /// A user's shell in the copy: HOME in the temp dir, no Warren variables set.
    fn shell(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command
            .current_dir(self.dir.path())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("HOME", self.path("home"))
            .env("TMPDIR", std::env::temp_dir())
            .env("LANG", "C.UTF-8");
        command
    }

    fn demo(&self, args: &[&str]) -> Output {
        self.shell("scripts/demo.sh")
            .args(args)
            .env("WARREN_DEMO_BIN", self.path("bin"))
            .output()
            .unwrap()
    }

    /// The commands the recording wrapper saw, as (working dir, arguments).
    fn commands(&self) -> Vec<(PathBuf, String)> {
        std::fs::read_to_string(self.path("commands"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (dir, args) = l.split_once('\t').unwrap();
                (PathBuf::from(dir), args.to_owned())
            })
            .collect()
    }

    fn logs(&self) -> String {
        ["controller", "relay", "node1"]
            .iter()
            .map(|n| {
                let log = self.path(&format!("examples/mesh/data/{n}.log"));
                let text = std::fs::read_to_string(log).unwrap_or_default();
                format!("===== {n} log =====\n{text}")
            })
            .collect()
    }
}

impl Drop for DemoCopy {
    fn drop(&mut self) {
        let _ = self.demo(&["--stop"]);
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Whether another process holds the port 8888 lock.
fn port_lock_is_held() -> bool {
    let file = std::fs::File::create(default_port_lock_path()).unwrap();
    let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
    // SAFETY: flock on a descriptor owned by `file`, which closes it (and any lock) on drop.
    unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

#[test]
fn the_demo_runs_the_seed_command_and_the_user_can_run_it_again_then_stop_the_nodes() {
    let copy = DemoCopy::new();
    let out = copy.demo(&["--keep"]);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{out:?}\n{stderr}\n{}", copy.logs());
    // Exactly the seed's command, from the repository root, once.
    let root = copy.dir.path().canonicalize().unwrap();
    assert_eq!(copy.commands(), [(root.clone(), SEED.join(" "))]);
    assert!(text(&out.stdout).contains("PLAY RECAP"), "{out:?}");
    let artifacts = std::fs::read_dir(copy.path("examples/demo/artifacts"))
        .unwrap()
        .count();
    assert_eq!(artifacts, 1);
    // It tells the user what to try next.
    for hint in [
        &SEED.join(" ")[..],
        "warren status --socket",
        "receptorctl --socket",
        "scripts/demo.sh --stop",
    ] {
        assert!(stderr.contains(hint), "no `{hint}` in:\n{stderr}");
    }
    assert!(port_lock_is_held(), "the running controller holds the lock");

    // The same command from the user's shell, with the PATH and the demo client's identity
    // the hint gives (the user's own identity is never touched).
    let identity = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("export WARREN_IDENTITY="))
        .unwrap_or_else(|| panic!("no WARREN_IDENTITY in the hint:\n{stderr}"));
    assert!(
        !copy.path("home/.config/warren").exists(),
        "the demo wrote into the user's home"
    );
    let path = format!(
        "{}:{}:/usr/bin:/bin",
        copy.path("bin").display(),
        venv_bin().display()
    );
    let again = copy
        .shell("ansible-runner")
        .args(SEED)
        .env("PATH", &path)
        .env("WARREN_IDENTITY", identity)
        .output()
        .unwrap();
    assert!(again.status.success(), "{again:?}\n{}", copy.logs());
    assert!(text(&again.stdout).contains("PLAY RECAP"));
    let status = copy
        .shell("warren")
        .args([
            "status",
            "--socket",
            "examples/mesh/data/controller/control.sock",
        ])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    assert!(text(&status.stdout).contains("node1"), "{status:?}");

    let stop = copy.demo(&["--stop"]);
    assert!(stop.status.success(), "{stop:?}");
    assert!(!copy.path("examples/mesh/data/demo.pids").exists());
    // The controller held the port's lock; with it gone, a test can take it.
    drop(crate::support::default_port_lock());
}
