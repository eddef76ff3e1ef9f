//! Each invariant fails once with its bug put back on purpose (`TestBugs`), and holds without
//! it in the same scenario: proof that the simulator's checks can see what they claim to.

use shoal::ids::SlotId;
use shoal::node::{ApiRequest, TestBugs};
use shoal::sim::invariants::Violation;
use shoal::sim::net::Partition;
use shoal::sim::scenario::{service, singleton};
use shoal::sim::{Crash, Sim, SimConfig, index_of};
use shoal::spec::{Resources, ServiceName};

fn owner(sim: &Sim, service: &str, index: u32) -> usize {
    let (_, n) = sim.up().next().expect("a live node");
    let c = &n.state().claims[&SlotId::new(&ServiceName(service.into()), index)];
    index_of(&c.node).expect("a simulated node")
}

/// A node owning a slot loses its agent (its instances keep running); the slot is re-placed;
/// the agent restarts and finds its old instance.
fn crash_and_restart(bugs: TestBugs) -> Vec<Violation> {
    let mut cfg = SimConfig::lan(11, 8);
    cfg.bugs = bugs;
    let mut sim = Sim::new(cfg);
    sim.start_all(10);
    sim.run_for(3_000);
    sim.api(
        0,
        ApiRequest::Deploy {
            specs: vec![service("web", 8, 500)],
        },
    );
    sim.run_for(3_000);
    assert!(
        sim.liveness().is_empty(),
        "placed before the fault: {:?}",
        sim.liveness()
    );
    let victim = owner(&sim, "web", 0);
    sim.crash(victim, Crash::Agent);
    sim.run_for(8_000);
    assert_ne!(
        owner(&sim, "web", 0),
        victim,
        "slot re-placed while the agent is down"
    );
    sim.restart(victim);
    sim.run_for(15_000);
    let mut v = sim.violations.clone();
    v.extend(sim.liveness());
    v
}

#[test]
fn restarted_node_that_skips_reclaim_runs_a_slot_twice() {
    assert_eq!(crash_and_restart(TestBugs::default()), vec![]);
    let v = crash_and_restart(TestBugs {
        skip_reclaim: true,
        ..TestBugs::default()
    });
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::SlotNotOnce { copies, .. } if copies.len() > 1)),
        "skip_reclaim went unnoticed: {v:?}"
    );
}

/// More demand than the fleet holds: 10 × 500 millicores on 4 × 1000.
fn tight_capacity(bugs: TestBugs) -> Vec<Violation> {
    let mut cfg = SimConfig::lan(12, 4);
    cfg.bugs = bugs;
    cfg.capacity = Resources {
        cpu_millis: 1_000,
        memory_bytes: 4 << 30,
    };
    let mut sim = Sim::new(cfg);
    sim.start_all(10);
    sim.run_for(3_000);
    sim.api(
        1,
        ApiRequest::Deploy {
            specs: vec![service("web", 10, 500)],
        },
    );
    sim.run_for(20_000);
    sim.violations.clone()
}

#[test]
fn node_that_ignores_capacity_runs_past_it() {
    assert_eq!(tight_capacity(TestBugs::default()), vec![]);
    let v = tight_capacity(TestBugs {
        ignore_capacity: true,
        ..TestBugs::default()
    });
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::OverCapacity { .. })),
        "ignore_capacity went unnoticed: {v:?}"
    );
}

/// The owner of a `partition: majority` singleton is cut off with two other nodes (3 of 7).
fn partitioned_singleton(bugs: TestBugs) -> Vec<Violation> {
    let nodes = 7;
    let mut cfg = SimConfig::lan(13, nodes);
    cfg.bugs = bugs;
    let mut sim = Sim::new(cfg);
    sim.start_all(10);
    sim.run_for(3_000);
    sim.api(
        0,
        ApiRequest::Deploy {
            specs: vec![singleton("db")],
        },
    );
    sim.run_for(3_000);
    let o = owner(&sim, "db", 0);
    let mut side = vec![0u8; nodes];
    side[o] = 1;
    side[(o + 1) % nodes] = 1;
    side[(o + 2) % nodes] = 1;
    sim.net.partition = Some(Partition::Symmetric { side });
    sim.run_for(30_000);
    sim.net.partition = None;
    sim.run_for(10_000);
    sim.violations.clone()
}

#[test]
fn unfenced_majority_singleton_runs_twice_in_a_partition() {
    assert_eq!(partitioned_singleton(TestBugs::default()), vec![]);
    let v = partitioned_singleton(TestBugs {
        no_fence: true,
        ..TestBugs::default()
    });
    assert!(
        v.iter()
            .any(|v| matches!(v, Violation::MajorityTwice { .. })),
        "no_fence went unnoticed: {v:?}"
    );
}
