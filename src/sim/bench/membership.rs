//! Failure detection alone, for comparing SWIM parameter sets on one seed
//! (`measure_membership`), and its tail over many crashes on one fleet
//! (`measure_detection_tail`). Nothing is deployed: only membership is measured.

use std::time::Instant;

use crate::sim::net::Kind;
use crate::sim::scenario::start_and_join;
use crate::sim::{Crash, nid};

use super::{SETTLE_AFTER_JOIN_MS, bench_config, false_deaths_at_10pct_loss, known_dead_at_99};

/// Failure detection alone, for comparing SWIM parameter sets on the same seed: the same
/// fleet, the same victims, the same loss, nothing deployed.
#[derive(Clone, Debug, Default)]
pub struct MembershipFigures {
    pub nodes: usize,
    /// Crash → known down at 99% of live nodes, ms, one sample per crash.
    pub detect_ms: Vec<u64>,
    /// Crashes not detected by 99% of live nodes within the 60 s limit.
    pub undetected: usize,
    /// Live nodes anyone marked down during `LOSS_MS` at 10% loss.
    pub false_deaths: usize,
    /// Idle SWIM bytes sent per node per second (headers included).
    pub idle_swim_bytes_per_node_s: f64,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

/// Runs the detection measurements with `tuning` (None: our `lan` profile for the fleet size).
pub fn measure_membership(
    seed: u64,
    nodes: usize,
    crashes: usize,
    tuning: Option<crate::membership::SwimTuning>,
) -> MembershipFigures {
    let wall = Instant::now();
    let mut cfg = bench_config(seed, nodes);
    cfg.swim_tuning = tuning;
    let (mut sim, _) = start_and_join(cfg);
    sim.run_for(SETTLE_AFTER_JOIN_MS);
    let s0 = sim.net.by_kind[Kind::Swim as usize].bytes;
    sim.run_for(20_000);
    let s1 = sim.net.by_kind[Kind::Swim as usize].bytes;
    let mut f = MembershipFigures {
        nodes,
        idle_swim_bytes_per_node_s: (s1 - s0) as f64 / nodes as f64 / 20.0,
        ..MembershipFigures::default()
    };
    eprintln!(
        "  {nodes} nodes (membership): joined and idle at {:.1} virtual s, {:.1} wall s",
        sim.now.0 as f64 / 1000.0,
        wall.elapsed().as_secs_f64()
    );
    for k in 0..crashes {
        let victim = 1 + (k * 104_729) % (nodes - 1);
        if !sim.nodes[victim].up() {
            continue;
        }
        let vid = nid(victim);
        sim.crash(victim, Crash::Machine);
        let detected = sim.run_until_true(60_000, 10, |s| known_dead_at_99(s, &vid));
        match detected {
            Some(t) => f.detect_ms.push(t),
            None => f.undetected += 1,
        }
        sim.run_for(2_000);
    }
    eprintln!(
        "  {nodes} nodes (membership): crashes measured at {:.1} virtual s, {:.1} wall s",
        sim.now.0 as f64 / 1000.0,
        wall.elapsed().as_secs_f64()
    );
    f.false_deaths = false_deaths_at_10pct_loss(&mut sim);
    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}

/// The tail of failure detection: many crashes on one fleet, each victim restarted and rejoined
/// before the next, so that percentiles up to p99 rest on enough samples (the bench's 5–10
/// crashes per size cannot show a tail).
#[derive(Clone, Debug, Default)]
pub struct DetectionTail {
    pub nodes: usize,
    /// Crash → known down at 99% of live nodes, ms, one per crash.
    pub detect_ms: Vec<u64>,
    /// Crash → the first SWIM datagram anyone sends to the victim (a probe, or gossip, which
    /// detects nothing), ms.
    pub first_contact_ms: Vec<u64>,
    /// Crash → the first check of the victim, ms: a probe (`ping`, or a relay's
    /// `indirect-ping`) or the `suspected` notice of its ring watcher (membership `watch.rs`).
    /// Detection cannot start before it.
    pub first_check_ms: Vec<u64>,
    /// `(detection, first contact, first check)` ms of the crashes known dead at 99% only
    /// after 3 s.
    pub slow: Vec<(u64, Option<u64>, Option<u64>)>,
    /// Crashes not detected within 60 s.
    pub undetected: usize,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

/// Crashes `crashes` nodes one after the other on a joined LAN fleet of `nodes` (our tuning),
/// each restarted after its detection and rejoined before the next crash.
pub fn measure_detection_tail(seed: u64, nodes: usize, crashes: usize) -> DetectionTail {
    let wall = Instant::now();
    let (mut sim, _) = start_and_join(bench_config(seed, nodes));
    sim.run_for(SETTLE_AFTER_JOIN_MS);
    let mut f = DetectionTail {
        nodes,
        ..DetectionTail::default()
    };
    for k in 0..crashes {
        let victim = 1 + (k * 104_729) % (nodes - 1);
        let vid = nid(victim);
        sim.crash(victim, Crash::Machine);
        let down_at = sim.now;
        let detected = sim.run_until_true(60_000, 10, |s| known_dead_at_99(s, &vid));
        let n = &sim.nodes[victim];
        let contact = n.first_swim_after_down.map(|t| t.since(down_at));
        let check = n.first_check_after_down.map(|t| t.since(down_at));
        match detected {
            Some(t) => f.detect_ms.push(t),
            None => f.undetected += 1,
        }
        f.first_contact_ms.extend(contact);
        f.first_check_ms.extend(check);
        if detected.is_none_or(|t| t > 3_000) {
            f.slow.push((detected.unwrap_or(u64::MAX), contact, check));
        }
        sim.restart(victim);
        let back = sim.run_until_true(30_000, 100, |s| {
            s.up()
                .all(|(_, node)| node.members().present_count() == nodes)
        });
        if back.is_none() {
            eprintln!("  crash {k}: node {victim} had not rejoined everywhere after 30 s");
        }
        sim.run_for(1_000);
        if (k + 1) % 50 == 0 {
            eprintln!(
                "  {nodes} nodes: {} crashes at {:.0} virtual s, {:.0} wall s",
                k + 1,
                sim.now.0 as f64 / 1000.0,
                wall.elapsed().as_secs_f64()
            );
        }
    }
    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}
