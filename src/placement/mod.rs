//! Placement by auction: every placement fact and rule. Which slots are open (`open.rs`), what
//! a node offers and holds (`facts.rs`), whether it may bid for a slot and what it bids
//! (`eligible`, `score`, here), who every node expects to win (`plan.rs`), and one node's
//! auction book with the claims it wins (`auction.rs`).
//!
//! Every node evaluates the same bids with the same rule (`winner`), so the winner is the same
//! everywhere whatever order bids arrived in. Nothing here performs IO, reads a clock or draws
//! randomness: time comes in as `now`.

mod auction;
mod facts;
mod open;
mod plan;

use serde::{Deserialize, Serialize};

use crate::ids::{Millis, NodeId, SlotId};
use crate::spec::{DriverKind, ServiceSpec, Strategy};

pub use auction::{Auction, Bids, OpenSlot};
pub use facts::{NodeFacts, count_claims, held, own_facts};
pub use open::{Gate, OwnerSeen, open_slots};
pub use plan::{Candidate, LabelCounts, PlanSlot, plan};

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
/// The same penalty under `binpack`: it only breaks near-ties between equally full nodes. It
/// must stay well below what one more slot adds to a node's fullness, or binpack would spread
/// replicas one per node.
pub const BINPACK_SAME_SERVICE_PENALTY: u64 = SCALE / 100;
/// Penalty per instance of the same service on nodes sharing this node's `spread` label value.
pub const SPREAD_PENALTY: u64 = 400_000;
/// Added to every score so that penalties never push it below zero: at most `MAX_REPLICAS`
/// instances of one service (same node or same spread value) fit under it. If the penalty could
/// saturate, every node would score 0 and the highest node id would win every remaining slot.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Resources, ServiceName};
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn facts(cpu: u64, mem: u64) -> NodeFacts {
        super::facts::tests::empty(cpu, mem)
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
    fn sizes_print_as_people_write_them() {
        assert_eq!(fmt_cpu(500), "0.5");
        assert_eq!(fmt_cpu(2000), "2");
        assert_eq!(fmt_bytes(256 << 20), "256Mi");
        assert_eq!(fmt_bytes(1536 << 20), "1.5Gi");
    }
}
