//! The plan: who every node expects to win each open slot, so that only the best few bid.
//!
//! A deterministic greedy walk over the slots being placed and the candidates' facts (built in
//! `facts.rs`). It only ranks: a node's own real facts still decide whether it may bid. Pure:
//! no IO, no clock.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{NodeId, SlotId};
use crate::spec::{ServiceName, ServiceSpec};

use super::{NodeFacts, SpreadView, score};

/// A node considered by [`plan`], with the facts this node knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub facts: NodeFacts,
}

/// How many instances of a service run on nodes with a given value of a label:
/// `(service, label, value) -> count`.
pub type LabelCounts = BTreeMap<(ServiceName, String, String), u32>;

/// One step of a [`plan`]: a slot to rank, or (`pinned`) a slot already claimed by that node.
#[derive(Clone, Debug)]
pub struct PlanSlot<'a> {
    pub slot: SlotId,
    pub spec: &'a ServiceSpec,
    pub pinned: Option<NodeId>,
}

/// Estimates who will win each open slot: a deterministic greedy walk over `slots` (in the
/// given order) and `candidates`. An open slot goes to the best candidate at that point; a
/// pinned slot to the node that claimed it. Either way the winner's facts are updated as if it
/// had won (resources, same-service count, host ports, spread counts). Returns, per open slot,
/// the best `k` candidates with their scores at that point, best first.
///
/// Every node runs this over the facts it has; when views agree, all nodes expect the same
/// winners, so each node bids only for the slots where it ranks among the best few. That keeps
/// bid traffic per slot flat as the fleet grows, and spreads identical nodes evenly even though
/// their bids are computed at the same time. Callers walk every slot of the services being
/// placed, claimed ones pinned: claims that follow the plan then leave the ranking of the
/// remaining slots unchanged, so a node that plans after some winners have claimed still
/// agrees with one that planned before.
///
/// Cost: a service without `spread` is ranked from an ordered index of every candidate's score
/// that is built once per run of its slots and updated for the one candidate each slot goes
/// to (O(n + slots × (k + log n)) for n candidates); a service with `spread` changes the score
/// of every node sharing the winner's label value, so its slots walk every candidate
/// (O(slots × n)). Both give the same ranking (tested against each other).
pub fn plan(
    candidates: Vec<Candidate>,
    slots: &[PlanSlot<'_>],
    label_counts: LabelCounts,
    k: usize,
) -> BTreeMap<SlotId, Vec<(NodeId, u64)>> {
    plan_with(candidates, slots, label_counts, k, true)
}

/// Candidates' scores for one spec, ordered by (score, node id): the best last.
struct ScoreIndex<'s> {
    spec: &'s ServiceSpec,
    /// `(score, rank)`; `rank` orders candidates by node id (`by_rank[rank]` is the index).
    set: BTreeSet<(u64, u32)>,
    /// Each candidate's entry in `set`, if it is eligible.
    entry: Vec<Option<u64>>,
}

impl<'s> ScoreIndex<'s> {
    fn build(spec: &'s ServiceSpec, candidates: &[Candidate], rank: &[u32]) -> ScoreIndex<'s> {
        let entry: Vec<Option<u64>> = candidates
            .iter()
            .map(|c| score(&c.facts, spec, SpreadView::default()))
            .collect();
        let set = entry
            .iter()
            .zip(rank)
            .filter_map(|(s, r)| s.map(|s| (s, *r)))
            .collect();
        ScoreIndex { spec, set, entry }
    }

    fn rescore(&mut self, i: usize, c: &Candidate, rank: u32) {
        if let Some(old) = self.entry[i].take() {
            self.set.remove(&(old, rank));
        }
        let new = score(&c.facts, self.spec, SpreadView::default());
        if let Some(s) = new {
            self.set.insert((s, rank));
        }
        self.entry[i] = new;
    }
}

fn plan_with(
    mut candidates: Vec<Candidate>,
    slots: &[PlanSlot<'_>],
    mut label_counts: LabelCounts,
    k: usize,
    indexed: bool,
) -> BTreeMap<SlotId, Vec<(NodeId, u64)>> {
    let index: BTreeMap<NodeId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, c)| (c.node.clone(), i))
        .collect();
    // Ranks by node id; among equal ids the earlier candidate ranks higher, as in the walk.
    let mut by_rank: Vec<usize> = (0..candidates.len()).collect();
    by_rank.sort_by(|a, b| candidates[*a].node.cmp(&candidates[*b].node).then(b.cmp(a)));
    let mut rank = vec![0u32; candidates.len()];
    for (r, i) in by_rank.iter().enumerate() {
        rank[*i] = r as u32;
    }
    let mut scores: Option<ScoreIndex<'_>> = None;
    let mut ranking = BTreeMap::new();
    for PlanSlot { slot, spec, pinned } in slots {
        let winner = match pinned {
            Some(node) => index.get(node).copied(),
            None => {
                let top: Vec<(u64, usize)> = if indexed && spec.spread.is_none() {
                    let idx = match &mut scores {
                        Some(x) if std::ptr::eq(x.spec, *spec) => x,
                        _ => scores.insert(ScoreIndex::build(spec, &candidates, &rank)),
                    };
                    idx.set
                        .iter()
                        .rev()
                        .take(k)
                        .map(|&(s, r)| (s, by_rank[r as usize]))
                        .collect()
                } else {
                    // The best `k` by (score, node id), best first: one pass over the candidates.
                    let mut top: Vec<(u64, usize)> = Vec::with_capacity(k + 1);
                    for (i, c) in candidates.iter().enumerate() {
                        let spread = match &spec.spread {
                            Some(label) => {
                                let value = c.facts.labels.get(label).cloned().unwrap_or_default();
                                let key = (spec.name.clone(), label.clone(), value);
                                SpreadView {
                                    same_value: label_counts.get(&key).copied().unwrap_or(0),
                                }
                            }
                            None => SpreadView::default(),
                        };
                        let Some(s) = score(&c.facts, spec, spread) else {
                            continue;
                        };
                        let better =
                            |&(ts, ti): &(u64, usize)| (s, &c.node) > (ts, &candidates[ti].node);
                        let at = top.iter().position(better).unwrap_or(top.len());
                        if at < k {
                            top.insert(at, (s, i));
                            top.truncate(k);
                        }
                    }
                    top
                };
                ranking.insert(
                    slot.clone(),
                    top.iter()
                        .map(|(s, i)| (candidates[*i].node.clone(), *s))
                        .collect::<Vec<_>>(),
                );
                top.first().map(|(_, w)| *w)
            }
        };
        if let Some(w) = winner {
            let f = &mut candidates[w].facts;
            f.take(spec);
            if let Some(label) = &spec.spread {
                let value = f.labels.get(label).cloned().unwrap_or_default();
                *label_counts
                    .entry((spec.name.clone(), label.clone(), value))
                    .or_default() += 1;
            }
            // The winner's score changed: keep the index true, or drop it if it is another
            // spec's (it is rebuilt when that spec's next open slot comes).
            match &mut scores {
                Some(x) if std::ptr::eq(x.spec, *spec) => x.rescore(w, &candidates[w], rank[w]),
                _ => scores = None,
            }
        }
    }
    ranking
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Resources;
    use proptest::prelude::*;

    fn facts(cpu: u64, mem: u64) -> NodeFacts {
        crate::placement::facts::tests::empty(cpu, mem)
    }

    fn web() -> ServiceSpec {
        crate::state::cluster::tests::spec("web", 3)
    }

    fn open_slot(spec: &ServiceSpec, i: u32) -> PlanSlot<'_> {
        PlanSlot {
            slot: SlotId::new(&spec.name, i),
            spec,
            pinned: None,
        }
    }

    proptest! {
        /// Nodes plan at different moments: one before any winner has claimed, another after
        /// some have. Claims that follow the plan must not change who is expected to win the
        /// rest, or the two would bid for different slots and the spread would skew.
        #[test]
        fn claims_that_follow_the_plan_leave_the_rest_of_it_unchanged(
            cpus in proptest::collection::vec(1_000u64..8_000, 1..8),
            replicas in 1u32..24,
            claimed in proptest::collection::vec(any::<bool>(), 24),
        ) {
            let spec = crate::state::cluster::tests::spec("web", replicas);
            let cands: Vec<Candidate> = cpus
                .iter()
                .enumerate()
                .map(|(i, cpu)| Candidate {
                    node: NodeId(format!("n{i}").into()),
                    facts: facts(*cpu, 8 << 30),
                })
                .collect();
            let all: Vec<PlanSlot> = (0..replicas).map(|i| open_slot(&spec, i)).collect();
            let before = plan(cands.clone(), &all, LabelCounts::new(), 3);
            let later: Vec<PlanSlot> = all
                .iter()
                .map(|p| {
                    let mut p = p.clone();
                    if claimed[p.slot.index as usize] {
                        p.pinned = before[&p.slot].first().map(|(n, _)| n.clone());
                    }
                    p
                })
                .collect();
            let after = plan(cands, &later, LabelCounts::new(), 3);
            for (slot, top) in &after {
                prop_assert_eq!(top, &before[slot]);
            }
        }

        /// The plan keeps the best `k` in one pass over the candidates; that is the first `k`
        /// of all eligible candidates sorted by (score, node id), best first.
        #[test]
        fn the_plan_ranks_the_best_k_by_score_then_node(
            cpus in proptest::collection::vec(0u64..8_000, 0..12),
            k in 0usize..5,
        ) {
            let spec = web();
            let cands: Vec<Candidate> = cpus
                .iter()
                .enumerate()
                .map(|(i, cpu)| Candidate {
                    node: NodeId(format!("n{}", i % 7).into()),
                    facts: facts(*cpu, 8 << 30),
                })
                .collect();
            let mut all: Vec<(u64, NodeId)> = cands
                .iter()
                .filter_map(|c| score(&c.facts, &spec, SpreadView::default()).map(|s| (s, c.node.clone())))
                .collect();
            all.sort_by(|a, b| b.cmp(a));
            let expected: Vec<(NodeId, u64)> = all.into_iter().take(k).map(|(s, n)| (n, s)).collect();
            let ranked = plan(cands, &[open_slot(&spec, 0)], LabelCounts::new(), k);
            prop_assert_eq!(&ranked[&SlotId::new(&spec.name, 0)], &expected);
        }

        /// The indexed plan (an ordered index of scores per spec, updated for each winner)
        /// ranks exactly like the walk over every candidate: several services, some spread by
        /// a label, slots pinned to nodes (known, unknown, repeated ids), nodes that fill up.
        #[test]
        fn the_indexed_plan_ranks_like_the_walk_over_every_candidate(
            nodes in proptest::collection::vec((0u64..3_000, 0u64..4, 0usize..3), 0..14),
            steps in proptest::collection::vec((0usize..3, proptest::option::of(0usize..16)), 0..40),
            k in 0usize..5,
        ) {
            let mut specs = [web(), web(), web()];
            specs[1].name = ServiceName("db".into());
            specs[1].resources.cpu_millis = 700;
            specs[1].spread = Some("zone".into());
            specs[2].name = ServiceName("cache".into());
            specs[2].resources.memory_bytes = 3 << 30;
            let cands: Vec<Candidate> = nodes
                .iter()
                .enumerate()
                .map(|(i, (cpu, gib, zone))| {
                    let mut f = facts(*cpu, gib << 30);
                    f.labels.insert("zone".into(), format!("z{zone}"));
                    Candidate { node: NodeId(format!("n{}", i % 9).into()), facts: f }
                })
                .collect();
            let slots: Vec<PlanSlot> = steps
                .iter()
                .enumerate()
                .map(|(n, (s, pin))| PlanSlot {
                    slot: SlotId::new(&specs[*s].name, n as u32),
                    spec: &specs[*s],
                    pinned: pin.map(|p| NodeId(format!("n{p}").into())),
                })
                .collect();
            let indexed = plan_with(cands.clone(), &slots, LabelCounts::new(), k, true);
            let walked = plan_with(cands, &slots, LabelCounts::new(), k, false);
            prop_assert_eq!(indexed, walked);
        }
    }

    #[test]
    fn the_plan_spreads_slots_over_identical_nodes() {
        let spec = web();
        let cands: Vec<Candidate> = ["a", "b", "c"]
            .iter()
            .map(|n| Candidate {
                node: NodeId((*n).into()),
                facts: facts(4000, 4 << 30),
            })
            .collect();
        let slots: Vec<PlanSlot> = (0..6).map(|i| open_slot(&spec, i)).collect();
        let plan = plan(cands, &slots, LabelCounts::new(), 2);
        let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
        for top in plan.values() {
            *per_node.entry(top[0].0.clone()).or_default() += 1;
            assert_eq!(top.len(), 2);
        }
        assert_eq!(
            per_node.values().copied().collect::<Vec<_>>(),
            vec![2, 2, 2]
        );
    }

    #[test]
    fn the_plan_spreads_a_thousand_tiny_slots_evenly() {
        // Tiny slots barely change the free fraction, so only the same-service penalty tells
        // nodes apart; it must keep doing so far past 50 instances per node.
        let mut spec = web();
        spec.replicas = 1000;
        spec.resources = Resources {
            cpu_millis: 1,
            memory_bytes: 1 << 20,
        };
        let cands: Vec<Candidate> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|n| Candidate {
                node: NodeId((*n).into()),
                facts: facts(4000, 4 << 30),
            })
            .collect();
        let slots: Vec<PlanSlot> = (0..1000).map(|i| open_slot(&spec, i)).collect();
        let plan = plan(cands, &slots, LabelCounts::new(), 3);
        let mut per_node: BTreeMap<NodeId, u32> = BTreeMap::new();
        for top in plan.values() {
            *per_node.entry(top[0].0.clone()).or_default() += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![200; 5]);
    }

    #[test]
    fn the_plan_spreads_over_label_values() {
        let mut spec = web();
        spec.spread = Some("region".into());
        let mk = |n: &str, region: &str| {
            let mut f = facts(4000, 4 << 30);
            f.labels.insert("region".into(), region.into());
            Candidate {
                node: NodeId(n.into()),
                facts: f,
            }
        };
        let cands = vec![mk("a", "eu"), mk("b", "eu"), mk("c", "us")];
        let slots: Vec<PlanSlot> = (0..2).map(|i| open_slot(&spec, i)).collect();
        let plan = plan(cands, &slots, LabelCounts::new(), 1);
        let winners: BTreeSet<String> = plan.values().map(|t| t[0].0.0.to_string()).collect();
        assert!(
            winners.contains("c"),
            "one replica in each region: {winners:?}"
        );
    }
}
