//! Scenarios shared by the simulation tests and `shoal-sim`: service specs, and the fault sweep
//! (kills, restarts, a pause, a partition and its heal, loss, writes on both sides) with its
//! invariant checks.

use std::collections::BTreeMap;

use crate::ids::Millis;
use crate::node::ApiRequest;
use crate::spec::{
    PartitionMode, Resources, RestartPolicy, ServiceName, ServiceSpec, Strategy, Workload,
};

use super::invariants::Violation;
use super::net::Partition;
use super::{Crash, Sim, SimConfig};

/// A process-driver service needing `cpu_millis` and 64 MiB per replica.
pub fn service(name: &str, replicas: u32, cpu_millis: u64) -> ServiceSpec {
    ServiceSpec {
        name: ServiceName(name.into()),
        workload: Workload::Command {
            command: vec!["sleep".into(), "1000".into()],
        },
        replicas,
        resources: Resources {
            cpu_millis,
            memory_bytes: 64 << 20,
        },
        ports: vec![],
        env: BTreeMap::new(),
        constraints: vec![],
        spread: None,
        strategy: Strategy::Spread,
        restart: RestartPolicy::default(),
        partition: PartitionMode::Available,
        stop_grace_ms: 1_000,
    }
}

/// A `partition: majority` singleton.
pub fn singleton(name: &str) -> ServiceSpec {
    ServiceSpec {
        partition: PartitionMode::Majority,
        ..service(name, 1, 100)
    }
}

/// What one sweep case did and found.
#[derive(Debug)]
pub struct SweepOutcome {
    pub seed: u64,
    pub nodes: usize,
    pub violations: Vec<Violation>,
    /// Virtual time from the heal until the liveness invariants held (None: never within the
    /// limit).
    pub converged_after_ms: Option<u64>,
    pub trace_hash: u64,
    pub virtual_ms: u64,
    pub delivered: u64,
    /// Slots whose final claim has an epoch above 1 (placed again after a fault).
    pub replaced: usize,
}

/// Virtual durations of the sweep, in ms (scaled down so 20 cases × 50 nodes run in a few
/// minutes in a debug build; every phase still spans several SWIM suspicion timeouts and the
/// `partition: majority` lease).
pub const SETTLE_MS: u64 = 4_000;
pub const FAULTS_MS: u64 = 16_000;
pub const QUIET_LIMIT_MS: u64 = 40_000;

/// One sweep case: a LAN fleet of `nodes`, four services (one `partition: majority`), then
/// faults drawn from the seed, then heal, then a quiet period until the liveness invariants
/// hold. Safety is checked after every runtime change throughout.
pub fn sweep_case(seed: u64, nodes: usize) -> SweepOutcome {
    assert!(nodes >= 8, "the sweep needs at least 8 nodes");
    let mut cfg = SimConfig::lan(seed, nodes);
    cfg.start_fail_permille = 20;
    let mut sim = Sim::new(cfg);
    // A small side RNG for the scenario's choices, separate from the network's.
    let mut pick = super::mix(seed, 0xfa017, 1);
    let mut roll = |below: usize| {
        pick = super::mix(pick, 1, 2);
        (pick % below as u64) as usize
    };

    sim.start_all(10);
    sim.run_for(SETTLE_MS);
    let at = roll(nodes);
    sim.api(
        at,
        ApiRequest::Deploy {
            specs: vec![
                service("web", 12, 500),
                service("api", 6, 1_000),
                service("batch", 8, 250),
                singleton("db"),
            ],
        },
    );
    sim.run_for(SETTLE_MS);

    // Faults. Kill two machines (one restarts during the partition), pause one, lose 2% of
    // messages, and cut off a minority (about a third of the fleet) that includes the owner of
    // the majority singleton half of the time.
    sim.net.loss_permille = 20;
    sim.net.dup_permille = 5;
    let minority: Vec<usize> = {
        let mut side = vec![0u8; nodes];
        let db_owner = sim.up().next().and_then(|(_, n)| {
            n.state()
                .claims
                .get(&crate::ids::SlotId::new(&ServiceName("db".into()), 0))
                .and_then(|c| super::index_of(&c.node))
        });
        let want = nodes / 3;
        let mut chosen = Vec::new();
        if let Some(o) = db_owner.filter(|_| roll(2) == 0) {
            chosen.push(o);
        }
        while chosen.len() < want {
            let c = roll(nodes);
            if !chosen.contains(&c) {
                chosen.push(c);
            }
        }
        for c in &chosen {
            side[*c] = 1;
        }
        sim.net.partition = Some(match roll(3) {
            0 => Partition::Symmetric { side },
            1 => Partition::OneWay { side },
            _ => {
                // A bridge: one node of the majority side reaches both sides.
                let bridge = (0..nodes).find(|i| side[*i] == 0).unwrap_or(0);
                side.iter_mut()
                    .for_each(|s| *s = if *s == 1 { 2 } else { 0 });
                side[bridge] = 1;
                Partition::Bridge { side }
            }
        });
        chosen
    };
    let majority_side: Vec<usize> = (0..nodes).filter(|i| !minority.contains(i)).collect();
    let killed = [
        majority_side[roll(majority_side.len())],
        minority[roll(minority.len())],
    ];
    let paused = majority_side[roll(majority_side.len())];
    if std::env::var_os("SIM_VERBOSE").is_some() {
        eprintln!(
            "faults at {} ms: minority {minority:?}, partition {:?}, killed {killed:?}, paused {paused}",
            sim.now.0, sim.net.partition
        );
    }
    sim.run_for(500);
    for k in killed {
        if sim.nodes[k].up() {
            sim.crash(k, Crash::Machine);
        }
    }
    if sim.nodes[paused].up() {
        sim.pause(paused);
    }
    sim.run_for(3_000);
    // Writes on both sides of the partition: both are acknowledged, both must survive.
    let writer_a = *majority_side
        .iter()
        .find(|i| sim.nodes[**i].up() && !sim.nodes[**i].paused)
        .expect("a live node on the majority side");
    sim.api(
        writer_a,
        ApiRequest::Scale {
            service: ServiceName("web".into()),
            replicas: 14,
        },
    );
    if let Some(writer_b) = minority.iter().copied().find(|i| sim.nodes[*i].up()) {
        sim.api(
            writer_b,
            ApiRequest::Deploy {
                specs: vec![service("cache", 3, 200)],
            },
        );
    }
    sim.run_for(3_000);
    sim.resume(paused);
    if !sim.nodes[killed[0]].up() {
        sim.restart(killed[0]);
    }
    sim.run_for(FAULTS_MS - 6_500);

    // Heal, then a quiet period.
    sim.net.partition = None;
    sim.net.loss_permille = 0;
    sim.net.dup_permille = 0;
    if !sim.nodes[killed[1]].up() {
        sim.restart(killed[1]);
    }
    let healed = sim.now;
    let converged = sim.run_until_true(QUIET_LIMIT_MS, 250, |s| s.liveness().is_empty());
    let mut violations = sim.violations.clone();
    if converged.is_none() {
        violations.extend(sim.liveness());
    }
    let replaced = sim.up().next().map_or(0, |(_, n)| {
        n.state().claims.values().filter(|c| c.epoch > 1).count()
    });
    SweepOutcome {
        replaced,
        seed,
        nodes,
        violations,
        converged_after_ms: converged.map(|_| sim.now.since(healed)),
        trace_hash: sim.trace_hash(),
        virtual_ms: sim.now.0,
        delivered: sim.delivered,
    }
}

impl SweepOutcome {
    /// A report of the violations with the line that replays the case.
    pub fn report(&self) -> String {
        let mut s = format!(
            "seed {} ({} nodes): {} violation(s)\n",
            self.seed,
            self.nodes,
            self.violations.len()
        );
        for v in self.violations.iter().take(20) {
            s.push_str(&format!("  {v}\n"));
        }
        s.push_str(&super::reproduce(self.seed, self.nodes));
        s
    }
}

/// Runs until every live slot is claimed and runs once (or `limit_ms` passes); the time it
/// took.
pub fn until_placed(sim: &mut Sim, limit_ms: u64) -> Option<u64> {
    sim.run_until_true(limit_ms, 50, |s| {
        s.up().next().is_some_and(|(_, n)| {
            super::invariants::exactly_n(n.state(), s.nodes.iter().map(|n| &n.runtime)).is_empty()
        })
    })
}

/// Runs until every live node counts every other present (10 virtual minutes at most); how
/// long that took.
pub fn join(sim: &mut Sim) -> Option<u64> {
    let n = sim.nodes.len();
    sim.run_until_true(600_000, 200, |s| {
        s.up().all(|(_, node)| node.members().present_count() == n)
    })
}

/// Starts every node 2 ms apart, each naming the first three as seeds, and joins them.
pub fn start_and_join(cfg: SimConfig) -> (Sim, Option<u64>) {
    let mut sim = Sim::new(cfg);
    sim.start_all(2);
    let joined = join(&mut sim);
    (sim, joined)
}

/// Virtual time in ms (for reports).
pub fn ms(m: Millis) -> u64 {
    m.0
}
