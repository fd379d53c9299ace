//! A relay in the middle: controller -> relay -> node1, where the relay is a mesh node run in
//! this test process from the library with a tap on everything its links decrypt. A `cat`
//! unit submitted at the controller for node1 carries a marker; the relay forwards it both
//! ways but never sees it in clear.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use warren::keys::{LinkKeypair, PublicKey};
use warren::mesh::driver::{self, DriverConfig, MeshHandle};
use warren::mesh::link::LinkId;
use warren::mesh::message::{Message, PacketBody, StreamKind};
use warren::mesh::node::MeshConfig;
use warren::mesh::route::Cost;
use warren::mesh::trust::{TrustEntry, TrustPolicy};

use crate::support::{Identity, Mesh, peer, trust, wait_for};

/// The in-process relay: its runtime, handle and tap.
struct Relay {
    runtime: tokio::runtime::Runtime,
    handle: MeshHandle,
    identity: Identity,
    addr: String,
    tap: mpsc::UnboundedReceiver<(LinkId, Bytes)>,
}

/// Starts node `relay` in this process, trusting `peers` (pinned), tapping its links.
fn start_relay(mesh: &Mesh, peers: &[&Identity]) -> Relay {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let keys = LinkKeypair::generate().unwrap();
    let identity = Identity {
        id: "relay".to_owned(),
        key: mesh.path("relay.key"),
        token: keys.public().to_string(),
    };
    let entries = peers
        .iter()
        .map(|p| TrustEntry {
            key: p.token.parse::<PublicKey>().unwrap(),
            node: Some(p.id.parse().unwrap()),
        })
        .collect::<Vec<_>>();
    let epoch_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let config = MeshConfig::new(
        "relay".parse().unwrap(),
        keys,
        TrustPolicy::from(entries),
        epoch_ms,
    );
    let (tx, tap) = mpsc::unbounded_channel();
    let (handle, addr) = runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let driver_config = DriverConfig {
            tap: Some(tx),
            ..DriverConfig::default()
        };
        let (handle, _task) = driver::start(
            config,
            driver_config,
            vec![(listener, Cost::DEFAULT)],
            vec![],
        );
        (handle, addr)
    });
    Relay {
        runtime,
        handle,
        identity,
        addr,
        tap,
    }
}

impl Relay {
    /// Every frame the relay's links decrypted so far.
    fn tapped(&mut self) -> Vec<Bytes> {
        let mut frames = Vec::new();
        while let Ok((_, frame)) = self.tap.try_recv() {
            frames.push(frame);
        }
        frames
    }

    fn stop(self) {
        self.runtime.block_on(self.handle.shutdown());
    }
}

/// A marker no frame contains by chance, and a payload made of it: every chunk a stream
/// could cut from the payload holds the marker whole.
fn marker_payload() -> (Vec<u8>, Vec<u8>) {
    let marker = format!("MARKER-{}-END", uuid_like()).into_bytes();
    let mut payload = Vec::new();
    while payload.len() < 256 * 1024 {
        payload.extend_from_slice(&marker);
        payload.push(b'\n');
    }
    (marker, payload)
}

fn uuid_like() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Bytes of sealed stream traffic the relay forwarded towards `dst`.
fn sealed_bytes_towards(frames: &[Message], dst: &str) -> usize {
    frames
        .iter()
        .filter_map(|m| match m {
            Message::Packet(p) if p.dst.as_str() == dst => match &p.body {
                PacketBody::Stream(sp) => match &sp.kind {
                    StreamKind::Sealed(b) => Some(b.len()),
                    StreamKind::Open { sealed, .. } => Some(sealed.len()),
                    _ => None,
                },
                _ => None,
            },
            _ => None,
        })
        .sum()
}

#[test]
fn relay_in_the_middle_forwards_a_payload_it_cannot_read() {
    let mut mesh = Mesh::new();
    let (controller, node1) = (mesh.identity("controller"), mesh.identity("node1"));
    let mut relay = start_relay(&mesh, &[&controller, &node1]);
    let extra = [
        trust(&[&relay.identity, &controller]),
        peer(&relay.addr),
        [
            "--work-type",
            "cat=/bin/cat",
            "--allow-work",
            "cat=controller",
        ]
        .map(str::to_owned)
        .to_vec(),
    ]
    .concat();
    let _n1 = mesh.start(&node1, &extra);
    let extra = [trust(&[&relay.identity, &node1]), peer(&relay.addr)].concat();
    let ic = mesh.start(&controller, &extra);
    mesh.wait_route(ic, "node1", Some("relay"));
    wait_for("node1's cat work type at the controller", || {
        let status = mesh.status(ic)?;
        let ads = status["Advertisements"].as_array()?;
        ads.iter()
            .any(|ad| ad["NodeID"] == "node1" && ad["WorkCommands"].to_string().contains("cat"))
            .then_some(())
    });

    let (marker, payload) = marker_payload();
    let file = mesh.path("payload.txt");
    std::fs::write(&file, &payload).unwrap();
    let file = file.display().to_string();
    let out = mesh.ctl(
        ic,
        &[
            "work",
            "submit",
            "cat",
            "--node",
            "node1",
            "--payload",
            &file,
            "-f",
        ],
    );
    assert!(out.status.success(), "submit: {out:?}\n{}", mesh.logs());
    assert!(
        out.stdout == payload,
        "results differ from the payload ({} bytes back, {} sent)",
        out.stdout.len(),
        payload.len()
    );

    let raw = relay.tapped();
    relay.stop();
    let frames: Vec<Message> = raw.iter().filter_map(|f| Message::decode(f).ok()).collect();
    assert_eq!(
        frames.len(),
        raw.len(),
        "every tapped frame is a mesh message"
    );
    // Positive controls: the tap sees cleartext (node1's advert and its work types), and the
    // relay did carry the unit's bytes both ways, sealed.
    let adverts = frames.iter().any(|m| {
        matches!(m, Message::Advert(ad) if ad.origin.as_str() == "node1"
            && ad.work_types.iter().any(|w| w == "cat"))
    });
    assert!(adverts, "the tap shows node1's advert in clear");
    assert!(raw.iter().any(|f| contains(f, b"node1")));
    let (there, back) = (
        sealed_bytes_towards(&frames, "node1"),
        sealed_bytes_towards(&frames, "controller"),
    );
    assert!(
        there >= payload.len() && back >= payload.len(),
        "the relay carried {there} sealed bytes to node1 and {back} back, for a payload of {}",
        payload.len()
    );
    // What matters: not one frame the relay decrypted holds the marker.
    let leaks = raw.iter().filter(|f| contains(f, &marker)).count();
    assert_eq!(
        leaks,
        0,
        "{leaks} of {} tapped frames hold the marker",
        raw.len()
    );
    println!(
        "relay: {} frames in clear, {there} sealed bytes to node1 and {back} back, \
         payload {} bytes, marker in none",
        raw.len(),
        payload.len()
    );
}

#[test]
fn a_controller_that_pins_only_its_relay_sends_no_work_to_node1_and_names_the_pin() {
    // The mesh of the squatting finding: pins only, the controller pinning its relay and not
    // node1, so that it knows node1 only by the first key seen for the id (here node1's own,
    // but any node of the mesh could have claimed it first).
    let mut mesh = Mesh::new();
    let (controller, node1) = (mesh.identity("controller"), mesh.identity("node1"));
    let mut relay = start_relay(&mesh, &[&controller, &node1]);
    let extra = [
        trust(&[&relay.identity, &controller]),
        peer(&relay.addr),
        [
            "--work-type",
            "cat=/bin/cat",
            "--allow-work",
            "cat=controller",
        ]
        .map(str::to_owned)
        .to_vec(),
    ]
    .concat();
    let n1 = mesh.start(&node1, &extra);
    let extra = [trust(&[&relay.identity]), peer(&relay.addr)].concat();
    let ic = mesh.start(&controller, &extra);
    mesh.wait_route(ic, "node1", Some("relay"));
    wait_for("node1's cat work type at the controller", || {
        let status = mesh.status(ic)?;
        let ads = status["Advertisements"].as_array()?;
        ads.iter()
            .any(|ad| ad["NodeID"] == "node1" && ad["WorkCommands"].to_string().contains("cat"))
            .then_some(())
    });

    let (marker, payload) = marker_payload();
    let file = mesh.path("payload.txt");
    std::fs::write(&file, &payload).unwrap();
    let file = file.display().to_string();
    let args = ["work", "submit", "cat", "--node", "node1"];
    let out = mesh.ctl(ic, &[&args[..], &["--payload", &file, "-f"]].concat());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !out.status.success() && text.contains("node1") && text.contains("--trust node1="),
        "the submission fails naming node1 and the pin to add: {} ({} bytes of results), {}\n{}",
        out.status,
        out.stdout.len(),
        String::from_utf8_lossy(&out.stderr),
        mesh.logs()
    );
    let units = mesh.ctl(n1, &["work", "list", "--json"]);
    let units: serde_json::Value = serde_json::from_slice(&units.stdout).unwrap();
    assert_eq!(units, serde_json::json!({}), "node1 got no unit");
    let raw = relay.tapped();
    relay.stop();
    let frames: Vec<Message> = raw.iter().filter_map(|f| Message::decode(f).ok()).collect();
    assert_eq!(
        sealed_bytes_towards(&frames, "node1"),
        0,
        "no stream was opened towards node1"
    );
    assert!(!raw.iter().any(|f| contains(f, &marker)));
}
