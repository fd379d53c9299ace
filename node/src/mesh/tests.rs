//! The mesh scenario suite: whole meshes of real nodes in the [`super::sim`] simulation.

mod first_seen;
mod hostile;
mod paths;
mod rotation;
mod routing;
mod scale;
mod streams;
mod succession_claims;
mod trust;

use super::route::Cost;
use super::sim::{NodeIdx, Sim};

/// Step budget of one scenario phase: far beyond what any converging phase needs.
const STEPS: u64 = 200_000;

/// The default link cost.
fn cost() -> Cost {
    Cost::DEFAULT
}

/// Nodes `n0..n{len}` connected in a line, each dialling the next, run until idle.
fn line(sim: &mut Sim, len: usize) -> Vec<NodeIdx> {
    let nodes: Vec<NodeIdx> = (0..len).map(|i| sim.add_node(&format!("n{i}"))).collect();
    for pair in nodes.windows(2) {
        sim.connect(pair[0], pair[1], cost());
    }
    settle(sim);
    nodes
}

/// Runs until idle, then checks convergence and loop freedom.
fn settle(sim: &mut Sim) {
    sim.run_until_idle(STEPS).expect("mesh goes idle");
    sim.assert_converged();
    sim.assert_no_loops();
}
