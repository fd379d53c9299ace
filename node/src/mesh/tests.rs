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

use super::advert::Advert;
use super::route::Cost;
use super::sim::{NodeIdx, Sim};
use crate::id::NodeId;
use crate::keys::{LinkKeypair, SignatureBytes};

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

/// The signed advert of a made-up node `fake{i}` with a key of its own, which nothing
/// vouches for (so a first-seen origin), in `like`'s epoch.
fn made_up(i: u32, like: &Advert) -> Advert {
    let mut secret = [9u8; 32];
    secret[..4].copy_from_slice(&i.to_le_bytes());
    let keys = LinkKeypair::from_private(secret);
    Advert {
        origin: NodeId::new(format!("fake{i}")).unwrap(),
        key: keys.public(),
        epoch: like.epoch,
        seq: 1,
        issued_at_ms: like.issued_at_ms,
        links: Vec::new(),
        services: Vec::new(),
        work_types: Vec::new(),
        cert: None,
        successions: Vec::new(),
        signature: SignatureBytes([0; 64]),
    }
    .sign(&keys, &[0; 64])
}
