//! Scale benchmarks measured in the simulator against the goals of DESIGN.md §10: failure
//! detection, replacement, write propagation, idle traffic, auction cost and placement rate.
//!
//! Everything is virtual time from one seed, so a figure is reproducible exactly; the only
//! wall-clock figure is the simulator's own speed.
//!
//! One file per measurement: `fleet` (every §10 figure on one fleet, and convergence after a
//! heal), `membership` (failure detection alone, and its tail), `idle` (idle traffic broken
//! down), `placement` (one large deploy) and `packing` (placement quality against central
//! baselines); `report` turns them into the goals table and the plots. This file holds what they
//! share: the bench's fleet, how long it settles, percentiles and the two membership probes.

mod fleet;
mod idle;
mod membership;
mod packing;
mod placement;
mod report;

pub use fleet::{Figures, heal_ms, measure};
pub use idle::{IdleFigures, measure_idle};
pub use membership::{
    DetectionTail, MembershipFigures, measure_detection_tail, measure_membership,
};
pub use packing::{PackingFigures, binpack_workload, measure_binpack};
pub use placement::{PlacementFigures, measure_placement};
pub use report::Report;

use crate::membership::MemberState;

use super::{Sim, SimConfig, nid};

pub fn percentile(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// The bench's fleet: LAN profile, 4 CPU / 8 GiB per node (`SimConfig::lan`), safety checks off
/// (the sweep and the tests check them).
fn bench_config(seed: u64, nodes: usize) -> SimConfig {
    let mut cfg = SimConfig::lan(seed, nodes);
    cfg.check_safety = false;
    cfg
}

/// How long a fleet settles after every node sees every other, before idle traffic is counted:
/// a joiner pulls follow-up member snapshots 3 s and 10 s after its announce
/// (`membership::snapshot::FOLLOW_UPS_MS`), and at 1,000 nodes one snapshot is ~60 KB, which
/// counted as "idle" would triple the figure. They are join traffic; idle starts after them.
pub const SETTLE_AFTER_JOIN_MS: u64 = 12_000;

/// How long the fleet idles at 10% loss when false deaths are counted (longer than
/// memberlist's 8–12 s suspicion timeout so that a false suspicion can complete).
pub const LOSS_MS: u64 = 30_000;

/// Whether at least 99% of the live nodes no longer count `victim` as present.
fn known_dead_at_99(sim: &Sim, victim: &crate::ids::NodeId) -> bool {
    let (mut live, mut knows) = (0, 0);
    for (_, node) in sim.up() {
        live += 1;
        knows += usize::from(
            !node
                .members()
                .state(victim)
                .is_some_and(MemberState::is_active),
        );
    }
    knows * 100 >= live * 99
}

/// `LOSS_MS` idle at 10% loss of every message: how many live nodes anyone marked down.
/// Checked every second, since a falsely dead node may rejoin before the end.
fn false_deaths_at_10pct_loss(sim: &mut Sim) -> usize {
    sim.net.loss_permille = 100;
    let before: Vec<usize> = sim.up().map(|(i, _)| i).collect();
    let mut dead = std::collections::BTreeSet::new();
    for _ in 0..LOSS_MS / 1_000 {
        sim.run_for(1_000);
        for (_, node) in sim.up() {
            for &j in &before {
                if node.members().state(&nid(j)) == Some(MemberState::Down) {
                    dead.insert(j);
                }
            }
        }
    }
    sim.net.loss_permille = 0;
    dead.len()
}
