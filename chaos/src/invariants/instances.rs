//! Invariants 1 and 2, checked after convergence on nodes whose agent runs: exactly N
//! instances per service with each slot once (from the process table and from every live
//! node's `ps`), and no orphan (every instance process is the live claim of its slot).
//! Pure functions of a snapshot; when they run is `runner/checks.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::{Source, Violation};
use crate::model::{AgentState, Expected, Snapshot};

/// Node numbers by node id, from the snapshot.
fn numbers_by_id(snap: &Snapshot) -> BTreeMap<&str, usize> {
    snap.nodes
        .iter()
        .filter_map(|n| n.id.as_deref().map(|id| (id, n.node)))
        .collect()
}

/// Slots every live node reports as unplaceable (a missing instance there is not a violation:
/// the fleet has no room for it).
fn unplaceable(snap: &Snapshot) -> BTreeSet<(String, u32)> {
    let mut out: Option<BTreeSet<(String, u32)>> = None;
    for n in snap.live() {
        let Some(st) = &n.status else { continue };
        let here: BTreeSet<_> = st
            .unplaceable
            .iter()
            .map(|u| (u.service.clone(), u.slot))
            .collect();
        out = Some(match out {
            None => here,
            Some(prev) => prev.intersection(&here).cloned().collect(),
        });
    }
    out.unwrap_or_default()
}

/// Invariant 1: Exactly N running instances per service, each slot exactly once, from the process table
/// of live nodes and from `ps` on every live node.
pub fn exactly_n(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut v = Vec::new();
    let excused = unplaceable(snap);
    let ids = numbers_by_id(snap);
    // Process table: live nodes only.
    let mut counts: BTreeMap<(&str, u32), usize> = BTreeMap::new();
    for p in &snap.procs {
        if snap.agent(p.node) == AgentState::Running {
            *counts.entry((p.service.as_str(), p.slot)).or_default() += 1;
        }
    }
    for (service, model) in expected {
        let want = if model.deleted { 0 } else { model.replicas };
        for slot in 0..want {
            let found = counts.get(&(service.as_str(), slot)).copied().unwrap_or(0);
            let missing_ok = found == 0 && excused.contains(&(service.clone(), slot));
            if found != 1 && !missing_ok {
                v.push(Violation::SlotCount {
                    service: service.clone(),
                    slot,
                    found,
                    source: Source::Processes,
                });
            }
        }
    }
    for (&(service, slot), _) in counts.iter() {
        let want = expected
            .get(service)
            .map(|m| if m.deleted { 0 } else { m.replicas })
            .unwrap_or(0);
        if slot >= want {
            v.push(Violation::SurplusSlot {
                service: service.to_string(),
                slot,
                source: Source::Processes,
            });
        }
    }
    // `ps` on every live node: each wanted slot is one running row owned by a live node.
    for n in snap.live() {
        let Some(ps) = &n.ps else { continue };
        let source = Source::Ps(n.node);
        let mut running: BTreeMap<(&str, u32), usize> = BTreeMap::new();
        for row in ps {
            let owner_live = row
                .node
                .as_deref()
                .and_then(|id| ids.get(id))
                .is_some_and(|&o| snap.agent(o) == AgentState::Running);
            if row.state == "running" && owner_live {
                *running.entry((row.service.as_str(), row.slot)).or_default() += 1;
            }
        }
        for (service, model) in expected {
            let want = if model.deleted { 0 } else { model.replicas };
            for slot in 0..want {
                let found = running.get(&(service.as_str(), slot)).copied().unwrap_or(0);
                let missing_ok = found == 0 && excused.contains(&(service.clone(), slot));
                if found != 1 && !missing_ok {
                    v.push(Violation::SlotCount {
                        service: service.clone(),
                        slot,
                        found,
                        source: source.clone(),
                    });
                }
            }
        }
        for (&(service, slot), _) in running.iter() {
            let want = expected
                .get(service)
                .map(|m| if m.deleted { 0 } else { m.replicas })
                .unwrap_or(0);
            if slot >= want {
                v.push(Violation::SurplusSlot {
                    service: service.to_string(),
                    slot,
                    source: source.clone(),
                });
            }
        }
    }
    v
}

/// The live claim of every slot: the greatest `(epoch, node)` any live node's `ps` reports
/// (claims merge by the greatest epoch, so a lagging view cannot hide a newer claim).
pub fn live_claims(snap: &Snapshot) -> BTreeMap<(String, u32), (usize, u64)> {
    let ids = numbers_by_id(snap);
    let mut claims: BTreeMap<(String, u32), (usize, u64)> = BTreeMap::new();
    for n in snap.live() {
        for row in n.ps.iter().flatten() {
            let Some(owner) = row.node.as_deref().and_then(|id| ids.get(id)) else {
                continue;
            };
            let key = (row.service.clone(), row.slot);
            let cand = (*owner, row.epoch);
            let e = claims.entry(key).or_insert(cand);
            if (cand.1, cand.0) > (e.1, e.0) {
                *e = cand;
            }
        }
    }
    claims
}

/// Invariant 2: No orphan: every instance process on a live node is the live claim of its slot.
pub fn no_orphan(snap: &Snapshot) -> Vec<Violation> {
    if snap.live().all(|n| n.ps.is_none()) {
        return Vec::new();
    }
    let claims = live_claims(snap);
    snap.procs
        .iter()
        .filter(|p| snap.agent(p.node) == AgentState::Running)
        .filter_map(|p| {
            let claim = claims.get(&(p.service.clone(), p.slot)).copied();
            (claim != Some((p.node, p.epoch))).then(|| Violation::Orphan {
                pid: p.pid,
                node: p.node,
                service: p.service.clone(),
                slot: p.slot,
                epoch: p.epoch,
                claim,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::converged;
    use crate::invariants::fixtures::{healthy, proc_};

    #[test]
    fn two_processes_for_one_slot_break_exactly_n() {
        let (e, mut s) = healthy();
        s.procs.push(proc_(300, 3, "web", 0, 2));
        assert_eq!(
            exactly_n(&e, &s),
            vec![Violation::SlotCount {
                service: "web".into(),
                slot: 0,
                found: 2,
                source: Source::Processes
            }]
        );
        assert!(!converged(&e, &s));
    }

    #[test]
    fn a_missing_instance_breaks_exactly_n_unless_every_node_calls_it_unplaceable() {
        let (e, mut s) = healthy();
        s.procs.retain(|p| p.slot != 1);
        assert_eq!(exactly_n(&e, &s).len(), 1);
        for n in &mut s.nodes {
            n.status
                .as_mut()
                .unwrap()
                .unplaceable
                .push(crate::model::Unplaceable {
                    service: "web".into(),
                    slot: 1,
                    reason: "no room".into(),
                });
            for r in n.ps.as_mut().unwrap() {
                if r.slot == 1 {
                    r.state = "pending".into();
                    r.node = None;
                }
            }
        }
        assert_eq!(exactly_n(&e, &s), vec![]);
    }

    #[test]
    fn ps_showing_a_slot_on_a_dead_node_breaks_exactly_n() {
        let (e, mut s) = healthy();
        s.nodes[1].agent = AgentState::Stopped;
        s.procs.retain(|p| p.node != 2);
        let v = exactly_n(&e, &s);
        assert!(v.contains(&Violation::SlotCount {
            service: "web".into(),
            slot: 1,
            found: 0,
            source: Source::Ps(1)
        }));
    }

    #[test]
    fn a_slot_past_the_replica_count_is_surplus() {
        let (mut e, s) = healthy();
        e.get_mut("web").unwrap().replicas = 1;
        let v = exactly_n(&e, &s);
        assert!(v.contains(&Violation::SurplusSlot {
            service: "web".into(),
            slot: 1,
            source: Source::Processes
        }));
    }

    #[test]
    fn a_stale_instance_of_a_returned_node_is_an_orphan() {
        let (_, mut s) = healthy();
        // n3 came back and still runs web/0 at epoch 1, but the claim moved to n1 at epoch 2.
        for n in &mut s.nodes {
            n.ps.as_mut().unwrap()[0].epoch = 2;
        }
        s.procs[0].epoch = 2;
        s.procs.push(proc_(300, 3, "web", 0, 1));
        assert_eq!(
            no_orphan(&s),
            vec![Violation::Orphan {
                pid: 300,
                node: 3,
                service: "web".into(),
                slot: 0,
                epoch: 1,
                claim: Some((1, 2))
            }]
        );
    }

    #[test]
    fn an_instance_of_a_removed_service_is_an_orphan_and_surplus() {
        let (mut e, mut s) = healthy();
        e.get_mut("web").unwrap().deleted = true;
        for n in &mut s.nodes {
            n.ps = Some(vec![]);
        }
        assert_eq!(no_orphan(&s).len(), 2);
        assert_eq!(exactly_n(&e, &s).len(), 2);
    }

    #[test]
    fn instances_on_a_stopped_agent_are_out_of_reach_not_orphans() {
        let (e, mut s) = healthy();
        s.nodes[2].agent = AgentState::Stopped;
        s.procs.push(proc_(300, 3, "web", 0, 1));
        assert_eq!(no_orphan(&s), vec![]);
        assert_eq!(exactly_n(&e, &s), vec![]);
    }
}
