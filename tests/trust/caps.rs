//! Connection caps: a node whose open files limit is low (256) takes a flood of 1,000
//! half-open connections from many source addresses, and still links a new trusted peer,
//! keeps its established one, and runs local work through its control socket.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use warren::mesh::node::DEFAULT_MAX_HANDSHAKING;

use crate::support::{Mesh, peer, trust, wait_for};

/// The node's open files limit (soft and hard: it cannot raise it).
const NOFILE: u64 = 256;

/// Half-open connections in the flood.
const FLOOD: usize = 1_000;

/// Source addresses the flood comes from (127.0.0.2 upwards): more than the per-source cap
/// allows, so the global cap is what holds.
const SOURCES: usize = 50;

/// Raises this test process's soft open files limit so it can hold the flood.
fn allow_open_files(needed: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        assert!(
            limit.rlim_max >= needed,
            "the test needs {needed} open files; the hard limit is {}",
            limit.rlim_max
        );
        if limit.rlim_cur < needed {
            limit.rlim_cur = limit.rlim_max;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}

/// Opens [`FLOOD`] connections to `target`: even ones send nothing, odd ones the first two
/// bytes of a handshake message that announce more than ever follows. Returns them as
/// non-blocking std streams, which can be polled without a runtime.
async fn flood(target: SocketAddr) -> Vec<std::net::TcpStream> {
    let mut streams = Vec::with_capacity(FLOOD);
    for i in 0..FLOOD {
        let source = Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8);
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
        let mut stream = socket.connect(target).await.unwrap();
        if i % 2 == 1 {
            stream.write_all(&[0, 32, 1, 2, 3]).await.unwrap();
        }
        streams.push(stream.into_std().unwrap());
    }
    streams
}

/// How many of the flood's connections (non-blocking) the node has closed.
fn closed_by_node(streams: &[std::net::TcpStream]) -> usize {
    let mut buf = [0u8; 64];
    streams
        .iter()
        .filter(|&(mut s)| match s.read(&mut buf) {
            Ok(_) => true,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        })
        .count()
}

fn open_files(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(Iterator::count)
        .unwrap_or(usize::MAX)
}

#[test]
fn half_open_flood_leaves_peers_and_the_control_socket_working() {
    allow_open_files(FLOOD as u64 + 512);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut mesh = Mesh::new();
    let (a, b, c) = (mesh.identity("a"), mesh.identity("b"), mesh.identity("c"));
    let extra = [
        trust(&[&b, &c]),
        vec!["--work-type".into(), "cat=/bin/cat".into()],
    ]
    .concat();
    let ia = mesh.start_with_nofile(&a, &extra, NOFILE);
    let a_addr = mesh.node(ia).addr().to_owned();
    let ib = mesh.start(&b, &[trust(&[&a]), peer(&a_addr)].concat());
    mesh.wait_route(ia, "b", None);
    wait_for("a to offer cat", || {
        let status = mesh.status(ia)?;
        status["Advertisements"]
            .as_array()?
            .iter()
            .any(|ad| ad["NodeID"] == "a" && ad["WorkCommands"].to_string().contains("cat"))
            .then_some(())
    });
    let pid = mesh.node(ia).pid().unwrap();
    let before = open_files(pid);

    let streams = runtime.block_on(flood(a_addr.parse().unwrap()));
    // The node drops the oldest handshakes beyond its cap (not merely at their handshake
    // timeout): all but the newest ones close.
    let beyond_cap = FLOOD - DEFAULT_MAX_HANDSHAKING;
    let dropped = wait_for("the node to drop the flood beyond its cap", || {
        let log = mesh.node(ia).log_text();
        let dropped = log
            .matches("closed by us: too many unauthenticated connections")
            .count();
        (dropped >= beyond_cap).then_some(dropped)
    });
    let closed = wait_for("the flood to see its connections closed", || {
        let closed = closed_by_node(&streams);
        (closed >= beyond_cap).then_some(closed)
    });
    let during = open_files(pid);
    assert!(
        during <= before + DEFAULT_MAX_HANDSHAKING + 8,
        "the node holds {during} files during the flood ({before} before)"
    );
    // Sockets accepted but not yet handed to the owner task, and sockets closing, are not
    // counted by the caps: a burst can still briefly run out of files (printed below, not
    // asserted).
    let emfile = mesh
        .node(ia)
        .log_text()
        .matches("Too many open files")
        .count();

    // With the flood still connected: a new peer links, the old one stays, local work runs.
    let _ic = mesh.start(&c, &[trust(&[&a]), peer(&a_addr)].concat());
    mesh.wait_route(ia, "c", None);
    for to in ["b", "c"] {
        let out = mesh.ctl(ia, &["ping", to, "--count", "1"]);
        assert!(out.status.success(), "ping {to}: {out:?}\n{}", mesh.logs());
    }
    let out = mesh.ctl(ib, &["ping", "a", "--count", "1"]);
    assert!(out.status.success(), "ping from b: {out:?}");
    let payload = mesh.path("payload.txt");
    std::fs::write(&payload, b"still serving\n").unwrap();
    let out = mesh.ctl(
        ia,
        &[
            "work",
            "submit",
            "cat",
            "--payload",
            payload.to_str().unwrap(),
            "-f",
        ],
    );
    assert!(out.status.success(), "local work: {out:?}\n{}", mesh.logs());
    assert_eq!(out.stdout, b"still serving\n");
    println!(
        "flood: {dropped} of {FLOOD} dropped at the cap, {closed} seen closed; the node's open files {before} before, \
         {during} during; {emfile} failed accepts (out of files) logged"
    );
    drop(streams);
}
