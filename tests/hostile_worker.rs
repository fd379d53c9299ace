//! A compromised worker node against `warren run`: node1's "ansible-runner" is a script that
//! answers every job with a hostile worker stream, and the real client processes it. What
//! the user keeps: files outside the artifacts dir untouched, no terminal escapes but
//! colour, a zip bomb refused before it fills the disk, and a clear error and exit code.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use base64::Engine as _;

use crate::craft::{RawEntry, deflate_zeros, raw_zip};
use crate::support::{Mesh, warren, warren_bin};

/// The event the hostile worker sends first: a window-title OSC, colour, a screen clear.
const OSC_EVENT: &str = r#"{"uuid": "e1", "counter": 1, "event": "verbose", "stdout": "\u001b]0;owned by the worker\u0007\u001b[0;32mok: [localhost]\u001b[0m\u001b[2J"}"#;

/// A worker stream: `before` lines, the zip, `after` lines, eof.
fn worker_stream(before: &[&str], zip: &[u8], after: &[&str]) -> Vec<u8> {
    let mut stream = Vec::new();
    for line in before {
        stream.extend(line.bytes().chain([b'\n']));
    }
    stream.extend(format!("{{\"zipfile\": {}}}\n", zip.len()).bytes());
    stream.extend(
        base64::engine::general_purpose::STANDARD
            .encode(zip)
            .bytes(),
    );
    for line in after {
        stream.extend(line.bytes().chain([b'\n']));
    }
    stream.extend(b"{\"eof\": true}\n");
    stream
}

/// The issue's attack: a symlink `job_events/1-pwn.json -> victim` in the artifacts, then
/// an event with counter 1 and uuid `pwn`.
fn symlink_stream(victim: &Path) -> Vec<u8> {
    let target = victim.to_string_lossy().into_owned();
    let zip = raw_zip(&[
        RawEntry::stored("rc", b"0", 0o100600),
        RawEntry::stored("status", b"successful", 0o100600),
        RawEntry::stored("job_events/1-pwn.json", target.as_bytes(), 0o120777),
    ]);
    let pwn =
        r#"{"uuid": "pwn", "counter": 1, "stdout": "", "event": "verbose", "kube": "config"}"#;
    worker_stream(&[OSC_EVENT], &zip, &[pwn])
}

/// 3.9 MB of zip that inflates to 4 GB, between `rc` and `status`.
fn bomb_stream() -> Vec<u8> {
    let size = 1 + 258 * 15_503_875;
    let bomb = deflate_zeros(size);
    let zip = raw_zip(&[
        RawEntry::stored("rc", b"0", 0o100600),
        RawEntry {
            name: "stdout",
            method: 8,
            data: &bomb,
            declared: u32::try_from(size).unwrap(),
            crc: 0,
            mode: 0o100600,
        },
        RawEntry::stored("status", b"successful", 0o100600),
    ]);
    worker_stream(&[], &zip, &[])
}

struct Setup {
    mesh: Mesh,
    peer: String,
    identity: PathBuf,
}

/// node1 whose ansible-runner answers `pwn.yml` with the symlink stream and `bomb.yml` with
/// the bomb; it trusts the client's key and lets it run ansible-runner.
fn setup() -> Setup {
    let mut mesh = Mesh::new();
    let identity = mesh.path("client/identity.key");
    std::fs::create_dir_all(identity.parent().unwrap()).unwrap();
    let out = warren(&["keygen", "--out", identity.to_str().unwrap()]);
    let client = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let victim = mesh.path("client/.bashrc");
    std::fs::write(&victim, "# the user's shell setup\n").unwrap();
    std::fs::write(mesh.path("pwn.stream"), symlink_stream(&victim)).unwrap();
    std::fs::write(mesh.path("bomb.stream"), bomb_stream()).unwrap();
    let runner = mesh.path("hostile-runner");
    let script = format!(
        "#!/bin/sh\n\
         case \"$1\" in\n\
         --version) echo 2.4.3 ;;\n\
         worker)\n\
           [ \"$2\" = --help ] && {{ echo 'usage: worker --private-data-dir DIR'; exit 0; }}\n\
           read -r kwargs; /bin/cat >/dev/null\n\
           case \"$kwargs\" in\n\
             *bomb.yml*) exec /bin/cat {bomb} ;;\n\
             *) exec /bin/cat {pwn} ;;\n\
           esac ;;\n\
         *) exit 2 ;;\n\
         esac\n",
        bomb = mesh.path("bomb.stream").display(),
        pwn = mesh.path("pwn.stream").display(),
    );
    std::fs::write(&runner, script).unwrap();
    std::fs::set_permissions(&runner, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node1 = mesh.identity("node1");
    let extra = [
        "--ansible-runner".to_owned(),
        runner.display().to_string(),
        "--trust".to_owned(),
        client.clone(),
        "--allow-work".to_owned(),
        format!("ansible-runner={client}"),
    ];
    let index = mesh.start(&node1, &extra);
    crate::support::wait_for("node1 to offer ansible-runner", || {
        let status = mesh.status(index)?;
        (status["WorkTypes"][0]["WorkType"] == "ansible-runner").then_some(())
    });
    let peer = format!("receptor://{}", mesh.node(index).addr());
    Setup {
        mesh,
        peer,
        identity,
    }
}

impl Setup {
    /// A private data dir with `pwn.yml` and `bomb.yml` (the client checks they exist).
    fn pdd(&self) -> PathBuf {
        let pdd = self.mesh.path("pdd");
        std::fs::create_dir_all(pdd.join("project")).unwrap();
        for play in ["pwn.yml", "bomb.yml"] {
            std::fs::write(pdd.join("project").join(play), "- hosts: all\n").unwrap();
        }
        pdd
    }

    /// `warren run PDD -p PLAYBOOK -i IDENT --via-receptor node1` as the user runs it.
    fn run(&self, playbook: &str, ident: &str, env: &[(&str, &str)]) -> Output {
        let pdd = self.pdd();
        Command::new(warren_bin())
            .args(["run", pdd.to_str().unwrap(), "-p", playbook, "-i", ident])
            .args(["--via-receptor", "node1", "--receptor-peer", &self.peer])
            .env_clear()
            .env("HOME", self.mesh.path("client"))
            .env("WARREN_IDENTITY", &self.identity)
            .env("PATH", "/usr/bin:/bin")
            .envs(env.iter().copied())
            .output()
            .unwrap()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes of regular files under `dir`, not following symlinks.
fn bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let meta = path.symlink_metadata().unwrap();
            if meta.is_dir() {
                bytes_on_disk(&path)
            } else if meta.is_file() {
                meta.len()
            } else {
                0
            }
        })
        .sum()
}

#[test]
fn a_hostile_worker_cannot_write_outside_the_artifacts_or_into_the_terminal() {
    let setup = setup();
    let out = setup.run("pwn.yml", "pwn", &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(!out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    assert!(
        stderr.contains("job_events/1-pwn.json") && stderr.contains("symlink"),
        "{stderr}"
    );
    let victim = std::fs::read_to_string(setup.mesh.path("client/.bashrc")).unwrap();
    assert_eq!(victim, "# the user's shell setup\n");
    let artifacts = setup.mesh.path("pdd/artifacts/pwn");
    assert!(
        artifacts
            .join("job_events/1-pwn.json")
            .symlink_metadata()
            .is_err()
    );
    let note = std::fs::read_to_string(artifacts.join("warren-incomplete.txt")).unwrap();
    assert!(note.contains("1-pwn.json"), "{note}");

    // The first event's text reached the terminal with its colour and nothing else.
    assert!(
        stdout.contains("\x1b[0;32mok: [localhost]\x1b[0m"),
        "{stdout:?}"
    );
    assert!(
        !stdout.contains("\x1b]") && !stdout.contains("\x1b[2J"),
        "{stdout:?}"
    );
    assert!(!stderr.contains('\x1b'), "{stderr:?}");
}

#[test]
fn a_zip_bomb_from_a_worker_is_refused_before_it_fills_the_disk() {
    let setup = setup();
    let out = setup.run("bomb.yml", "bomb", &[]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{out:?}\n{}", setup.mesh.logs());
    assert!(
        stderr.contains("--artifacts-max-bytes") && stderr.contains("stdout"),
        "{stderr}"
    );
    let artifacts = setup.mesh.path("pdd/artifacts/bomb");
    assert!(
        bytes_on_disk(&artifacts) < 1 << 20,
        "{}",
        bytes_on_disk(&artifacts)
    );
    assert_eq!(
        std::fs::read_to_string(artifacts.join("status")).unwrap(),
        "successful"
    );
    let note = std::fs::read_to_string(artifacts.join("warren-incomplete.txt")).unwrap();
    assert!(note.contains("stdout"), "{note}");

    // The caps are the user's to set: here the environment lowers the zip size cap.
    let out = setup.run("bomb.yml", "small", &[("WARREN_ARTIFACTS_MAX_ZIP", "1M")]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        stderr.contains("artifacts zip size cap of 1048576 bytes")
            && stderr.contains("--artifacts-max-zip"),
        "{stderr}"
    );
}
