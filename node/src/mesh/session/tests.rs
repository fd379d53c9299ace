use super::*;
use crate::keys::SignatureBytes;
use crate::mesh::advert::tests::signed;
use crate::mesh::message::CircuitId;

fn id(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

fn keys(b: u8) -> LinkKeypair {
    LinkKeypair::from_private([b; 32])
}

/// A runs a full handshake with B; returns both tables.
fn handshake(now: Instant) -> (Sessions, Sessions) {
    let (a, b, _) = handshake_keeping_init(now);
    (a, b)
}

/// [`handshake`], also returning A's IK message 1 as a relay on the path saw it.
fn handshake_keeping_init(now: Instant) -> (Sessions, Sessions, Bytes) {
    let (a_keys, b_keys) = (keys(1), keys(2));
    let mut a = Sessions::new(id("a"), a_keys.clone());
    let mut b = Sessions::new(id("b"), b_keys.clone());
    let advert = signed("a", &a_keys, 1, 1, &[]);
    let SessionMsg::Init { session, noise } = a
        .initiate(
            now,
            &id("b"),
            (
                b_keys.public(),
                Binding::Pinned {
                    anchor: b_keys.public(),
                },
            ),
            77,
            &advert,
        )
        .unwrap()
    else {
        panic!("message 1 is an init")
    };
    let init_noise = noise.clone();
    let (key, init, pending) = b.read_init(&id("a"), &noise).unwrap();
    assert_eq!(key, a_keys.public());
    assert_eq!(init.advert, advert);
    let peer = PeerIdentity {
        node: id("a"),
        key,
        binding: Binding::TrustedKey,
    };
    let Some(SessionMsg::Accept { session: s2, noise }) =
        b.accept(now, pending, session, peer).unwrap()
    else {
        panic!("message 2 is an accept")
    };
    assert_eq!(s2, 77);
    let peer = a.read_accept(now, &id("b"), s2, &noise).unwrap();
    assert_eq!(peer.key, b_keys.public());
    (a, b, init_noise)
}

#[test]
fn both_ends_seal_the_same_circuit_keys() {
    let now = Instant::now();
    let (mut a, mut b) = handshake(now);
    let circuit = CircuitId {
        opener: id("a"),
        number: 5,
    };
    let (mut seal, _) = a.established(&id("b")).unwrap().secrets.circuit(&circuit);
    let (_, mut open) = b.established(&id("a")).unwrap().secrets.circuit(&circuit);
    let sealed = seal.seal(b"hello".to_vec());
    assert_eq!(open.open(&sealed).unwrap(), b"hello");
}

#[test]
fn a_handshake_for_another_node_does_not_verify() {
    let now = Instant::now();
    let a_keys = keys(1);
    let mut a = Sessions::new(id("a"), a_keys.clone());
    let advert = signed("a", &a_keys, 1, 1, &[]);
    let SessionMsg::Init { noise, .. } = a
        .initiate(
            now,
            &id("b"),
            (
                keys(2).public(),
                Binding::Pinned {
                    anchor: keys(2).public(),
                },
            ),
            1,
            &advert,
        )
        .unwrap()
    else {
        panic!()
    };
    // A relay redirects the handshake to c (which has b's key, even): the prologue names b.
    let c = Sessions::new(id("c"), keys(2));
    assert!(c.read_init(&id("a"), &noise).is_err());
    // And a node whose key a did not name cannot read it at all.
    let d = Sessions::new(id("b"), keys(3));
    assert!(d.read_init(&id("a"), &noise).is_err());
}

#[test]
fn an_init_carrying_someone_elses_advert_is_refused() {
    let now = Instant::now();
    let mut a = Sessions::new(id("a"), keys(1));
    let b = Sessions::new(id("b"), keys(2));
    // A signs an init as itself but carries node x's advert.
    let foreign = signed("x", &keys(9), 1, 1, &[]);
    let SessionMsg::Init { noise, .. } = a
        .initiate(
            now,
            &id("b"),
            (
                keys(2).public(),
                Binding::Pinned {
                    anchor: keys(2).public(),
                },
            ),
            1,
            &foreign,
        )
        .unwrap()
    else {
        panic!()
    };
    assert!(matches!(
        b.read_init(&id("a"), &noise),
        Err(SessionError::AdvertMismatch)
    ));
}

#[test]
fn replayed_opens_are_refused_and_late_ones_within_the_window_accepted() {
    let now = Instant::now();
    let (_, mut b) = handshake(now);
    let s = b.established(&id("a")).unwrap();
    assert!(s.accept_open_seq(now, 0));
    assert!(!s.accept_open_seq(now, 0), "replay");
    assert!(s.accept_open_seq(now, 5));
    assert!(s.accept_open_seq(now, 3), "late but fresh");
    assert!(!s.accept_open_seq(now, 3));
    assert!(s.accept_open_seq(now, 5 + OPEN_WINDOW));
    assert!(!s.accept_open_seq(now, 4), "now behind the window");
}

#[test]
fn simultaneous_initiation_keeps_the_smaller_ids_handshake() {
    let now = Instant::now();
    let (a_keys, b_keys) = (keys(1), keys(2));
    let mut a = Sessions::new(id("a"), a_keys.clone());
    let mut b = Sessions::new(id("b"), b_keys.clone());
    let a_advert = signed("a", &a_keys, 1, 1, &[]);
    let b_advert = signed("b", &b_keys, 1, 1, &[]);
    let SessionMsg::Init {
        session: sa,
        noise: na,
    } = a
        .initiate(
            now,
            &id("b"),
            (
                b_keys.public(),
                Binding::Pinned {
                    anchor: b_keys.public(),
                },
            ),
            10,
            &a_advert,
        )
        .unwrap()
    else {
        panic!()
    };
    let SessionMsg::Init {
        session: sb,
        noise: nb,
    } = b
        .initiate(
            now,
            &id("a"),
            (
                a_keys.public(),
                Binding::Pinned {
                    anchor: a_keys.public(),
                },
            ),
            20,
            &b_advert,
        )
        .unwrap()
    else {
        panic!()
    };
    // a (smaller id) ignores b's init; b answers a's.
    let (_, _, pending) = a.read_init(&id("b"), &nb).unwrap();
    let peer_b = PeerIdentity {
        node: id("b"),
        key: b_keys.public(),
        binding: Binding::Pinned {
            anchor: b_keys.public(),
        },
    };
    assert_eq!(a.accept(now, pending, sb, peer_b).unwrap(), None);
    let (_, _, pending) = b.read_init(&id("a"), &na).unwrap();
    let peer_a = PeerIdentity {
        node: id("a"),
        key: a_keys.public(),
        binding: Binding::Pinned {
            anchor: a_keys.public(),
        },
    };
    let Some(SessionMsg::Accept { noise, .. }) = b.accept(now, pending, sa, peer_a).unwrap() else {
        panic!()
    };
    a.read_accept(now, &id("b"), sa, &noise).unwrap();
    assert_eq!(a.id_with(&id("b")), Some(10));
    assert_eq!(b.id_with(&id("a")), Some(10));
    let _ = SignatureBytes([0; 64]);
}

/// B accepts a copy of A's message 1 again, as the node would (the key and advert check
/// pass: they are A's own).
fn accept_replayed_init(now: Instant, b: &mut Sessions, noise: &[u8]) {
    let (key, _, pending) = b.read_init(&id("a"), noise).unwrap();
    let peer = PeerIdentity {
        node: id("a"),
        key,
        binding: Binding::TrustedKey,
    };
    let answer = b.accept(now, pending, 77, peer).unwrap();
    assert!(matches!(answer, Some(SessionMsg::Accept { .. })));
}

#[test]
fn a_replayed_init_leaves_the_initiators_seal_opening_at_the_responder() {
    let now = Instant::now();
    let (mut a, mut b, init) = handshake_keeping_init(now);
    accept_replayed_init(now, &mut b, &init);
    let circuit = CircuitId {
        opener: id("a"),
        number: 9,
    };
    let (mut seal, _) = a.established(&id("b")).unwrap().secrets.circuit(&circuit);
    let (_, mut open) = b.established(&id("a")).unwrap().secrets.circuit(&circuit);
    let sealed = seal.seal(b"after the replay".to_vec());
    assert_eq!(open.open(&sealed).unwrap(), b"after the replay");
}

/// Whether `b` takes an open sealed by `a` (its established session with b) on `circuit`
/// under session `id`.
fn b_opens_a_seal(
    a: &mut Sessions,
    b: &mut Sessions,
    id: u64,
    number: u64,
) -> Result<(), OpenRefusal> {
    let circuit = CircuitId {
        opener: self::id("a"),
        number,
    };
    let (mut seal, _) = a
        .established(&self::id("b"))
        .unwrap()
        .secrets
        .circuit(&circuit);
    let sealed = seal.seal(b"open".to_vec());
    b.open_with(&self::id("a"), id, |s| {
        let (_, mut open) = s.secrets.circuit(&circuit);
        match open.open(&sealed) {
            Ok(_) => OpenAuth::Authentic,
            Err(_) => OpenAuth::Unauthentic,
        }
    })
}

#[test]
fn a_replayed_init_is_held_aside_and_never_replaces_the_session_in_use() {
    let now = Instant::now();
    let (mut a, mut b, init) = handshake_keeping_init(now);
    accept_replayed_init(now, &mut b, &init);
    assert_eq!(b_opens_a_seal(&mut a, &mut b, 77, 1), Ok(()));
    // Opens keep authenticating under the established session: the copy never takes over.
    accept_replayed_init(now, &mut b, &init);
    assert_eq!(b_opens_a_seal(&mut a, &mut b, 77, 2), Ok(()));
    assert_eq!(
        b_opens_a_seal(&mut a, &mut b, 78, 3),
        Err(OpenRefusal::NoSession),
        "an id b holds no session under"
    );
}

#[test]
fn a_new_session_replaces_the_established_one_once_an_open_under_it_authenticates() {
    let now = Instant::now();
    let (_, mut b) = handshake(now);
    // A restarted: it lost session 77 and sets up session 78, which b holds aside.
    let a_keys = keys(1);
    let mut a = Sessions::new(id("a"), a_keys.clone());
    let advert = signed("a", &a_keys, 2, 1, &[]);
    let target = (
        keys(2).public(),
        Binding::Pinned {
            anchor: keys(2).public(),
        },
    );
    let Ok(SessionMsg::Init { noise, .. }) = a.initiate(now, &id("b"), target, 78, &advert) else {
        panic!("message 1 is an init")
    };
    let (key, _, pending) = b.read_init(&id("a"), &noise).unwrap();
    let peer = PeerIdentity {
        node: id("a"),
        key,
        binding: Binding::TrustedKey,
    };
    let Ok(Some(SessionMsg::Accept { noise, .. })) = b.accept(now, pending, 78, peer) else {
        panic!("message 2 is an accept")
    };
    assert_eq!(b.id_with(&id("a")), Some(77), "held aside until confirmed");
    a.read_accept(now, &id("b"), 78, &noise).unwrap();
    assert_eq!(b_opens_a_seal(&mut a, &mut b, 78, 1), Ok(()));
    assert_eq!(b.id_with(&id("a")), Some(78), "confirmed by the open");
}

#[test]
fn answers_to_unauthentic_opens_are_bounded_per_period() {
    let now = Instant::now();
    let (_, mut b) = handshake(now);
    let answered = (0..UNAUTHENTIC_REPLIES + 5)
        .filter(|_| b.may_answer_unauthentic(now, &id("a")))
        .count();
    assert_eq!(answered, UNAUTHENTIC_REPLIES as usize);
    assert!(b.may_answer_unauthentic(now + UNAUTHENTIC_REPLY_PERIOD, &id("a")));
    assert!(
        !b.may_answer_unauthentic(now, &id("nobody")),
        "no session, no budget: nothing is answered for it"
    );
}
