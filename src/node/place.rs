//! This node's side of placement: which open slots it bids for and what it bids, the claims
//! it writes for the slots it wins, and the slots it gives up because it can no longer host
//! them. The rules themselves live in `placement/`; this file gathers the node's facts for
//! them and turns their answers into outputs.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use crate::ids::{Millis, NodeId, SlotId};
use crate::membership::NodeMeta;
use crate::placement::{self, Bid, Candidate, LabelCounts, NodeFacts, OwnerSeen, SpreadView};
use crate::spec::{Resources, ServiceName, ServiceSpec};
use crate::state::{Claim, ClusterState, Crdt};

use super::{Message, Node, Output, Topic, node_meta};

/// How many of the best-ranked nodes bid for each slot (the expected winner and backups).
pub const BIDDERS_PER_SLOT: usize = 3;
/// Bids per `Bids` message: a bid is at most ~150 bytes encoded (63-character names, a 52-character
/// node id), so a message stays well under the 64 KiB gossip limit, over which it would be
/// dropped (bids are not in the state, so anti-entropy cannot carry them).
pub const MAX_BIDS_PER_MESSAGE: usize = 256;
/// Claims per delta written in one auction pass (~250 bytes each), under the gossip limit too.
pub const MAX_CLAIMS_PER_DELTA: usize = 128;

impl<R: Rng> Node<R> {
    /// Releases slots this node owns but can no longer host (a new revision needs a runtime or
    /// labels it lacks).
    pub(super) fn release_unfit(&mut self, out: &mut Vec<Output>) {
        // Fitness depends on the spec alone: only the claims of services this node cannot
        // host are walked, not every claim on every pass.
        let mut unfit = Vec::new();
        for (name, _, spec) in self.state.live_services() {
            let driver_ok = self.cfg.runtimes.contains(&spec.workload.driver());
            let labels_ok = spec.constraints.iter().all(|k| k.matches(&self.cfg.labels));
            if driver_ok && labels_ok {
                continue;
            }
            unfit.extend(
                self.state
                    .claims_of(name)
                    .filter(|(_, c)| c.held_by(&self.cfg.id))
                    .map(|(slot, _)| slot.clone()),
            );
        }
        for slot in unfit {
            self.release(&slot, out);
        }
    }

    /// How long bids for a slot are collected: not at all when this node is alone.
    pub(super) fn bid_window(&self) -> u64 {
        if self.members.present_count() <= 1 {
            0
        } else {
            self.cfg.timing.bid_window_ms
        }
    }

    /// Slots that need an owner, with the epoch the next claim takes (`placement::open_slots`
    /// over this node's view of the fleet and its fence).
    pub(super) fn open_slots(&self, now: Millis) -> Vec<(SlotId, u64)> {
        let grace = self.cfg.timing.startup_grace_ms;
        let settled_for = self
            .started_at
            .map(|s| now.since(s))
            .filter(|ran| *ran >= grace);
        let seen = |id: &NodeId| match self.members.peers().get(id) {
            Some(p) if p.state.is_active() => OwnerSeen::Present,
            Some(p) => OwnerSeen::Absent { since: p.since },
            None => OwnerSeen::Unknown,
        };
        placement::open_slots(
            &self.state,
            &self.cfg.id,
            now,
            settled_for,
            seen,
            &self.fence.at(now),
        )
    }

    /// What this node offers right now: its real facts, instances still stopping and the
    /// reservations of its outstanding bids included.
    pub(super) fn my_facts(&self, now: Millis) -> NodeFacts {
        let draining = self.state.draining(&self.cfg.id);
        let mut base = NodeFacts::advertised(
            &node_meta(&self.cfg, Resources::default(), draining),
            draining,
        );
        if self.cfg.bugs.ignore_capacity {
            base.capacity = Resources {
                cpu_millis: u64::MAX / 4,
                memory_bytes: u64::MAX / 4,
            };
        }
        placement::own_facts(
            base,
            &self.state,
            &self.cfg.id,
            self.allocated(now),
            &self.auction,
        )
    }

    /// Resources of the slots this node owns plus instances it is still stopping.
    pub fn allocated(&self, _now: Millis) -> Resources {
        let holding = self
            .reconciler
            .instances
            .values()
            .filter(|l| l.holds_resources())
            .map(|l| (&l.key, l.resources));
        placement::held(&self.state, &self.cfg.id, holding)
    }

    /// Every candidate's facts as any node holding the same state computes them: this node and
    /// every present member, with capacity, labels and runtimes from what each advertises and
    /// allocations from the replicated claims (the services in `skip` left out). A member whose
    /// metadata has not arrived yet is assumed to look like this node when `assume_missing`
    /// (leaving it out would make this node expect to win its slots, and nodes that have the
    /// metadata would plan differently), and left out otherwise. This node comes first.
    pub(super) fn fleet_facts(
        &self,
        assume_missing: bool,
        skip: &BTreeSet<&ServiceName>,
    ) -> (Vec<Candidate>, LabelCounts) {
        let draining = self.state.draining(&self.cfg.id);
        let me = node_meta(&self.cfg, Resources::default(), draining);
        let mut candidates = vec![Candidate {
            node: self.cfg.id.clone(),
            facts: NodeFacts::advertised(&me, draining),
        }];
        let assumed = NodeMeta {
            labels: BTreeMap::new(),
            ..me
        };
        for (id, p) in self.members.present() {
            let meta = match &p.meta {
                Some(m) => &**m.advertised(),
                None if assume_missing => &assumed,
                None => continue,
            };
            candidates.push(Candidate {
                node: id.clone(),
                facts: NodeFacts::advertised(meta, self.state.draining(id)),
            });
        }
        let labels = placement::count_claims(&self.state, &mut candidates, skip);
        (candidates, labels)
    }

    pub(super) fn spread_view(&self, spec: &ServiceSpec) -> SpreadView {
        let Some(label) = &spec.spread else {
            return SpreadView::default();
        };
        let mine = self.cfg.labels.get(label);
        let mut same = 0;
        for (slot, c) in self.state.claims_of(&spec.name) {
            if c.released || slot.index >= spec.replicas {
                continue;
            }
            let theirs = if c.node == self.cfg.id {
                mine
            } else {
                self.members
                    .peers()
                    .get(&c.node)
                    .and_then(|p| p.meta.as_ref())
                    .and_then(|m| m.labels().get(label))
            };
            if theirs == mine {
                same += 1;
            }
        }
        SpreadView { same_value: same }
    }

    /// Who this node expects to win each open slot of `open` (see `placement::plan`). A claim
    /// of a service being placed is pinned in the plan's own walk instead of counted up front.
    fn plan(&self, open: &BTreeMap<SlotId, u64>) -> BTreeMap<SlotId, Vec<(NodeId, u64)>> {
        let placing: BTreeSet<&ServiceName> = open.keys().map(|s| &s.service).collect();
        let (candidates, labels) = self.fleet_facts(true, &placing);
        let mut slots = Vec::new();
        for service in &placing {
            let Some(spec) = self.state.live_spec(service) else {
                continue;
            };
            for index in 0..spec.replicas {
                let slot = SlotId::new(service, index);
                let pinned = if open.contains_key(&slot) {
                    None
                } else {
                    match self.state.claims.get(&slot) {
                        Some(c) if !c.released => Some(c.node.clone()),
                        _ => continue,
                    }
                };
                slots.push(placement::PlanSlot { slot, spec, pinned });
            }
        }
        placement::plan(candidates, &slots, labels, BIDDERS_PER_SLOT)
    }

    /// One auction pass: bids for the open slots due, then the claims of the windows that
    /// closed in this node's favour.
    pub(super) fn run_auction(&mut self, now: Millis, out: &mut Vec<Output>) {
        let open: BTreeMap<SlotId, u64> = self.open_slots(now).into_iter().collect();
        self.auction.retain_open(&open);
        let window = self.bid_window();
        let rebid = self.cfg.timing.rebid_ms;
        let mut due: Vec<(SlotId, u64)> = self
            .auction
            .due(&open, now, rebid)
            .filter(|(slot, _)| {
                let current = self
                    .state
                    .services
                    .get(&slot.service)
                    .and_then(|e| e.current());
                self.reconciler
                    .excluded(slot, now, current.map(|r| &r.stamp))
                    .is_none()
            })
            .map(|(slot, epoch)| (slot.clone(), epoch))
            .collect();
        let plan = if due.is_empty() {
            BTreeMap::new()
        } else {
            self.plan(&open)
        };
        // Bid first where this node expects to win, then where it is a runner-up: reservations
        // stop a node from bidding beyond its free capacity, and spending them on slots others
        // are expected to win would leave its own planned slots without their expected bidder.
        let rank = |slot: &SlotId| {
            plan.get(slot)
                .and_then(|top| top.iter().position(|(n, _)| n == &self.cfg.id))
                .unwrap_or(usize::MAX)
        };
        due.sort_by_cached_key(|(slot, _)| (rank(slot), slot.clone()));
        let mut bids = Vec::new();
        // This node's real facts, computed once for the pass and updated by each bid it makes
        // (a bid takes the spec's resources, host ports and service count, exactly as
        // `my_facts` would count it), and its spread view per service (the claims do not
        // change during the pass).
        let mut facts: Option<NodeFacts> = None;
        let mut spread: BTreeMap<ServiceName, SpreadView> = BTreeMap::new();
        for (slot, epoch) in due {
            let Some(spec) = self.state.live_spec(&slot.service) else {
                continue;
            };
            let open_for = self.auction.examine(&slot, epoch, now);
            // Bid when ranked among the best few, or when the slot has waited long enough that
            // the expected winners are evidently not bidding.
            let ranked = plan
                .get(&slot)
                .and_then(|top| top.iter().find(|(n, _)| n == &self.cfg.id))
                .map(|(_, s)| *s);
            let escalate = open_for >= 2 * rebid;
            if ranked.is_none() && !escalate {
                continue;
            }
            // Safety: this node's real facts (instances still stopping, outstanding bids) decide
            // whether it may bid at all.
            let facts = facts.get_or_insert_with(|| self.my_facts(now));
            let view = *spread
                .entry(spec.name.clone())
                .or_insert_with(|| self.spread_view(spec));
            let Some(real) = placement::score(facts, spec, view) else {
                continue;
            };
            facts.take(spec);
            let score = ranked.unwrap_or(real);
            let bid = Bid {
                slot: slot.clone(),
                epoch,
                score,
                node: self.cfg.id.clone(),
            };
            tracing::debug!(slot = %slot, epoch, score, planned = ranked.is_some(), "bid");
            self.auction.bid(bid.clone(), spec.resources);
            bids.push(bid);
        }
        self.counters.bids_sent += bids.len() as u64;
        for chunk in bids.chunks(MAX_BIDS_PER_MESSAGE) {
            out.push(Output::Broadcast {
                topic: Topic::Bids,
                msg: Message::Bids(chunk.to_vec()),
            });
        }
        // The claims won in this pass go out together, a bounded number per delta.
        let mut won = ClusterState::default();
        let mut won_count = 0;
        for win in self.auction.close(now, window, &self.cfg.id) {
            let Some(rev) = self
                .state
                .services
                .get(&win.slot.service)
                .and_then(|e| e.current())
            else {
                continue;
            };
            let claim = Claim {
                epoch: win.epoch,
                score: win.score,
                node: self.cfg.id.clone(),
                released: false,
                revision: rev.stamp.clone(),
            };
            self.counters.claims_won += 1;
            tracing::info!(slot = %win.slot, epoch = win.epoch, "slot placed");
            self.fence.won(now, &win.slot, win.epoch);
            let delta = self.state.put_claim(&win.slot, claim);
            won.merge(&delta);
            won_count += 1;
            if won_count == MAX_CLAIMS_PER_DELTA {
                self.write(std::mem::take(&mut won), out);
                won_count = 0;
            }
        }
        if won_count > 0 {
            self.write(won, out);
        }
    }
}
