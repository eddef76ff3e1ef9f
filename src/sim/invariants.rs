//! The invariants the simulator checks, as plain functions over facts returning typed
//! violations. Safety holds after every event; liveness after faults heal and a quiet period.
//!
//! Truth about what runs comes from the simulated runtimes, never from what nodes believe.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{Millis, SlotId};
use crate::spec::{Resources, ServiceName};
use crate::state::ClusterState;

use super::runtime::SimRuntime;

/// A broken invariant, with what is needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    /// Safety: a machine runs more than its capacity.
    OverCapacity {
        at: Millis,
        node: usize,
        used: Resources,
        capacity: Resources,
    },
    /// Safety: a `partition: majority` slot has two live copies.
    MajorityTwice {
        at: Millis,
        slot: SlotId,
        nodes: Vec<usize>,
    },
    /// Liveness: a slot of a live service does not run exactly once.
    SlotNotOnce { slot: SlotId, copies: Vec<usize> },
    /// Liveness: an instance of a deleted service, or beyond the replica count, still runs.
    Surplus { slot: SlotId, node: usize },
    /// Liveness: live nodes hold different states.
    DigestsDiffer { distinct: usize, of_nodes: usize },
    /// Liveness: a write the API acknowledged is missing from a live node's history.
    WriteLost {
        service: ServiceName,
        revision: String,
        node: usize,
    },
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Violation::OverCapacity {
                at,
                node,
                used,
                capacity,
            } => write!(
                f,
                "at {} ms node {node} runs cpu {} / {} millis, memory {} / {} bytes: over capacity",
                at.0,
                used.cpu_millis,
                capacity.cpu_millis,
                used.memory_bytes,
                capacity.memory_bytes
            ),
            Violation::MajorityTwice { at, slot, nodes } => write!(
                f,
                "at {} ms majority slot {slot} runs on nodes {nodes:?} at once",
                at.0
            ),
            Violation::SlotNotOnce { slot, copies } => {
                write!(
                    f,
                    "slot {slot} runs {} times (nodes {copies:?})",
                    copies.len()
                )
            }
            Violation::Surplus { slot, node } => {
                write!(f, "slot {slot} should not run but runs on node {node}")
            }
            Violation::DigestsDiffer { distinct, of_nodes } => write!(
                f,
                "{distinct} distinct state digests among {of_nodes} live nodes"
            ),
            Violation::WriteLost {
                service,
                revision,
                node,
            } => write!(
                f,
                "acknowledged write {service} revision {revision} missing on node {node}"
            ),
        }
    }
}

/// Safety: machine `node` runs within its capacity.
pub fn capacity(at: Millis, node: usize, rt: &SimRuntime, cap: Resources) -> Option<Violation> {
    let used = rt.used();
    (used.cpu_millis > cap.cpu_millis || used.memory_bytes > cap.memory_bytes).then_some(
        Violation::OverCapacity {
            at,
            node,
            used,
            capacity: cap,
        },
    )
}

/// Safety: no `partition: majority` slot has two live copies anywhere.
pub fn majority_once<'a>(
    at: Millis,
    runtimes: impl Iterator<Item = &'a SimRuntime>,
) -> Vec<Violation> {
    let mut copies: BTreeMap<SlotId, Vec<usize>> = BTreeMap::new();
    for (node, rt) in runtimes.enumerate() {
        for i in rt.live().filter(|i| i.majority()) {
            copies
                .entry(i.spec.key.slot.clone())
                .or_default()
                .push(node);
        }
    }
    copies
        .into_iter()
        .filter(|(_, n)| n.len() > 1)
        .map(|(slot, nodes)| Violation::MajorityTwice { at, slot, nodes })
        .collect()
}

/// Liveness: every slot of every live service in `state` runs exactly once, and nothing else
/// runs (instances still starting count as copies).
pub fn exactly_n<'a>(
    state: &ClusterState,
    runtimes: impl Iterator<Item = &'a SimRuntime>,
) -> Vec<Violation> {
    let mut copies: BTreeMap<SlotId, Vec<usize>> = BTreeMap::new();
    for (node, rt) in runtimes.enumerate() {
        for i in rt.live() {
            copies
                .entry(i.spec.key.slot.clone())
                .or_default()
                .push(node);
        }
    }
    let mut v = Vec::new();
    let mut wanted = BTreeSet::new();
    for (name, _, spec) in state.live_services() {
        for index in 0..spec.replicas {
            let slot = SlotId::new(name, index);
            let c = copies.get(&slot).cloned().unwrap_or_default();
            if c.len() != 1 {
                v.push(Violation::SlotNotOnce {
                    slot: slot.clone(),
                    copies: c,
                });
            }
            wanted.insert(slot);
        }
    }
    for (slot, nodes) in copies {
        if !wanted.contains(&slot) {
            for node in nodes {
                v.push(Violation::Surplus {
                    slot: slot.clone(),
                    node,
                });
            }
        }
    }
    v
}

/// Liveness: every live node holds the same state.
pub fn same_digest<'a>(states: impl Iterator<Item = &'a ClusterState>) -> Option<Violation> {
    let digests: Vec<u64> = states.map(ClusterState::digest).collect();
    let distinct: BTreeSet<u64> = digests.iter().copied().collect();
    (distinct.len() > 1).then_some(Violation::DigestsDiffer {
        distinct: distinct.len(),
        of_nodes: digests.len(),
    })
}

/// Liveness: every acknowledged write `(service, revision id)` is in the history of node
/// `node`'s state.
pub fn no_write_lost(
    node: usize,
    state: &ClusterState,
    acked: &[(ServiceName, String)],
) -> Vec<Violation> {
    acked
        .iter()
        .filter(|(service, revision)| {
            !state
                .services
                .get(service)
                .is_some_and(|e| e.history.values().any(|r| &r.id.0 == revision))
        })
        .map(|(service, revision)| Violation::WriteLost {
            service: service.clone(),
            revision: revision.clone(),
            node,
        })
        .collect()
}
