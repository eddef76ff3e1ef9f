//! What a node offers and what it holds: `NodeFacts`, built one way.
//!
//! A node's facts start from what it advertises (capacity, labels, runtimes, draining) and add
//! every live claim it holds (`ClusterState::live_claim`): its spec's resources, its fixed host
//! ports, its count for the service. The plan ranks every candidate from these; `explain` reads
//! the same; this node's own real facts add what only it knows (instances still stopping, the
//! reservations of its outstanding bids). Pure: no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{InstanceKey, NodeId};
use crate::membership::NodeMeta;
use crate::spec::{DriverKind, Resources, ServiceName, ServiceSpec};
use crate::state::ClusterState;

use super::{Auction, Candidate, LabelCounts};

/// What one node knows about itself or another node when judging eligibility and rank.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeFacts {
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    /// Requested by instances it owns plus reservations for its outstanding bids.
    pub allocated: Resources,
    pub runtimes: BTreeSet<DriverKind>,
    pub draining: bool,
    /// Fixed host ports already taken by slots it owns.
    pub host_ports: BTreeSet<u16>,
    /// How many slots of each service it owns.
    pub per_service: BTreeMap<ServiceName, u32>,
}

impl NodeFacts {
    /// A node as it advertises itself, holding nothing yet. `draining` adds the operator's
    /// drain flag from the replicated state to what the node says.
    pub fn advertised(meta: &NodeMeta, draining: bool) -> NodeFacts {
        NodeFacts {
            labels: meta.labels.clone(),
            capacity: Resources {
                cpu_millis: meta.cpu_millis,
                memory_bytes: meta.memory_bytes,
            },
            allocated: Resources::default(),
            runtimes: meta.runtimes.iter().copied().collect(),
            draining: meta.draining || draining,
            host_ports: BTreeSet::new(),
            per_service: BTreeMap::new(),
        }
    }

    pub fn free(&self) -> Resources {
        self.capacity - self.allocated
    }

    /// One slot of `spec` taken: its resources, its fixed host ports and its count for the
    /// service. What a claim, a planned win or a bid adds.
    pub fn take(&mut self, spec: &ServiceSpec) {
        self.allocated += spec.resources;
        self.hold(spec);
    }

    /// `take` without the resources, for a slot whose resources are counted elsewhere.
    fn hold(&mut self, spec: &ServiceSpec) {
        self.host_ports
            .extend(spec.ports.iter().filter_map(|p| p.host));
        *self.per_service.entry(spec.name.clone()).or_default() += 1;
    }
}

/// Resources `me` holds: each live claim at its spec's resources, plus every instance still
/// holding resources that is not the instance of such a claim (one stopping after its slot
/// moved, or left from an earlier epoch). `instances` are the node's instances that hold
/// resources.
pub fn held<'a>(
    state: &ClusterState,
    me: &NodeId,
    instances: impl IntoIterator<Item = (&'a InstanceKey, Resources)>,
) -> Resources {
    let mut r: Resources = state
        .live_claims_held_by(me)
        .map(|(_, _, _, spec)| spec.resources)
        .sum();
    for (key, resources) in instances {
        let claimed = state
            .live_claim(&key.slot)
            .is_some_and(|(c, _, _)| c.held_by(me) && c.epoch == key.epoch);
        if !claimed {
            r += resources;
        }
    }
    r
}

/// This node's own facts: what it offers (`base`, as advertised) with `held` resources, the
/// reservations of its outstanding bids, and the ports and service counts of its live claims
/// and of those bids.
pub fn own_facts(
    mut base: NodeFacts,
    state: &ClusterState,
    me: &NodeId,
    held: Resources,
    auction: &Auction,
) -> NodeFacts {
    base.allocated = held + auction.reserved();
    for (_, _, _, spec) in state.live_claims_held_by(me) {
        base.hold(spec);
    }
    for b in auction.my_bids() {
        if let Some(spec) = state.live_spec(&b.slot.service) {
            base.hold(spec);
        }
    }
    base
}

/// Counts every live claim into the facts of the candidate holding it (claims of nodes that
/// are not candidates are skipped, and so are the services in `skip`, which a plan walks
/// itself), and returns how many instances of each spread service run per label value.
pub fn count_claims(
    state: &ClusterState,
    candidates: &mut [Candidate],
    skip: &BTreeSet<&ServiceName>,
) -> LabelCounts {
    let index: BTreeMap<NodeId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.node.clone(), i))
        .collect();
    let mut labels = LabelCounts::new();
    for (slot, c) in &state.claims {
        if c.released || skip.contains(&slot.service) {
            continue;
        }
        let Some(&i) = index.get(&c.node) else {
            continue;
        };
        let Some((_, _, spec)) = state.live_claim(slot) else {
            continue;
        };
        let f = &mut candidates[i].facts;
        f.take(spec);
        if let Some(label) = &spec.spread
            && let Some(value) = f.labels.get(label)
        {
            *labels
                .entry((slot.service.clone(), label.clone(), value.clone()))
                .or_default() += 1;
        }
    }
    labels
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::{Millis, SlotId};
    use crate::placement::Bid;

    /// Facts of an empty process-driver node with this capacity: the fixture of the
    /// placement tests.
    pub(crate) fn empty(cpu: u64, mem: u64) -> NodeFacts {
        NodeFacts {
            labels: BTreeMap::new(),
            capacity: Resources {
                cpu_millis: cpu,
                memory_bytes: mem,
            },
            allocated: Resources::default(),
            runtimes: [DriverKind::Process].into(),
            draining: false,
            host_ports: BTreeSet::new(),
            per_service: BTreeMap::new(),
        }
    }

    fn node(n: &str) -> NodeId {
        NodeId(n.into())
    }

    fn meta() -> NodeMeta {
        NodeMeta {
            labels: [("zone".to_string(), "a".to_string())].into(),
            cpu_millis: 4_000,
            memory_bytes: 4 << 30,
            runtimes: vec![DriverKind::Process],
            ..NodeMeta::default()
        }
    }

    /// A state with `web` (3 replicas, 100m each, host port 8080, spread by zone) and claims
    /// `(index, node, released)`.
    fn state(claims: &[(u32, &str, bool)]) -> ClusterState {
        let mut spec = crate::state::cluster::tests::spec("web", 3);
        spec.ports = vec![crate::spec::PortSpec {
            name: "http".into(),
            container: None,
            host: Some(8080),
        }];
        spec.spread = Some("zone".into());
        let claims: Vec<_> = claims.iter().map(|&(i, n, r)| (i, n, 1, r)).collect();
        crate::state::cluster::tests::state_with(spec, &claims)
    }

    #[test]
    fn advertised_facts_hold_nothing_and_take_the_operators_drain_flag() {
        let f = NodeFacts::advertised(&meta(), true);
        assert!(f.draining);
        assert_eq!(f.allocated, Resources::default());
        assert_eq!(f.free(), f.capacity);
        assert!(!NodeFacts::advertised(&meta(), false).draining);
    }

    #[test]
    fn every_candidate_counts_the_live_claims_it_holds_and_nothing_else() {
        let s = state(&[
            (0, "a", false),
            (1, "a", true),
            (2, "b", false),
            (7, "a", false),
        ]);
        let mut cands: Vec<Candidate> = ["a", "b"]
            .iter()
            .map(|n| Candidate {
                node: node(n),
                facts: NodeFacts::advertised(&meta(), false),
            })
            .collect();
        let labels = count_claims(&s, &mut cands, &BTreeSet::new());
        for c in &cands {
            assert_eq!(c.facts.allocated.cpu_millis, 100, "{}", c.node);
            assert!(c.facts.host_ports.contains(&8080));
            assert_eq!(c.facts.per_service.values().sum::<u32>(), 1);
        }
        let web = ServiceName("web".into());
        assert_eq!(labels[&(web.clone(), "zone".into(), "a".into())], 2);
        let mut skipped = cands.clone();
        for c in &mut skipped {
            c.facts = NodeFacts::advertised(&meta(), false);
        }
        assert!(count_claims(&s, &mut skipped, &[&web].into()).is_empty());
        assert_eq!(skipped[0].facts.allocated, Resources::default());
    }

    #[test]
    fn own_facts_add_stopping_instances_and_outstanding_bids() {
        let s = state(&[(0, "a", false)]);
        let me = node("a");
        let web = ServiceName("web".into());
        let claimed = InstanceKey {
            slot: SlotId::new(&web, 0),
            epoch: 1,
        };
        let stopping = InstanceKey {
            slot: SlotId::new(&web, 2),
            epoch: 1,
        };
        let r = |cpu_millis| Resources {
            cpu_millis,
            memory_bytes: 0,
        };
        let held = held(&s, &me, [(&claimed, r(100)), (&stopping, r(50))]);
        assert_eq!(held.cpu_millis, 150);
        let mut auction = Auction::default();
        let bid = Bid {
            slot: SlotId::new(&web, 1),
            epoch: 1,
            score: 1,
            node: me.clone(),
        };
        auction.examine(&bid.slot, 1, Millis(0));
        auction.bid(bid, r(100));
        let f = own_facts(
            NodeFacts::advertised(&meta(), false),
            &s,
            &me,
            held,
            &auction,
        );
        assert_eq!(f.allocated.cpu_millis, 250);
        assert_eq!(f.per_service[&web], 2);
        assert!(f.host_ports.contains(&8080));
    }
}
