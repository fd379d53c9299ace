use super::*;
use crate::mesh::frame;
use crate::mesh::message::{
    CircuitId, PROTOCOL_VERSION, Packet, PacketBody, StreamKind, StreamPacket,
};

fn keys(n: u8) -> LinkKeypair {
    LinkKeypair::from_private([n; 32])
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn hello(s: &str) -> Hello {
    Hello {
        node: id(s),
        epoch: 1,
        cert: None,
        successions: Vec::new(),
    }
}

fn initiator(now: Instant, name: &str, n: u8) -> Link {
    Link::initiator(now, &keys(n), hello(name), LinkConfig::default()).unwrap()
}

fn responder(now: Instant, name: &str, n: u8) -> Link {
    Link::responder(now, &keys(n), hello(name), LinkConfig::default()).unwrap()
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
    let mut a = Link::initiator(now, &keys(1), hello("a"), config.clone()).unwrap();
    let mut b = Link::responder(now, &keys(2), hello("b"), config).unwrap();
    pump(now, &mut a, &mut b); // message 1
    pump(now, &mut b, &mut a); // message 2
    pump(now, &mut a, &mut b); // message 3: a's hello
    let [LinkEvent::Identified { node, key, .. }] = &events(&mut b)[..] else {
        panic!("b must identify a")
    };
    assert_eq!((node, key), (&id("a"), &keys(1).public()));
    b.accept(now);
    pump(now, &mut b, &mut a); // b's hello
    let [LinkEvent::Identified { node, key, .. }] = &events(&mut a)[..] else {
        panic!("a must identify b")
    };
    assert_eq!((node, key), (&id("b"), &keys(2).public()));
    a.accept(now);
    assert_eq!(events(&mut a), vec![LinkEvent::Up]);
    assert!(
        events(&mut b).is_empty(),
        "b waits for proof that a accepted it"
    );
    pump(now, &mut a, &mut b); // a's first frame
    assert_eq!(events(&mut b), vec![LinkEvent::Up]);
    assert!(a.is_up() && b.is_up());
    (a, b)
}

/// A message of about `n` bytes.
fn datagram(n: usize) -> Message {
    Message::Packet(Packet {
        src: id("a"),
        dst: id("b"),
        hops_left: 3,
        body: PacketBody::Stream(StreamPacket {
            circuit: CircuitId {
                opener: id("a"),
                number: 1,
            },
            from_opener: true,
            kind: StreamKind::Sealed(Bytes::from(vec![7; n])),
        }),
    })
}

#[test]
fn the_responder_names_itself_only_after_accepting_the_initiator() {
    let now = Instant::now();
    let mut a = initiator(now, "a", 1);
    let mut b = responder(now, "b", 2);
    pump(now, &mut a, &mut b); // message 1
    pump(now, &mut b, &mut a); // message 2: b's key, no hello
    assert!(events(&mut a).is_empty(), "a learns nothing of b's id yet");
    pump(now, &mut a, &mut b); // message 3: a's hello
    assert!(matches!(events(&mut b)[..], [LinkEvent::Identified { .. }]));
    // Until b decides, nothing of b's identity is on the wire towards a.
    assert!(b.poll_transmit(now).is_none());
    b.refuse(CloseReason::UntrustedKey);
    pump(now, &mut b, &mut a);
    assert_eq!(
        events(&mut a),
        vec![LinkEvent::Closed(LinkEnd::ByPeer(
            CloseReason::UntrustedKey
        ))],
        "a refused initiator never learns the responder's node id"
    );
}

#[test]
fn a_responder_of_another_version_is_named_with_both_versions() {
    let now = Instant::now();
    let mut b = responder(now, "b", 2);
    let (_, m1) = Handshake::initiator_speaking(&keys(1), 99).unwrap();
    let mut wire = BytesMut::new();
    frame::encode_noise(&m1, &mut wire).unwrap();
    b.handle_bytes(now, &wire);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByUs(
            CloseReason::VersionMismatch {
                sender: PROTOCOL_VERSION,
                receiver: 99
            }
        ))]
    );
    let end = LinkEnd::ByPeer(CloseReason::VersionMismatch {
        sender: PROTOCOL_VERSION,
        receiver: 99,
    });
    assert_eq!(
        end.to_string(),
        format!(
            "refused by peer: the peer speaks mesh protocol v{PROTOCOL_VERSION}, this node v99"
        )
    );
    assert!(
        b.poll_transmit(now).is_some(),
        "the refusal goes back to the peer"
    );
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
    let mut a = initiator(now, "a", 1);
    let mut b = responder(now, "b", 2);
    pump(now, &mut a, &mut b);
    pump(now, &mut b, &mut a);
    pump(now, &mut a, &mut b);
    assert!(matches!(events(&mut b)[..], [LinkEvent::Identified { .. }]));
    b.accept(now);
    // b names itself and, impatient, queues a message straight after.
    b.send(&datagram(10)).unwrap();
    pump(now, &mut b, &mut a);
    assert!(matches!(events(&mut a)[..], [LinkEvent::Identified { .. }]));
    a.refuse(CloseReason::UntrustedKey);
    assert_eq!(
        events(&mut a),
        vec![LinkEvent::Closed(LinkEnd::ByUs(CloseReason::UntrustedKey))],
        "none of b's frames were read"
    );
    pump(now, &mut a, &mut b);
    assert_eq!(
        events(&mut b),
        vec![LinkEvent::Closed(LinkEnd::ByPeer(
            CloseReason::UntrustedKey
        ))],
        "a refused responder never reports the link up"
    );
    assert!(a.is_closed() && b.is_closed());
}

#[test]
fn the_initiators_first_frame_must_be_a_hello() {
    let now = Instant::now();
    let mut a = initiator(now, "a", 1);
    let mut b = responder(now, "b", 2);
    pump(now, &mut a, &mut b);
    pump(now, &mut b, &mut a);
    pump(now, &mut a, &mut b);
    events(&mut b);
    // A responder that skips its hello is not a warren peer.
    let State::Identified { pending } = std::mem::replace(&mut b.state, State::Closed) else {
        panic!("b is identified")
    };
    let Pending::Responder(handshake) = pending else {
        panic!()
    };
    b.state = State::Up {
        transport: handshake.into_transport().unwrap(),
        confirmed: true,
    };
    b.send(&Message::Keepalive).unwrap();
    pump(now, &mut b, &mut a);
    assert!(matches!(
        events(&mut a)[..],
        [LinkEvent::Closed(LinkEnd::Failed(_))]
    ));
}

#[test]
fn garbage_on_the_wire_fails_the_handshake_at_once() {
    let now = Instant::now();
    let mut b = responder(now, "b", 2);
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
    let mut b = responder(now, "b", 2);
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

/// Feeds `wire` to `to` one Noise message at a time; returns, per message, whether it
/// ended inside a frame (plaintext left over for the next message).
fn feed_by_message(now: Instant, wire: &[u8], to: &mut Link) -> Vec<bool> {
    let mut wire = BytesMut::from(wire);
    let mut split = Vec::new();
    while let Some(message) = frame::decode_noise(&mut wire).unwrap() {
        assert!(message.len() <= frame::MAX_NOISE_MESSAGE_LEN);
        let mut one = BytesMut::new();
        frame::encode_noise(&message, &mut one).unwrap();
        to.handle_bytes(now, &one);
        split.push(!to.rx_plain.is_empty());
    }
    assert!(wire.is_empty(), "the wire ends on a message boundary");
    split
}

#[test]
fn messages_end_on_frame_boundaries_unless_a_frame_needs_several() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    let small = [10, 32 * 1024, 40_000, 65_000, 100, 3, 63 * 1024];
    for n in small {
        a.send(&datagram(n)).unwrap();
    }
    let mut wire = BytesMut::new();
    while let Some(bytes) = a.poll_transmit(now) {
        wire.extend_from_slice(&bytes);
    }
    let split = feed_by_message(now, &wire, &mut b);
    assert!(split.iter().all(|s| !s), "a frame was cut: {split:?}");
    let expected: Vec<LinkEvent> = small
        .iter()
        .map(|&n| LinkEvent::Message(datagram(n)))
        .collect();
    assert_eq!(events(&mut b), expected);

    // A frame larger than a message spans full messages, and the next starts afresh.
    a.send(&datagram(200_000)).unwrap();
    a.send(&datagram(5)).unwrap();
    let mut wire = BytesMut::new();
    while let Some(bytes) = a.poll_transmit(now) {
        wire.extend_from_slice(&bytes);
    }
    let split = feed_by_message(now, &wire, &mut b);
    assert_eq!(split, [true, true, true, false, false]);
    assert_eq!(
        events(&mut b),
        vec![
            LinkEvent::Message(datagram(200_000)),
            LinkEvent::Message(datagram(5))
        ]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn any_mix_of_frame_sizes_and_transmit_points_arrives_whole_and_in_order(
        sizes in proptest::collection::vec((0usize..140_000, proptest::bool::ANY), 1..12),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = connected(now);
        let mut expected = Vec::new();
        for (n, transmit) in sizes {
            a.send(&datagram(n)).unwrap();
            expected.push(LinkEvent::Message(datagram(n)));
            if transmit {
                pump(now, &mut a, &mut b);
            }
        }
        pump(now, &mut a, &mut b);
        proptest::prop_assert_eq!(events(&mut b), expected);
    }
}

#[test]
fn a_busy_link_reuses_the_buffers_the_socket_is_done_with() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    let before = a.outbox.allocated;
    for round in 0..20 {
        for _ in 0..3 {
            a.send(&datagram(60_000)).unwrap();
        }
        // Each buffer is dropped once handled, as the socket writer drops what it wrote.
        while let Some(bytes) = a.poll_transmit(now) {
            b.handle_bytes(now, &bytes);
        }
        assert_eq!(events(&mut b).len(), 3, "round {round}");
    }
    let fresh = a.outbox.allocated - before;
    assert!(fresh <= 3, "{fresh} buffers allocated for 60 messages");
}

/// Everything `a` has queued, as one byte string.
fn wire_of(now: Instant, a: &mut Link) -> BytesMut {
    let mut wire = BytesMut::new();
    while let Some(bytes) = a.poll_transmit(now) {
        wire.extend_from_slice(&bytes);
    }
    wire
}

#[test]
fn a_read_completing_a_partial_message_copies_only_what_it_lacks() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    // Two frames too large to share a message: two messages.
    a.send(&datagram(40_000)).unwrap();
    a.send(&datagram(40_001)).unwrap();
    let wire = wire_of(now, &mut a);
    let (cut, cut2) = (20_000, 60_000);
    // Separate allocations, as two socket reads are.
    b.handle_owned_bytes(now, BytesMut::from(&wire[..cut]));
    assert!(events(&mut b).is_empty());
    let read = BytesMut::from(&wire[cut..cut2]);
    let at = read.as_ptr() as usize;
    b.handle_owned_bytes(now, read);
    assert_eq!(events(&mut b), vec![LinkEvent::Message(datagram(40_000))]);
    // The second message's start stays where it was read: not copied behind the first.
    let rx = b.rx_wire.as_ptr() as usize;
    assert!(
        rx > at && rx < at + (cut2 - cut),
        "the rest of the read was copied"
    );
    b.handle_owned_bytes(now, BytesMut::from(&wire[cut2..]));
    assert_eq!(events(&mut b), vec![LinkEvent::Message(datagram(40_001))]);
    assert!(b.rx_wire.is_empty());
}

#[test]
fn partial_messages_are_completed_in_one_reused_buffer() {
    let now = Instant::now();
    let (mut a, mut b) = connected(now);
    for _ in 0..4 {
        a.send(&datagram(40_000)).unwrap();
    }
    let wire = wire_of(now, &mut a);
    let (mut spares, mut got) = (Vec::new(), 0);
    let mut from = 0;
    // Every read ends inside a message, so each read completes the one before.
    for to in [20_000, 60_000, 100_000, 140_000, wire.len()] {
        b.handle_owned_bytes(now, BytesMut::from(&wire[from..to]));
        spares.push(b.rx_spare.as_ptr());
        // Handled (and dropped) at once, as the node does.
        got += events(&mut b).len();
        from = to;
    }
    assert_eq!(got, 4);
    // The first completion allocates; the others reuse its buffer.
    assert!(
        spares[1..].iter().all(|&p| p == spares[1]),
        "a fresh buffer per partial message"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    #[test]
    fn a_wire_read_in_pieces_of_any_size_arrives_whole_and_in_order(
        sizes in proptest::collection::vec(0usize..100_000, 1..8),
        reads in proptest::collection::vec(1usize..90_000, 1..16),
    ) {
        let now = Instant::now();
        let (mut a, mut b) = connected(now);
        let mut expected = Vec::new();
        for n in sizes {
            a.send(&datagram(n)).unwrap();
            expected.push(LinkEvent::Message(datagram(n)));
        }
        let mut wire = wire_of(now, &mut a);
        for n in reads.into_iter().cycle() {
            if wire.is_empty() {
                break;
            }
            let n = n.min(wire.len());
            b.handle_owned_bytes(now, BytesMut::from(&wire[..n]));
            wire.advance(n);
        }
        proptest::prop_assert_eq!(events(&mut b), expected);
    }
}
