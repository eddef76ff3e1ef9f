//! The whole §10 measurement on one fleet size (`measure`): join, idle traffic, write
//! propagation, one deploy's placement rate and spread, crashes with detection and replacement,
//! false deaths under loss; and convergence after a partition heals over sweep seeds
//! (`heal_ms`). The other files measure one of these alone, with more samples.

use std::time::Instant;

use crate::node::ApiRequest;
use crate::sim::net::Kind;
use crate::sim::scenario::{join, service, sweep_case, until_placed};
use crate::sim::{Crash, Sim, invariants, nid};
use crate::spec::ServiceName;

use super::{SETTLE_AFTER_JOIN_MS, bench_config, false_deaths_at_10pct_loss, known_dead_at_99};

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
    /// Spread strategy evenness of that deploy: `(min, max)` instances per node.
    pub spread_min_max: Option<(usize, usize)>,
    /// Live nodes marked down by anyone during `LOSS_MS` at 10% loss.
    pub false_deaths_at_10pct_loss: Option<usize>,
    /// Crashes not detected by 99% of live nodes within 30 s.
    pub undetected: usize,
    pub virtual_ms: u64,
    pub wall_s: f64,
}

/// Runs every measurement on a fleet of `nodes`. `crashes` and `writes` set the sample sizes,
/// `slots` the size of the one deploy that measures the placement rate (its service stays
/// deployed during the crashes).
pub fn measure(seed: u64, nodes: usize, crashes: usize, writes: usize, slots: u32) -> Figures {
    let wall = Instant::now();
    let mut f = Figures {
        nodes,
        ..Figures::default()
    };
    let mut sim = Sim::new(bench_config(seed, nodes));
    sim.start_all(2);
    let phase = |sim: &Sim, what: &str| {
        eprintln!(
            "  {nodes} nodes: {what} at {:.1} virtual s, {:.1} wall s, {} inputs",
            sim.now.0 as f64 / 1000.0,
            wall.elapsed().as_secs_f64(),
            sim.delivered
        );
    };
    phase(&sim, "started");
    f.join_ms = join(&mut sim);
    sim.run_for(SETTLE_AFTER_JOIN_MS);
    phase(&sim, "joined");

    // Idle traffic: nothing deployed, everyone joined.
    let (b0, s0, y0) = traffic(&sim);
    let idle_ms = 20_000;
    sim.run_for(idle_ms);
    let (b1, s1, y1) = traffic(&sim);
    let per = |a: u64, b: u64| (b - a) as f64 / nodes as f64 / (idle_ms as f64 / 1000.0);
    f.idle_bytes_per_node_s = per(b0, b1);
    f.idle_swim_bytes_per_node_s = per(s0, s1);
    f.idle_sync_bytes_per_node_s = per(y0, y1);
    phase(&sim, "idle measured");

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
        let svc = ServiceName(name.into());
        let live = sim.up().count();
        if let Some(t) = sim.run_until_true(10_000, 5, |s| s.holding(&svc, &rev) == live) {
            f.write_ms.push(t);
        }
        sim.run_for(200);
    }

    phase(&sim, "writes measured");
    // Placement: `slots` slots in one deploy.
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
    let web = ServiceName("web".into());
    let per_node: Vec<usize> = sim
        .nodes
        .iter()
        .map(|n| {
            n.runtime
                .live()
                .filter(|i| i.spec.key.slot.service == web)
                .count()
        })
        .collect();
    f.spread_min_max = Some((
        per_node.iter().copied().min().unwrap_or(0),
        per_node.iter().copied().max().unwrap_or(0),
    ));
    sim.run_for(5_000);
    phase(&sim, "placement measured");

    // Crashes: detection at 99% of live nodes, then every slot running once again.
    for k in 0..crashes {
        let victim = 1 + (k * 104_729) % (nodes - 1);
        if !sim.nodes[victim].up() {
            continue;
        }
        let vid = nid(victim);
        sim.crash(victim, Crash::Machine);
        let t0 = sim.now;
        let detected = sim.run_until_true(30_000, 10, |s| known_dead_at_99(s, &vid));
        match detected {
            Some(t) => f.detect_ms.push(t),
            None => f.undetected += 1,
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

    phase(&sim, "crashes measured");
    // False deaths: `LOSS_MS` idle at 10% loss, checked every second.
    f.false_deaths_at_10pct_loss = Some(false_deaths_at_10pct_loss(&mut sim));

    f.virtual_ms = sim.now.0;
    f.wall_s = wall.elapsed().as_secs_f64();
    f
}

fn traffic(sim: &Sim) -> (u64, u64, u64) {
    (
        sim.net.total_bytes(),
        sim.net.by_kind[Kind::Swim as usize].bytes,
        sim.net.by_kind[Kind::Sync as usize].bytes,
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
