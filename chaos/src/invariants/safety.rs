//! Invariants 3 and 6, the safety invariants the sampler checks on every snapshot: no node
//! above its capacity, and a `partition: majority` slot never on two nodes at once.
//! Pure functions of a snapshot; the sampler that calls them is `runner/sampler.rs`.

use std::collections::BTreeMap;

use super::{Source, Violation};
use crate::model::{AgentState, Expected, InstanceProc, Res, Snapshot};

/// The requests of one instance process, by its revision (else the service's latest).
pub fn requests_of(expected: &Expected, p: &InstanceProc) -> Res {
    let Some(m) = expected.get(&p.service) else {
        return Res::default();
    };
    p.revision
        .as_ref()
        .and_then(|r| m.resources.get(r))
        .copied()
        .unwrap_or(m.latest)
}

/// Invariant 3: No node above its capacity: `status` allocated vs capacity on every answering node, and
/// the process table × spec requests vs the capacity the harness gave each node.
pub fn capacity(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut v = Vec::new();
    for n in &snap.nodes {
        if let Some(st) = &n.status
            && !st.allocated.fits_in(st.capacity)
        {
            v.push(Violation::OverCapacity {
                node: n.node,
                used: st.allocated,
                capacity: st.capacity,
                source: Source::Status(n.node),
            });
        }
        let used = snap
            .procs
            .iter()
            .filter(|p| p.node == n.node)
            .fold(Res::default(), |acc, p| acc.add(requests_of(expected, p)));
        if !used.fits_in(n.capacity) {
            v.push(Violation::OverCapacity {
                node: n.node,
                used,
                capacity: n.capacity,
                source: Source::Processes,
            });
        }
    }
    v
}

/// Invariant 6: A `partition: majority` slot never runs on two nodes at once (nodes with an agent
/// process, running or paused).
pub fn majority_once(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut by_slot: BTreeMap<(&str, u32), Vec<usize>> = BTreeMap::new();
    for p in &snap.procs {
        let majority = expected.get(&p.service).is_some_and(|m| m.majority);
        if majority && snap.agent(p.node) != AgentState::Stopped {
            by_slot
                .entry((&p.service, p.slot))
                .or_default()
                .push(p.node);
        }
    }
    by_slot
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((service, slot), nodes)| Violation::MajorityTwice {
            service: service.to_string(),
            slot,
            nodes,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::Invariant;
    use crate::invariants::fixtures::{healthy, proc_};

    #[test]
    fn more_instances_than_capacity_break_capacity_from_the_process_table() {
        let (e, mut s) = healthy();
        s.procs.push(proc_(101, 1, "web", 5, 1));
        s.procs.push(proc_(102, 1, "web", 6, 1));
        let v = capacity(&e, &s);
        assert_eq!(
            v,
            vec![Violation::OverCapacity {
                node: 1,
                used: Res {
                    cpu_millis: 1500,
                    memory_bytes: 300
                },
                capacity: Res {
                    cpu_millis: 1000,
                    memory_bytes: 1000
                },
                source: Source::Processes
            }]
        );
    }

    #[test]
    fn an_agent_reporting_more_allocated_than_capacity_breaks_capacity() {
        let (e, mut s) = healthy();
        s.nodes[0].status.as_mut().unwrap().allocated = Res {
            cpu_millis: 1001,
            memory_bytes: 0,
        };
        assert_eq!(capacity(&e, &s).len(), 1);
        assert_eq!(capacity(&e, &s)[0].invariant(), Invariant::Capacity);
    }

    #[test]
    fn a_majority_slot_on_two_nodes_breaks_majority_even_when_one_agent_is_paused() {
        let (mut e, mut s) = healthy();
        e.get_mut("web").unwrap().majority = true;
        s.procs.push(proc_(300, 3, "web", 0, 2));
        s.nodes[2].agent = AgentState::Paused;
        assert_eq!(
            majority_once(&e, &s),
            vec![Violation::MajorityTwice {
                service: "web".into(),
                slot: 0,
                nodes: vec![1, 3]
            }]
        );
        e.get_mut("web").unwrap().majority = false;
        assert_eq!(majority_once(&e, &s), vec![]);
    }
}
