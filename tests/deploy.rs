//! Deploying a signed component across two hops: controller -> relay -> node1.

use std::path::{Path, PathBuf};

use crate::support::{Identity, Mesh, peer, trust, wait_for, warren};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Appends a custom section to a component: a different build with the same behaviour.
fn variant(component: &[u8], tag: &str) -> Vec<u8> {
    let name = b"warren-test-variant";
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(tag.as_bytes());
    let mut out = component.to_vec();
    out.push(0);
    out.push(u8::try_from(body.len()).unwrap());
    out.extend(body);
    out
}

struct Line {
    mesh: Mesh,
    signer_key: PathBuf,
    controller: usize,
    node1: usize,
}

/// controller -> relay -> node1; node1 offers `cat` and trusts one component signer.
fn line() -> Line {
    let mut mesh = Mesh::new();
    let signer_key = mesh.path("signer.key");
    let out = warren(&["component", "keygen", "--out", s(&signer_key)]);
    assert!(out.status.success(), "{out:?}");
    let signer = text(&out.stdout).trim().to_owned();
    let ids: Vec<Identity> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let extra = [
        "--work-type".to_owned(),
        "cat=/bin/cat".to_owned(),
        "--signer".to_owned(),
        signer,
        "--no-ansible-runner".to_owned(),
    ];
    let node1 = mesh.start(&ids[2], &[trust(&all), extra.to_vec()].concat());
    let addr = mesh.node(node1).addr().to_owned();
    let relay = mesh.start(&ids[1], &[trust(&all), peer(&addr)].concat());
    let addr = mesh.node(relay).addr().to_owned();
    let controller = mesh.start(&ids[0], &[trust(&all), peer(&addr)].concat());
    mesh.wait_route(controller, "node1", Some("relay"));
    wait_for("node1 to offer cat", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"][0]["WorkType"] == "cat").then_some(())
    });
    Line {
        mesh,
        signer_key,
        controller,
        node1,
    }
}

fn write_signed(line: &Line, name: &str, bytes: &[u8], version: &str, key: &Path) -> PathBuf {
    let path = line.mesh.path(name);
    std::fs::write(&path, bytes).unwrap();
    // The node runs it for `cat` only: ask for no program beyond what that grants.
    let args = [
        "component",
        "sign",
        "--key",
        s(key),
        s(&path),
        "--version",
        version,
    ];
    let out = warren(&[&args[..], &["--program", "*"]].concat());
    assert!(out.status.success(), "sign: {out:?}");
    path
}

#[test]
fn deploy_over_two_hops_switches_the_work_type_and_refusals_change_nothing() {
    let line = line();
    let guest = warren::host::builtin::GUEST_RUNNER;
    let v2 = write_signed(
        &line,
        "v2.wasm",
        &variant(guest, "2"),
        "2.0.0",
        &line.signer_key,
    );

    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&v2), "--node", "node1"],
    );
    let said = text(&out.stdout);
    assert!(
        out.status.success(),
        "deploy: {out:?}\n{}",
        line.mesh.logs()
    );
    assert!(
        said.contains("node1: guest-runner 2.0.0") && said.contains("now serves cat"),
        "{said}"
    );
    let status = line.mesh.status(line.node1).unwrap();
    let cat = &status["WorkTypes"][0];
    assert_eq!(cat["Version"], "2.0.0");
    assert!(
        cat["Signer"].as_str().unwrap().starts_with("ed25519:"),
        "{cat}"
    );

    // A tampered component: refused with the reason, and node1 keeps 2.0.0.
    let mut tampered = std::fs::read(&v2).unwrap();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    std::fs::write(&v2, &tampered).unwrap();
    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&v2), "--node", "node1"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("sha256"),
        "{}",
        text(&out.stderr)
    );

    // Signed by a key node1 does not trust: refused, nothing changes.
    let stranger = line.mesh.path("stranger.key");
    assert!(
        warren(&["component", "keygen", "--out", s(&stranger)])
            .status
            .success()
    );
    let v3 = write_signed(&line, "v3.wasm", &variant(guest, "3"), "3.0.0", &stranger);
    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&v3), "--node", "node1"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("not trusted"),
        "{}",
        text(&out.stderr)
    );
    // Asking for a program the work type does not grant: refused.
    let greedy = line.mesh.path("v4.wasm");
    std::fs::write(&greedy, variant(guest, "4")).unwrap();
    let key = s(&line.signer_key);
    let args = [
        "component",
        "sign",
        "--key",
        key,
        s(&greedy),
        "--program",
        "sh",
    ];
    assert!(warren(&args).status.success());
    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&greedy), "--node", "node1"],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("asks for program \"sh\""),
        "{}",
        text(&out.stderr)
    );

    let status = line.mesh.status(line.node1).unwrap();
    assert_eq!(status["WorkTypes"][0]["Version"], "2.0.0");
}
