//! The mesh across real processes: routing through relays, rerouting around a dead relay,
//! refusing untrusted and impostor peers, shrugging off garbage, clean shutdown.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::support::{Mesh, peer, trust, wait_for};

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn line_of_three_pings_and_traces_through_the_relay() {
    let mut mesh = Mesh::new();
    let (a, b, c) = (mesh.identity("a"), mesh.identity("b"), mesh.identity("c"));
    let ia = mesh.start(&a, &trust(&[&b]));
    let a_addr = mesh.node(ia).addr().to_owned();
    let ib = mesh.start(&b, &[trust(&[&a, &c]), peer(&a_addr)].concat());
    let b_addr = mesh.node(ib).addr().to_owned();
    let _ic = mesh.start(&c, &[trust(&[&b]), peer(&b_addr)].concat());
    mesh.wait_route(ia, "c", Some("b"));

    let out = mesh.ctl(ia, &["ping", "c", "--count", "2", "--interval", "0"]);
    assert!(
        out.status.success(),
        "ping failed: {out:?}\n{}",
        mesh.logs()
    );
    let text = stdout(&out);
    assert_eq!(text.matches("Reply from c in").count(), 2, "{text}");

    let out = mesh.ctl(ia, &["traceroute", "c"]);
    assert!(out.status.success(), "traceroute failed: {out:?}");
    let lines: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("0: b in "), "{lines:?}");
    assert!(lines[1].starts_with("1: c in "), "{lines:?}");

    let status = mesh.status(ia).expect("status");
    assert_eq!(status["NodeID"], "a");
    assert_eq!(status["Connections"][0]["NodeID"], "b");
    assert_eq!(status["KnownConnectionCosts"]["b"]["c"], 1);
    let text = stdout(&mesh.ctl(ia, &["status"]));
    assert!(
        text.contains("Routes:") && text.contains("c            b"),
        "{text}"
    );
}

#[test]
fn ring_of_four_reroutes_when_a_relay_dies() {
    let mut mesh = Mesh::new();
    let ids: Vec<_> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| mesh.identity(n))
        .collect();
    let all: Vec<&_> = ids.iter().collect();
    let ia = mesh.start(&ids[0], &trust(&all));
    let a_addr = mesh.node(ia).addr().to_owned();
    let ib = mesh.start(&ids[1], &[trust(&all), peer(&a_addr)].concat());
    let b_addr = mesh.node(ib).addr().to_owned();
    let ic = mesh.start(&ids[2], &[trust(&all), peer(&b_addr)].concat());
    let c_addr = mesh.node(ic).addr().to_owned();
    let _id = mesh.start(
        &ids[3],
        &[trust(&all), peer(&c_addr), peer(&a_addr)].concat(),
    );
    // Equal costs both ways round: the tie goes to the smaller next hop.
    mesh.wait_route(ia, "c", Some("b"));

    mesh.node_mut(ib).kill();
    mesh.wait_route(ia, "c", Some("d"));
    let out = mesh.ctl(ia, &["ping", "c", "--count", "1"]);
    assert!(
        out.status.success(),
        "ping after reroute: {out:?}\n{}",
        mesh.logs()
    );
    let out = mesh.ctl(ia, &["traceroute", "c"]);
    assert!(stdout(&out).starts_with("0: d in "), "{}", stdout(&out));
}

#[test]
fn untrusted_node_is_refused_and_the_refusal_is_logged() {
    let mut mesh = Mesh::new();
    let (a, b, x) = (mesh.identity("a"), mesh.identity("b"), mesh.identity("x"));
    let ia = mesh.start(&a, &trust(&[&b]));
    let a_addr = mesh.node(ia).addr().to_owned();
    let ix = mesh.start(&x, &[trust(&[&a]), peer(&a_addr)].concat());
    let expected = format!(
        "refused link: untrusted key; to trust it add `--trust x={}`",
        x.token
    );
    wait_for("a to log the refusal", || {
        mesh.node(ia).log_text().contains(&expected).then_some(())
    });
    wait_for("x to log that it was refused", || {
        let log = mesh.node(ix).log_text();
        log.contains("peer refused our key").then_some(())
    });
    let status = mesh.status(ia).expect("a still answers");
    assert_eq!(status["Connections"], serde_json::json!([]));
    assert!(mesh.node_mut(ia).is_running());
}

#[test]
fn key_pinned_to_another_id_and_duplicate_ids_are_refused() {
    let mut mesh = Mesh::new();
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    let impostor = mesh.identity("b2");
    // a trusts b's key only as "b"; the impostor presents b's key but claims to be "c".
    let ia = mesh.start(&a, &trust(&[&b]));
    let a_addr = mesh.node(ia).addr().to_owned();
    let mut stolen = b.clone();
    stolen.id = "c".to_owned();
    let _ic = mesh.start(&stolen, &[trust(&[&a]), peer(&a_addr)].concat());
    wait_for("a to refuse the pinned key", || {
        let log = mesh.node(ia).log_text();
        log.contains("key is pinned to another node id")
            .then_some(())
    });
    // A second node calling itself "a" (trusted key) is refused by a.
    let mut twin = impostor.clone();
    twin.id = "a".to_owned();
    let extra = [vec!["--trust".to_owned(), a.token.clone()], peer(&a_addr)].concat();
    let mut twin_mesh = Mesh::new();
    let it = twin_mesh.start(&twin, &extra);
    let _ = it;
    wait_for("a to refuse its duplicate", || {
        let log = mesh.node(ia).log_text();
        log.contains("peer claims our own node id").then_some(())
    });
    assert!(mesh.node_mut(ia).is_running());
}

#[test]
fn garbage_and_stalled_handshakes_leave_the_node_working() {
    let mut mesh = Mesh::new();
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    let ia = mesh.start(&a, &trust(&[&b]));
    let a_addr = mesh.node(ia).addr().to_owned();

    let mut garbage = TcpStream::connect(&a_addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        garbage.read(&mut buf).unwrap_or(0),
        0,
        "node closes a garbage connection"
    );
    // A handshake that stops half way: the node must not wait on it to serve others.
    let mut stalled = TcpStream::connect(&a_addr).unwrap();
    stalled.write_all(&[0, 32, 1, 2, 3]).unwrap();
    // An oversized frame prefix.
    let mut huge = TcpStream::connect(&a_addr).unwrap();
    huge.write_all(&[0xff, 0xff]).unwrap();

    let ib = mesh.start(&b, &[trust(&[&a]), peer(&a_addr)].concat());
    mesh.wait_route(ia, "b", None);
    let out = mesh.ctl(ib, &["ping", "a", "--count", "1"]);
    assert!(out.status.success(), "{out:?}");

    // Garbage on the control socket gets Receptor's error lines; the session stays usable.
    let mut control = UnixStream::connect(&mesh.node(ia).socket).unwrap();
    control
        .write_all(b"{not json\nfrobnicate\nstatus\n")
        .unwrap();
    control
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut seen = String::new();
    wait_for("control replies", || {
        let mut chunk = [0u8; 4096];
        let n = control.read(&mut chunk).ok()?;
        seen.push_str(&String::from_utf8_lossy(&chunk[..n]));
        seen.contains("\"NodeID\":\"a\"").then_some(())
    });
    assert!(seen.starts_with("Receptor Control, node a\n"), "{seen}");
    assert!(seen.contains("ERROR: Unknown command\n"), "{seen}");
    drop((garbage, stalled, huge));
    assert!(mesh.node_mut(ia).is_running());
}

#[test]
fn sigterm_shuts_down_cleanly_and_tells_peers() {
    let mut mesh = Mesh::new();
    let (a, b) = (mesh.identity("a"), mesh.identity("b"));
    let ia = mesh.start(&a, &trust(&[&b]));
    let a_addr = mesh.node(ia).addr().to_owned();
    let ib = mesh.start(&b, &[trust(&[&a]), peer(&a_addr)].concat());
    mesh.wait_route(ib, "a", None);
    let status = mesh.node_mut(ia).terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        !mesh.node(ia).socket.exists(),
        "control socket removed on shutdown"
    );
    wait_for("b to log a's goodbye", || {
        let log = mesh.node(ib).log_text();
        log.contains("closed by peer: node shutting down")
            .then_some(())
    });
}
