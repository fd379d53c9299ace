//! Key successions that name someone else's key: a pinned node signs its pin over to the
//! key of a node a mesh authority certifies. Neither in a hello nor in an advert may that
//! take the certified node's key from it, nor give its holder the pinned node's id.

use std::time::Duration;

use super::{cost, settle};
use crate::ca::{CERT_VERSION, Certificate, SignedCertificate};
use crate::id::NodeId;
use crate::keys::{LinkKeypair, SignedSuccession, SigningKeypair, Succession};
use crate::mesh::message::Message;
use crate::mesh::node::Event;
use crate::mesh::sim::{NodeIdx, Sim};
use crate::mesh::trust::{self, Binding, TrustDecision, TrustEntry, TrustPolicy};

/// The pinned node A's key (the attacker holds it).
const A_KEY: [u8; 32] = [151; 32];
/// The certified node C's key.
const C_KEY: [u8; 32] = [150; 32];
/// A key of the attacker's, which nothing trusts.
const Z_KEY: [u8; 32] = [152; 32];
/// Inside every certificate's validity and the sim's wall clock.
const WALL_MS: u64 = 1_700_000_000_000;

fn public(private: [u8; 32]) -> crate::keys::PublicKey {
    LinkKeypair::from_private(private).public()
}

fn id(name: &str) -> NodeId {
    NodeId::new(name).unwrap()
}

/// A's statement signing its pinned key over to C's key.
fn a_to_c() -> SignedSuccession {
    Succession::new(public(A_KEY), public(C_KEY), 1)
        .sign(&LinkKeypair::from_private(A_KEY), &[4; 64])
        .unwrap()
}

/// The victim node X (pins "a" to A's key, trusts one authority), the certified node C
/// linked to it, and C's certificate.
struct Setup {
    sim: Sim,
    x: NodeIdx,
    c: NodeIdx,
    cert: SignedCertificate,
}

fn setup(seed: u64) -> Setup {
    let mut sim = Sim::new(seed);
    let ca = SigningKeypair::from_private([9; 32]);
    let cert = Certificate {
        version: CERT_VERSION,
        serial: 5,
        node: id("c"),
        key: public(C_KEY),
        groups: Vec::new(),
        not_before_ms: 0,
        not_after_ms: u64::MAX,
        issuer: ca.public(),
    }
    .sign(&ca);
    let x = sim.add_node("x");
    let policy = TrustPolicy {
        entries: vec![TrustEntry {
            key: public(A_KEY),
            node: Some(id("a")),
        }],
        authorities: crate::ca::Authorities::new([ca.public()]),
        successions: Default::default(),
    };
    sim.with_node(x, |node, now| node.set_trust(now, policy, None));
    let c_cert = cert.clone();
    let c = sim.add_with_key("c", C_KEY, |config| config.cert = Some(c_cert));
    sim.connect(c, x, cost());
    settle(&mut sim);
    assert!(sim.is_linked(x, c));
    Setup { sim, x, c, cert }
}

/// X accepted no succession, C is still certified there (and links again after a cut),
/// and C's key cannot speak for "a".
fn assert_c_keeps_its_key(s: &mut Setup) {
    let accepted = (s.sim.events(s.x).iter())
        .filter(|e| matches!(e, Event::SuccessionAccepted { .. }))
        .count();
    assert_eq!(accepted, 0, "{:?}", s.sim.events(s.x));
    let trust = s.sim.node(s.x).config().trust.clone();
    assert!(trust.successions.is_empty());
    let kc = public(C_KEY);
    assert!(matches!(
        trust::decide_peer(&trust, &kc, &id("c"), Some(&s.cert), WALL_MS),
        TrustDecision::Trusted(Binding::Certified { serial: 5, .. })
    ));
    assert_eq!(
        trust::decide_peer(&trust, &kc, &id("a"), None, WALL_MS),
        TrustDecision::IdPinnedToOtherKey
    );
    s.sim.cut(s.c, s.x);
    s.sim.run_for(Duration::from_secs(5));
    s.sim.heal(s.c, s.x);
    s.sim.run_for(Duration::from_secs(60));
    assert!(s.sim.is_linked(s.c, s.x), "{:?}", s.sim.events(s.x));
}

#[test]
fn a_pinned_node_cannot_sign_its_pin_over_to_a_certified_key_in_a_hello() {
    let mut s = setup(81);
    // The attacker, holding A's key, links under a key of its own and presents A -> C.
    let attacker = s
        .sim
        .add_with_key("a", Z_KEY, |config| config.successions = vec![a_to_c()]);
    s.sim.connect(attacker, s.x, cost());
    s.sim.run_for(Duration::from_secs(5));
    assert!(!s.sim.is_linked(attacker, s.x));
    s.sim.kill(attacker);
    assert_c_keeps_its_key(&mut s);
}

#[test]
fn a_pinned_node_cannot_sign_its_pin_over_to_a_certified_key_in_an_advert() {
    let mut s = setup(82);
    // An advert for "a" carrying A -> C, signed with a key that is not C's (the attacker
    // does not hold C's key), sent by a neighbour of X.
    let mut advert = s.sim.node(s.x).advert(&id("c")).cloned().unwrap();
    advert.origin = id("a");
    advert.seq += 1;
    advert.cert = None;
    advert.successions = vec![a_to_c()];
    let advert = advert.sign(&LinkKeypair::from_private(Z_KEY), &[0; 64]);
    let to = s.sim.id(s.x);
    let message = Message::Advert(advert);
    assert!(s.sim.with_node(s.c, |node, _| node.inject(&to, &message)));
    s.sim.run_for(Duration::from_secs(5));
    assert!(s.sim.node(s.x).advert(&id("a")).is_none());
    assert_c_keeps_its_key(&mut s);
}

#[test]
fn a_holder_of_both_keys_cannot_take_a_certified_key_into_a_pin() {
    let mut s = setup(83);
    // Whoever holds both A's and C's keys presents A -> C under C's key, as "a".
    let attacker = s
        .sim
        .add_with_key("a", C_KEY, |config| config.successions = vec![a_to_c()]);
    s.sim.connect(attacker, s.x, cost());
    s.sim.run_for(Duration::from_secs(5));
    assert!(!s.sim.is_linked(attacker, s.x));
    s.sim.kill(attacker);
    assert_c_keeps_its_key(&mut s);
}
