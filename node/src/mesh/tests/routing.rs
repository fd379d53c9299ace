//! Link-state routing under change: reroute around a cut, partition and heal, restarts,
//! ageing out, and random cut/heal sequences against the oracle.

use std::time::Duration;

use proptest::prelude::*;

use super::{STEPS, cost, line, settle};
use crate::mesh::node::Event;
use crate::mesh::route::Cost;
use crate::mesh::sim::{NodeIdx, Sim};

#[test]
fn ring_of_four_reroutes_around_cut_link_within_a_second() {
    let mut sim = Sim::new(11);
    let n: Vec<NodeIdx> = ["a", "b", "c", "d"]
        .iter()
        .map(|x| sim.add_node(x))
        .collect();
    for i in 0..4 {
        sim.connect(n[i], n[(i + 1) % 4], cost());
    }
    settle(&mut sim);
    let b = sim.id(n[1]);
    assert_eq!(sim.node(n[0]).routes()[&b].next_hop, b);
    let start = sim.elapsed();
    sim.cut(n[0], n[1]);
    sim.run_until(Sim::is_converged, STEPS).unwrap();
    let took = sim.elapsed() - start;
    assert!(took <= Duration::from_secs(1), "rerouted after {took:?}");
    let route = sim.node(n[0]).routes()[&b].clone();
    assert_eq!(
        (route.next_hop, route.hops),
        (sim.id(n[3]), 3),
        "a reaches b via d and c"
    );
    sim.assert_no_loops();
}

#[test]
fn partition_and_heal_reconverges() {
    let mut sim = Sim::new(12);
    let a: Vec<NodeIdx> = (0..3).map(|i| sim.add_node(&format!("a{i}"))).collect();
    let b: Vec<NodeIdx> = (0..3).map(|i| sim.add_node(&format!("b{i}"))).collect();
    for side in [&a, &b] {
        for i in 0..3 {
            sim.connect(side[i], side[(i + 1) % 3], cost());
        }
    }
    let bridges = [(a[0], b[0]), (b[1], a[1])];
    for (x, y) in bridges {
        sim.connect(x, y, Cost::from_millis(2000));
    }
    settle(&mut sim);
    assert_eq!(sim.node(a[2]).routes().len(), 5);
    for (x, y) in bridges {
        sim.cut(x, y);
    }
    sim.run_until(Sim::is_converged, STEPS).unwrap();
    assert_eq!(sim.node(a[2]).routes().len(), 2, "only its own side");
    sim.run_for(Duration::from_secs(20));
    sim.assert_converged();
    for (x, y) in bridges {
        sim.heal(x, y);
    }
    let healed = |s: &mut Sim| bridges.iter().all(|&(x, y)| s.is_linked(x, y)) && s.is_converged();
    sim.run_until(healed, STEPS).unwrap();
    assert_eq!(sim.node(a[2]).routes().len(), 5);
    sim.assert_no_loops();
}

#[test]
fn restarted_node_with_newer_epoch_replaces_its_old_adverts() {
    let mut sim = Sim::new(13);
    let n = line(&mut sim, 3);
    // Churn the middle node's sequence numbers well above a fresh start's.
    for _ in 0..3 {
        sim.cut(n[1], n[2]);
        sim.run_for(Duration::from_millis(100));
        sim.heal(n[1], n[2]);
        sim.run_until(|s| s.is_linked(n[1], n[2]) && s.is_converged(), STEPS)
            .unwrap();
    }
    sim.run_for(Duration::from_secs(65));
    for who in [n[1], n[0], n[2]] {
        let id = sim.id(who);
        let old = sim.node(n[(who.0 + 1) % 3]).advert(&id).cloned().unwrap();
        sim.restart(who);
        assert!(sim.epoch(who) > old.epoch);
        let back = |s: &mut Sim| {
            n.iter().all(|&x| s.is_alive(x)) && s.is_linked(n[0], n[1]) && s.is_linked(n[1], n[2])
        };
        sim.run_until(|s| back(s) && s.is_converged(), STEPS)
            .unwrap();
        for other in n.iter().copied().filter(|&x| x != who) {
            let advert = sim.node(other).advert(&id).unwrap().clone();
            assert_eq!(
                advert.epoch,
                sim.epoch(who),
                "{} holds the new run's advert",
                sim.id(other)
            );
            assert!(advert.seq < old.seq, "accepted despite a lower seq");
        }
        sim.assert_no_loops();
    }
    for i in n {
        let dup = sim
            .events(i)
            .iter()
            .find(|e| matches!(e, Event::DuplicateNodeId { .. }));
        assert!(dup.is_none(), "a restart is no duplicate: {dup:?}");
    }
}

#[test]
fn departed_node_ages_out_after_max_age() {
    let mut sim = Sim::new(14);
    let n = line(&mut sim, 3);
    let (max_age, refresh) = {
        let config = sim.node(n[0]).config();
        (config.lsdb.max_age, config.refresh_interval)
    };
    let gone = sim.id(n[2]);
    sim.run_for(Duration::from_secs(7));
    sim.kill(n[2]);
    let killed = sim.elapsed();
    sim.run_until(Sim::is_converged, STEPS).unwrap();
    assert!(!sim.node(n[0]).routes().contains_key(&gone));
    assert!(
        sim.node(n[0]).advert(&gone).is_some(),
        "kept until it ages out"
    );
    sim.run_until(|s| s.node(n[0]).advert(&gone).is_none(), STEPS)
        .unwrap();
    let after = sim.elapsed() - killed;
    assert!(
        after > max_age - refresh && after <= max_age,
        "aged out {after:?} after the kill"
    );
    sim.run_until(|s| s.node(n[1]).advert(&gone).is_none(), STEPS)
        .unwrap();
    sim.assert_converged();
}

/// A random graph of `nodes` nodes from `(a, b, cost)` triples; returns the connected pairs.
fn random_graph(
    sim: &mut Sim,
    nodes: usize,
    edges: &[(usize, usize, u32)],
) -> Vec<(NodeIdx, NodeIdx)> {
    let n: Vec<NodeIdx> = (0..nodes).map(|i| sim.add_node(&format!("n{i}"))).collect();
    let mut pairs = Vec::new();
    for &(a, b, c) in edges {
        let (a, b) = (n[a % nodes], n[b % nodes]);
        if a != b
            && !pairs
                .iter()
                .any(|&(x, y)| (x, y) == (a, b) || (x, y) == (b, a))
        {
            sim.connect(a, b, Cost::from_millis(c * 500));
            pairs.push((a, b));
        }
    }
    pairs
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn random_cuts_and_heals_converge_to_the_oracle(
        seed in any::<u64>(),
        nodes in 3usize..=8,
        edges in prop::collection::vec((0usize..8, 0usize..8, 1u32..5), 2..14),
        ops in prop::collection::vec((any::<bool>(), any::<prop::sample::Index>(), 0u64..3000), 1..10),
    ) {
        let mut sim = Sim::new(seed);
        let pairs = random_graph(&mut sim, nodes, &edges);
        prop_assume!(!pairs.is_empty());
        sim.run_until_idle(STEPS).unwrap();
        sim.assert_converged();
        for (cut, pick, wait) in ops {
            let (a, b) = pairs[pick.index(pairs.len())];
            if cut { sim.cut(a, b) } else { sim.heal(a, b) }
            sim.run_for(Duration::from_millis(wait));
        }
        let settled = |s: &mut Sim| {
            pairs.iter().all(|&(a, b)| s.is_cut(a, b) || s.is_linked(a, b)) && s.is_converged()
        };
        sim.run_until(settled, STEPS).unwrap();
        sim.assert_no_loops();
        for &(a, b) in &pairs {
            sim.heal(a, b);
        }
        let whole = |s: &mut Sim| pairs.iter().all(|&(a, b)| s.is_linked(a, b)) && s.is_converged();
        sim.run_until(whole, STEPS).unwrap();
        sim.assert_no_loops();
    }
}

#[test]
fn crashed_node_relinks_after_restart_at_once_when_it_dials() {
    let mut sim = Sim::new(15);
    let mut n = line(&mut sim, 3);
    // n3 dials n2: a dialler with the larger id, which loses the one-link-per-pair rule.
    n.push(sim.add_node("n3"));
    sim.connect(n[3], n[2], cost());
    settle(&mut sim);
    let idle_timeout = sim.node(n[0]).config().link.idle_timeout;
    // n0 and n3 dial their peers: their hello's newer epoch replaces the half-open link at
    // once. n2 only accepts: its peers hold the half-open link until their idle timeout.
    let fast = Duration::from_secs(1);
    for (who, bound) in [(n[0], fast), (n[3], fast), (n[2], idle_timeout * 2)] {
        let dials_before = sim.events(who).len();
        sim.crash(who);
        sim.restart(who);
        let start = sim.elapsed();
        let back = |s: &mut Sim| (0..3).all(|i| s.is_linked(n[i], n[i + 1]));
        sim.run_until(|s| back(s) && s.is_converged(), STEPS)
            .unwrap();
        let took = sim.elapsed() - start;
        let is_dial = |e: &&Event| matches!(e, Event::Dial(_));
        let dials = sim.events(who)[dials_before..]
            .iter()
            .filter(is_dial)
            .count();
        assert!(took <= bound, "{} relinked after {took:?}", sim.id(who));
        assert!(
            dials <= 10,
            "{} dialled {dials} times to relink",
            sim.id(who)
        );
        sim.assert_no_loops();
    }
}

#[test]
fn a_burst_of_links_coming_up_costs_two_adverts_and_a_lone_cut_is_advertised_at_once() {
    // Every advert is checked by every node of the mesh, so a hub whose eight links come
    // up together advertises the first at once (a leaf is routable within milliseconds)
    // and the other seven in one advert after the debounce delay, not one each.
    let mut sim = Sim::new(21);
    let hub = sim.add_node("hub");
    let leaves: Vec<NodeIdx> = (0..8).map(|i| sim.add_node(&format!("l{i}"))).collect();
    for &leaf in &leaves {
        sim.connect(hub, leaf, cost());
    }
    settle(&mut sim);
    let hub_id = sim.id(hub);
    let seq = |sim: &mut Sim| sim.node(hub).advert(&hub_id).unwrap().seq;
    // One at start (no links yet, sent to no one), the first link's, the burst's.
    assert_eq!(seq(&mut sim), 3);
    // Long after, a cut goes out without waiting for the debounce delay.
    sim.run_for(Duration::from_secs(1));
    let start = sim.elapsed();
    sim.cut(hub, leaves[0]);
    sim.run_until(Sim::is_converged, STEPS).unwrap();
    assert_eq!(seq(&mut sim), 4);
    let advertised_within = sim.elapsed() - start;
    let debounce = Duration::from_millis(50); // MeshConfig's default
    assert!(
        advertised_within < debounce,
        "converged after {advertised_within:?}"
    );
}
