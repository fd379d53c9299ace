//! Who may join: untrusted keys are refused, and a duplicate node id is detected without
//! disturbing anyone else's routes; a reload that stops trusting a neighbour or removes a
//! peer closes its link with the reason.

use super::{STEPS, cost, line, settle};
use crate::mesh::link::LinkEnd;
use crate::mesh::message::CloseReason;
use crate::mesh::node::Event;
use crate::mesh::sim::{NodeIdx, Sim};

/// Whether `at` saw a link to `peer` end as `end`.
fn saw_link_down(sim: &Sim, at: NodeIdx, peer: NodeIdx, end: &LinkEnd) -> bool {
    let peer = sim.id(peer);
    sim.events(at).iter().any(
        |e| matches!(e, Event::LinkDown { peer: Some(p), end: e, .. } if *p == peer && e == end),
    )
}

#[test]
fn untrusted_key_is_refused_and_never_routed() {
    let mut sim = Sim::new(7);
    let n = line(&mut sim, 2);
    let intruder = sim.add_untrusted("intruder");
    // One refusal as responder, one as initiator.
    sim.connect(intruder, n[0], cost());
    sim.connect(n[1], intruder, cost());
    sim.run_until_idle(STEPS).unwrap();
    let untrusted = CloseReason::UntrustedKey;
    for refuser in [n[0], n[1]] {
        assert!(
            saw_link_down(&sim, refuser, intruder, &LinkEnd::ByUs(untrusted)),
            "{} refuses: {:?}",
            sim.id(refuser),
            sim.events(refuser)
        );
    }
    // The intruder learns why. When it was dialled it knows who dialled (and refused) it;
    // when it dialled, the refusal came before the node it reached named itself.
    assert!(saw_link_down(
        &sim,
        intruder,
        n[1],
        &LinkEnd::ByPeer(untrusted)
    ));
    let anonymous = |e: &Event| matches!(e, Event::LinkDown { peer: None, end, .. } if *end == LinkEnd::ByPeer(untrusted));
    assert!(
        sim.events(intruder).iter().any(anonymous),
        "{:?}",
        sim.events(intruder)
    );
    let id = sim.id(intruder);
    for i in n {
        assert!(!sim.node(i).routes().contains_key(&id));
        assert!(
            sim.node(i).advert(&id).is_none(),
            "no advert of the intruder is stored"
        );
    }
    sim.assert_converged();
}

#[test]
fn duplicate_node_id_is_detected_and_does_not_corrupt_routes() {
    let mut sim = Sim::new(8);
    let n = line(&mut sim, 3);
    let side = sim.add_node("n3");
    sim.connect(side, n[0], cost());
    settle(&mut sim);
    let original_key = sim.node(n[1]).config().keys.public();
    let dup = sim.add_duplicate("n1");
    // n2 already links to the real n1: refused at the link. n3 does not: the adverts clash.
    sim.connect(dup, n[2], cost());
    sim.connect(dup, side, cost());
    sim.run_until_idle(STEPS).unwrap();
    let end = LinkEnd::ByUs(CloseReason::DuplicateNodeId);
    assert!(
        saw_link_down(&sim, n[2], dup, &end),
        "{:?}",
        sim.events(n[2])
    );
    let dup_id = sim.id(dup);
    let detected = |e: &Event| matches!(e, Event::DuplicateNodeId { id, .. } if *id == dup_id);
    assert!(
        sim.events(side).iter().any(detected),
        "n3 sees two keys for n1"
    );
    assert!(
        sim.events(dup).iter().any(detected),
        "the duplicate learns it is one"
    );
    for i in [n[0], n[1], n[2], side] {
        let advert = sim
            .node(i)
            .advert(&dup_id)
            .expect("the real n1 stays known");
        assert_eq!(advert.key, original_key);
    }
    sim.assert_converged();
    sim.assert_no_loops();
}

#[test]
fn a_reload_that_stops_trusting_a_neighbour_closes_its_link_and_forgets_it() {
    let mut sim = Sim::new(21);
    let n = line(&mut sim, 3);
    let (gone_key, gone_id) = (sim.node(n[2]).config().keys.public(), sim.id(n[2]));
    let mut policy = sim.node(n[1]).config().trust.clone();
    policy.entries.retain(|e| e.key != gone_key);
    sim.with_node(n[1], |node, now| node.set_trust(now, policy, None));
    sim.run_for(std::time::Duration::from_secs(5));
    let refused = LinkEnd::ByUs(CloseReason::UntrustedKey);
    assert!(
        saw_link_down(&sim, n[1], n[2], &refused),
        "{:?}",
        sim.events(n[1])
    );
    assert!(!sim.is_linked(n[1], n[2]), "its redials are refused too");
    // Without an authority a far node's advert is taken first-seen, so n2's stays until it
    // ages out; but nothing routes to it any more.
    for i in [n[0], n[1]] {
        assert!(!sim.node(i).routes().contains_key(&gone_id));
    }
    // The link that is still trusted was never touched.
    assert!(sim.is_linked(n[0], n[1]));
    assert!(!saw_link_down(&sim, n[1], n[0], &refused));
}

#[test]
fn a_removed_peer_hears_why_its_link_closed_and_is_not_dialled_again() {
    let mut sim = Sim::new(22);
    let n = line(&mut sim, 2);
    for slot in sim.slots_to(n[0], n[1]) {
        sim.with_node(n[0], |node, now| node.remove_peer(now, slot));
    }
    sim.run_for(std::time::Duration::from_secs(120));
    assert!(
        saw_link_down(&sim, n[1], n[0], &LinkEnd::ByPeer(CloseReason::Removed)),
        "{:?}",
        sim.events(n[1])
    );
    assert!(!sim.is_linked(n[0], n[1]), "no redial after removal");
    let ups = sim
        .events(n[0])
        .iter()
        .filter(|e| matches!(e, Event::LinkUp { .. }))
        .count();
    assert_eq!(ups, 1, "only the first link ever came up");
}
