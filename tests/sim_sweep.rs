//! The fault sweep: many seeds × 50 nodes, each with kills, restarts, a pause, a partition
//! (symmetric, one-way or bridge) and its heal, message loss and duplication, and writes on
//! both sides; safety checked after every runtime change, liveness after the heal.
//!
//! Virtual durations are scaled down so the default sweep (20 seeds × 50 nodes) runs in a few
//! minutes in a debug build: see `shoal::sim::scenario::{SETTLE_MS, FAULTS_MS, QUIET_LIMIT_MS}`.
//! Seeds run on as many threads as the machine has cores; each case is single-threaded and
//! deterministic on its own.
//!
//! Replay one case: `SIM_SEED=<seed> SIM_NODES=<n> cargo test --release --test sim_sweep`.
//! `SIM_SEEDS=<count>` widens the sweep; `SIM_VERBOSE=1` prints each case's faults and
//! `SIM_TRACE_SLOT=db/0` every start of one slot (add `-- --nocapture`).

use std::sync::Mutex;

use shoal::sim::scenario::{SweepOutcome, sweep_case};

fn env(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|s| s.parse().ok())
}

#[test]
fn every_seed_keeps_safety_and_converges_after_faults_heal() {
    let nodes = env("SIM_NODES").map_or(50, |n| n as usize);
    let seeds: Vec<u64> = match env("SIM_SEED") {
        Some(s) => vec![s],
        None => {
            let mut seeds: Vec<u64> = (1..=env("SIM_SEEDS").unwrap_or(20)).collect();
            // Seeds that once failed, kept as regressions: 17 and 19 (the two sides of a
            // healed partition never found each other again), 38 (a machine crashed in the
            // minority restarted its `majority` instance under its old claim) and 57 (a node
            // back from the minority re-placed a `majority` slot whose new owner it still saw
            // down).
            for s in [17, 19, 38, 57] {
                if !seeds.contains(&s) {
                    seeds.push(s);
                }
            }
            seeds
        }
    };
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len());
    let queue = Mutex::new(seeds.into_iter());
    let outcomes: Mutex<Vec<SweepOutcome>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let Some(seed) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let started = std::time::Instant::now();
                    let o = sweep_case(seed, nodes);
                    println!(
                        "seed {seed}: {nodes} nodes, {} virtual s, {} inputs, {} slots re-placed, converged {:?} ms after heal, {} violations, {:.1} s wall",
                        o.virtual_ms / 1000,
                        o.delivered,
                        o.replaced,
                        o.converged_after_ms,
                        o.violations.len(),
                        started.elapsed().as_secs_f64()
                    );
                    outcomes.lock().unwrap().push(o);
                }
            });
        }
    });
    let mut failed: Vec<SweepOutcome> = outcomes
        .into_inner()
        .unwrap()
        .into_iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    failed.sort_by_key(|o| o.seed);
    for o in &failed {
        eprintln!("{}", o.report());
    }
    let seeds: Vec<u64> = failed.iter().map(|o| o.seed).collect();
    assert!(seeds.is_empty(), "seeds with violations: {seeds:?}");
}
