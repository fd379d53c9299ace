//! Key rotation across a mesh of pinned nodes: a node adopts a rotated key while its links
//! run on; peers that pinned the old key follow the succession its adverts and hellos carry;
//! whoever still holds the old key can neither use it nor fork the succession.

use std::time::Duration;

use super::{cost, line, settle};
use crate::keys::{LinkKeypair, SignedSuccession, Succession};
use crate::mesh::link::LinkEnd;
use crate::mesh::message::CloseReason;
use crate::mesh::message::Message;
use crate::mesh::node::Event;
use crate::mesh::sim::{NodeIdx, Sim};
use crate::mesh::trust::TrustEntry;

/// Pins every node of `nodes` to its key at every one of them (instead of the sim's open
/// trust of every pool key).
fn pin_all(sim: &mut Sim, nodes: &[NodeIdx]) {
    let pins: Vec<TrustEntry> = nodes
        .iter()
        .map(|&i| TrustEntry {
            key: sim.node(i).config().keys.public(),
            node: Some(sim.id(i)),
        })
        .collect();
    for &i in nodes {
        let mut policy = sim.node(i).config().trust.clone();
        policy.entries.clone_from(&pins);
        sim.with_node(i, |node, now| node.set_trust(now, policy, None));
    }
    settle(sim);
}

/// Rotates `idx` to the key `[seed; 32]`; returns the old and new key pairs.
fn rotate(sim: &mut Sim, idx: NodeIdx, seed: u8) -> (LinkKeypair, LinkKeypair) {
    let old = sim.node(idx).config().keys.clone();
    let new = LinkKeypair::from_private([seed; 32]);
    let chain = vec![
        Succession::new(old.public(), new.public(), 1)
            .sign(&old, &[seed; 64])
            .unwrap(),
    ];
    let rotated = new.clone();
    sim.with_node(idx, |node, now| node.rotate_key(now, rotated, chain, None))
        .unwrap();
    (old, new)
}

fn link_downs(sim: &Sim, at: NodeIdx) -> usize {
    (sim.events(at).iter())
        .filter(|e| matches!(e, Event::LinkDown { .. }))
        .count()
}

fn accepted(sim: &Sim, at: NodeIdx) -> Vec<SignedSuccession> {
    (sim.events(at).iter())
        .filter_map(|e| match e {
            Event::SuccessionAccepted { statement, .. } => Some(statement.clone()),
            _ => None,
        })
        .collect()
}

fn saw_refusal(sim: &Sim, at: NodeIdx, reason: CloseReason) -> bool {
    let end = LinkEnd::ByUs(reason);
    (sim.events(at).iter()).any(|e| matches!(e, Event::LinkDown { end: e, .. } if *e == end))
}

#[test]
fn pinned_peers_follow_a_rotation_while_running_links_stay_up() {
    let mut sim = Sim::new(71);
    let n = line(&mut sim, 3);
    pin_all(&mut sim, &n);
    assert_eq!(sim.deliver(n[2], n[0], b"before"), b"before");
    let downs: Vec<usize> = n.iter().map(|&i| link_downs(&sim, i)).collect();
    let (old, new) = rotate(&mut sim, n[0], 200);
    sim.run_for(Duration::from_secs(5));
    // The running links and the established session were not touched.
    assert_eq!(
        n.iter().map(|&i| link_downs(&sim, i)).collect::<Vec<_>>(),
        downs
    );
    assert_eq!(sim.deliver(n[2], n[0], b"during"), b"during");
    let n0 = sim.id(n[0]);
    for &peer in &n[1..] {
        let statements = accepted(&sim, peer);
        assert_eq!(statements.len(), 1, "{:?}", sim.events(peer));
        assert_eq!(statements[0].old(), old.public());
        let trust = &sim.node(peer).config().trust;
        assert_eq!(trust.pinned_key(&n0), Some(new.public()));
        assert_eq!(sim.node(peer).advert(&n0).unwrap().key, new.public());
    }
    sim.assert_converged();
    // A new link: n0 now shows its new key, and n1 (which pinned the old one) admits it.
    sim.cut(n[0], n[1]);
    sim.run_for(Duration::from_secs(5));
    sim.heal(n[0], n[1]);
    sim.run_for(Duration::from_secs(60));
    assert!(sim.is_linked(n[0], n[1]), "{:?}", sim.events(n[1]));
    // A new end-to-end session from n2 is made with the new key.
    sim.with_node(n[2], |node, _| node.forget_session(&n0));
    assert_eq!(sim.deliver(n[2], n[0], b"after"), b"after");
    settle(&mut sim);
}

#[test]
fn the_retired_key_can_neither_link_nor_fork_the_succession() {
    let mut sim = Sim::new(72);
    let n = line(&mut sim, 3);
    pin_all(&mut sim, &n);
    let (old, new) = rotate(&mut sim, n[0], 200);
    sim.run_for(Duration::from_secs(5));
    let n0 = sim.id(n[0]);
    // The attacker kept node n0's old key: it tries to link as n0 with it...
    let stale = sim.add_with_key("n0", [0; 32], |_| {});
    assert_eq!(sim.node(stale).config().keys.public(), old.public());
    sim.connect(stale, n[2], cost());
    sim.run_for(Duration::from_secs(5));
    assert!(
        saw_refusal(&sim, n[2], CloseReason::KeyRetired),
        "{:?}",
        sim.events(n[2])
    );
    sim.kill(stale);
    // ... and signs the old key over to a key of its own: a fork.
    let evil = LinkKeypair::from_private([201; 32]);
    let fork = Succession::new(old.public(), evil.public(), 2)
        .sign(&old, &[1; 64])
        .unwrap();
    let forker = sim.add_with_key("n0", [201; 32], |c| c.successions = vec![fork]);
    sim.connect(forker, n[2], cost());
    sim.run_for(Duration::from_secs(5));
    assert!(
        saw_refusal(&sim, n[2], CloseReason::IdPinnedToOtherKey),
        "{:?}",
        sim.events(n[2])
    );
    assert_eq!(accepted(&sim, n[2]).len(), 1, "only the genuine succession");
    let trust = &sim.node(n[2]).config().trust;
    assert_eq!(trust.pinned_key(&n0), Some(new.public()));
    assert_eq!(sim.node(n[2]).advert(&n0).unwrap().key, new.public());
}

#[test]
fn a_forged_succession_in_an_advert_changes_nothing() {
    let mut sim = Sim::new(73);
    let n = line(&mut sim, 3);
    pin_all(&mut sim, &n);
    let victim = sim.id(n[0]);
    let victim_key = sim.node(n[0]).config().keys.public();
    // An attacker without the victim's key claims a succession to its own key, signing
    // the statement with its own key, and floods an advert for the victim.
    let evil = LinkKeypair::from_private([202; 32]);
    let forged = SignedSuccession {
        succession: Succession::new(victim_key, evil.public(), 3),
        signature: Succession::new(evil.public(), victim_key, 3)
            .sign(&evil, &[0; 64])
            .unwrap()
            .signature,
    };
    let mut advert = sim.node(n[2]).advert(&victim).cloned().unwrap();
    advert.seq += 100;
    advert.successions = vec![forged];
    let advert = advert.sign(&evil, &[0; 64]);
    // n1, a neighbour n2 trusts, turned hostile and sends it.
    let to = sim.id(n[2]);
    let message = Message::Advert(advert);
    assert!(sim.with_node(n[1], |node, _| node.inject(&to, &message)));
    sim.run_for(Duration::from_secs(5));
    assert!(accepted(&sim, n[2]).is_empty());
    assert_eq!(sim.node(n[2]).advert(&victim).unwrap().key, victim_key);
    assert_eq!(
        sim.node(n[2]).config().trust.pinned_key(&victim),
        Some(victim_key)
    );
}

#[test]
fn a_reload_after_a_rotation_keeps_the_link_made_with_the_retired_key() {
    let mut sim = Sim::new(74);
    let n = line(&mut sim, 2);
    pin_all(&mut sim, &n);
    rotate(&mut sim, n[0], 200);
    sim.run_for(Duration::from_secs(5));
    let downs = link_downs(&sim, n[1]);
    // n1 reloads its (unchanged) trust settings: its link to n0, made under the key n0
    // has since retired, runs on.
    let policy = sim.node(n[1]).config().trust.clone();
    sim.with_node(n[1], |node, now| node.set_trust(now, policy, None));
    sim.run_for(Duration::from_secs(5));
    assert_eq!(link_downs(&sim, n[1]), downs, "{:?}", sim.events(n[1]));
    assert!(sim.is_linked(n[0], n[1]));
}
