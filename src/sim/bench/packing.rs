//! Placement quality (`shoal-sim packing`): machines used after a `binpack` deploy of mixed
//! sizes through the real auction, against central best-fit, first-fit-decreasing and the volume
//! lower bound on the same requests. Placement speed is measured in `placement.rs`.

use std::time::Instant;

use crate::node::ApiRequest;
use crate::sim::baseline;
use crate::sim::scenario::{service, start_and_join, until_placed};
use crate::spec::Resources;

use super::bench_config;

/// Placement quality: machines hosting at least one instance after a `binpack` deploy of mixed
/// sizes through the real auction, against the central baselines on the same requests.
#[derive(Clone, Debug, Default)]
pub struct PackingFigures {
    pub nodes: usize,
    pub slots: usize,
    /// Machines hosting ≥ 1 instance once every slot runs once (None: never placed).
    pub auction_machines: Option<usize>,
    pub best_fit_machines: usize,
    pub ffd_machines: usize,
    pub lower_bound: usize,
    pub place_ms: Option<u64>,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

/// The mixed `binpack` workload for a fleet of `nodes`: per 100 nodes, 40 × 1 CPU / 1 GiB,
/// 60 × 0.5 / 512 MiB, 80 × 0.25 / 256 MiB, 20 × 1.5 / 2 GiB, 10 × 2 / 1 GiB and
/// 10 × 0.2 / 3 GiB (about 36% of the fleet's CPU, 21% of its memory).
pub fn binpack_workload(nodes: usize) -> Vec<crate::spec::ServiceSpec> {
    let per = |k: usize| ((k * nodes).div_ceil(100)) as u32;
    let mi = |m: u64| m << 20;
    [
        ("pack-a", 40, 1_000, mi(1_024)),
        ("pack-b", 60, 500, mi(512)),
        ("pack-c", 80, 250, mi(256)),
        ("pack-d", 20, 1_500, mi(2_048)),
        ("pack-e", 10, 2_000, mi(1_024)),
        ("pack-f", 10, 200, mi(3_072)),
    ]
    .into_iter()
    .map(|(name, k, cpu, mem)| {
        let mut s = service(name, per(k), cpu);
        s.resources.memory_bytes = mem;
        s.strategy = crate::spec::Strategy::Binpack;
        s
    })
    .collect()
}

/// Deploys `binpack_workload(nodes)` in one write and compares machines used.
pub fn measure_binpack(seed: u64, nodes: usize) -> PackingFigures {
    let wall = Instant::now();
    let cfg = bench_config(seed, nodes);
    let capacity = cfg.capacity;
    let (mut sim, _) = start_and_join(cfg);
    sim.run_for(6_000);
    let specs = binpack_workload(nodes);
    // The requests in the order the deploy lists its slots: service by service, index order.
    let requests: Vec<Resources> = specs
        .iter()
        .flat_map(|s| std::iter::repeat_n(s.resources, s.replicas as usize))
        .collect();
    let caps = vec![capacity; nodes];
    let bf = baseline::best_fit(&caps, &requests).expect("the workload fits the fleet");
    let ffd =
        baseline::first_fit_decreasing(&caps, &requests).expect("the workload fits the fleet");
    sim.api(0, ApiRequest::Deploy { specs });
    let place_ms = until_placed(&mut sim, 120_000);
    sim.run_for(2_000);
    let auction_machines = place_ms.map(|_| {
        sim.nodes
            .iter()
            .filter(|n| n.runtime.live().next().is_some())
            .count()
    });
    PackingFigures {
        nodes,
        slots: requests.len(),
        auction_machines,
        best_fit_machines: bf.machines_used,
        ffd_machines: ffd.machines_used,
        lower_bound: baseline::lower_bound(capacity, &requests),
        place_ms,
        virtual_ms: sim.now.0,
        wall_s: wall.elapsed().as_secs_f64(),
    }
}
