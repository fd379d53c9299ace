//! The command line's own behaviour: keys, config errors, clients without a node.

use std::os::unix::fs::PermissionsExt;

use crate::support::{Mesh, warren};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn keygen_writes_a_private_key_and_prints_its_token_last() {
    let mesh = Mesh::new();
    let key = mesh.path("n.key");
    let key_arg = key.to_str().unwrap();
    let out = warren(&["keygen", "--out", key_arg]);
    assert!(out.status.success(), "{out:?}");
    let token = text(&out.stdout).lines().last().unwrap().to_owned();
    assert!(token.starts_with("x25519:"), "{token}");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let again = warren(&["keygen", "--out", key_arg]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );

    let shown = warren(&["keygen", "--show", key_arg]);
    assert_eq!(text(&shown.stdout).trim(), token);
    let forced = warren(&["keygen", "--out", key_arg, "--force"]);
    assert!(forced.status.success());
    assert_ne!(text(&forced.stdout).trim(), token);
}

#[test]
fn malformed_config_names_the_file_and_key() {
    let mesh = Mesh::new();
    let config = mesh.path("node.toml");
    std::fs::write(
        &config,
        "[node]\nid = \"n1\"\ndata-dir = \"d\"\nkey-file = \"k\"\ncolour = 1\n",
    )
    .unwrap();
    let out = warren(&["node", "--config", config.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("node.toml") && err.contains("colour"), "{err}");
}

#[test]
fn bad_key_file_is_a_clear_error() {
    let mesh = Mesh::new();
    let key = mesh.path("bad.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let data = mesh.path("data");
    let sock = mesh.path("s.sock");
    let out = warren(&[
        "node",
        "--id",
        "n",
        "--key",
        key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--control-socket",
        sock.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("bad.key") && err.contains("not a warren private key"),
        "{err}"
    );
}

#[test]
fn unreachable_peer_is_retried_while_the_node_keeps_running() {
    let mut mesh = Mesh::new();
    let a = mesh.identity("a");
    // Port 1 on loopback refuses; the name does not resolve at all.
    let extra = [
        "--peer",
        "127.0.0.1:1",
        "--peer",
        "no-such-host.invalid:8888",
    ]
    .map(String::from);
    let ia = mesh.start(&a, &extra);
    crate::support::wait_for("dial failures in the log", || {
        let log = mesh.node(ia).log_text();
        (log.matches("dial failed").count() >= 3).then_some(())
    });
    assert!(mesh.node_mut(ia).is_running());
    assert!(mesh.status(ia).is_some());
}

#[test]
fn clients_explain_a_missing_node() {
    let mesh = Mesh::new();
    let sock = mesh.path("nothing.sock");
    let out = warren(&["status", "--socket", sock.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("nothing.sock"), "{err}");
}

#[test]
fn too_long_control_socket_path_is_refused_clearly() {
    let mut mesh = Mesh::new();
    let a = mesh.identity("a");
    let long = format!("/tmp/{}/c.sock", "x".repeat(120));
    let data = mesh.path("data");
    let out = warren(&[
        "node",
        "--id",
        "a",
        "--key",
        a.key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "--control-socket",
        &long,
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("too long") || err.contains("108") || err.contains("107"),
        "{err}"
    );
    let _ = &mut mesh;
}
