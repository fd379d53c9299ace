//! Packets along paths: ping end to end, traceroute hop by hop, and the hop limit.

use std::time::Duration;

use super::{STEPS, cost, line, settle};
use crate::id::ServiceName;
use crate::mesh::message::{ResetReason, Unreachable};
use crate::mesh::node::{Event, ProbeFailure, ProbeId};
use crate::mesh::sim::{NodeIdx, Sim};
use crate::mesh::stream::StreamEvent;

/// Runs until the probe's reply or failure, and returns it.
fn probe_outcome(sim: &mut Sim, from: NodeIdx, probe: ProbeId) -> Event {
    let is_outcome = |e: &Event| match e {
        Event::ProbeReply { probe: p, .. } | Event::ProbeFailed { probe: p, .. } => *p == probe,
        _ => false,
    };
    sim.run_until(|s| s.events(from).iter().any(is_outcome), STEPS)
        .expect("probe outcome");
    sim.events(from)
        .iter()
        .find(|e| is_outcome(e))
        .cloned()
        .expect("just seen")
}

#[test]
fn line_of_three_converges_and_pings_end_to_end() {
    let mut sim = Sim::new(1);
    let n = line(&mut sim, 3);
    let (mid, dst) = (sim.id(n[1]), sim.id(n[2]));
    let route = sim.node(n[0]).routes()[&dst].clone();
    assert_eq!((route.next_hop, route.hops), (mid, 2));
    let probe = sim.with_node(n[0], |node, now| node.probe(now, &dst, None));
    match probe_outcome(&mut sim, n[0], probe) {
        Event::ProbeReply { from, rtt, .. } => {
            assert_eq!(from, dst);
            assert_eq!(
                rtt,
                Duration::from_millis(4),
                "two hops of 1 ms, there and back"
            );
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

#[test]
fn traceroute_probes_fail_at_each_relay_then_reach_the_target() {
    let mut sim = Sim::new(2);
    let n = line(&mut sim, 4);
    let dst = sim.id(n[3]);
    for (hops, relay) in [(0, n[1]), (1, n[2])] {
        let probe = sim.with_node(n[0], |node, now| node.probe(now, &dst, Some(hops)));
        match probe_outcome(&mut sim, n[0], probe) {
            Event::ProbeFailed { from, reason, .. } => {
                assert_eq!(from, Some(sim.id(relay)), "hops {hops}");
                assert_eq!(reason, ProbeFailure::Unreachable(Unreachable::HopLimit));
            }
            other => panic!("hops {hops}: expected a hop-limit failure, got {other:?}"),
        }
    }
    let probe = sim.with_node(n[0], |node, now| node.probe(now, &dst, Some(2)));
    let outcome = probe_outcome(&mut sim, n[0], probe);
    assert!(
        matches!(&outcome, Event::ProbeReply { from, .. } if *from == dst),
        "hops 2 reach the target: {outcome:?}"
    );
}

#[test]
fn packets_beyond_max_hops_fail_with_hop_limit() {
    let mut sim = Sim::new(3);
    let mut n = vec![sim.add_node_with("n0", |c| c.max_hops = 2)];
    n.extend((1..5).map(|i| sim.add_node(&format!("n{i}"))));
    for pair in n.windows(2) {
        sim.connect(pair[0], pair[1], cost());
    }
    settle(&mut sim);
    let (far, near) = (sim.id(n[4]), sim.id(n[3]));
    let probe = sim.with_node(n[0], |node, now| node.probe(now, &far, None));
    match probe_outcome(&mut sim, n[0], probe) {
        Event::ProbeFailed { from, reason, .. } => {
            assert_eq!(from, Some(near.clone()), "the third relay drops it");
            assert_eq!(reason, ProbeFailure::Unreachable(Unreachable::HopLimit));
        }
        other => panic!("expected a hop-limit failure, got {other:?}"),
    }
    let probe = sim.with_node(n[0], |node, now| node.probe(now, &near, None));
    let outcome = probe_outcome(&mut sim, n[0], probe);
    assert!(
        matches!(outcome, Event::ProbeReply { .. }),
        "3 hops fit: {outcome:?}"
    );

    // A stream's Open obeys the same limit and comes back as a reset.
    let svc = ServiceName::new("sink").unwrap();
    sim.with_node(n[4], |node, now| node.listen(now, svc.clone()));
    sim.run_until_idle(STEPS).unwrap();
    let id = sim
        .with_node(n[0], |node, now| {
            node.open_stream(now, &far, svc.clone(), svc)
        })
        .unwrap();
    let reset = Event::Stream(StreamEvent::Reset {
        id,
        reason: ResetReason::HopLimit,
    });
    sim.run_until(|s| s.events(n[0]).contains(&reset), STEPS)
        .expect("the opener learns of the hop limit");
}
