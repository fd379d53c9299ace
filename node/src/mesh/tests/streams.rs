//! Stream circuits end to end: bulk delivery under the window, and resets when the path
//! breaks.

use std::time::Duration;

use bytes::Bytes;

use super::{STEPS, line};
use crate::id::ServiceName;
use crate::mesh::message::ResetReason;
use crate::mesh::node::Event;
use crate::mesh::sim::Sim;
use crate::mesh::stream::{DEFAULT_WINDOW, StreamEvent, StreamId};

#[test]
fn megabytes_cross_two_hops_intact_within_the_window() {
    let mut sim = Sim::new(21);
    let n = line(&mut sim, 3);
    let payload: Vec<u8> = (0..5 * 1024 * 1024 + 123)
        .map(|_| sim.rng.next_u64() as u8)
        .collect();
    let transfer = sim.transfer(n[0], n[2], &payload, 10 * STEPS).unwrap();
    assert!(transfer.received == payload, "payload corrupted");
    assert!(
        transfer.over_credit_refused,
        "a send beyond the credit is refused"
    );
    assert_eq!(
        transfer.max_unconsumed,
        u64::from(DEFAULT_WINDOW),
        "the sender fills the window and never exceeds it"
    );
    assert_eq!(sim.deliver(n[2], n[0], b"and back"), b"and back");
}

/// The incoming stream's id on `at`, once seen.
fn incoming(sim: &Sim, at: crate::mesh::sim::NodeIdx) -> Option<StreamId> {
    sim.events(at).iter().find_map(|e| match e {
        Event::Stream(StreamEvent::Incoming { id, .. }) => Some(*id),
        _ => None,
    })
}

#[test]
fn cutting_a_link_of_the_path_resets_the_stream_at_both_ends_promptly() {
    for (seed, cut) in [(22, [1, 2]), (23, [0, 1])] {
        let mut sim = Sim::new(seed);
        let n = line(&mut sim, 3);
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
        let remote = incoming(&sim, n[2]).expect("accepted");
        let data = Bytes::from(vec![7u8; 200 * 1024]);
        sim.with_node(n[0], |node, now| node.stream_send(now, id, data))
            .unwrap();
        sim.run_for(Duration::from_micros(1500));
        let start = sim.elapsed();
        sim.cut(n[cut[0]], n[cut[1]]);
        let broken = |id| {
            Event::Stream(StreamEvent::Reset {
                id,
                reason: ResetReason::PathBroken,
            })
        };
        let (near, far) = (broken(id), broken(remote));
        sim.run_until(
            |s| s.events(n[0]).contains(&near) && s.events(n[2]).contains(&far),
            STEPS,
        )
        .unwrap_or_else(|e| panic!("cut {cut:?}: no resets: {e:?}"));
        let took = sim.elapsed() - start;
        assert!(
            took <= Duration::from_millis(5),
            "cut {cut:?}: reset after {took:?}"
        );
    }
}

#[test]
fn a_stream_opens_to_a_neighbour_whose_link_is_up_before_its_advert_arrived() {
    let mut sim = Sim::new(23);
    let a = sim.add_node("a");
    let b = sim.add_node("b");
    sim.connect(a, b, super::cost());
    let b_id = sim.id(b);
    let linked = |s: &mut Sim| {
        s.events(a)
            .iter()
            .any(|e| matches!(e, Event::LinkUp { peer, .. } if *peer == b_id))
    };
    sim.run_until(linked, STEPS).unwrap();
    assert!(
        sim.node(a).advert(&b_id).is_none(),
        "the link is up before b's advert is stored"
    );
    let svc = ServiceName::new("sink").unwrap();
    sim.with_node(b, |node, now| node.listen(now, svc.clone()));
    let id = sim
        .with_node(a, |node, now| {
            node.open_stream(now, &b_id, svc.clone(), svc)
        })
        .expect("the key b proved on the link is enough to open");
    let opened = Event::Stream(StreamEvent::Opened { id });
    sim.run_until(|s| s.events(a).contains(&opened), STEPS)
        .unwrap();
}
