//! Deploying a signed component across two hops: controller -> relay -> node1.

use std::path::{Path, PathBuf};

use sha2::Digest;

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
        "--work-type".to_owned(),
        "slow=/bin/sleep 2".to_owned(),
        "--signer".to_owned(),
        signer,
        "--no-ansible-runner".to_owned(),
        "--allow-deploy".to_owned(),
        "controller".to_owned(),
        "--allow-work".to_owned(),
        "*=controller".to_owned(),
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
    let deployed_sha = status["WorkTypes"][0]["Sha256"].clone();

    // A restart keeps the deployed component (verified again), not the configured one.
    let mut line = line;
    line.mesh.node_mut(line.node1).terminate();
    line.mesh.restart(line.node1);
    wait_for("node1 to offer cat again", || {
        let status = line.mesh.status(line.node1)?;
        (status["WorkTypes"][0]["WorkType"] == "cat").then_some(status)
    });
    let status = line.mesh.status(line.node1).unwrap();
    assert_eq!(status["WorkTypes"][0]["Version"], "2.0.0", "{status}");
    assert_eq!(status["WorkTypes"][0]["Sha256"], deployed_sha);

    // An older (properly signed) version cannot be rolled back in.
    let old = write_signed(
        &line,
        "v1.wasm",
        &variant(guest, "1"),
        "1.5.0",
        &line.signer_key,
    );
    line.mesh
        .wait_route(line.controller, "node1", Some("relay"));
    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&old), "--node", "node1"],
    );
    assert!(!out.status.success(), "{out:?}");
    assert!(
        text(&out.stderr).contains("version 1.5.0 is not newer than version 2.0.0"),
        "{}",
        text(&out.stderr)
    );
    let status = line.mesh.status(line.node1).unwrap();
    assert_eq!(status["WorkTypes"][0]["Version"], "2.0.0");

    old_world_components_are_refused_at_deploy_and_at_restart(line);
}

/// The `warren:worker` world this node runs, and an older one.
const WORLD: &str = "@0.2.0";
const OLD_WORLD: &str = "@0.1.1";

/// `component` as if built against the 0.1.1 world: every `warren:worker/...@0.2.0` name
/// it imports or exports says 0.1.1 (the same length, so the binary stays well formed).
fn built_against_old_world(component: &[u8]) -> Vec<u8> {
    let mut out = component.to_vec();
    let mut replaced = 0;
    let prefix = b"warren:worker/";
    let mut i = 0;
    while let Some(at) = out[i..].windows(prefix.len()).position(|w| w == prefix) {
        let start = i + at + prefix.len();
        let name_end = out[start..]
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'-'))
            .map_or(out.len(), |n| start + n);
        if out[name_end..].starts_with(WORLD.as_bytes()) {
            out[name_end..name_end + WORLD.len()].copy_from_slice(OLD_WORLD.as_bytes());
            replaced += 1;
        }
        i = name_end;
    }
    assert!(
        replaced >= 2,
        "the handler export and an import: {replaced}"
    );
    out
}

/// A component built against the 0.1.1 world (a real deploy before the job's parameters
/// were typed) is refused naming both world versions, and one kept from before an upgrade
/// is not restored at start: the configured handler serves the work type, and the log
/// says why.
fn old_world_components_are_refused_at_deploy_and_at_restart(mut line: Line) {
    let old = built_against_old_world(&variant(warren::host::builtin::GUEST_RUNNER, "5"));
    let path = write_signed(&line, "old-world.wasm", &old, "5.0.0", &line.signer_key);
    let out = line.mesh.ctl(
        line.controller,
        &["component", "deploy", s(&path), "--node", "node1"],
    );
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("built against warren:worker@0.1.1, but this node runs warren:worker@0.2.0")
            && err.contains("rebuild it"),
        "{err}"
    );
    let status = line.mesh.status(line.node1).unwrap();
    assert_eq!(status["WorkTypes"][0]["Version"], "2.0.0");

    // As an upgraded node finds it: the old-world component is what `cat` ran.
    let kept = line.mesh.path("node1-data/deployed");
    let sha: String = sha2::Sha256::digest(&old)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(kept.join(format!("{sha}.wasm")), &old).unwrap();
    std::fs::copy(
        format!("{}.sig", path.display()),
        kept.join(format!("{sha}.sig")),
    )
    .unwrap();
    std::fs::write(kept.join("active.json"), format!("{{\"cat\":\"{sha}\"}}")).unwrap();
    line.mesh.node_mut(line.node1).terminate();
    line.mesh.restart(line.node1);
    let status = wait_for("node1 to offer cat again", || {
        let status = line.mesh.status(line.node1)?;
        (status["WorkTypes"][0]["WorkType"] == "cat").then_some(status)
    });
    assert_ne!(status["WorkTypes"][0]["Version"], "5.0.0", "{status}");
    assert_eq!(status["WorkTypes"][0]["Signer"], "built-in", "{status}");
    let log = line.mesh.node(line.node1).log_text();
    assert!(
        log.contains("not restored") && log.contains("built against warren:worker@0.1.1"),
        "{log}"
    );
}

#[test]
fn remote_units_run_across_two_hops_and_a_deploy_switches_only_new_ones() {
    let line = line();
    let ctl = |args: &[&str]| line.mesh.ctl(line.controller, args);
    let on_node1 = || {
        let out = line.mesh.ctl(line.node1, &["work", "list", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    // Submitted at the controller, run on node1 two hops away: the output comes back.
    let payload = line.mesh.path("payload");
    std::fs::write(&payload, b"across the mesh\n").unwrap();
    let submit_cat = [
        "work",
        "submit",
        "cat",
        "--node",
        "node1",
        "--payload",
        s(&payload),
        "-f",
    ];
    let out = ctl(&submit_cat);
    assert!(out.status.success(), "{out:?}\n{}", line.mesh.logs());
    assert_eq!(text(&out.stdout), "across the mesh\n");

    // A long unit starts on the built-in component...
    let out = ctl(&["work", "submit", "slow", "--node", "node1"]);
    assert!(out.status.success(), "{out:?}");
    let slow = text(&out.stdout).trim().to_owned();
    wait_for("the slow unit to run on node1", || {
        let units = on_node1()?;
        let running = (units.as_object()?.values())
            .any(|u| u["WorkType"] == "slow" && u["StateName"] == "Running");
        running.then_some(())
    });

    // ...a new version is deployed meanwhile, and the next unit runs on it.
    let bytes = variant(warren::host::builtin::GUEST_RUNNER, "2");
    let v2 = write_signed(&line, "v2.wasm", &bytes, "2.0.0", &line.signer_key);
    let out = ctl(&["component", "deploy", s(&v2), "--node", "node1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(ctl(&submit_cat).status.success());

    // On node1 each unit records the component it ran on: the slow one kept the old.
    let builtin = env!("CARGO_PKG_VERSION");
    let version = |u: &serde_json::Value| {
        u["ExtraData"]["Component"]["Version"]
            .as_str()
            .map(str::to_owned)
    };
    wait_for("node1's units to finish", || {
        let units = on_node1()?;
        let units = units.as_object()?;
        let done = units.len() == 3 && units.values().all(|u| u["StateName"] == "Succeeded");
        let slow_old = (units.values())
            .any(|u| u["WorkType"] == "slow" && version(u).as_deref() == Some(builtin));
        let cats: Vec<Option<String>> = (units.values())
            .filter(|u| u["WorkType"] == "cat")
            .map(version)
            .collect();
        let new_cat = cats.contains(&Some("2.0.0".into())) && cats.contains(&Some(builtin.into()));
        (done && slow_old && new_cat).then_some(())
    });
    // The controller's mirror of the slow unit finished too.
    let out = ctl(&["work", "status", &slow, "--json"]);
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["StateName"], "Succeeded", "{status}");
}
