use super::*;
use crate::mesh::message::{Packet, PacketBody};

fn keys(n: u8) -> LinkKeypair {
    LinkKeypair::from_private([n; 32])
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// Moves every queued byte from `from` to `to`.
fn pump(now: Instant, from: &mut Link, to: &mut Link) -> bool {
    let mut moved = false;
    while let Some(bytes) = from.poll_transmit(now) {
        to.handle_bytes(now, &bytes);
        moved = true;
    }
    moved
}

fn events(link: &mut Link) -> Vec<LinkEvent> {
    std::iter::from_fn(|| link.poll_event()).collect()
}

/// Drives a handshake between a (initiator) and b, accepting both identities.
fn connected(now: Instant) -> (Link, Link) {
    connected_with(now, LinkConfig::default())
}

fn connected_with(now: Instant, config: LinkConfig) -> (Link, Link) {
    let mut a = Link::initiator(now, &keys(1), &id("a"), 1, config.clone()).unwrap();
    let mut b = Link::responder(now, &keys(2), &id("b"), 1, config).unwrap();
    for _ in 0..4 {
        pump(now, &mut a, &mut b);
        for ev in events(&mut b) {
            if let LinkEvent::Identified { node, key, .. } = ev {
                assert_eq!((node, key), (id("a"), keys(1).public()));
                b.accept(now);
            }
        }
        pump(now, &mut b, &mut a);
        for ev in events(&mut a) {
            if let LinkEvent::Identified { node, key, .. } = ev {
                assert_eq!((node, key), (id("b"), keys(2).public()));
                a.accept(now);
            }
        }
    }
    assert!(a.is_up() && b.is_up());
    // The initiator reports Up only once a frame from the accepting peer proves acceptance.
    assert_eq!(events(&mut a), vec![]);
    b.send(&Message::Keepalive).unwrap();
    pump(now, &mut b, &mut a);
    assert_eq!(events(&mut a), vec![LinkEvent::Up]);
    events(&mut b);
    (a, b)
}

fn datagram(n: usize) -> Message {
    Message::Packet(Packet {
        src: id("a"),
        dst: id("b"),
        hops_left: 3,
        body: PacketBody::Datagram {
            from_service: crate::id::ServiceName::new("x").unwrap(),
            to_service: crate::id::ServiceName::new("y").unwrap(),
            data: Bytes::from(vec![7; n]),
        },
    })
}

#[test]
fn messages_flow_both_ways_including_large_ones() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    let big = datagram(200_000);
    a.send(&big).unwrap();
    a.send(&datagram(3)).unwrap();
    pump(now, &mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Message(big), LinkEvent::Message(datagram(3))]
    );
    b.send(&datagram(5)).unwrap();
    pump(now, &mut b, &mut a);
    assert_eq!(events(&mut a), vec![LinkEvent::Message(datagram(5))]);
}

#[test]
fn byte_at_a_time_delivery_works() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    a.send(&datagram(1000)).unwrap();
    let wire = a.poll_transmit(now).unwrap();
    for byte in wire.iter() {
        b.handle_bytes(now, &[*byte]);
    }
    assert_eq!(events(&mut b), vec![LinkEvent::Message(datagram(1000))]);
}

#[test]
fn refusing_initiator_tells_responder_why() {
    let now = Instant::now();
    let mut a = Link::initiator(now, &keys(1), &id("a"), 1, LinkConfig::default()).unwrap();
    let mut b = Link::responder(now, &keys(2), &id("b"), 1, LinkConfig::default()).unwrap();
    pump(now, &mut a, &mut b);
    pump(now, &mut b, &mut a);
    assert!(matches!(events(&mut a)[..], [LinkEvent::Identified { .. }]));
    a.refuse(CloseReason::UntrustedKey);
    pump(now, &mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByPeer(
            CloseReason::UntrustedKey
        ))]
    );
    assert!(a.is_closed() && b.is_closed());
}

#[test]
fn refusing_responder_processes_no_frames_and_tells_initiator() {
    let now = Instant::now();
    let mut a = Link::initiator(now, &keys(1), &id("a"), 1, LinkConfig::default()).unwrap();
    let mut b = Link::responder(now, &keys(2), &id("b"), 1, LinkConfig::default()).unwrap();
    pump(now, &mut a, &mut b);
    pump(now, &mut b, &mut a);
    events(&mut a);
    a.accept(now);
    // The initiator sends a message straight after its last handshake message.
    a.send(&datagram(10)).unwrap();
    pump(now, &mut a, &mut b);
    let evs = events(&mut b);
    assert!(matches!(evs[..], [LinkEvent::Identified { .. }]), "{evs:?}");
    b.refuse(CloseReason::UntrustedKey);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByUs(CloseReason::UntrustedKey))]
    );
    pump(now, &mut b, &mut a);
    assert_eq!(
        events(&mut a),
        vec![LinkEvent::Closed(LinkEnd::ByPeer(
            CloseReason::UntrustedKey
        ))],
        "a refused initiator never reports the link up"
    );
}

#[test]
fn garbage_on_the_wire_fails_the_handshake_at_once() {
    let now = Instant::now();
    let mut b = Link::responder(now, &keys(2), &id("b"), 1, LinkConfig::default()).unwrap();
    b.handle_bytes(now, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(matches!(
        events(&mut b)[..],
        [LinkEvent::Closed(LinkEnd::Failed(_))]
    ));
    assert!(b.is_closed());
}

#[test]
fn half_finished_handshake_times_out() {
    let now = Instant::now();
    let mut b = Link::responder(now, &keys(2), &id("b"), 1, LinkConfig::default()).unwrap();
    b.handle_bytes(now, &[0, 32]);
    let deadline = b.poll_timeout().unwrap();
    b.handle_timeout(deadline);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByUs(
            CloseReason::HandshakeTimeout
        ))]
    );
}

#[test]
fn tampered_transport_bytes_close_the_link() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    a.send(&datagram(10)).unwrap();
    let mut wire = a.poll_transmit(now).unwrap().to_vec();
    let last = wire.len() - 1;
    wire[last] ^= 0xff;
    b.handle_bytes(now, &wire);
    assert!(matches!(
        events(&mut b)[..],
        [LinkEvent::Closed(LinkEnd::Failed(_))]
    ));
}

#[test]
fn keepalive_keeps_an_idle_link_up_and_silence_times_it_out() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected(t0);
    let config = LinkConfig::default();
    let mut now = t0;
    // Both sides exchange keepalives: no idle timeout however long.
    for _ in 0..10 {
        now += config.keepalive;
        a.handle_timeout(now);
        b.handle_timeout(now);
        pump(now, &mut a, &mut b);
        pump(now, &mut b, &mut a);
    }
    assert!(a.is_up() && b.is_up());
    assert!(events(&mut a).is_empty());
    // b goes silent: a times out.
    let deadline = now + config.idle_timeout;
    a.handle_timeout(deadline);
    assert_eq!(
        events(&mut a),
        vec![LinkEvent::Closed(LinkEnd::ByUs(CloseReason::IdleTimeout))]
    );
}

#[test]
fn periodic_rekey_is_transparent() {
    let t0 = Instant::now();
    let config = LinkConfig {
        rekey_interval: Duration::from_secs(5),
        ..LinkConfig::default()
    };
    let (mut a, mut b) = connected_with(t0, config);
    let later = t0 + Duration::from_secs(5);
    a.send(&datagram(1)).unwrap();
    a.handle_timeout(later);
    a.send(&datagram(2)).unwrap();
    pump(later, &mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![
            LinkEvent::Message(datagram(1)),
            LinkEvent::Message(datagram(2))
        ]
    );
}

#[test]
fn oversized_frame_is_refused_locally() {
    let now = Instant::now();
    let (mut a, _b) = connected(now);
    assert!(matches!(
        a.send(&datagram(frame::MAX_FRAME_LEN + 1)),
        Err(SendError::Frame(FrameError::TooLarge { .. }))
    ));
}

#[test]
fn close_reason_reaches_peer() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    a.close(CloseReason::Shutdown);
    pump(now, &mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByPeer(CloseReason::Shutdown))]
    );
}
