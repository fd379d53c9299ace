//! Convergence at scale: 100 nodes by default, 1000 with `WARREN_SIM_BIG=1`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::cost;
use crate::keys::xeddsa::VERIFICATIONS;
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

/// CPU time this thread has used: the simulation runs on it alone, so unlike wall time it
/// does not grow when the machine is busy.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec passed.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Adverts every node has originated so far (the sum of their own sequence numbers).
fn adverts_originated(sim: &mut Sim) -> u64 {
    let nodes: Vec<NodeIdx> = sim.indices().collect();
    nodes
        .into_iter()
        .map(|idx| {
            let id = sim.id(idx);
            sim.node(idx).advert(&id).map_or(0, |a| a.seq)
        })
        .sum()
}

/// Runs until the tables equal the oracle, reports the virtual time it took and the real
/// and CPU time the simulation spent (with the work behind it: adverts originated and
/// signatures checked), then runs to idle and checks again.
fn converge(sim: &mut Sim, what: &str) {
    let (start, steps) = (sim.elapsed(), sim.steps());
    let (mut real, mut cpu, mut checks) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    let adverts = adverts_originated(sim);
    let verified = VERIFICATIONS.load(Ordering::Relaxed);
    loop {
        let (t, c) = (Instant::now(), thread_cpu());
        sim.run_for(CHECK_EVERY);
        real += t.elapsed();
        cpu += thread_cpu() - c;
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
        "{what}: converged within {:?} virtual ({} steps), {cpu:?} CPU and {real:?} real time \
         in the sim (+{checks:?} real in oracle checks); {} adverts originated, {} signatures \
         checked",
        sim.elapsed() - start,
        sim.steps() - steps,
        adverts_originated(sim) - adverts,
        VERIFICATIONS.load(Ordering::Relaxed) - verified,
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
