//! A submitter killed (SIGKILL) right after its submission left, with real nodes: the
//! restarted submitter sends the submission again under the nonce it recorded before the
//! first one left, the running node replaces the unit whose payload was cut rather than
//! keeping it, and the unit ends with the job's state and full output. Nothing is left
//! behind on the running node once the unit is released.
//!
//! The moment is held open by a slow link: the controller reaches node1 through a proxy in
//! this test that carries its bytes at about 1 MB/s, so the 8 MiB payload is still on its
//! way when node1 has made the unit and the controller is killed.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::{Identity, Mesh, peer, trust, wait_for};

/// Payload bytes: about 8 s through the slow link.
const PAYLOAD: usize = 8 << 20;

/// A TCP proxy to `target` whose client-to-target direction is slowed to about 1 MB/s while
/// `slow` is set. Its threads end when the test process does (or their sockets close).
struct SlowLink {
    addr: String,
    slow: Arc<AtomicBool>,
}

impl SlowLink {
    fn new(target: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let slow = Arc::new(AtomicBool::new(true));
        let pace = slow.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(&target) else {
                    continue;
                };
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                let pace = pace.clone();
                std::thread::spawn(move || pump(client, server, Some(pace)));
                std::thread::spawn(move || pump(s2, c2, None));
            }
        });
        Self { addr, slow }
    }
}

/// Copies `from` to `to`, 16 KiB per 16 ms while `pace` is set; closes both at the end.
fn pump(mut from: TcpStream, mut to: TcpStream, pace: Option<Arc<AtomicBool>>) {
    let mut buf = [0u8; 16 << 10];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
        if pace.as_ref().is_some_and(|p| p.load(Ordering::Relaxed)) {
            std::thread::sleep(Duration::from_millis(16));
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Both);
    let _ = from.shutdown(std::net::Shutdown::Both);
}

fn units(mesh: &Mesh, node: usize) -> serde_json::Map<String, serde_json::Value> {
    // Empty while the node restarts.
    let out = mesh.ctl(node, &["work", "list", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

#[test]
fn a_submitter_killed_right_after_its_submission_left_finishes_the_unit_and_leaves_nothing_behind()
{
    let mut mesh = Mesh::new();
    let ids: Vec<Identity> = ["controller", "node1"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&Identity> = ids.iter().collect();
    let count = mesh.path("count.sh");
    std::fs::write(&count, "#!/bin/sh\nwc -c\n").unwrap();
    std::fs::set_permissions(&count, std::fs::Permissions::from_mode(0o755)).unwrap();
    let node1_flags = vec![
        "--work-type".to_owned(),
        format!("count={}", count.display()),
        "--allow-work".to_owned(),
        "*=controller".to_owned(),
        "--no-ansible-runner".to_owned(),
    ];
    let node1 = mesh.start(&ids[1], &[trust(&all), node1_flags].concat());
    let link = SlowLink::new(mesh.node(node1).addr().to_owned());
    let controller = mesh.start(&ids[0], &[trust(&all), peer(&link.addr)].concat());
    mesh.wait_route(controller, "node1", None);
    wait_for("node1 to offer its work type", || {
        let status = mesh.status(node1)?;
        (status["WorkTypes"].as_array()?.len() == 1).then_some(())
    });

    let payload = mesh.path("big.payload");
    std::fs::write(&payload, vec![b'x'; PAYLOAD]).unwrap();
    // The submit waits for node1 to take the unit; the kill cuts it short.
    let socket = mesh.path("controller.sock").display().to_string();
    let payload_arg = payload.display().to_string();
    let submitting = std::thread::spawn(move || {
        let args = [
            "work",
            "submit",
            "count",
            "--node",
            "node1",
            "--payload",
            &payload_arg,
            "--socket",
            &socket,
        ];
        crate::support::warren(&args)
    });
    // node1 has made the unit and its payload is on the way: kill the submitter now.
    wait_for("node1 to make the unit", || {
        units(&mesh, node1)
            .values()
            .any(|u| u["StateName"] == "Pending")
            .then_some(())
    });
    mesh.node_mut(controller).kill();
    let _ = submitting.join();
    link.slow.store(false, Ordering::Relaxed);
    mesh.restart(controller);

    let unit = wait_for("the controller to list its unit", || {
        units(&mesh, controller).keys().next().cloned()
    });
    let done = wait_for("the unit to finish", || {
        let u = units(&mesh, controller).get(&unit)?.clone();
        matches!(u["StateName"].as_str(), Some("Succeeded" | "Failed")).then_some(u)
    });
    assert_eq!(done["StateName"], "Succeeded", "{done}\n{}", mesh.logs());
    let out = mesh.ctl(controller, &["work", "results", &unit]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{PAYLOAD}\n"),
        "the job saw the whole payload once, and its output came back whole"
    );
    // node1 ran it once, and keeps no unit whose payload was cut.
    let remote = units(&mesh, node1);
    assert_eq!(remote.len(), 1, "{remote:?}");
    assert!(
        remote.values().all(|u| u["StateName"] == "Succeeded"),
        "{remote:?}"
    );
    let released = mesh.ctl(controller, &["work", "release", &unit]);
    assert!(released.status.success(), "{released:?}");
    assert!(units(&mesh, node1).is_empty(), "nothing is left on node1");
}
