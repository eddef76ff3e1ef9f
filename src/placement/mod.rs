//! Placement by auction: which slots are open, whether this node may bid for one, what it bids,
//! and who wins. Pure functions over replicated facts plus the `Auction` book-keeping of one
//! node's open slots and the bids it has seen.
//!
//! Every node evaluates the same bids with the same rule (`winner`), so the winner is the same
//! everywhere whatever order bids arrived in. Nothing here performs IO, reads a clock or draws
//! randomness: time comes in as `now`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Millis, NodeId, SlotId};
use crate::spec::{DriverKind, Resources, ServiceSpec, Strategy};

/// A node's offer to host a slot at an epoch.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bid {
    pub slot: SlotId,
    /// The epoch the winner will claim (`previous epoch + 1`).
    pub epoch: u64,
    pub score: u64,
    pub node: NodeId,
}

/// The winner among bids for one slot and epoch: the greatest `(score, node id)`. Independent of
/// the order of `bids`.
pub fn winner<'a>(bids: impl IntoIterator<Item = &'a Bid>) -> Option<&'a Bid> {
    bids.into_iter()
        .max_by(|a, b| (a.score, &a.node).cmp(&(b.score, &b.node)))
}

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
    pub per_service: BTreeMap<crate::spec::ServiceName, u32>,
}

impl NodeFacts {
    pub fn free(&self) -> Resources {
        Resources {
            cpu_millis: self
                .capacity
                .cpu_millis
                .saturating_sub(self.allocated.cpu_millis),
            memory_bytes: self
                .capacity
                .memory_bytes
                .saturating_sub(self.allocated.memory_bytes),
        }
    }
}

/// Why a node cannot host a slot. Rendered for people in `shoal ps` and `shoal status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ineligible {
    Draining,
    NoDriver(DriverKind),
    Constraint(String),
    HostPort(u16),
    Cpu {
        needs: u64,
        free: u64,
    },
    Memory {
        needs: u64,
        free: u64,
    },
    /// It gave this slot up after a crash loop and stays out of it until `until`.
    Excluded {
        until: Millis,
    },
}

impl std::fmt::Display for Ineligible {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ineligible::Draining => write!(f, "draining"),
            Ineligible::NoDriver(d) => write!(f, "no {} runtime", driver_name(*d)),
            Ineligible::Constraint(c) => write!(f, "constraint {c} does not match"),
            Ineligible::HostPort(p) => write!(f, "host port {p} taken"),
            Ineligible::Cpu { needs, free } => {
                write!(f, "needs cpu {}, free {}", fmt_cpu(*needs), fmt_cpu(*free))
            }
            Ineligible::Memory { needs, free } => {
                write!(
                    f,
                    "needs memory {}, free {}",
                    fmt_bytes(*needs),
                    fmt_bytes(*free)
                )
            }
            Ineligible::Excluded { .. } => write!(f, "excluded after a crash loop"),
        }
    }
}

pub fn driver_name(d: DriverKind) -> &'static str {
    match d {
        DriverKind::Docker => "docker",
        DriverKind::Process => "process",
    }
}

/// `2500` → `2.5`.
pub fn fmt_cpu(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else {
        let s = format!("{}.{:03}", millis / 1000, millis % 1000);
        s.trim_end_matches('0').to_string()
    }
}

/// `268435456` → `256Mi`.
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("Ti", 1 << 40),
        ("Gi", 1 << 30),
        ("Mi", 1 << 20),
        ("Ki", 1 << 10),
    ];
    for (u, n) in UNITS {
        if b >= n {
            let whole = b / n;
            let tenth = (b % n) * 10 / n;
            return if tenth == 0 {
                format!("{whole}{u}")
            } else {
                format!("{whole}.{tenth}{u}")
            };
        }
    }
    format!("{b}")
}

/// Whether a node with `facts` may host a slot of `spec`; the first reason it may not.
pub fn eligible(facts: &NodeFacts, spec: &ServiceSpec) -> Result<(), Ineligible> {
    if facts.draining {
        return Err(Ineligible::Draining);
    }
    let driver = spec.workload.driver();
    if !facts.runtimes.contains(&driver) {
        return Err(Ineligible::NoDriver(driver));
    }
    if let Some(c) = spec.constraints.iter().find(|c| !c.matches(&facts.labels)) {
        return Err(Ineligible::Constraint(c.to_string()));
    }
    if let Some(p) = spec
        .ports
        .iter()
        .filter_map(|p| p.host)
        .find(|p| facts.host_ports.contains(p))
    {
        return Err(Ineligible::HostPort(p));
    }
    let free = facts.free();
    let needs = spec.resources;
    if needs.cpu_millis > free.cpu_millis {
        return Err(Ineligible::Cpu {
            needs: needs.cpu_millis,
            free: free.cpu_millis,
        });
    }
    if needs.memory_bytes > free.memory_bytes {
        return Err(Ineligible::Memory {
            needs: needs.memory_bytes,
            free: free.memory_bytes,
        });
    }
    Ok(())
}

/// Score scale: a node with everything free after placement scores `SCALE` for `spread`.
pub const SCALE: u64 = 1_000_000;
/// Penalty per instance of the same service already on the node (`spread`).
pub const SAME_SERVICE_PENALTY: u64 = 200_000;
/// The same penalty under `binpack`: it only breaks near-ties between equally full nodes. At
/// the `spread` weight it outweighed what one more slot adds to a node's fullness (0.05–0.2 of
/// `SCALE` for typical sizes), so binpack spread replicas one per node and used 1.26× the
/// machines of a central best-fit in the simulator.
pub const BINPACK_SAME_SERVICE_PENALTY: u64 = SCALE / 100;
/// Penalty per instance of the same service on nodes sharing this node's `spread` label value.
pub const SPREAD_PENALTY: u64 = 400_000;
/// Added to every score so that penalties never push it below zero: at most `MAX_REPLICAS`
/// instances of one service (same node or same spread value) fit under it. With a smaller base
/// (it was `10 * SCALE`) the penalty saturated after 50 instances of one service on a node, every
/// node then scored 0 and the highest node id won every remaining slot: 1,000 replicas over 5
/// nodes landed 780/165/55/0/0.
pub const BASE: u64 = 1_000_000 * SCALE;
const _: () = assert!(
    crate::spec::MAX_REPLICAS as u64 * (SAME_SERVICE_PENALTY + SPREAD_PENALTY) + SCALE < BASE
);

/// How instances of the service are distributed over the values of its `spread` label:
/// `same_value` is how many already run on nodes whose label value equals this node's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpreadView {
    pub same_value: u32,
}

/// The score a node with `facts` offers for a slot of `spec`; `None` if it is not eligible.
/// Integer arithmetic only, so every node computes the same number from the same facts.
pub fn score(facts: &NodeFacts, spec: &ServiceSpec, spread: SpreadView) -> Option<u64> {
    eligible(facts, spec).ok()?;
    let free = facts.free();
    // Eligibility guarantees `need <= free`; a zero capacity scores zero.
    let after = |free: u64, need: u64, cap: u64| -> u64 {
        ((free - need).saturating_mul(SCALE))
            .checked_div(cap)
            .unwrap_or(0)
    };
    let cpu = after(
        free.cpu_millis,
        spec.resources.cpu_millis,
        facts.capacity.cpu_millis,
    );
    let mem = after(
        free.memory_bytes,
        spec.resources.memory_bytes,
        facts.capacity.memory_bytes,
    );
    let free_fraction = (cpu + mem) / 2;
    let fit = match spec.strategy {
        Strategy::Spread => free_fraction,
        Strategy::Binpack => SCALE - free_fraction.min(SCALE),
    };
    let same = facts.per_service.get(&spec.name).copied().unwrap_or(0) as u64;
    let per_same = match spec.strategy {
        Strategy::Spread => SAME_SERVICE_PENALTY,
        Strategy::Binpack => BINPACK_SAME_SERVICE_PENALTY,
    };
    let penalty = same * per_same + spread.same_value as u64 * SPREAD_PENALTY;
    Some((BASE + fit).saturating_sub(penalty))
}

/// One slot this node considers open, with the bids seen for its next epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSlot {
    pub epoch: u64,
    /// When this node last examined the slot for a bid at this epoch (bid or chose not to);
    /// `None` when it has only seen others' bids, so it considers bidding at once.
    pub opened_at: Option<Millis>,
    pub bids: Bids,
    /// This node's own bid, whose resources stay reserved until the window closes.
    pub my_bid: Option<Bid>,
    pub my_reservation: Resources,
    /// When this node first saw the slot open at this epoch (not reset by re-bids).
    pub first_seen: Millis,
}

/// The bids seen for one slot and epoch, at most one per node (a newer bid from a node
/// replaces its older one). A sorted vector: a slot sees a handful of bids, and a node holds
/// one of these per open slot, so a map's node allocation (~1 KB) per slot would dominate the
/// memory of a large deploy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bids(Vec<Bid>);

impl Bids {
    pub fn insert(&mut self, bid: Bid) {
        match self.0.binary_search_by(|b| b.node.cmp(&bid.node)) {
            Ok(i) => self.0[i] = bid,
            Err(i) => self.0.insert(i, bid),
        }
    }

    /// In node order.
    pub fn values(&self) -> std::slice::Iter<'_, Bid> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The auction state of one node: open slots and reservations. Bounded by the number of slots
/// in the cluster state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auction {
    pub open: BTreeMap<SlotId, OpenSlot>,
}

impl Auction {
    /// Resources reserved by this node's outstanding bids.
    pub fn reserved(&self) -> Resources {
        let mut r = Resources::default();
        for o in self.open.values() {
            r.cpu_millis += o.my_reservation.cpu_millis;
            r.memory_bytes += o.my_reservation.memory_bytes;
        }
        r
    }

    /// Records a bid seen from any node (ourselves included). Bids for an older epoch than the
    /// one we track are ignored; a newer epoch replaces what we track.
    pub fn record(&mut self, now: Millis, bid: Bid) {
        let entry = self
            .open
            .entry(bid.slot.clone())
            .or_insert_with(|| OpenSlot {
                epoch: bid.epoch,
                opened_at: None,
                bids: Bids::default(),
                my_bid: None,
                my_reservation: Resources::default(),
                first_seen: now,
            });
        if bid.epoch < entry.epoch {
            return;
        }
        if bid.epoch > entry.epoch {
            *entry = OpenSlot {
                epoch: bid.epoch,
                opened_at: None,
                bids: Bids::default(),
                my_bid: None,
                my_reservation: Resources::default(),
                first_seen: now,
            };
        }
        entry.bids.insert(bid);
    }
}

/// A node considered by [`plan`], with the facts this node knows about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub node: NodeId,
    pub facts: NodeFacts,
}

/// How many instances of a service run on nodes with a given value of a label:
/// `(service, label, value) -> count`.
pub type LabelCounts = BTreeMap<(crate::spec::ServiceName, String, String), u32>;

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
    set: std::collections::BTreeSet<(u64, u32)>,
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
            f.allocated.cpu_millis += spec.resources.cpu_millis;
            f.allocated.memory_bytes += spec.resources.memory_bytes;
            f.host_ports
                .extend(spec.ports.iter().filter_map(|p| p.host));
            *f.per_service.entry(spec.name.clone()).or_default() += 1;
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
    use crate::spec::ServiceName;
    use proptest::prelude::*;

    fn facts(cpu: u64, mem: u64) -> NodeFacts {
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

    fn web() -> ServiceSpec {
        crate::state::cluster::tests::spec("web", 3)
    }

    #[test]
    fn the_winner_is_the_greatest_score_then_node_id() {
        let slot = SlotId::new(&ServiceName("web".into()), 0);
        let b = |s, n: &str| Bid {
            slot: slot.clone(),
            epoch: 1,
            score: s,
            node: NodeId(n.into()),
        };
        let bids = [b(5, "a"), b(7, "b"), b(7, "c"), b(6, "d")];
        assert_eq!(winner(&bids).unwrap().node, NodeId("c".into()));
    }

    proptest! {
        #[test]
        fn the_order_of_bids_does_not_matter(scores in prop::collection::vec((0u64..5, 0u8..6), 1..10), seed in any::<u64>()) {
            let slot = SlotId::new(&ServiceName("web".into()), 0);
            let mut bids: Vec<Bid> = scores.iter().map(|(s, n)| Bid { slot: slot.clone(), epoch: 1, score: *s, node: NodeId(format!("n{n}").into()) }).collect();
            let w1 = winner(&bids).cloned();
            // A deterministic shuffle from the seed.
            let len = bids.len();
            for i in 0..len { bids.swap(i, (seed as usize).wrapping_mul(i + 7) % len); }
            prop_assert_eq!(w1, winner(&bids).cloned());
        }

        /// `Bids` keeps one bid per node, the last one recorded, in node order, whatever the
        /// order of arrival (a map from node to bid, without a map's memory).
        #[test]
        fn bids_keep_the_last_bid_of_each_node(scores in prop::collection::vec((0u64..5, 0u8..6), 0..20)) {
            let slot = SlotId::new(&ServiceName("web".into()), 0);
            let mut bids = Bids::default();
            let mut map = BTreeMap::new();
            for (s, n) in &scores {
                let bid = Bid { slot: slot.clone(), epoch: 1, score: *s, node: NodeId(format!("n{n}").into()) };
                map.insert(bid.node.clone(), bid.clone());
                bids.insert(bid);
            }
            prop_assert_eq!(bids.len(), map.len());
            prop_assert_eq!(bids.is_empty(), map.is_empty());
            prop_assert!(bids.values().eq(map.values()));
            prop_assert_eq!(winner(bids.values()), winner(map.values()));
        }
    }

    #[test]
    fn a_node_without_room_is_not_eligible_and_says_why() {
        let mut f = facts(1000, 1 << 30);
        f.allocated.cpu_millis = 950;
        assert_eq!(
            eligible(&f, &web()),
            Err(Ineligible::Cpu {
                needs: 100,
                free: 50
            })
        );
        assert_eq!(
            Ineligible::Cpu {
                needs: 4000,
                free: 2500
            }
            .to_string(),
            "needs cpu 4, free 2.5"
        );
    }

    #[test]
    fn spread_prefers_the_emptier_node_and_binpack_the_fuller() {
        let empty = facts(4000, 4 << 30);
        let mut busy = facts(4000, 4 << 30);
        busy.allocated = Resources {
            cpu_millis: 2000,
            memory_bytes: 2 << 30,
        };
        let mut s = web();
        assert!(score(&empty, &s, SpreadView::default()) > score(&busy, &s, SpreadView::default()));
        s.strategy = crate::spec::Strategy::Binpack;
        assert!(score(&empty, &s, SpreadView::default()) < score(&busy, &s, SpreadView::default()));
    }

    #[test]
    fn binpack_fills_the_fuller_node_even_when_it_hosts_the_same_service() {
        let mut s = web();
        s.strategy = crate::spec::Strategy::Binpack;
        s.resources = Resources {
            cpu_millis: 500,
            memory_bytes: 512 << 20,
        };
        let empty = facts(4000, 4 << 30);
        let mut fuller = facts(4000, 4 << 30);
        fuller.allocated = Resources {
            cpu_millis: 1000,
            memory_bytes: 1 << 30,
        };
        fuller.per_service.insert(s.name.clone(), 2);
        assert!(
            score(&fuller, &s, SpreadView::default()) > score(&empty, &s, SpreadView::default())
        );
        // Between equally full nodes, the one without the service still wins.
        let mut same_fill = empty.clone();
        same_fill.per_service.insert(s.name.clone(), 1);
        assert!(
            score(&empty, &s, SpreadView::default()) > score(&same_fill, &s, SpreadView::default())
        );
    }

    #[test]
    fn hosting_the_same_service_lowers_the_score() {
        let a = facts(4000, 4 << 30);
        let mut b = a.clone();
        b.per_service.insert(ServiceName("web".into()), 1);
        assert!(
            score(&a, &web(), SpreadView::default()) > score(&b, &web(), SpreadView::default())
        );
    }

    #[test]
    fn constraints_and_drivers_and_fixed_ports_gate_eligibility() {
        let mut s = web();
        s.constraints = vec![crate::spec::Constraint {
            label: "region".into(),
            op: crate::spec::ConstraintOp::Eq,
            value: "eu".into(),
        }];
        let mut f = facts(4000, 4 << 30);
        assert_eq!(
            eligible(&f, &s),
            Err(Ineligible::Constraint("region == eu".into()))
        );
        f.labels.insert("region".into(), "eu".into());
        assert_eq!(eligible(&f, &s), Ok(()));
        f.runtimes.clear();
        assert_eq!(
            eligible(&f, &s),
            Err(Ineligible::NoDriver(DriverKind::Process))
        );
        f.runtimes.insert(DriverKind::Process);
        s.ports = vec![crate::spec::PortSpec {
            name: "http".into(),
            container: None,
            host: Some(8080),
        }];
        f.host_ports.insert(8080);
        assert_eq!(eligible(&f, &s), Err(Ineligible::HostPort(8080)));
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
    fn penalties_never_saturate_up_to_max_replicas() {
        let mut spec = web();
        spec.spread = Some("region".into());
        let mut f = facts(4000, 4 << 30);
        let worst = crate::spec::MAX_REPLICAS;
        f.per_service.insert(spec.name.clone(), worst - 1);
        let spread = |n| SpreadView { same_value: n };
        let low = score(&f, &spec, spread(worst)).unwrap();
        assert!(low > 0);
        f.per_service.insert(spec.name.clone(), worst - 2);
        assert!(score(&f, &spec, spread(worst)).unwrap() > low);
        assert!(
            score(&f, &spec, spread(worst - 1)).unwrap() > score(&f, &spec, spread(worst)).unwrap()
        );
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

    #[test]
    fn sizes_print_as_people_write_them() {
        assert_eq!(fmt_cpu(500), "0.5");
        assert_eq!(fmt_cpu(2000), "2");
        assert_eq!(fmt_bytes(256 << 20), "256Mi");
        assert_eq!(fmt_bytes(1536 << 20), "1.5Gi");
    }
}
