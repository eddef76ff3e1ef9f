//! The fault sweep: many seeds × 50 nodes, each with kills, a restart, a pause, a partition
//! (symmetric, one-way or bridge) and its heal, message loss and duplication, and writes on
//! both sides; safety checked after every runtime change, liveness after the heal.
//!
//! Replay one case: `SIM_SEED=<seed> SIM_NODES=<n> cargo test --release --test sim_sweep`.
//! `SIM_SEEDS=<count>` widens the sweep.

use shoal::sim::scenario::sweep_case;

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn every_seed_keeps_safety_and_converges_after_faults_heal() {
    let nodes = env("SIM_NODES").map_or(50, |n| n as usize);
    let seeds: Vec<u64> = match env("SIM_SEED") {
        Some(s) => vec![s],
        None => (1..=env("SIM_SEEDS").unwrap_or(20)).collect(),
    };
    let mut failures = Vec::new();
    for seed in seeds {
        let started = std::time::Instant::now();
        let o = sweep_case(seed, nodes);
        println!(
            "seed {seed}: {} nodes, {} virtual s, {} inputs, converged {:?} ms after heal, {} violations, {:.1} s wall",
            nodes,
            o.virtual_ms / 1000,
            o.delivered,
            o.converged_after_ms,
            o.violations.len(),
            started.elapsed().as_secs_f64()
        );
        if !o.violations.is_empty() {
            eprintln!("{}", o.report());
            failures.push(seed);
        }
    }
    assert!(failures.is_empty(), "seeds with violations: {failures:?}");
}
