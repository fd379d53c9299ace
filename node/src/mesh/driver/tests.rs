//! The driver over real loopback sockets, in one runtime: streams across two hops, and a
//! peer that stops reading is cut off instead of buffered without bound.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::id::NodeId;
use crate::keys::LinkKeypair;
use crate::mesh::advert::tests::signed;
use crate::mesh::link::{Link, LinkConfig, LinkEvent};
use crate::mesh::message::{Hello, Message, Packet, PacketBody, StreamKind, StreamPacket};
use crate::mesh::session::{SessionMsg, Sessions};
use crate::mesh::stream::Inner;
use crate::mesh::trust::Binding;
use crate::mesh::trust::TrustEntry;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn service(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

fn keys(n: u8) -> LinkKeypair {
    LinkKeypair::from_private([n; 32])
}

fn trust_all() -> Vec<TrustEntry> {
    (1..=9)
        .map(|n| TrustEntry {
            key: keys(n).public(),
            node: None,
        })
        .collect()
}

/// Starts node `name` with key `n`, listening on loopback, dialling `peers`.
async fn node(name: &str, n: u8, peers: &[u16], config: DriverConfig) -> (MeshHandle, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let targets = peers
        .iter()
        .map(|p| PeerTarget {
            host: "127.0.0.1".into(),
            port: *p,
            cost: Cost::DEFAULT,
        })
        .collect();
    let mesh = MeshConfig::new(id(name), keys(n), trust_all().into(), 1);
    let (handle, _task) = start(mesh, config, vec![(listener, Cost::DEFAULT)], targets);
    (handle, port)
}

#[tokio::test]
async fn streams_cross_two_hops_sealed_end_to_end() {
    let (a, a_port) = node("a", 1, &[], DriverConfig::default()).await;
    let (_b, b_port) = node("b", 2, &[a_port], DriverConfig::default()).await;
    let (c, _) = node("c", 3, &[b_port], DriverConfig::default()).await;
    assert!(
        a.wait_reachable(&id("c"), Duration::from_secs(10))
            .await
            .unwrap()
    );

    // An echo service on c.
    let mut incoming = c.listen(&service("echo")).unwrap();
    tokio::spawn(async move {
        while let Some(mut stream) = incoming.recv().await {
            tokio::spawn(async move {
                let mut data = Vec::new();
                stream.read_to_end(&mut data).await.unwrap();
                stream.write_all(&data).await.unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    let payload: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut stream = a.connect(&id("c"), &service("echo")).await.unwrap();
    let (mut read, mut write) = tokio::io::split(&mut stream);
    let sent = payload.clone();
    let writer = async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap();
    };
    let mut echoed = Vec::new();
    let reader = read.read_to_end(&mut echoed);
    let ((), got) = tokio::join!(writer, reader);
    got.unwrap();
    assert!(
        echoed == payload,
        "echoed {} of {} bytes",
        echoed.len(),
        payload.len()
    );

    let refused = a.connect(&id("c"), &service("nobody")).await.unwrap_err();
    assert!(
        matches!(refused, ConnectError::Reset(ResetReason::NoService)),
        "{refused}"
    );
    let unknown = a.connect(&id("zz"), &service("echo")).await.unwrap_err();
    assert!(matches!(unknown, ConnectError::Open(_)), "{unknown}");
}

/// A trusted but hostile peer: completes the link handshake and the end-to-end session with
/// the library's own pieces, accepts the stream `a` opens to it with a huge window, then
/// never reads again while granting more credit every few milliseconds.
async fn hostile_peer(port: u16) {
    let now = Instant::now();
    let me = id("hostile");
    let hello = Hello {
        node: me.clone(),
        epoch: 1,
        cert: None,
        successions: Vec::new(),
    };
    let mut link = Link::initiator(now, &keys(9), hello, LinkConfig::default()).unwrap();
    let mut sessions = Sessions::new(me.clone(), keys(9));
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut buf = vec![0u8; 65536];
    loop {
        while let Some(bytes) = link.poll_transmit(now) {
            tcp.write_all(&bytes).await.unwrap();
        }
        let n = tcp.read(&mut buf).await.unwrap();
        assert!(n > 0, "node closed the link during setup");
        link.handle_bytes(now, &buf[..n]);
        while let Some(event) = link.poll_event() {
            let packet = match event {
                LinkEvent::Identified { .. } => {
                    link.accept(now);
                    let advert = signed("hostile", &keys(9), 1, 1, &[("a", 1000)]);
                    link.send(&Message::Advert(advert)).unwrap();
                    continue;
                }
                LinkEvent::Message(Message::Packet(packet)) => packet,
                _ => continue,
            };
            let reply = |body| Packet {
                src: me.clone(),
                dst: packet.src.clone(),
                hops_left: 30,
                body,
            };
            match packet.body.clone() {
                PacketBody::Session(SessionMsg::Init { session, noise }) => {
                    let (key, _, pending) = sessions.read_init(&packet.src, &noise).unwrap();
                    let peer = PeerIdentity {
                        node: packet.src.clone(),
                        key,
                        binding: Binding::TrustedKey,
                    };
                    let accept = sessions
                        .accept(now, pending, session, peer)
                        .unwrap()
                        .unwrap();
                    link.send(&Message::Packet(reply(PacketBody::Session(accept))))
                        .unwrap();
                }
                PacketBody::Stream(sp) if matches!(sp.kind, StreamKind::Open { .. }) => {
                    let session = sessions.established(&packet.src).unwrap();
                    let (mut sealer, _) = session.secrets.circuit(&sp.circuit);
                    let mut sealed = |inner: Inner| {
                        let body = PacketBody::Stream(StreamPacket {
                            circuit: sp.circuit.clone(),
                            from_opener: false,
                            kind: StreamKind::Sealed(sealer.seal(inner.encode())),
                        });
                        Message::Packet(reply(body))
                    };
                    link.send(&sealed(Inner::Accept { window: u32::MAX }))
                        .unwrap();
                    loop {
                        link.send(&sealed(Inner::Credit(u32::MAX))).unwrap();
                        let bytes = link.poll_transmit(now).unwrap();
                        if tcp.write_all(&bytes).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn peer_that_stops_reading_is_cut_off() {
    let cap = 1 << 20;
    let (a, a_port) = node(
        "a",
        1,
        &[],
        DriverConfig {
            max_link_queue: cap,
            ..DriverConfig::default()
        },
    )
    .await;
    let peer = tokio::spawn(hostile_peer(a_port));
    assert!(
        a.wait_reachable(&id("hostile"), Duration::from_secs(10))
            .await
            .unwrap()
    );
    let mut stream = a.connect(&id("hostile"), &service("sink")).await.unwrap();
    let chunk = BytesMut::zeroed(1 << 20);
    let mut written = 0usize;
    let outcome = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match stream.write(&chunk).await {
                Ok(n) => written += n,
                Err(e) => return e,
            }
        }
    })
    .await
    .expect("the stalled link must be cut, failing the write");
    assert_eq!(outcome.kind(), io::ErrorKind::ConnectionReset, "{outcome}");
    // The cap plus what the kernel's socket buffers absorbed: nowhere near unbounded.
    assert!(
        written < 64 << 20,
        "wrote {written} bytes into a stalled link"
    );
    let status = a.status().await.unwrap();
    assert!(status.links.is_empty(), "the stalled link is gone");
    // The socket itself is released: the hostile peer's writes start failing within a few
    // seconds (before, the detached writer kept the socket, and the queued bytes, forever).
    tokio::time::timeout(Duration::from_secs(5), peer)
        .await
        .expect("the node must drop the stalled peer's socket")
        .unwrap();
}

#[tokio::test]
async fn nodes_dialling_each_other_keep_one_link() {
    let la = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (pa, pb) = (
        la.local_addr().unwrap().port(),
        lb.local_addr().unwrap().port(),
    );
    let target = |port| PeerTarget {
        host: "127.0.0.1".into(),
        port,
        cost: Cost::DEFAULT,
    };
    let config = |name, n| MeshConfig::new(id(name), keys(n), trust_all().into(), 1);
    let default = DriverConfig::default;
    let (a, _) = start(
        config("a", 1),
        default(),
        vec![(la, Cost::DEFAULT)],
        vec![target(pb)],
    );
    let (b, _) = start(
        config("b", 2),
        default(),
        vec![(lb, Cost::DEFAULT)],
        vec![target(pa)],
    );
    assert!(
        a.wait_reachable(&id("b"), Duration::from_secs(10))
            .await
            .unwrap()
    );
    assert!(
        b.wait_reachable(&id("a"), Duration::from_secs(10))
            .await
            .unwrap()
    );
    // Watch for a while: the surplus link is closed, the kept one is the same at both ends,
    // and neither side keeps redialling.
    let watch_until = tokio::time::Instant::now() + Duration::from_millis(800);
    while tokio::time::Instant::now() < watch_until {
        let (sa, sb) = (a.status().await.unwrap(), b.status().await.unwrap());
        assert!(
            sa.links.len() <= 1 && sb.links.len() <= 1,
            "{:?} {:?}",
            sa.links,
            sb.links
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let outcome = a.probe(&id("b"), None).await.unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(a.status().await.unwrap().links.len(), 1);
    assert_eq!(b.status().await.unwrap().links.len(), 1);
}
