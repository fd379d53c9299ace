//! Who may join: untrusted keys are refused, and a duplicate node id is detected without
//! disturbing anyone else's routes.

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
