//! A trusted neighbour turned hostile: forged and flooded adverts, spoofed packet sources,
//! stolen and injected circuit packets. Every attack is really sent over a real link (see
//! `MeshNode::inject`), and each test checks both that the attack was refused and that the
//! honest traffic it aimed at went on untouched.

use std::time::Duration;

use bytes::Bytes;

use super::{STEPS, cost, made_up, settle};
use crate::id::{NodeId, ServiceName};
use crate::mesh::advert::{Advert, AdvertLink};
use crate::mesh::lsdb::LsdbLimits;
use crate::mesh::message::{
    CircuitId, Message, Packet, PacketBody, ResetReason, StreamKind, StreamPacket,
};
use crate::mesh::node::Event;
use crate::mesh::node::init_budget::{INIT_BURST, INIT_REFILL};
use crate::mesh::route::Cost;
use crate::mesh::session::{SessionMsg, UNAUTHENTIC_REPLIES};
use crate::mesh::sim::{NodeIdx, Sim};
use crate::mesh::stream::{MAX_RELAYED_PER_OPENER, OPEN_TIMEOUT, StreamEvent, StreamId};

/// A line n0 - n1 - n2 with an attacker `x` linked to `x_peer`; `n1` taps its links.
fn mesh_with_attacker(seed: u64, x_peer: usize) -> (Sim, Vec<NodeIdx>, NodeIdx) {
    let mut sim = Sim::new(seed);
    let n0 = sim.add_node("n0");
    let n1 = sim.add_node_with("n1", |c| c.link.tap = true);
    let n2 = sim.add_node("n2");
    let x = sim.add_node("x");
    sim.connect(n0, n1, cost());
    sim.connect(n1, n2, cost());
    let n = vec![n0, n1, n2];
    sim.connect(x, n[x_peer], cost());
    settle(&mut sim);
    (sim, n, x)
}

/// `x` sends `message` to `to` over their link.
fn inject(sim: &mut Sim, x: NodeIdx, to: NodeIdx, message: &Message) {
    let to = sim.id(to);
    let sent = sim.with_node(x, |node, _| node.inject(&to, message));
    assert!(sent, "the attacker has a link to {to}");
}

fn routes(sim: &mut Sim, nodes: &[NodeIdx]) -> Vec<String> {
    nodes
        .iter()
        .map(|&i| format!("{:?}", sim.node(i).routes()))
        .collect()
}

#[test]
fn a_forged_advert_with_the_victims_key_and_a_huge_epoch_changes_no_route() {
    let (mut sim, n, x) = mesh_with_attacker(31, 0);
    let all = [n[0], n[1], n[2], x];
    let before = routes(&mut sim, &all);
    let victim = sim.id(n[2]);
    let real = sim.node(n[0]).advert(&victim).cloned().unwrap();
    let x_id = sim.id(x);
    let steal = vec![AdvertLink {
        peer: x_id.clone(),
        cost: Cost::from_millis(1),
    }];
    // Replayed with a huge epoch and links pointing at the attacker...
    let mut replayed = real.clone();
    replayed.epoch = u64::MAX;
    replayed.links.clone_from(&steal);
    // ... or signed by the attacker, claiming the victim's key.
    let x_keys = sim.node(x).config().keys.clone();
    let mut resigned = Advert {
        epoch: real.epoch + 1,
        links: steal,
        ..real.clone()
    }
    .sign(&x_keys, &[0; 64]);
    resigned.key = real.key;
    for forged in [replayed, resigned] {
        inject(&mut sim, x, n[0], &Message::Advert(forged));
    }
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(routes(&mut sim, &all), before, "no route changed anywhere");
    for i in all {
        let stored = sim.node(i).advert(&victim).cloned().unwrap();
        assert_eq!(stored, real, "{} keeps the victim's real advert", sim.id(i));
    }
    assert_eq!(
        sim.node(n[0]).adverts_refused(),
        2,
        "both forgeries were refused"
    );
    let counts = sim.node(n[0]).status().advert_counts;
    assert_eq!(
        counts.refused_total(),
        2,
        "the counts metrics read agree: {counts:?}"
    );
    assert_eq!(
        sim.node(n[1]).adverts_refused(),
        0,
        "and none was flooded on"
    );
    sim.assert_converged();
}

#[test]
fn ten_thousand_adverts_are_refused_beyond_the_caps_and_links_stay_up() {
    let mut sim = Sim::new(32);
    let cap = 64;
    let n0 = sim.add_node_with("n0", |c| {
        c.lsdb = LsdbLimits {
            max_nodes: cap,
            ..c.lsdb.clone()
        };
    });
    let n1 = sim.add_node("n1");
    let x = sim.add_node("x");
    sim.connect(n0, n1, cost());
    sim.connect(x, n0, cost());
    settle(&mut sim);
    let downs_before = link_downs(&sim, n0);
    // 5,000 adverts of the attacker's own origin, as fast as it can...
    let x_keys = sim.node(x).config().keys.clone();
    let x_id = sim.id(x);
    let own = sim.node(n0).advert(&x_id).cloned().unwrap();
    for seq in 0..5_000 {
        let advert = Advert {
            seq: own.seq + 1 + seq,
            ..own.clone()
        }
        .sign(&x_keys, &[0; 64]);
        inject(&mut sim, x, n0, &Message::Advert(advert));
    }
    // ... and 5,000 made-up nodes, each with a key of its own.
    for i in 0..5_000u32 {
        inject(&mut sim, x, n0, &Message::Advert(made_up(i, &own)));
    }
    sim.run_until_idle(10 * STEPS).unwrap();
    assert!(
        sim.node(n0).lsdb_len() <= cap,
        "the database stays within its cap"
    );
    assert!(
        sim.node(n0).adverts_refused() >= 9_000,
        "refused {}",
        sim.node(n0).adverts_refused()
    );
    assert_eq!(link_downs(&sim, n0), downs_before, "every link stayed up");
    assert!(sim.is_linked(n0, x) && sim.is_linked(n0, n1));
    assert_eq!(sim.deliver(n1, n0, b"still routing"), b"still routing");
}

#[test]
fn a_neighbours_flood_of_made_up_nodes_leaves_room_for_a_newcomer_another_neighbour_brings() {
    let mut sim = Sim::new(42);
    let n0 = sim.add_node_with("n0", |c| {
        c.lsdb = LsdbLimits {
            max_first_seen: 8,
            ..c.lsdb.clone()
        };
    });
    let n1 = sim.add_node("n1");
    let x = sim.add_node("x");
    sim.connect(n0, n1, cost());
    sim.connect(x, n0, cost());
    settle(&mut sim);
    let x_id = sim.id(x);
    let like = sim.node(n0).advert(&x_id).cloned().unwrap();
    for i in 0..100 {
        inject(&mut sim, x, n0, &Message::Advert(made_up(i, &like)));
    }
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(
        sim.node(n0).first_seen_len(),
        8,
        "the flood filled the places"
    );
    // A newcomer nothing vouches for either, whose advert n1 floods on.
    let newcomer = made_up(1_000, &like);
    inject(&mut sim, n1, n0, &Message::Advert(newcomer.clone()));
    sim.run_until_idle(STEPS).unwrap();
    assert!(
        sim.node(n0).advert(&newcomer.origin).is_some(),
        "n0 stored the newcomer"
    );
    assert_eq!(sim.node(n0).first_seen_len(), 8);
}

fn link_downs(sim: &Sim, at: NodeIdx) -> usize {
    sim.events(at)
        .iter()
        .filter(|e| matches!(e, Event::LinkDown { .. }))
        .count()
}

/// Opens a stream n0 -> n2 ("sink"), returns both ends' ids once data flows.
fn live_stream(sim: &mut Sim, n: &[NodeIdx]) -> (StreamId, StreamId) {
    let svc = ServiceName::new("sink").unwrap();
    sim.with_node(n[2], |node, now| node.listen(now, svc.clone()));
    sim.run_until_idle(STEPS).unwrap();
    let dst = sim.id(n[2]);
    let id = sim
        .with_node(n[0], |node, now| {
            node.open_stream(now, &dst, svc.clone(), svc)
        })
        .unwrap();
    let opened = Event::Stream(StreamEvent::Opened { id });
    sim.run_until(|s| s.events(n[0]).contains(&opened), STEPS)
        .unwrap();
    let remote = incoming(sim, n[2]).last().copied().expect("accepted");
    (id, remote)
}

fn incoming(sim: &Sim, at: NodeIdx) -> Vec<StreamId> {
    sim.events(at)
        .iter()
        .filter_map(|e| match e {
            Event::Stream(StreamEvent::Incoming { id, .. }) => Some(*id),
            _ => None,
        })
        .collect()
}

/// The stream packets `n1` saw in clear on its links.
fn tapped_stream_packets(sim: &Sim, n1: NodeIdx) -> Vec<Packet> {
    sim.events(n1)
        .iter()
        .filter_map(|e| match e {
            Event::LinkPlaintext { frame, .. } => match Message::decode(frame).ok()? {
                Message::Packet(p) if matches!(p.body, PacketBody::Stream(_)) => Some(p),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Sends `data` n0 -> n2 on the live stream and checks it arrives intact.
fn still_delivers(sim: &mut Sim, n: &[NodeIdx], id: StreamId, remote: StreamId, data: &[u8]) {
    let before = received(sim, n[2], remote).len();
    let payload = Bytes::copy_from_slice(data);
    sim.with_node(n[0], |node, now| node.stream_send(now, id, payload))
        .unwrap();
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(&received(sim, n[2], remote)[before..], data);
    let resets = sim
        .events(n[2])
        .iter()
        .any(|e| matches!(e, Event::Stream(StreamEvent::Reset { id, .. }) if *id == remote));
    assert!(!resets, "the honest stream was not reset");
}

fn received(sim: &Sim, at: NodeIdx, id: StreamId) -> Vec<u8> {
    sim.events(at)
        .iter()
        .filter_map(|e| match e {
            Event::Stream(StreamEvent::Data { id: i, data }) if *i == id => Some(data.to_vec()),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn spoofed_sources_and_replayed_opens_create_no_stream() {
    let (mut sim, n, x) = mesh_with_attacker(33, 1);
    let (id, remote) = live_stream(&mut sim, &n);
    // What n1 saw in clear: the open's circuit and sealed bytes, never its service or data.
    let open = tapped_stream_packets(&sim, n[1])
        .into_iter()
        .find(|p| matches!(&p.body, PacketBody::Stream(sp) if matches!(sp.kind, StreamKind::Open { .. })))
        .expect("n1 relayed the open");
    let PacketBody::Stream(sp) = &open.body else {
        unreachable!()
    };
    let n2_id = sim.id(n[2]);
    let session = sim.node(n[0]).session_id(&n2_id).unwrap();
    let attempts = [
        // The captured open, replayed from the attacker's link on the live circuit...
        open.clone(),
        // ... on a fresh circuit number, so the relay pins it ...
        with_circuit_number(&open, sp.circuit.number ^ 1),
        // ... and an open with the victim's source and session id but forged contents.
        with_circuit_number(
            &with_kind(
                &open,
                StreamKind::Open {
                    session,
                    sealed: Bytes::from_static(&[0u8; 80]),
                },
            ),
            sp.circuit.number ^ 2,
        ),
    ];
    for attempt in attempts {
        inject(&mut sim, x, n[1], &Message::Packet(attempt));
    }
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(
        incoming(&sim, n[2]),
        vec![remote],
        "no stream besides the honest one"
    );
    still_delivers(&mut sim, &n, id, remote, b"after the replays");
}

#[test]
fn packets_of_a_live_circuit_from_another_link_are_dropped() {
    let (mut sim, n, x) = mesh_with_attacker(34, 1);
    let (id, remote) = live_stream(&mut sim, &n);
    let circuits = sim.node(n[1]).relayed_circuits();
    assert_eq!(circuits.len(), 1, "n1 relays the stream");
    let circuit = circuits[0].clone();
    let packet = |from_opener, kind| {
        Message::Packet(Packet {
            src: if from_opener {
                NodeId::new("n0").unwrap()
            } else {
                NodeId::new("n2").unwrap()
            },
            dst: if from_opener {
                NodeId::new("n2").unwrap()
            } else {
                NodeId::new("n0").unwrap()
            },
            hops_left: 9,
            body: PacketBody::Stream(StreamPacket {
                circuit: circuit.clone(),
                from_opener,
                kind,
            }),
        })
    };
    let reset = StreamKind::Reset(ResetReason::Cancelled);
    let garbage = StreamKind::Sealed(Bytes::from_static(b"not sealed by n0"));
    for (from_opener, kind) in [
        (true, reset.clone()),
        (false, reset),
        (true, garbage.clone()),
        (false, garbage),
        (true, StreamKind::Close),
    ] {
        inject(&mut sim, x, n[1], &packet(from_opener, kind));
    }
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(
        sim.node(n[1]).relayed_circuits(),
        vec![circuit],
        "the circuit stays pinned"
    );
    let reset_at_opener = sim
        .events(n[0])
        .iter()
        .any(|e| matches!(e, Event::Stream(StreamEvent::Reset { id: i, .. }) if *i == id));
    assert!(!reset_at_opener);
    still_delivers(&mut sim, &n, id, remote, b"untouched");
}

#[test]
fn what_a_relay_sees_of_a_stream_is_sealed() {
    let (mut sim, n, _) = mesh_with_attacker(35, 0);
    let (id, remote) = live_stream(&mut sim, &n);
    let marker = b"SECRET-MARKER-0123456789";
    still_delivers(&mut sim, &n, id, remote, marker);
    let frames: Vec<Vec<u8>> = sim
        .events(n[1])
        .iter()
        .filter_map(|e| match e {
            Event::LinkPlaintext { frame, .. } => Some(frame.to_vec()),
            _ => None,
        })
        .collect();
    let contains = |needle: &[u8]| {
        frames
            .iter()
            .any(|f| f.windows(needle.len()).any(|w| w == needle))
    };
    // The tap works: node ids and advertised services travel in clear in adverts and
    // packet headers...
    assert!(contains(b"n2") && contains(b"sink"));
    // ... but the stream's bytes do not.
    assert!(!contains(marker), "the relay read the payload");
}

fn with_kind(packet: &Packet, kind: StreamKind) -> Packet {
    let PacketBody::Stream(sp) = &packet.body else {
        unreachable!("a stream packet")
    };
    Packet {
        body: PacketBody::Stream(StreamPacket { kind, ..sp.clone() }),
        ..packet.clone()
    }
}

fn with_circuit_number(packet: &Packet, number: u64) -> Packet {
    let PacketBody::Stream(sp) = &packet.body else {
        unreachable!("a stream packet")
    };
    let mut sp = sp.clone();
    sp.circuit.number = number;
    Packet {
        body: PacketBody::Stream(sp),
        ..packet.clone()
    }
}

/// The first session `Init` from `from` to `to` that `n1` relayed, as it saw it in clear.
fn tapped_session_init(sim: &Sim, n1: NodeIdx, from: &NodeId, to: &NodeId) -> Packet {
    sim.events(n1)
        .iter()
        .find_map(|e| match e {
            Event::LinkPlaintext { frame, .. } => match Message::decode(frame).ok()? {
                Message::Packet(p)
                    if &p.src == from
                        && &p.dst == to
                        && matches!(p.body, PacketBody::Session(SessionMsg::Init { .. })) =>
                {
                    Some(p)
                }
                _ => None,
            },
            _ => None,
        })
        .expect("n1 relayed the session init")
}

/// Streams `data` from `a` to `b` and returns what arrived, or why it did not.
fn delivered(sim: &mut Sim, a: NodeIdx, b: NodeIdx, data: &[u8]) -> Result<Vec<u8>, String> {
    sim.transfer(a, b, data, STEPS).map(|t| t.received)
}

#[test]
fn a_replayed_session_init_leaves_the_pairs_session_working_both_ways() {
    let (mut sim, n, x) = mesh_with_attacker(36, 1);
    live_stream(&mut sim, &n);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    let init = tapped_session_init(&sim, n[1], &n0, &n2);
    let session = sim.node(n[0]).session_id(&n2);
    // Replayed later from the attacker's link, with n0's source.
    inject(&mut sim, x, n[1], &Message::Packet(init));
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"there").as_deref(),
        Ok(&b"there"[..])
    );
    assert_eq!(
        delivered(&mut sim, n[2], n[0], b"and back").as_deref(),
        Ok(&b"and back"[..])
    );
    assert_eq!(
        sim.node(n[0]).session_id(&n2),
        session,
        "n0 kept its session: no new handshake was needed"
    );
}

#[test]
fn a_replayed_init_at_a_restarted_node_costs_one_new_handshake_not_the_pair() {
    let (mut sim, n, x) = mesh_with_attacker(37, 1);
    live_stream(&mut sim, &n);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    let init = tapped_session_init(&sim, n[1], &n0, &n2);
    // n2 restarts (same key) and so forgets the session; n0 still holds it. The copied
    // init now gives n2 a session of that id whose keys nobody else holds.
    let session = sim.node(n[0]).session_id(&n2);
    sim.restart(n[2]);
    settle(&mut sim);
    inject(&mut sim, x, n[1], &Message::Packet(init));
    sim.run_until_idle(STEPS).unwrap();
    // n2 answers the open that fails under its copy `NoSession`, and n0 sets up anew.
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"after the restart").as_deref(),
        Ok(&b"after the restart"[..])
    );
    assert_ne!(sim.node(n[0]).session_id(&n2), session, "a new session");
    assert_eq!(
        delivered(&mut sim, n[2], n[0], b"and back").as_deref(),
        Ok(&b"and back"[..])
    );
}

/// `packet` (a session `Init`) with its session id, which travels outside Noise, set to
/// `session`.
fn with_session_id(packet: &Packet, session: u64) -> Packet {
    let PacketBody::Session(SessionMsg::Init { noise, .. }) = &packet.body else {
        unreachable!("a session init")
    };
    Packet {
        body: PacketBody::Session(SessionMsg::Init {
            session,
            noise: noise.clone(),
        }),
        ..packet.clone()
    }
}

/// An `Open` from `src` to `dst` under session `session` on `circuit`, whose seal nobody
/// checked (it is junk).
fn forged_open(src: &NodeId, dst: &NodeId, session: u64, circuit: CircuitId) -> Message {
    Message::Packet(Packet {
        src: src.clone(),
        dst: dst.clone(),
        hops_left: 9,
        body: PacketBody::Stream(StreamPacket {
            circuit,
            from_opener: true,
            kind: StreamKind::Open {
                session,
                sealed: Bytes::from_static(&[0u8; 80]),
            },
        }),
    })
}

#[test]
fn a_replayed_init_with_a_forged_open_leaves_the_pairs_session_in_place() {
    let (mut sim, n, x) = mesh_with_attacker(39, 1);
    live_stream(&mut sim, &n);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    let init = tapped_session_init(&sim, n[1], &n0, &n2);
    let session = sim.node(n[0]).session_id(&n2).expect("a session");
    let copy = session ^ 0xdead_beef;
    // A copy of n0's init under a session id of the attacker's choosing is held aside at n2;
    // then opens under that id that n2 drops before their seal is tried: one naming
    // another node's circuit, one naming a circuit already open.
    inject(
        &mut sim,
        x,
        n[1],
        &Message::Packet(with_session_id(&init, copy)),
    );
    sim.run_until_idle(STEPS).unwrap();
    let foreign = CircuitId {
        opener: sim.id(n[1]),
        number: 1,
    };
    inject(&mut sim, x, n[1], &forged_open(&n0, &n2, copy, foreign));
    let open = sim.node(n[2]).local_circuits();
    for circuit in open {
        inject(&mut sim, x, n[1], &forged_open(&n0, &n2, copy, circuit));
    }
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(
        delivered(&mut sim, n[2], n[0], b"n2 still seals for n0").as_deref(),
        Ok(&b"n2 still seals for n0"[..])
    );
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"and n0 for n2").as_deref(),
        Ok(&b"and n0 for n2"[..])
    );
    assert_eq!(
        (
            sim.node(n[0]).session_id(&n2),
            sim.node(n[2]).session_id(&n0)
        ),
        (Some(session), Some(session)),
        "both ends kept the pair's session: no new handshake was needed"
    );
}

/// Uses up `dst`'s `NoSession` answers to `src` for the period: forged opens under
/// `session`, which fail authentication there, each on a circuit not used before.
fn burn_no_session_answers(sim: &mut Sim, x: NodeIdx, at: NodeIdx, src: &NodeId, session: u64) {
    let dst = sim.id(at);
    for _ in 0..UNAUTHENTIC_REPLIES {
        let circuit = CircuitId {
            opener: src.clone(),
            number: 1 << 40 | sim.steps(),
        };
        inject(sim, x, at, &forged_open(src, &dst, session, circuit));
        sim.step();
    }
    sim.run_until_idle(STEPS).unwrap();
}

#[test]
fn an_open_unanswered_under_a_copied_session_costs_one_timeout_then_a_new_session() {
    // The attacker is n2's neighbour: no relay's caps stand between it and n2.
    let (mut sim, n, x) = mesh_with_attacker(40, 2);
    live_stream(&mut sim, &n);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    let init = tapped_session_init(&sim, n[1], &n0, &n2);
    let session = sim.node(n[0]).session_id(&n2).expect("a session");
    // n2 restarts and is given a copy of n0's init: its session of n0's id has keys nobody
    // holds. The attacker then keeps using up n2's `NoSession` answers, so n0's opens under
    // its old session get no answer at all.
    sim.restart(n[2]);
    settle(&mut sim);
    inject(&mut sim, x, n[2], &Message::Packet(init));
    sim.run_until_idle(STEPS).unwrap();
    let svc = ServiceName::new("sink").unwrap();
    sim.with_node(n[2], |node, now| node.listen(now, svc.clone()));
    burn_no_session_answers(&mut sim, x, n[2], &n0, session);
    let id = sim
        .with_node(n[0], |node, now| {
            node.open_stream(now, &n2, svc.clone(), svc)
        })
        .unwrap();
    let timed_out = Event::Stream(StreamEvent::Reset {
        id,
        reason: ResetReason::OpenTimeout,
    });
    let started = sim.now();
    while !sim.events(n[0]).contains(&timed_out) {
        assert!(
            sim.now() - started < OPEN_TIMEOUT * 2,
            "the open neither timed out nor opened"
        );
        burn_no_session_answers(&mut sim, x, n[2], &n0, session);
        sim.run_for(Duration::from_secs(1));
    }
    // That open is lost, but the next sets up a new session, which no forged open can stop.
    burn_no_session_answers(&mut sim, x, n[2], &n0, session);
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"after one timeout").as_deref(),
        Ok(&b"after one timeout"[..])
    );
    assert_ne!(
        sim.node(n[0]).session_id(&n2),
        Some(session),
        "a new session"
    );
}

#[test]
fn a_flood_of_session_inits_is_read_only_up_to_the_links_budget_and_others_still_connect() {
    // The attacker is n2's neighbour, with a copy of n0's handshake: each copy verifies at
    // n2 and costs it the whole handshake's work.
    let (mut sim, n, x) = mesh_with_attacker(41, 2);
    live_stream(&mut sim, &n);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    let init = tapped_session_init(&sim, n[1], &n0, &n2);
    let flood = u64::from(INIT_BURST) * 8;
    let started = sim.now();
    for _ in 0..flood {
        inject(&mut sim, x, n[2], &Message::Packet(init.clone()));
    }
    // n0 restarts meanwhile and so needs a new session, set up through n1.
    sim.restart(n[0]);
    settle(&mut sim);
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"through the flood").as_deref(),
        Ok(&b"through the flood"[..])
    );
    let refilled = (sim.now() - started).as_nanos() / INIT_REFILL.as_nanos();
    let read = flood - sim.node(n[2]).inits_dropped();
    assert!(
        u128::from(read) <= u128::from(INIT_BURST) + refilled + 1,
        "n2 read {read} of {flood} copied inits in {:?}",
        sim.now() - started
    );
}

/// An `Open` on circuit `(opener, number)` towards `dst`, claiming to come from the
/// acceptor's side (`from_opener: false`).
fn backwards_open(opener: &NodeId, dst: &NodeId, number: u64) -> Message {
    Message::Packet(Packet {
        src: opener.clone(),
        dst: dst.clone(),
        hops_left: 9,
        body: PacketBody::Stream(StreamPacket {
            circuit: CircuitId {
                opener: opener.clone(),
                number,
            },
            from_opener: false,
            kind: StreamKind::Open {
                session: 1,
                sealed: Bytes::from_static(&[0u8; 80]),
            },
        }),
    })
}

#[test]
fn opens_from_the_acceptors_side_pin_nothing_and_do_not_take_the_openers_share() {
    let (mut sim, n, x) = mesh_with_attacker(38, 1);
    let (n0, n2) = (sim.id(n[0]), sim.id(n[2]));
    // The reset n2 answers with comes back on the acceptor's link as if from the opener,
    // so without a check each of these would stay pinned for RELAY_IDLE.
    for number in 0..MAX_RELAYED_PER_OPENER as u64 {
        inject(&mut sim, x, n[1], &backwards_open(&n0, &n2, number));
    }
    sim.run_until_idle(STEPS).unwrap();
    let pinned = sim.node(n[1]).relayed_circuits().len();
    assert_eq!(
        delivered(&mut sim, n[0], n[2], b"n0 still opens").as_deref(),
        Ok(&b"n0 still opens"[..])
    );
    assert_eq!(pinned, 0, "nothing pinned");
}
