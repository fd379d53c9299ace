//! Convergence at scale: 100 nodes by default, 1000 with `WARREN_SIM_BIG=1`.

use std::time::{Duration, Instant};

use super::cost;
use crate::mesh::sim::{NodeIdx, Sim};

/// Steps allowed for a cold start of the big mesh.
const BIG_STEPS: u64 = 100_000_000;

/// Connects `n` nodes at random with average degree about 4: a random tree keeps it
/// connected, and as many extra links again double the degree. Returns the extra links.
fn random_mesh(sim: &mut Sim, n: usize) -> Vec<(NodeIdx, NodeIdx)> {
    let nodes: Vec<NodeIdx> = (0..n).map(|i| sim.add_node(&format!("n{i}"))).collect();
    let mut linked = std::collections::BTreeSet::new();
    let pick = |sim: &mut Sim, bound: usize| (sim.rng.next_u64() % bound as u64) as usize;
    for i in 1..n {
        let j = pick(sim, i);
        linked.insert((j, i));
        sim.connect(nodes[i], nodes[j], cost());
    }
    let mut extra = Vec::new();
    while extra.len() < n {
        let (a, b) = (pick(sim, n), pick(sim, n));
        if a != b && linked.insert((a.min(b), a.max(b))) {
            sim.connect(nodes[a], nodes[b], cost());
            extra.push((nodes[a], nodes[b]));
        }
    }
    extra
}

/// Virtual time between convergence checks: the resolution of the reported figure.
const CHECK_EVERY: Duration = Duration::from_millis(5);

/// Runs until the tables equal the oracle, reports the virtual and real time it took, then
/// runs to idle and checks again.
fn converge(sim: &mut Sim, what: &str) {
    let (start, steps) = (sim.elapsed(), sim.steps());
    let (mut real, mut checks) = (Duration::ZERO, Duration::ZERO);
    loop {
        let t = Instant::now();
        sim.run_for(CHECK_EVERY);
        real += t.elapsed();
        let t = Instant::now();
        let done = sim.is_converged();
        checks += t.elapsed();
        if done {
            break;
        }
        assert!(
            sim.elapsed() - start < Duration::from_secs(60),
            "{what}: no convergence"
        );
    }
    println!(
        "{what}: converged within {:?} virtual ({} steps), {real:?} real time in the sim \
         (+{checks:?} in oracle checks)",
        sim.elapsed() - start,
        sim.steps() - steps,
    );
    sim.run_until_idle(BIG_STEPS).expect("mesh goes idle");
    sim.assert_converged();
    sim.assert_no_loops();
}

#[test]
fn thousand_node_mesh_converges() {
    let big = std::env::var("WARREN_SIM_BIG").is_ok_and(|v| v == "1");
    let n = if big { 1000 } else { 100 };
    let mut sim = Sim::with_capacity(42, n);
    let extra = random_mesh(&mut sim, n);
    converge(&mut sim, &format!("{n} nodes, cold start"));
    let (a, b) = extra[0];
    sim.cut(a, b);
    converge(&mut sim, &format!("{n} nodes, one link cut"));
}
