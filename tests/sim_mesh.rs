//! Broadcasts over the simulated gossipsub mesh reach the core as their author's, as the agent
//! hands the core gossipsub's message source: a bid relayed by a mesh peer still counts.

use std::collections::BTreeMap;

use shoal::node::ApiRequest;
use shoal::sim::scenario::{service, start_and_join, until_placed};
use shoal::sim::{Gossip, SimConfig};

/// A fleet of `nodes` on the mesh, joined and settled, deploys `2 × nodes` least-loaded slots;
/// how many nodes end up running how many instances, and when all ran.
fn spread_over_mesh(seed: u64, nodes: usize) -> (BTreeMap<usize, usize>, Option<u64>) {
    let mut cfg = SimConfig::lan(seed, nodes);
    cfg.gossip = Gossip::Mesh;
    let (mut sim, joined) = start_and_join(cfg);
    assert!(joined.is_some(), "seed {seed}: {nodes} nodes did not join");
    sim.run_for(12_000);
    let slots = 2 * nodes as u32;
    sim.api(
        0,
        ApiRequest::Deploy {
            specs: vec![service("web", slots, 100)],
        },
    );
    let placed = until_placed(&mut sim, 30_000);
    let mut per_node = BTreeMap::new();
    for n in &sim.nodes {
        *per_node.entry(n.runtime.live().count()).or_insert(0) += 1;
    }
    (per_node, placed)
}

#[test]
fn relayed_bids_count_and_a_spread_deploy_lands_evenly() {
    for seed in 1..=2 {
        let nodes = 60;
        let (per_node, placed) = spread_over_mesh(seed, nodes);
        assert_eq!(
            per_node,
            BTreeMap::from([(2, nodes)]),
            "seed {seed}: instances per node -> nodes; every node should run 2 \
             (reproduce: cargo test --release --test sim_mesh)"
        );
        // One bid window (300 ms) and the start delay: no slot waited for a re-bid.
        assert!(
            placed.is_some_and(|t| t <= 400),
            "seed {seed}: all running after {placed:?} ms"
        );
    }
}
