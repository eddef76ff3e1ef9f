//! What this node should run: the node's part that turns the replicated claims into the
//! reconciler's desired set, and remembers the instances it keeps running while their slot
//! moves to another node (make-before-break).
//!
//! Computed in one place (`Handovers::desired`), for a runtime event and for a reconcile pass
//! alike. Fencing decides which `partition: majority` claims may run (`Fence::admits`). No IO,
//! no clock.

use std::collections::BTreeMap;

use crate::ids::{InstanceKey, Millis, NodeId, SlotId};
use crate::reconcile::{Desired, Phase, Reconciler};
use crate::spec::PartitionMode;
use crate::state::{ClusterState, InstanceState, Revision};

use super::fence::{Ask, Fence};

/// What `desired` reads besides the state: this node, its reconciler and fence, and who is
/// present.
pub struct Local<'a, P: Fn(&NodeId) -> bool> {
    pub me: &'a NodeId,
    pub reconciler: &'a Reconciler,
    pub fence: &'a Fence,
    /// Whether a node is alive or suspect in this node's view.
    pub present: P,
    /// The deliberate `skip-reclaim` bug: whatever runs here keeps running.
    pub skip_reclaim: bool,
}

/// Instances kept running after their slot moved to another node, since when, until the new
/// owner runs it (at most `max_ms`).
#[derive(Clone, Debug)]
pub struct Handovers {
    since: BTreeMap<InstanceKey, Millis>,
    max_ms: u64,
}

impl Handovers {
    pub fn new(max_ms: u64) -> Handovers {
        Handovers {
            since: BTreeMap::new(),
            max_ms,
        }
    }

    /// Make-before-break: remembers when each instance's slot moved to another node (a claim
    /// of another node at a later epoch); forgets instances whose slot did not move.
    pub fn track<'a>(
        &mut self,
        now: Millis,
        state: &ClusterState,
        me: &NodeId,
        instances: impl Iterator<Item = &'a InstanceKey>,
    ) {
        let mut keep = BTreeMap::new();
        for key in instances {
            let Some(c) = state.claims.get(&key.slot) else {
                continue;
            };
            if c.node != *me && c.epoch > key.epoch {
                keep.insert(key.clone(), self.since.get(key).copied().unwrap_or(now));
            }
        }
        self.since = keep;
    }

    /// The slots this node should run right now: the live claims it holds that fencing lets it
    /// run, plus instances handed over to another node that does not run them yet
    /// (make-before-break).
    pub fn desired<'a, P: Fn(&NodeId) -> bool>(
        &self,
        now: Millis,
        state: &'a ClusterState,
        local: Local<'_, P>,
    ) -> BTreeMap<SlotId, Desired<'a>> {
        let Local {
            me,
            reconciler,
            fence,
            present,
            skip_reclaim,
        } = local;
        let mut d = BTreeMap::new();
        for (slot, c, rev, spec) in state.live_claims_held_by(me) {
            let run = Ask::Run {
                slot,
                epoch: c.epoch,
                listed: reconciler.has_listed(spec.workload.driver()),
            };
            if !fence.admits(now, spec, run) {
                continue;
            }
            d.insert(
                slot.clone(),
                Desired {
                    key: InstanceKey {
                        slot: slot.clone(),
                        epoch: c.epoch,
                    },
                    revision: rev,
                    spec,
                },
            );
        }
        if skip_reclaim {
            // Deliberate bug: whatever runs here keeps running, whoever owns its slot now.
            for (key, l) in &reconciler.instances {
                if d.contains_key(&key.slot) || !matches!(l.phase, Phase::Running { .. }) {
                    continue;
                }
                let Some(entry) = state.services.get(&key.slot.service) else {
                    continue;
                };
                let Some(rev) = l
                    .rev_stamp
                    .as_ref()
                    .and_then(|s| entry.history.get(s))
                    .or(entry.current())
                else {
                    continue;
                };
                let Some(spec) = rev.spec() else { continue };
                d.insert(
                    key.slot.clone(),
                    Desired {
                        key: key.clone(),
                        revision: rev,
                        spec,
                    },
                );
            }
        }
        for (key, since) in &self.since {
            if d.contains_key(&key.slot) || now.since(*since) >= self.max_ms {
                continue;
            }
            let Some(l) = reconciler.instances.get(key) else {
                continue;
            };
            if !matches!(l.phase, Phase::Running { .. }) {
                continue;
            }
            let Some(c) = state.claims.get(&key.slot) else {
                continue;
            };
            let Some(entry) = state.services.get(&key.slot.service) else {
                continue;
            };
            let Some(rev) = entry.current() else { continue };
            let Some(spec) = rev.spec() else { continue };
            if spec.partition == PartitionMode::Majority || key.slot.index >= spec.replicas {
                continue;
            }
            let new_owner_runs = state
                .report(&c.node)
                .and_then(|r| r.instances.get(&key.slot))
                .is_some_and(|r| r.epoch >= c.epoch && r.state == InstanceState::Running);
            if present(&c.node) && !new_owner_runs {
                // Keep the old instance at its own revision: do not replace what is being
                // handed over.
                let rev: &Revision = l
                    .rev_stamp
                    .as_ref()
                    .and_then(|s| entry.history.get(s))
                    .unwrap_or(rev);
                let spec = rev.spec().unwrap_or(spec);
                d.insert(
                    key.slot.clone(),
                    Desired {
                        key: key.clone(),
                        revision: rev,
                        spec,
                    },
                );
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::CoreTiming;
    use crate::reconcile::ReconcileTiming;
    use crate::spec::ServiceName;

    fn node(n: &str) -> NodeId {
        NodeId(n.into())
    }

    fn state(partition: PartitionMode, claims: &[(u32, &str, u64)]) -> ClusterState {
        let mut spec = crate::state::cluster::tests::spec("web", 2);
        spec.partition = partition;
        let claims: Vec<_> = claims.iter().map(|&(i, n, e)| (i, n, e, false)).collect();
        crate::state::cluster::tests::state_with(spec, &claims)
    }

    fn desired_slots(
        h: &Handovers,
        s: &ClusterState,
        fence: &Fence,
        reconciler: &Reconciler,
    ) -> Vec<u32> {
        let local = Local {
            me: &node("a"),
            reconciler,
            fence,
            present: |_: &NodeId| true,
            skip_reclaim: false,
        };
        h.desired(Millis(0), s, local)
            .keys()
            .map(|slot| slot.index)
            .collect()
    }

    #[test]
    fn this_node_runs_the_live_claims_it_holds() {
        let s = state(PartitionMode::Available, &[(0, "a", 1), (1, "b", 1)]);
        let fence = Fence::new(&CoreTiming::lan(), false);
        let r = Reconciler::new(ReconcileTiming::default());
        let h = Handovers::new(60_000);
        assert_eq!(desired_slots(&h, &s, &fence, &r), vec![0]);
    }

    #[test]
    fn a_majority_claim_is_kept_for_adoption_until_its_runtime_is_listed() {
        let s = state(PartitionMode::Majority, &[(0, "a", 1)]);
        let mut fence = Fence::new(&CoreTiming::lan(), false);
        fence.observe(Millis(0), true);
        let r = Reconciler::new(ReconcileTiming::default());
        let h = Handovers::new(60_000);
        assert_eq!(desired_slots(&h, &s, &fence, &r), vec![0]);
    }

    #[test]
    fn a_slot_that_moved_is_tracked_from_when_it_moved() {
        let s = state(PartitionMode::Available, &[(0, "b", 2)]);
        let key = InstanceKey {
            slot: SlotId::new(&ServiceName("web".into()), 0),
            epoch: 1,
        };
        let mut h = Handovers::new(60_000);
        h.track(Millis(5), &s, &node("a"), [&key].into_iter());
        h.track(Millis(9), &s, &node("a"), [&key].into_iter());
        assert_eq!(h.since.get(&key), Some(&Millis(5)));
        h.track(Millis(9), &s, &node("b"), [&key].into_iter());
        assert!(h.since.is_empty(), "the slot is ours again");
    }
}
