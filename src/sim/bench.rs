//! Scale benchmarks measured in the simulator against the goals of DESIGN.md §10: failure
//! detection, replacement, write propagation, idle traffic, auction cost and placement rate.
//!
//! Everything is virtual time from one seed, so a figure is reproducible exactly; the only
//! wall-clock figure is the simulator's own speed.

use std::time::Instant;

use crate::membership::MemberState;
use crate::node::ApiRequest;
use crate::spec::{Resources, ServiceName};

use super::scenario::{join, service, start_and_join, sweep_case, until_placed};
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
    /// Spread strategy evenness of that deploy: `(min, max)` instances per node.
    pub spread_min_max: Option<(usize, usize)>,
    /// Live nodes marked down by anyone during `LOSS_MS` at 10% loss.
    pub false_deaths_at_10pct_loss: Option<usize>,
    /// Crashes not detected by 99% of live nodes within 30 s.
    pub undetected: usize,
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

fn traffic(sim: &Sim) -> (u64, u64, u64) {
    (
        sim.net.total_bytes(),
        sim.net.by_kind[super::net::Kind::Swim as usize].bytes,
        sim.net.by_kind[super::net::Kind::Sync as usize].bytes,
    )
}

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
    let s0 = sim.net.by_kind[super::net::Kind::Swim as usize].bytes;
    sim.run_for(20_000);
    let s1 = sim.net.by_kind[super::net::Kind::Swim as usize].bytes;
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
    let bf = super::baseline::best_fit(&caps, &requests).expect("the workload fits the fleet");
    let ffd = super::baseline::first_fit_decreasing(&caps, &requests)
        .expect("the workload fits the fleet");
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
        lower_bound: super::baseline::lower_bound(capacity, &requests),
        place_ms,
        virtual_ms: sim.now.0,
        wall_s: wall.elapsed().as_secs_f64(),
    }
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

/// Everything one `shoal-sim bench` run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub figs: Vec<Figures>,
    /// Detection with our `lan` profile and with memberlist's defaults, same seeds, by size.
    pub ours_membership: Vec<MembershipFigures>,
    pub memberlist: Vec<MembershipFigures>,
    pub packing: Vec<PackingFigures>,
    /// `(nodes, heal → exactly N ms per converged seed, seeds that did not converge)`.
    pub heal: Option<(usize, Vec<u64>, usize)>,
}

fn secs(v: Option<u64>) -> String {
    v.map_or("–".into(), |x| format!("{:.2} s", x as f64 / 1000.0))
}

fn detect(m: &MembershipFigures) -> String {
    let mut s = format!(
        "p50 {}, p99 {}",
        secs(percentile(&m.detect_ms, 0.5)),
        secs(percentile(&m.detect_ms, 0.99))
    );
    if m.undetected > 0 {
        s.push_str(&format!(", {} not within 60 s", m.undetected));
    }
    s
}

impl Report {
    /// The goals table of DESIGN.md §10 with the baseline measured beside ours, per size.
    pub fn goals_markdown(&self) -> String {
        let mut s = String::new();
        s.push_str("| goal (DESIGN.md §10) | anchor | nodes | baseline in this simulator | ours (simulated) | target |\n");
        s.push_str("| --- | --- | --- | --- | --- | --- |\n");
        for o in &self.ours_membership {
            // The baseline on the same fleet size, when it was measured.
            let m = self.memberlist.iter().find(|m| m.nodes == o.nodes);
            let base = |f: &dyn Fn(&MembershipFigures) -> String| {
                m.map_or("not measured".into(), |m| {
                    format!("memberlist defaults: {}", f(m))
                })
            };
            s.push_str(&format!(
                "| crash → known dead at 99% of nodes | memberlist defaults 12–72 s | {} | {} | {} ({} crashes) | p99 ≤ 3 s |\n",
                o.nodes,
                base(&|m| format!("{} ({} crashes)", detect(m), m.detect_ms.len() + m.undetected)),
                detect(o),
                o.detect_ms.len() + o.undetected
            ));
            s.push_str(&format!(
                "| no false deaths at 10% loss | – | {} | {} | {} | 0 |\n",
                o.nodes,
                base(&|m| m.false_deaths.to_string()),
                o.false_deaths
            ));
            s.push_str(&format!(
                "| idle SWIM traffic per node | Serf up to ≈ 42 KB/s | {} | {} | {:.0} B/s | (part of ≤ 1 KB/s) |\n",
                o.nodes,
                base(&|m| format!("{:.0} B/s", m.idle_swim_bytes_per_node_s)),
                o.idle_swim_bytes_per_node_s
            ));
        }
        for p in &self.packing {
            let ratio = |m: usize| {
                p.auction_machines.map_or("–".into(), |a| {
                    format!("{:.3}×", a as f64 / m.max(1) as f64)
                })
            };
            s.push_str(&format!(
                "| placement quality vs a central best-fit | Sparrow within 12% of ideal | {} | best-fit {} machines, FFD {}, volume bound {} ({} binpack slots) | {} machines: {} best-fit, {} FFD | ≤ 1.05× best-fit |\n",
                p.nodes,
                p.best_fit_machines,
                p.ffd_machines,
                p.lower_bound,
                p.slots,
                p.auction_machines.map_or("never placed".into(), |a| a.to_string()),
                ratio(p.best_fit_machines),
                ratio(p.ffd_machines)
            ));
        }
        for f in &self.figs {
            let n = f.nodes;
            s.push_str(&format!(
                "| node killed → replacement running | Kubernetes ≈ 350 s, Nomad ≈ 20–30 s, Swarm ≈ 15 s | {n} | – | p50 {}, p99 {} ({} crashes) | p50 ≤ 3 s, p99 ≤ 5 s |\n",
                p(&f.replace_ms, 0.5), p(&f.replace_ms, 0.99), f.replace_ms.len()
            ));
            s.push_str(&format!(
                "| write → visible on every node | Serf ≈ 2.2 s | {n} | – | p50 {}, p99 {} ({} writes) | p99 ≤ 1 s |\n",
                p(&f.write_ms, 0.5), p(&f.write_ms, 0.99), f.write_ms.len()
            ));
            let rate = f.place_ms.filter(|t| *t > 0).map_or("–".into(), |t| {
                format!("{:.0}/s", f.slots_placed as f64 * 1000.0 / t as f64)
            });
            s.push_str(&format!(
                "| placements per second | Nomad ≈ 1,500–3,750/s | {n} | – | {rate} ({} slots in one deploy, all started after {}) | ≥ 10,000/s simulated |\n",
                f.slots_placed,
                secs(f.place_ms)
            ));
            s.push_str(&format!(
                "| bids per placed slot | – | {n} | – | {:.2} bids in {:.2} bid messages | flat in fleet size |\n",
                f.bids_per_slot, f.bid_messages_per_slot
            ));
            if let Some((lo, hi)) = f.spread_min_max {
                s.push_str(&format!(
                    "| spread evenness ({} slots over {n} nodes) | – | {n} | – | {lo}–{hi} instances per node | – |\n",
                    f.slots_placed
                ));
            }
            s.push_str(&format!(
                "| idle traffic per node (all kinds) | Serf up to ≈ 42 KB/s | {n} | – | {:.0} B/s (SWIM {:.0}, anti-entropy {:.0}) | ≤ 1 KB/s |\n",
                f.idle_bytes_per_node_s, f.idle_swim_bytes_per_node_s, f.idle_sync_bytes_per_node_s
            ));
            s.push_str(&format!(
                "| simulator speed | – | {n} | – | {:.2} simulated s per wall s ({:.0} s in {:.0} s) | – |\n",
                f.virtual_ms as f64 / 1000.0 / f.wall_s.max(1e-9),
                f.virtual_ms as f64 / 1000.0,
                f.wall_s
            ));
        }
        if let Some((nodes, v, failed)) = &self.heal {
            s.push_str(&format!(
                "| exactly N after a partition heals | nobody publishes it | {nodes} | – | p50 {}, p99 {} ({} sweep seeds, {} did not converge) | p99 ≤ 5 s (LAN) |\n",
                p(v, 0.5), p(v, 0.99), v.len(), failed
            ));
        }
        s
    }

    /// The plots: `(file name, SVG)`.
    pub fn charts(&self) -> Vec<(String, String)> {
        use super::plot::{Chart, Series};
        let mut out = Vec::new();
        let series = |name: &str, pts: Vec<(u64, f64)>| Series {
            name: name.into(),
            points: pts,
        };
        let p99 = |v: &[MembershipFigures]| -> Vec<(u64, f64)> {
            v.iter()
                .filter_map(|m| {
                    percentile(&m.detect_ms, 0.99).map(|t| (m.nodes as u64, t as f64 / 1000.0))
                })
                .collect()
        };
        out.push((
            "detection-p99.svg".into(),
            Chart {
                title: "crash → known dead at 99% of nodes, p99".into(),
                x_label: "nodes".into(),
                y_label: "seconds (virtual)".into(),
                series: vec![
                    series("ours (lan profile)", p99(&self.ours_membership)),
                    series("memberlist defaults", p99(&self.memberlist)),
                ],
                goal: Some(("goal 3 s".into(), 3.0)),
            }
            .svg(),
        ));
        let swim = |v: &[MembershipFigures]| -> Vec<(u64, f64)> {
            v.iter()
                .map(|m| (m.nodes as u64, m.idle_swim_bytes_per_node_s))
                .collect()
        };
        let total: Vec<(u64, f64)> = self
            .figs
            .iter()
            .map(|f| (f.nodes as u64, f.idle_bytes_per_node_s))
            .collect();
        out.push((
            "idle-bytes.svg".into(),
            Chart {
                title: "idle traffic sent per node".into(),
                x_label: "nodes".into(),
                y_label: "bytes per second".into(),
                series: vec![
                    series("ours, all kinds", total),
                    series("ours, SWIM only", swim(&self.ours_membership)),
                    series("memberlist defaults, SWIM only", swim(&self.memberlist)),
                ],
                goal: Some(("goal 1 KB/s".into(), 1000.0)),
            }
            .svg(),
        ));
        out.push((
            "bids-per-slot.svg".into(),
            Chart {
                title: "auction cost per placed slot".into(),
                x_label: "nodes".into(),
                y_label: "per slot".into(),
                series: vec![
                    series(
                        "bids",
                        self.figs
                            .iter()
                            .map(|f| (f.nodes as u64, f.bids_per_slot))
                            .collect(),
                    ),
                    series(
                        "bid messages",
                        self.figs
                            .iter()
                            .map(|f| (f.nodes as u64, f.bid_messages_per_slot))
                            .collect(),
                    ),
                ],
                goal: None,
            }
            .svg(),
        ));
        let pack = |m: fn(&PackingFigures) -> Option<usize>| -> Vec<(u64, f64)> {
            self.packing
                .iter()
                .filter_map(|p| m(p).map(|v| (p.nodes as u64, v as f64)))
                .collect()
        };
        out.push((
            "machines-vs-oracle.svg".into(),
            Chart {
                title: "machines hosting ≥ 1 instance, binpack workload".into(),
                x_label: "nodes".into(),
                y_label: "machines".into(),
                series: vec![
                    series("ours (auction)", pack(|p| p.auction_machines)),
                    series("central best-fit", pack(|p| Some(p.best_fit_machines))),
                    series("first-fit-decreasing", pack(|p| Some(p.ffd_machines))),
                    series("volume lower bound", pack(|p| Some(p.lower_bound))),
                ],
                goal: None,
            }
            .svg(),
        ));
        out
    }
}
