//! A mesh without an authority, where far nodes are known only by the first key seen for
//! their id: a node must not send work to such a node (anyone could have claimed the id
//! first), and made-up first-seen origins must not lock vouched-for nodes out of the
//! database.

use super::{STEPS, cost, made_up};
use crate::id::ServiceName;
use crate::mesh::lsdb::LsdbLimits;
use crate::mesh::node::Event;
use crate::mesh::sim::{NodeIdx, Sim};
use crate::mesh::stream::StreamEvent;

/// Controller `c` linked to `x`, a trusted node turned hostile, which links (trusting it on
/// first contact) to a node of its own that claims the id "node1" under a key nobody
/// trusts. `c` learns "node1" only from that node's advert. `client` is a front end linked
/// to `c` that checks far keys itself.
fn squatted(seed: u64) -> (Sim, NodeIdx, NodeIdx, NodeIdx) {
    let mut sim = Sim::new(seed);
    let c = sim.add_node("c");
    let x = sim.add_node_with("x", |config| config.trust_first_contact = true);
    let squat = sim.add_untrusted("node1");
    let client = sim.add_node_with("client", |config| config.first_seen_targets = true);
    sim.connect(x, c, cost());
    sim.connect(x, squat, cost());
    sim.connect(client, c, cost());
    sim.run_until_idle(STEPS).unwrap();
    (sim, c, squat, client)
}

fn incoming(sim: &Sim, at: NodeIdx) -> usize {
    sim.events(at)
        .iter()
        .filter(|e| matches!(e, Event::Stream(StreamEvent::Incoming { .. })))
        .count()
}

#[test]
fn a_node_opens_no_stream_to_a_target_it_knows_only_first_seen() {
    let (mut sim, c, squat, client) = squatted(61);
    let node1 = sim.id(squat);
    let squat_key = sim.node(squat).config().keys.public();
    assert!(sim.node(c).is_reachable(&node1), "c routes to node1");
    assert_eq!(
        sim.node(c).advert(&node1).map(|a| a.key),
        Some(squat_key),
        "c took the squatter's key for node1 (first seen)"
    );
    let work = ServiceName::new("work").unwrap();
    sim.with_node(squat, |node, now| node.listen(now, work.clone()));
    sim.run_until_idle(STEPS).unwrap();
    let opened = sim.with_node(c, |node, now| {
        node.open_stream(now, &node1, work.clone(), work.clone())
    });
    sim.run_until_idle(STEPS).unwrap();
    assert_eq!(incoming(&sim, squat), 0, "nothing reached the squatter");
    let Err(refusal) = opened else {
        panic!("c opened a stream to the squatter: {opened:?}");
    };
    let text = refusal.to_string();
    assert!(
        text.contains("node1") && text.contains("--trust node1=") && text.contains("--ca"),
        "the refusal names the node and what to do: {text}"
    );
    // A front end that checks the key itself (`warren run`'s known_nodes) still may.
    let client_open = sim.with_node(client, |node, now| {
        node.open_stream(now, &node1, work.clone(), work.clone())
    });
    assert!(client_open.is_ok(), "{client_open:?}");
    sim.run_until(|s| incoming(s, squat) == 1, STEPS).unwrap();
}

#[test]
fn a_trusted_node_joining_after_a_flood_of_first_seen_origins_is_stored() {
    let mut sim = Sim::new(62);
    let cap = 64;
    let limits = |c: &mut crate::mesh::node::MeshConfig| {
        c.lsdb = LsdbLimits {
            max_nodes: cap,
            ..c.lsdb.clone()
        };
    };
    let n0 = sim.add_node_with("n0", limits);
    let n1 = sim.add_node_with("n1", limits);
    let x = sim.add_node("x");
    sim.connect(n0, n1, cost());
    sim.connect(x, n0, cost());
    sim.run_until_idle(STEPS).unwrap();
    let x_id = sim.id(x);
    let own = sim.node(n0).advert(&x_id).cloned().unwrap();
    let n0_id = sim.id(n0);
    for i in 0..500 {
        let advert = made_up(i, &own);
        let message = crate::mesh::message::Message::Advert(advert);
        assert!(sim.with_node(x, |node, _| node.inject(&n0_id, &message)));
    }
    sim.run_until_idle(10 * STEPS).unwrap();
    assert_eq!(
        sim.node(n0).lsdb_len(),
        cap,
        "the flood filled n0's database"
    );
    // A node every node trusts joins beyond n1.
    let late = sim.add_node("late");
    sim.connect(late, n1, cost());
    sim.run_until_idle(10 * STEPS).unwrap();
    let late_id = sim.id(late);
    for at in [n0, n1] {
        assert!(
            sim.node(at).advert(&late_id).is_some(),
            "{} stored the trusted newcomer",
            sim.id(at)
        );
    }
    assert!(
        sim.node(n0).lsdb_len() <= cap,
        "the database stays within its cap"
    );
    assert_eq!(sim.deliver(n0, late, b"reached"), b"reached");
}
