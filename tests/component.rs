//! `warren component`: keygen, sign and verify as separate processes, as a user would.

use std::path::{Path, PathBuf};

use crate::support::{Mesh, warren};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const MANIFEST_JSON: &str = r#"{"name":"echo","version":"1.2.0","work_types":["echo"],"capabilities":{"programs":["ansible-playbook"],"env":["HOME"]}}"#;

fn leb128(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

/// A minimal component whose nested core module carries a `warren-manifest` section (the
/// same shape as the unit tests in `host::signing`).
fn component_bytes(manifest_json: &str) -> Vec<u8> {
    let name = b"warren-manifest";
    let mut custom = Vec::new();
    leb128(name.len(), &mut custom);
    custom.extend_from_slice(name);
    custom.extend_from_slice(manifest_json.as_bytes());
    let mut module = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0];
    leb128(custom.len(), &mut module);
    module.extend(custom);
    let mut component = vec![0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00, 1];
    leb128(module.len(), &mut component);
    component.extend(module);
    component
}

/// Makes a signing key with `warren component keygen`; returns its file and token.
fn keygen(mesh: &Mesh, name: &str) -> (PathBuf, String) {
    let key = mesh.path(name);
    let out = warren(&["component", "keygen", "--out", s(&key)]);
    assert!(out.status.success(), "{out:?}");
    let token = text(&out.stdout).lines().last().unwrap().to_owned();
    assert!(token.starts_with("ed25519:"), "{token}");
    (key, token)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A signed component: (component path, signer token).
fn signed_component(mesh: &Mesh) -> (PathBuf, String) {
    let (key, token) = keygen(mesh, "signer.key");
    let wasm = mesh.path("echo.wasm");
    std::fs::write(&wasm, component_bytes(MANIFEST_JSON)).unwrap();
    let out = warren(&["component", "sign", "--key", s(&key), s(&wasm)]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("signed echo 1.2.0"), "{out:?}");
    assert!(mesh.path("echo.wasm.sig").exists());
    (wasm, token)
}

#[test]
fn signed_component_verifies_and_shows_its_manifest() {
    let mesh = Mesh::new();
    let (wasm, token) = signed_component(&mesh);
    let out = warren(&["component", "verify", s(&wasm), "--trust", &token]);
    assert!(out.status.success(), "{out:?}");
    let shown = text(&out.stdout);
    for expected in ["echo", "1.2.0", "ansible-playbook", "HOME", &token, "Z\n"] {
        assert!(
            shown.contains(expected),
            "{expected:?} missing from:\n{shown}"
        );
    }
}

#[test]
fn tampered_component_fails_verification_naming_the_hash() {
    let mesh = Mesh::new();
    let (wasm, token) = signed_component(&mesh);
    let mut bytes = std::fs::read(&wasm).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&wasm, bytes).unwrap();
    let out = warren(&["component", "verify", s(&wasm), "--trust", &token]);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(err.contains("sha256") || err.contains("hash"), "{err}");
}

#[test]
fn untrusted_signer_fails_verification() {
    let mesh = Mesh::new();
    let (wasm, _) = signed_component(&mesh);
    let (_, other) = keygen(&mesh, "other.key");
    let out = warren(&["component", "verify", s(&wasm), "--trust", &other]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("not trusted"), "{out:?}");
}

#[test]
fn verify_without_trust_or_with_a_link_key_fails_clearly() {
    let mesh = Mesh::new();
    let (wasm, _) = signed_component(&mesh);
    let out = warren(&["component", "verify", s(&wasm)]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("--trust"), "{out:?}");

    let link = mesh.identity("node1").token;
    let out = warren(&["component", "verify", s(&wasm), "--trust", &link]);
    assert!(!out.status.success(), "{out:?}");
    assert!(text(&out.stderr).contains("link key"), "{out:?}");
}

#[test]
fn sign_without_embedded_manifest_names_the_missing_flags() {
    let mesh = Mesh::new();
    let (key, token) = keygen(&mesh, "signer.key");
    let wasm = mesh.path("bare.wasm");
    std::fs::write(&wasm, [0x00, 0x61, 0x73, 0x6d, 0x0d, 0x00, 0x01, 0x00]).unwrap();
    let out = warren(&["component", "sign", "--key", s(&key), s(&wasm)]);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    for flag in ["--name", "--version", "--work-type"] {
        assert!(err.contains(flag), "{flag} missing from: {err}");
    }

    let sig = mesh.path("bare.sig");
    let flags = [
        "--name",
        "bare",
        "--version",
        "0.1.0",
        "--work-type",
        "noop",
    ];
    let mut args = vec![
        "component",
        "sign",
        "--key",
        s(&key),
        s(&wasm),
        "--out",
        s(&sig),
    ];
    args.extend(flags);
    assert!(warren(&args).status.success());
    let out = warren(&[
        "component",
        "verify",
        s(&wasm),
        "--signature",
        s(&sig),
        "--trust",
        &token,
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("noop"), "{out:?}");
}
