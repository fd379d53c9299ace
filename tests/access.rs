//! Who may do what across the mesh, as the peers see it: a leaf that one relay trusts (the
//! attacker of the zero-trust review) tries to read, release and submit work on node1 and
//! to use its control service; it learns nothing of others' units and gets refusals that
//! name the flag that would allow it. Signed work is required where a node asks for it.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpListener;

use crate::support::{Identity, Mesh, peer, trust, wait_for, warren};
use warren::id::{NodeId, ServiceName};
use warren::keys::LinkKeypair;
use warren::mesh::driver::{self, DriverConfig, MeshHandle, PeerTarget};
use warren::mesh::node::MeshConfig;
use warren::mesh::route::Cost;
use warren::mesh::trust::TrustEntry;
use warren::work::UnitId;
use warren::work::client::{ClientError, SubmitRequest, WorkClient};
use warren::work::protocol::WorkRefusal;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// controller -> relay -> node1 (node1 lets the controller run `cat`); the relay also
/// trusts the leaf `intruder`, whose key file is returned.
struct Line {
    mesh: Mesh,
    controller: usize,
    relay_addr: String,
    intruder: Identity,
    relay: Identity,
}

fn line(node1_extra: &[&str], controller_extra: &[&str]) -> Line {
    let mut mesh = Mesh::new();
    let ids: Vec<Identity> = ["controller", "relay", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let intruder = mesh.identity("intruder");
    let all: Vec<&Identity> = ids.iter().collect();
    let mut extra: Vec<String> = ["--work-type", "cat=/bin/cat", "--no-ansible-runner"]
        .map(str::to_owned)
        .to_vec();
    extra.extend(node1_extra.iter().map(|s| (*s).to_owned()));
    let node1 = mesh.start(&ids[2], &[trust(&all), extra].concat());
    let addr = mesh.node(node1).addr().to_owned();
    let relay_trust = trust(&[&ids[0], &ids[1], &ids[2], &intruder]);
    let relay = mesh.start(&ids[1], &[relay_trust, peer(&addr)].concat());
    let relay_addr = mesh.node(relay).addr().to_owned();
    let controller_extra: Vec<String> = controller_extra.iter().map(|s| (*s).to_owned()).collect();
    let controller = mesh.start(
        &ids[0],
        &[trust(&all), peer(&relay_addr), controller_extra].concat(),
    );
    mesh.wait_route(controller, "node1", Some("relay"));
    wait_for("node1 to offer cat", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"][0]["WorkType"] == "cat").then_some(())
    });
    Line {
        mesh,
        controller,
        relay_addr,
        intruder,
        relay: ids[1].clone(),
    }
}

/// The intruder as a node built from the library, linked to the relay.
async fn intruder(line: &Line) -> MeshHandle {
    let keys = LinkKeypair::load(&line.intruder.key).unwrap();
    let trust = vec![TrustEntry {
        key: line.relay.token.parse().unwrap(),
        node: Some(NodeId::new("relay").unwrap()),
    }];
    let mut config = MeshConfig::new(
        "intruder".parse().unwrap(),
        keys,
        trust.into(),
        warren::clock::now_ms(),
    );
    // It pins only the relay, so it knows node1 first-seen; an intruder opens streams to
    // whatever it likes (its node is its own): node1's refusals are what is checked here.
    config.first_seen_targets = true;
    let (host, port) = line.relay_addr.rsplit_once(':').unwrap();
    let relay = PeerTarget {
        host: host.to_owned(),
        port: port.parse().unwrap(),
        cost: Cost::DEFAULT,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (mesh, _) = driver::start(
        config,
        DriverConfig::default(),
        vec![(listener, Cost::DEFAULT)],
        vec![relay],
    );
    let node1 = NodeId::new("node1").unwrap();
    assert!(
        mesh.wait_reachable(&node1, Duration::from_secs(20))
            .await
            .unwrap()
    );
    mesh
}

/// Submits a `cat` unit for node1 at the controller; returns its id there (RemoteUnitId).
fn submit_at_controller(line: &Line, payload: &str) -> UnitId {
    let file = line.mesh.path("payload.txt");
    std::fs::write(&file, payload).unwrap();
    let out = line.mesh.ctl(
        line.controller,
        &[
            "work",
            "submit",
            "cat",
            "--node",
            "node1",
            "--payload",
            file.to_str().unwrap(),
            "-f",
        ],
    );
    assert!(out.status.success(), "{out:?}\n{}", line.mesh.logs());
    assert_eq!(text(&out.stdout), payload);
    let listed = line.mesh.ctl(line.controller, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let remote = units
        .as_object()
        .unwrap()
        .values()
        .find_map(|u| u["ExtraData"]["RemoteUnitID"].as_str())
        .expect("the controller's mirror names the unit on node1");
    remote.parse().unwrap()
}

#[test]
fn a_leaf_learns_nothing_of_others_units_and_is_refused_with_the_flag_to_allow_it() {
    let line = line(&["--allow-work", "cat=controller"], &[]);
    let theirs = submit_at_controller(&line, "the controller's secret output\n");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mesh = intruder(&line).await;
        let client = WorkClient::new(mesh.clone());
        let node1 = NodeId::new("node1").unwrap();
        // Another submitter's unit: unknown, whatever the intruder asks.
        let mut sink = Vec::new();
        let mut offset = 0;
        let read = client
            .follow_once(&node1, theirs, &mut offset, &mut sink)
            .await;
        assert!(
            matches!(
                read,
                Err(ClientError::Refused(WorkRefusal::UnknownUnit { .. }))
            ),
            "{read:?}"
        );
        assert!(sink.is_empty(), "no byte of another's output");
        assert!(matches!(
            client.status(&node1, theirs).await,
            Err(ClientError::Refused(WorkRefusal::UnknownUnit { .. }))
        ));
        assert!(matches!(
            client.release(&node1, theirs).await,
            Err(ClientError::Refused(WorkRefusal::UnknownUnit { .. }))
        ));
        // Submitting is refused, naming the exact flag.
        let request = SubmitRequest {
            work_type: "cat".into(),
            params: Default::default(),
            signature: None,
        };
        let refused = client
            .submit(&node1, request, &mut &b"run me"[..], |_| {})
            .await
            .unwrap_err();
        let token = line.intruder.token.clone();
        assert!(
            refused
                .to_string()
                .contains(&format!("start node1 with `--allow-work cat={token}`")),
            "{refused}"
        );
        // So is the control service (which would give it everything).
        let control = ServiceName::new("control").unwrap();
        let stream = mesh.connect(&node1, &control).await.unwrap();
        let mut first = String::new();
        BufReader::new(stream).read_line(&mut first).await.unwrap();
        assert!(
            first.starts_with("ERROR: node node1 does not allow intruder")
                && first.contains(&format!("`--allow-control {token}`")),
            "{first}"
        );
        mesh.shutdown().await;
    });
    // The unit is still there for its owner, and node1 logged each refusal with the identity.
    let out = line.mesh.ctl(line.controller, &["work", "list", "--json"]);
    assert!(text(&out.stdout).contains(&theirs.to_string()));
    let log = line.mesh.logs();
    assert!(
        log.contains("work request refused") && log.contains("peer=intruder"),
        "{log}"
    );
}

#[test]
fn a_node_that_requires_signed_work_runs_only_what_a_trusted_key_signed() {
    let keys = tempfile::tempdir().unwrap();
    let signer = keys.path().join("work-signer.key");
    let out = warren(&["component", "keygen", "--out", signer.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let token = text(&out.stdout).trim().to_owned();
    let signing = ["--work-signing-key", signer.to_str().unwrap()];
    let line = line(
        &[
            "--allow-work",
            "cat=controller",
            "--require-signed-work",
            "--work-verify-key",
            &token,
        ],
        &signing,
    );
    // receptorctl's --signwork: signed by the controller's key, accepted.
    let file = line.mesh.path("p.txt");
    std::fs::write(&file, "signed payload\n").unwrap();
    let socket = line.mesh.node(line.controller).socket.display().to_string();
    let submit = |sign: bool| {
        let mut args = vec![
            "--socket", &socket, "work", "submit", "cat", "--node", "node1",
        ];
        if sign {
            args.push("--signwork");
        }
        args.extend(["--payload", file.to_str().unwrap(), "-f"]);
        std::process::Command::new(crate::receptorctl::venv_bin().join("receptorctl"))
            .args(&args)
            .output()
            .unwrap()
    };
    let signed = submit(true);
    assert!(signed.status.success(), "{signed:?}\n{}", line.mesh.logs());
    assert_eq!(text(&signed.stdout), "signed payload\n");
    // Unsigned: refused by node1, and the unit's detail says why.
    let unsigned = submit(false);
    let said = format!("{}{}", text(&unsigned.stdout), text(&unsigned.stderr));
    assert!(!unsigned.status.success(), "{said}");
    assert!(said.contains("node node1 requires signed work"), "{said}");
}
