//! The control socket against another local user: a squatted socket directory is refused
//! by the node, and a socket served by another user is refused by the client before it
//! sends anything (the tests run as root, and play the other user as uid 65534, `nobody`).

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{Mesh, wait_for, warren_bin};

/// The other local user.
const NOBODY: u32 = 65534;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `warren node` for `mesh`'s key `a`, with `args` and `env`, run until it exits or is
/// ready; returns its output if it exited.
fn node(mesh: &Mesh, key: &Path, args: &[&str], env: &[(&str, &Path)]) -> Option<Output> {
    let ready = mesh.path("a.ready");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(warren_bin())
        .args(["node", "--id", "a", "--key", key.to_str().unwrap()])
        .args(["--data-dir", mesh.path("a-data").to_str().unwrap()])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            ready.to_str().unwrap(),
        ])
        .args(args)
        .env_remove("WARREN_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for("the node to exit or be ready", || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(true);
        }
        ready.exists().then_some(false)
    });
    if exited {
        return Some(child.wait_with_output().unwrap());
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

fn chown(path: &Path, uid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(uid)).expect("chown (the tests run as root)");
}

#[test]
fn a_squatted_socket_directory_is_refused_by_the_node() {
    let mesh = Mesh::new();
    let key = mesh.identity("a").key;

    // The default path under XDG_RUNTIME_DIR, where another user made `warren/` first.
    let runtime = mesh.path("run");
    std::fs::create_dir_all(runtime.join("warren")).unwrap();
    chown(&runtime.join("warren"), NOBODY);
    let out = node(&mesh, &key, &[], &[("XDG_RUNTIME_DIR", &runtime)]).expect("refused");
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("run/warren")
            && err.contains("belongs to uid 65534")
            && err.contains("remove it"),
        "{err}"
    );
    assert!(
        std::fs::read_dir(runtime.join("warren"))
            .unwrap()
            .next()
            .is_none()
    );

    // A directory anyone may write to, and a symlink that could be re-pointed.
    let open = mesh.path("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let real = mesh.path("real");
    std::fs::create_dir(&real).unwrap();
    let link = mesh.path("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    for (dir, why) in [(&open, "chmod go-w"), (&link, "symlink")] {
        let socket = dir.join("c.sock");
        let out = node(
            &mesh,
            &key,
            &["--control-socket", socket.to_str().unwrap()],
            &[],
        )
        .expect("refused");
        let err = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains(dir.to_str().unwrap()) && err.contains(why),
            "{err}"
        );
        assert!(!socket.exists() && !real.join("c.sock").exists());
    }
}

#[test]
fn a_root_node_without_a_runtime_dir_starts_though_another_user_made_tmp_warren_0_first() {
    // This stop's review: any local user (or a detached job that outlived its node) could
    // make /tmp/warren-0 first, and a restarted root node then refused to start. In a
    // mount namespace of the node's own: a fresh /run, and a directory of uid 65534 at
    // /tmp/warren-0 (bind-mounted there, so nothing of the host's changes).
    let mesh = Mesh::new();
    let key = mesh.identity("a").key;
    let squat = mesh.path("squat");
    std::fs::create_dir(&squat).unwrap();
    chown(&squat, NOBODY);
    let setup = format!(
        "mount -t tmpfs -o mode=0755 tmpfs /run && mkdir -p -m 0700 /tmp/warren-0 && \
         mount --bind {} /tmp/warren-0 && exec \"$@\"",
        squat.display()
    );
    let ready = mesh.path("a.ready");
    let mut child = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            &setup,
            "sh",
        ])
        .arg(warren_bin())
        .args(["node", "--id", "a", "--key", key.to_str().unwrap()])
        .args(["--data-dir", mesh.path("a-data").to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .args(["--ready-file", ready.to_str().unwrap()])
        .env_remove("WARREN_SOCKET")
        .env_remove("XDG_RUNTIME_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_for("the node to exit or be ready", || {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(true);
        }
        ready.exists().then_some(false)
    });
    if exited {
        let out = child.wait_with_output().unwrap();
        panic!("the node did not start: {}", text(&out.stderr));
    }
    // The node's own view of the file system, through its /proc root.
    let root = PathBuf::from(format!("/proc/{}/root", child.id()));
    let dir = std::fs::symlink_metadata(root.join("run/warren"));
    let socket = std::fs::symlink_metadata(root.join("run/warren/control.sock"));
    let squatted = std::fs::read_dir(&squat).unwrap().count();
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let dir = dir.unwrap_or_else(|e| panic!("no /run/warren: {e}\n{}", text(&out.stderr)));
    assert_eq!((dir.uid(), dir.mode() & 0o7777), (0, 0o700));
    let socket = socket.unwrap();
    assert!(socket.file_type().is_socket(), "{socket:?}");
    assert_eq!(socket.mode() & 0o777, 0o600);
    assert_eq!(squatted, 0, "the node used the squatted directory");
}

#[test]
fn the_default_socket_directory_is_made_private_and_used() {
    let mesh = Mesh::new();
    let key = mesh.identity("a").key;
    let runtime = mesh.path("run");
    std::fs::create_dir(&runtime).unwrap();
    let env = [("XDG_RUNTIME_DIR", runtime.as_path())];
    assert!(node(&mesh, &key, &[], &env).is_none(), "the node started");
    let dir = std::fs::symlink_metadata(runtime.join("warren")).unwrap();
    assert_eq!(dir.mode() & 0o7777, 0o700);
    let socket = std::fs::symlink_metadata(runtime.join("warren/control.sock")).unwrap();
    assert_eq!(socket.mode() & 0o777, 0o600);
    let left: Vec<_> = std::fs::read_dir(runtime.join("warren"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["control.sock"], "no bind leftovers");
}

/// A "control socket" served by uid 65534 at `dir/control.sock`: it greets like a node and
/// logs, per connection, the bytes it received.
struct Impostor {
    child: std::process::Child,
    socket: PathBuf,
    log: PathBuf,
}

impl Impostor {
    fn start(mesh: &Mesh) -> Self {
        // nobody must reach its directory: the mesh dir is root's, traversable.
        std::fs::set_permissions(mesh.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let dir = mesh.path("impostor");
        std::fs::create_dir(&dir).unwrap();
        chown(&dir, NOBODY);
        let socket = dir.join("control.sock");
        let log = dir.join("received");
        let script = r#"
import os, socket, sys
path, log = sys.argv[1], sys.argv[2]
server = socket.socket(socket.AF_UNIX)
server.bind(path)
os.chmod(path, 0o777)
server.listen()
open(log + ".ready", "w").close()
for n in range(2):
    conn, _ = server.accept()
    conn.settimeout(5)
    got = b""
    try:
        conn.sendall(b"Receptor Control, node impostor\n")
        while b"\n" not in got:
            data = conn.recv(65536)
            if not data:
                break
            got += data
    except OSError:
        pass
    with open(log, "a") as f:
        f.write("%d:%r\n" % (n, got))
    conn.close()
"#;
        let child = Command::new(python3())
            .args([
                "-c",
                script,
                socket.to_str().unwrap(),
                log.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .uid(NOBODY)
            .gid(NOBODY)
            .spawn()
            .expect("python3 as nobody (the tests run as root)");
        let ready = dir.join("received.ready");
        wait_for("the impostor's socket", || ready.exists().then_some(()));
        Self { child, socket, log }
    }

    fn received(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Impostor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_client_refuses_a_socket_served_by_another_user() {
    let mesh = Mesh::new();
    let impostor = Impostor::start(&mesh);
    let socket = impostor.socket.to_str().unwrap();
    let secret = mesh.path("payload");
    std::fs::write(&secret, "ansible_password: hunter2\n").unwrap();
    let out = Command::new(warren_bin())
        .args([
            "work",
            "submit",
            "cat",
            "--payload",
            secret.to_str().unwrap(),
        ])
        .args(["--socket", socket])
        .env_remove("WARREN_SOCKET_OWNER")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        err.contains("served by uid 65534") && err.contains("--socket-owner 65534"),
        "{err}"
    );
    wait_for("the impostor to log the first connection", || {
        impostor.received().contains("0:").then_some(())
    });
    assert_eq!(impostor.received(), "0:b''\n", "the impostor got something");

    // Named on purpose, the other user's node is used.
    let out = Command::new(warren_bin())
        .args(["status", "--socket", socket, "--socket-owner", "65534"])
        .output()
        .unwrap();
    assert!(!text(&out.stderr).contains("served by uid"), "{out:?}");
    wait_for("the impostor to log the second connection", || {
        impostor.received().contains("1:").then_some(())
    });
    assert!(
        impostor.received().contains("status"),
        "{}",
        impostor.received()
    );
}

/// A python3 the other user can run (a per-user shim such as pyenv's may not be).
fn python3() -> &'static str {
    ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("python3")
}
