//! `partition: majority` fencing at the edges the sweep reaches only by chance.

use shoal::ids::SlotId;
use shoal::node::ApiRequest;
use shoal::sim::net::Partition;
use shoal::sim::scenario::{service, singleton};
use shoal::sim::{Crash, Sim, SimConfig, index_of};
use shoal::spec::ServiceName;

#[test]
fn node_restarted_alone_never_starts_a_majority_singleton() {
    let nodes = 7;
    let mut sim = Sim::new(SimConfig::lan(21, nodes));
    sim.start_all(10);
    sim.run_for(3_000);
    sim.api(
        0,
        ApiRequest::Deploy {
            specs: vec![singleton("db"), service("web", 3, 100)],
        },
    );
    sim.run_for(3_000);
    let (_, n) = sim.up().next().unwrap();
    let owner =
        index_of(&n.state().claims[&SlotId::new(&ServiceName("db".into()), 0)].node).unwrap();
    // A node that neither owns the singleton nor is a seed reboots while cut off from everyone.
    let victim = (3..nodes).find(|i| *i != owner).unwrap();
    sim.crash(victim, Crash::Machine);
    let mut side = vec![0u8; nodes];
    side[victim] = 1;
    sim.net.partition = Some(Partition::Symmetric { side });
    sim.run_for(2_000);
    sim.restart(victim);
    sim.run_for(40_000);
    sim.net.partition = None;
    sim.run_for(30_000);
    assert_eq!(
        sim.violations,
        vec![],
        "{}",
        shoal::sim::reproduce(21, nodes)
    );
    assert_eq!(sim.liveness(), vec![]);
}
