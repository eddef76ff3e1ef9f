//! One large deploy on an idle fleet (`shoal-sim placement`): how fast its slots are placed and
//! started, what the auction costs per slot, and the core CPU time each node spends on it.
//! Placement quality (machines used) is measured in `packing.rs`.

use std::time::Instant;

use crate::node::ApiRequest;
use crate::sim::Sim;
use crate::sim::scenario::{service, start_and_join, until_placed};

use super::{SETTLE_AFTER_JOIN_MS, bench_config};

/// One large deploy on an idle fleet: how fast its slots are placed and started.
#[derive(Clone, Debug, Default)]
pub struct PlacementFigures {
    pub nodes: usize,
    pub slots: u32,
    /// Virtual ms from the acknowledged write until every slot runs exactly once.
    pub place_ms: Option<u64>,
    /// Instances running at each virtual second after the write (the last entry is the end).
    pub running_by_second: Vec<usize>,
    pub bids_per_slot: f64,
    pub bid_messages_per_slot: f64,
    /// CPU seconds (the simulator thread's CPU time) each node's core spent from the write
    /// until the end (handling every input and flush, gossip included): the CPU the same work
    /// costs a real agent, which the simulator does not charge to virtual time. Busiest node
    /// and mean.
    pub core_s_max: f64,
    pub core_s_mean: f64,
    /// The busiest node's index (0 took the deploy's API call) and the 99th percentile over
    /// all nodes.
    pub core_busiest: usize,
    pub core_s_p99: f64,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

/// Joins `nodes` nodes, then deploys `slots` replicas of `spread` services in one write (10
/// millicores, 64 MiB each, or less, see below) and runs until every slot runs once or
/// `limit_ms` passes.
pub fn measure_placement(seed: u64, nodes: usize, slots: u32, limit_ms: u64) -> PlacementFigures {
    let wall = Instant::now();
    let (mut sim, _) = start_and_join(bench_config(seed, nodes));
    sim.run_for(SETTLE_AFTER_JOIN_MS);
    let (bids0, batches0) = (sim.bids, sim.bid_batches);
    let core0: Vec<std::time::Duration> = sim.nodes.iter().map(|n| n.core_cpu).collect();
    // 10 millicores and 64 MiB per replica, less where the deploy would otherwise ask for more
    // than 80% of the fleet (100,000 replicas on 100 nodes: 3 millicores, 6.9 MB each).
    let cap = sim.cfg.capacity;
    let share = |fleet: u64| fleet.saturating_mul(nodes as u64) / 10 * 8 / u64::from(slots.max(1));
    let cpu = 10.min(share(cap.cpu_millis)).max(1);
    let memory = (64u64 << 20).min(share(cap.memory_bytes)).max(1 << 20);
    // One deploy; a service holds at most `MAX_REPLICAS` (10,000), so 100,000 replicas are ten
    // services `bulk-0` … `bulk-9`.
    let per = crate::spec::MAX_REPLICAS;
    let specs: Vec<_> = (0..slots.div_ceil(per))
        .map(|k| {
            let mut spec = service(&format!("bulk-{k}"), per.min(slots - k * per), cpu);
            spec.resources.memory_bytes = memory;
            spec
        })
        .collect();
    sim.api(0, ApiRequest::Deploy { specs });
    let start = sim.now;
    let mut f = PlacementFigures {
        nodes,
        slots,
        ..PlacementFigures::default()
    };
    let running = |sim: &Sim| {
        sim.nodes
            .iter()
            .map(|n| {
                n.runtime
                    .live()
                    .filter(|i| i.spec.key.slot.service.0.starts_with("bulk-"))
                    .count()
            })
            .sum::<usize>()
    };
    while sim.now.since(start) < limit_ms {
        if until_placed(&mut sim, 1_000).is_some() {
            f.place_ms = Some(sim.now.since(start));
            f.running_by_second.push(running(&sim));
            break;
        }
        f.running_by_second.push(running(&sim));
        eprintln!(
            "  {nodes} nodes, {slots} slots: {} running at {:.0} virtual s after the write, {:.0} wall s",
            f.running_by_second.last().unwrap_or(&0),
            sim.now.since(start) as f64 / 1000.0,
            wall.elapsed().as_secs_f64()
        );
    }
    f.bids_per_slot = (sim.bids - bids0) as f64 / f64::from(slots);
    f.bid_messages_per_slot = (sim.bid_batches - batches0) as f64 / f64::from(slots);
    let core: Vec<f64> = sim
        .nodes
        .iter()
        .zip(&core0)
        .map(|(n, c0)| (n.core_cpu - *c0).as_secs_f64())
        .collect();
    f.core_s_mean = core.iter().sum::<f64>() / core.len().max(1) as f64;
    f.core_busiest = (0..core.len())
        .max_by(|a, b| core[*a].total_cmp(&core[*b]))
        .unwrap_or(0);
    f.core_s_max = core.get(f.core_busiest).copied().unwrap_or(0.0);
    let mut sorted = core;
    sorted.sort_by(f64::total_cmp);
    f.core_s_p99 = sorted
        .get((sorted.len() * 99 / 100).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0);
    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}
