//! An idle fleet's traffic broken down by message kind and SWIM datagram class
//! (`shoal-sim idle`). It counts only what a joined fleet sends with nothing deployed and no
//! fault; join traffic is left out by settling first.

use std::time::Instant;

use crate::sim::scenario::start_and_join;

use super::{SETTLE_AFTER_JOIN_MS, bench_config};

/// An idle fleet's traffic, broken down: what each node sends per second with nothing deployed
/// and no fault, by message kind and by SWIM datagram class.
#[derive(Clone, Debug, Default)]
pub struct IdleFigures {
    pub nodes: usize,
    /// Virtual ms from start until every node counts every other present.
    pub joined_ms: Option<u64>,
    /// Bytes per node per second by `net::Kind` (SWIM, state, bids, sync).
    pub bytes_per_node_s: [f64; 5],
    /// Per SWIM datagram class: (messages, bytes, piggybacked bytes) per node per second.
    pub swim_classes: Vec<(&'static str, f64, f64, f64)>,
    pub virtual_ms: u64,
    pub wall_s: f64,
    /// Wall seconds spent joining.
    pub join_wall_s: f64,
}

/// Joins `nodes` nodes, lets them settle `SETTLE_AFTER_JOIN_MS`, then counts `idle_ms` of idle
/// traffic.
pub fn measure_idle(
    seed: u64,
    nodes: usize,
    tuning: Option<crate::membership::SwimTuning>,
    idle_ms: u64,
) -> IdleFigures {
    let wall = Instant::now();
    let mut cfg = bench_config(seed, nodes);
    cfg.swim_tuning = tuning;
    let (mut sim, joined_ms) = start_and_join(cfg);
    let join_wall_s = wall.elapsed().as_secs_f64();
    sim.run_for(SETTLE_AFTER_JOIN_MS);
    let before = sim.net.by_kind;
    sim.net.swim_classes = Some(Default::default());
    sim.run_for(idle_ms);
    let per = |b: u64| b as f64 / nodes as f64 / (idle_ms as f64 / 1000.0);
    let mut f = IdleFigures {
        nodes,
        joined_ms,
        join_wall_s,
        ..IdleFigures::default()
    };
    for (k, (now, then)) in sim.net.by_kind.iter().zip(before).enumerate() {
        f.bytes_per_node_s[k] = per(now.bytes - then.bytes);
    }
    for (label, c) in sim.net.swim_classes.take().unwrap_or_default() {
        f.swim_classes
            .push((label, per(c.messages), per(c.bytes), per(c.piggyback_bytes)));
    }
    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}
