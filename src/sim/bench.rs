//! Scale benchmarks measured in the simulator against the goals of DESIGN.md §10: failure
//! detection, replacement, write propagation, idle traffic, auction cost and placement rate.
//!
//! Everything is virtual time from one seed, so a figure is reproducible exactly; the only
//! wall-clock figure is the simulator's own speed.

use std::time::Instant;

use crate::node::ApiRequest;
use crate::node::PeerState;
use crate::spec::{Resources, ServiceName};

use super::scenario::{service, sweep_case, until_placed};
use super::{Crash, Sim, SimConfig, invariants, nid};

/// Figures for one fleet size.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    pub nodes: usize,
    /// Virtual ms until every node saw every other alive.
    pub join_ms: Option<u64>,
    /// Crash → known down at 99% of live nodes, ms, one sample per crash.
    pub detect_ms: Vec<u64>,
    /// Crash → every slot running once again, ms.
    pub replace_ms: Vec<u64>,
    /// Idle traffic: bytes sent per node per second (headers included), by kind.
    pub idle_bytes_per_node_s: f64,
    pub idle_swim_bytes_per_node_s: f64,
    pub idle_sync_bytes_per_node_s: f64,
    /// Write → visible on every live node, ms.
    pub write_ms: Vec<u64>,
    /// Bids and bid messages per placed slot.
    pub bids_per_slot: f64,
    pub bid_messages_per_slot: f64,
    pub slots_placed: u64,
    /// Deploy → every slot started, ms.
    pub place_ms: Option<u64>,
    /// Live nodes marked down by anyone during an idle period at 10% loss.
    pub false_deaths_at_10pct_loss: Option<usize>,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

pub fn percentile(v: &[u64], p: f64) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_unstable();
    let rank = ((p * s.len() as f64).ceil() as usize).clamp(1, s.len());
    Some(s[rank - 1])
}

/// Runs every measurement on a fleet of `nodes`. `crashes` and `writes` set the sample sizes.
pub fn measure(seed: u64, nodes: usize, crashes: usize, writes: usize) -> Figures {
    let wall = Instant::now();
    let mut f = Figures {
        nodes,
        ..Figures::default()
    };
    let mut cfg = SimConfig::lan(seed, nodes);
    cfg.check_safety = false;
    cfg.capacity = Resources {
        cpu_millis: 4_000,
        memory_bytes: 8 << 30,
    };
    let mut sim = Sim::new(cfg);
    sim.start_all(2);
    let n = nodes;
    f.join_ms = sim.run_until_true(120_000, 200, |s| {
        s.up().all(|(_, node)| node.members().present_count() == n)
    });
    sim.run_for(6_000);

    // Idle traffic: nothing deployed, everyone joined.
    let (b0, s0, y0) = traffic(&sim);
    let idle_ms = 20_000;
    sim.run_for(idle_ms);
    let (b1, s1, y1) = traffic(&sim);
    let per = |a: u64, b: u64| (b - a) as f64 / nodes as f64 / (idle_ms as f64 / 1000.0);
    f.idle_bytes_per_node_s = per(b0, b1);
    f.idle_swim_bytes_per_node_s = per(s0, s1);
    f.idle_sync_bytes_per_node_s = per(y0, y1);

    // Write → visible everywhere (a service with no replicas: only the write travels).
    for k in 0..writes {
        let at = (k * 7919) % nodes;
        let name = format!("cfg{k}");
        let id = sim.api(
            at,
            ApiRequest::Deploy {
                specs: vec![service(&name, 0, 100)],
            },
        );
        let rev = match sim.replies.get(&id) {
            Some(Ok(crate::node::ApiReply::Written(w))) => w[0].revision.clone(),
            other => panic!("deploy not acknowledged: {other:?}"),
        };
        let svc = ServiceName(name);
        let live = sim.up().count();
        if let Some(t) = sim.run_until_true(10_000, 5, |s| s.holding(&svc, &rev) == live) {
            f.write_ms.push(t);
        }
        sim.run_for(200);
    }

    // Placement: two slots per node in one deploy.
    let slots = 2 * nodes as u32;
    let (bids0, batches0) = (sim.bids, sim.bid_batches);
    sim.api(
        0,
        ApiRequest::Deploy {
            specs: vec![service("web", slots, 500)],
        },
    );
    f.place_ms = until_placed(&mut sim, 60_000);
    f.slots_placed = u64::from(slots);
    f.bids_per_slot = (sim.bids - bids0) as f64 / f64::from(slots);
    f.bid_messages_per_slot = (sim.bid_batches - batches0) as f64 / f64::from(slots);
    sim.run_for(5_000);

    // Crashes: detection at 99% of live nodes, then every slot running once again.
    for k in 0..crashes {
        let victim = 1 + (k * 104_729) % (nodes - 1);
        if !sim.nodes[victim].up() {
            continue;
        }
        let vid = nid(victim);
        sim.crash(victim, Crash::Machine);
        let t0 = sim.now;
        let detected = sim.run_until_true(30_000, 10, |s| {
            let live: Vec<_> = s.up().collect();
            let knows = live
                .iter()
                .filter(|(_, node)| !node.members().state(&vid).is_some_and(PeerState::present))
                .count();
            knows * 100 >= live.len() * 99
        });
        if let Some(t) = detected {
            f.detect_ms.push(t);
        }
        let replaced = sim.run_until_true(30_000, 50, |s| {
            s.up().next().is_some_and(|(_, node)| {
                invariants::exactly_n(node.state(), s.nodes.iter().map(|n| &n.runtime)).is_empty()
            })
        });
        if replaced.is_some() {
            f.replace_ms.push(sim.now.since(t0));
        }
        sim.run_for(2_000);
    }

    // False deaths: 20 s idle at 10% loss.
    sim.net.loss_permille = 100;
    let before: Vec<usize> = sim.up().map(|(i, _)| i).collect();
    sim.run_for(20_000);
    sim.net.loss_permille = 0;
    let mut false_deaths = std::collections::BTreeSet::new();
    for (_, node) in sim.up() {
        for &j in &before {
            if node.members().state(&nid(j)) == Some(PeerState::Down) {
                false_deaths.insert(j);
            }
        }
    }
    f.false_deaths_at_10pct_loss = Some(false_deaths.len());

    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}

fn traffic(sim: &Sim) -> (u64, u64, u64) {
    (
        sim.net.total_bytes(),
        sim.net.by_kind[super::net::Kind::Swim as usize].bytes,
        sim.net.by_kind[super::net::Kind::Sync as usize].bytes,
    )
}

/// Convergence after a partition heals: the sweep's heal → liveness time over `seeds`.
pub fn heal_ms(seeds: std::ops::Range<u64>, nodes: usize) -> (Vec<u64>, usize) {
    let mut v = Vec::new();
    let mut failed = 0;
    for seed in seeds {
        let o = sweep_case(seed, nodes);
        match o.converged_after_ms {
            Some(t) if o.violations.is_empty() => v.push(t),
            _ => failed += 1,
        }
    }
    (v, failed)
}

fn p(v: &[u64], q: f64) -> String {
    percentile(v, q).map_or("–".into(), |x| format!("{:.2} s", x as f64 / 1000.0))
}

/// The Markdown report: one table against the §10 goals, then the raw figures per size.
pub fn markdown(figs: &[Figures], heal: Option<(usize, Vec<u64>, usize)>) -> String {
    let mut s = String::new();
    s.push_str("| goal (DESIGN.md §10) | target | nodes | measured (simulated, LAN profile) |\n");
    s.push_str("| --- | --- | --- | --- |\n");
    for f in figs {
        let n = f.nodes;
        s.push_str(&format!(
            "| node killed → replacement running | p50 ≤ 3 s, p99 ≤ 5 s | {n} | p50 {}, p99 {} ({} crashes) |\n",
            p(&f.replace_ms, 0.5),
            p(&f.replace_ms, 0.99),
            f.replace_ms.len()
        ));
        s.push_str(&format!(
            "| crash → known dead at 99% of nodes | p99 ≤ 3 s | {n} | p50 {}, p99 {} ({} crashes) |\n",
            p(&f.detect_ms, 0.5),
            p(&f.detect_ms, 0.99),
            f.detect_ms.len()
        ));
        s.push_str(&format!(
            "| no false deaths at 10% loss | 0 | {n} | {} live nodes marked down during 20 s at 10% loss |\n",
            f.false_deaths_at_10pct_loss
                .map_or("–".into(), |d| d.to_string())
        ));
        s.push_str(&format!(
            "| write → visible on every node | p99 ≤ 1 s | {n} | p50 {}, p99 {} ({} writes) |\n",
            p(&f.write_ms, 0.5),
            p(&f.write_ms, 0.99),
            f.write_ms.len()
        ));
        let rate = f.place_ms.filter(|t| *t > 0).map_or("–".into(), |t| {
            format!("{:.0}/s", f.slots_placed as f64 * 1000.0 / t as f64)
        });
        s.push_str(&format!(
            "| placements per second | ≥ 10,000/s simulated | {n} | {rate} ({} slots in one deploy, deploy → all started in {}) |\n",
            f.slots_placed,
            f.place_ms
                .map_or("never".into(), |t| format!("{:.2} s", t as f64 / 1000.0))
        ));
        s.push_str(&format!(
            "| bid messages per placed slot | (flat in fleet size) | {n} | {:.2} bid batches, {:.2} bids per slot |\n",
            f.bid_messages_per_slot, f.bids_per_slot
        ));
        s.push_str(&format!(
            "| idle traffic per node | ≤ 1 KB/s | {n} | {:.0} B/s sent (SWIM {:.0}, anti-entropy {:.0}) |\n",
            f.idle_bytes_per_node_s, f.idle_swim_bytes_per_node_s, f.idle_sync_bytes_per_node_s
        ));
        s.push_str(&format!(
            "| simulator speed | – | {n} | {:.1} simulated s per wall s ({:.0} s simulated in {:.0} s, release build) |\n",
            f.virtual_ms as f64 / 1000.0 / f.wall_s.max(1e-9),
            f.virtual_ms as f64 / 1000.0,
            f.wall_s
        ));
    }
    if let Some((nodes, v, failed)) = heal {
        s.push_str(&format!(
            "| exactly N after a partition heals | p99 ≤ 5 s (LAN) | {nodes} | p50 {}, p99 {} ({} sweep seeds, {} did not converge) |\n",
            p(&v, 0.5),
            p(&v, 0.99),
            v.len(),
            failed
        ));
    }
    s
}
