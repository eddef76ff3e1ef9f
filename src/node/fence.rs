//! Majority fencing for `partition: majority` services: the node's part that knows whether it
//! sees a strict majority, since when, and which of its majority claims it may run.
//!
//! One rule, `Fence::admits`, answers every question placement and reconcile ask of it:
//! may this node place a majority slot at all (it must see a majority), may it place again a
//! slot whose owner is absent (only after the owner's lease and a drift margin ran out, counted
//! from when this node itself saw a majority), and may it run a claim it holds (not once
//! fenced, and only a claim it can vouch for). `guard` gives up the claims it must not keep.
//! No IO, no clock: time comes in as `now`.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{InstanceKey, Millis, NodeId, SlotId};
use crate::placement::Gate;
use crate::spec::{PartitionMode, ServiceSpec};
use crate::state::ClusterState;

use super::CoreTiming;

/// What fencing is asked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ask<'a> {
    /// Placing an open slot of the service.
    Place,
    /// Placing again a slot whose owner has been absent for `gone_for` milliseconds; `known` is
    /// false when this node never heard of the owner.
    Replace { known: bool, gone_for: u64 },
    /// Running this node's claim on `slot` at `epoch`; `listed`: the runtime it needs has been
    /// listed since start (before that, a surviving instance may still be adopted).
    Run {
        slot: &'a SlotId,
        epoch: u64,
        listed: bool,
    },
}

/// The fencing state of one node.
#[derive(Clone, Debug)]
pub struct Fence {
    lease_ms: u64,
    drift_margin_ms: u64,
    confirm_ms: u64,
    /// The deliberate `no-fence` bug: majority services are neither fenced nor held back.
    off: bool,
    /// When this node stopped seeing a strict majority.
    minority_since: Option<Millis>,
    /// Since when this node has seen a strict majority without a break (None: it does not).
    majority_since: Option<Millis>,
    /// `partition: majority` claims `(slot, epoch)` this node may run, with the time from which
    /// it may start them: won by this life of the node (after `majority_confirm_ms`), or found
    /// running when it started (at once). Its other majority claims (an earlier life's, whose
    /// instance died with the machine) are released rather than started: the majority side
    /// may have placed the slot again meanwhile, and this node cannot know until it has merged
    /// the fleet's state.
    vouched: BTreeMap<(SlotId, u64), Millis>,
}

impl Fence {
    pub fn new(timing: &CoreTiming, off: bool) -> Fence {
        Fence {
            lease_ms: timing.lease_ms,
            drift_margin_ms: timing.drift_margin_ms,
            confirm_ms: timing.majority_confirm_ms,
            off,
            minority_since: None,
            majority_since: None,
            vouched: BTreeMap::new(),
        }
    }

    /// Whether fencing governs slots of `spec`.
    fn governs(&self, spec: &ServiceSpec) -> bool {
        spec.partition == PartitionMode::Majority && !self.off
    }

    /// Records whether this node sees a strict majority now.
    pub fn observe(&mut self, now: Millis, sees_majority: bool) {
        if sees_majority {
            self.minority_since = None;
            self.majority_since.get_or_insert(now);
        } else {
            self.majority_since = None;
            self.minority_since.get_or_insert(now);
        }
    }

    /// In a minority for longer than the lease: `majority` instances must not run here.
    pub fn fenced(&self, now: Millis) -> bool {
        !self.off
            && self
                .minority_since
                .is_some_and(|s| now.since(s) >= self.lease_ms)
    }

    /// How much longer this node may run `partition: majority` instances without seeing a
    /// majority again: `lease_ms` while it sees one, counting down from when it lost it, 0 once
    /// fenced. The agent hands it to the instance-side lease (`runtime::lease`), which enforces
    /// it even while the agent itself is stopped.
    pub fn lease_left_ms(&self, now: Millis) -> u64 {
        if self.off {
            return u64::MAX / 4;
        }
        match self.minority_since {
            Some(s) => self.lease_ms.saturating_sub(now.since(s)),
            None => self.lease_ms,
        }
    }

    /// The one rule: whether fencing lets this node do what `ask` says with a slot of `spec`.
    /// Services that are not `partition: majority` are always admitted.
    pub fn admits(&self, now: Millis, spec: &ServiceSpec, ask: Ask<'_>) -> bool {
        if !self.governs(spec) {
            return true;
        }
        // How long this node has seen a majority: an owner's absence only counts from then (a
        // node back from a minority saw everyone on the other side as down, owners included).
        let majority_for = self.majority_since.map(|m| now.since(m));
        match ask {
            // A minority cannot tell whether the other side runs the slot.
            Ask::Place => majority_for.is_some(),
            // A node restarted out of reach of everyone sees a "majority" of one, and cannot
            // tell whether an owner it never heard of still runs the instance.
            Ask::Replace { known, gone_for } => {
                known
                    && gone_for.min(majority_for.unwrap_or(0))
                        >= self.lease_ms + self.drift_margin_ms
            }
            // A claim runs once vouched for and confirmed. Before its runtime has been listed
            // it stays desired, so that a surviving instance is adopted rather than stopped;
            // nothing is started on a runtime not yet listed.
            Ask::Run {
                slot,
                epoch,
                listed,
            } => {
                let confirmed = self
                    .vouched
                    .get(&(slot.clone(), epoch))
                    .is_some_and(|from| *from <= now);
                !self.fenced(now) && (!listed || confirmed)
            }
        }
    }

    /// This node won `(slot, epoch)`: it may start it once the claim stood for the confirm
    /// delay.
    pub fn won(&mut self, now: Millis, slot: &SlotId, epoch: u64) {
        self.vouched
            .insert((slot.clone(), epoch), now.plus(self.confirm_ms));
    }

    /// The next moment a vouched claim may start, if one is waiting.
    pub fn next_start(&self, now: Millis) -> Option<Millis> {
        self.vouched.values().filter(|f| **f > now).min().copied()
    }

    /// The `majority` slots this node must give up:
    /// - all of them once fenced (in a minority for longer than the lease). The instance is
    ///   already stopped (see `admits`); the release makes sure it is never started again
    ///   under the old claim: when the partition heals, this node may see a majority again
    ///   before it has merged the claim the majority side made meanwhile;
    /// - claims it cannot vouch for (see `vouched`), once every runtime has been listed
    ///   (`listed`) so that a surviving instance (`running`) is adopted rather than released.
    ///
    /// A released slot is placed again by an auction among nodes that see a majority.
    pub fn guard(
        &mut self,
        now: Millis,
        state: &ClusterState,
        me: &NodeId,
        listed: bool,
        running: impl Fn(&InstanceKey) -> bool,
    ) -> Vec<SlotId> {
        if self.off {
            return Vec::new();
        }
        let fenced = self.fenced(now);
        if !fenced && !listed {
            return Vec::new();
        }
        // Only the claims of `majority` services are walked, not every claim of the state.
        let mine: BTreeSet<(SlotId, u64)> = state
            .live_services()
            .filter(|(_, _, spec)| spec.partition == PartitionMode::Majority)
            .flat_map(|(name, _, _)| state.claims_of(name))
            .filter(|(_, c)| c.held_by(me))
            .map(|(slot, c)| (slot.clone(), c.epoch))
            .collect();
        self.vouched.retain(|v, _| mine.contains(v));
        let mut release = Vec::new();
        for (slot, epoch) in mine {
            if fenced {
                tracing::warn!(
                    slot = %slot,
                    "in a minority for longer than the lease: partition: majority slot released"
                );
            } else if self.vouched.contains_key(&(slot.clone(), epoch)) {
                continue;
            } else if running(&InstanceKey {
                slot: slot.clone(),
                epoch,
            }) {
                self.vouched.insert((slot, epoch), now);
                continue;
            } else {
                tracing::info!(
                    slot = %slot,
                    epoch,
                    "partition: majority claim from an earlier run with no instance left: released so that the fleet places it again"
                );
            }
            self.vouched.remove(&(slot.clone(), epoch));
            release.push(slot);
        }
        release
    }

    /// The fence at `now`, as placement's `Gate`.
    pub fn at(&self, now: Millis) -> FenceAt<'_> {
        FenceAt { fence: self, now }
    }
}

/// A fence read at one moment: what `placement::open_slots` consults.
pub struct FenceAt<'a> {
    fence: &'a Fence,
    now: Millis,
}

impl Gate for FenceAt<'_> {
    fn may_place(&self, spec: &ServiceSpec) -> bool {
        self.fence.admits(self.now, spec, Ask::Place)
    }

    fn may_replace(&self, spec: &ServiceSpec, known: bool, gone_for: u64) -> bool {
        self.fence
            .admits(self.now, spec, Ask::Replace { known, gone_for })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ServiceName;

    fn majority() -> ServiceSpec {
        let mut s = crate::state::cluster::tests::spec("db", 1);
        s.partition = PartitionMode::Majority;
        s
    }

    fn fence() -> Fence {
        Fence::new(&CoreTiming::lan(), false)
    }

    fn slot() -> SlotId {
        SlotId::new(&ServiceName("db".into()), 0)
    }

    #[test]
    fn other_services_are_always_admitted() {
        let f = fence();
        let spec = crate::state::cluster::tests::spec("web", 1);
        assert!(f.admits(Millis(0), &spec, Ask::Place));
        assert!(f.admits(
            Millis(0),
            &spec,
            Ask::Replace {
                known: false,
                gone_for: 0
            }
        ));
    }

    #[test]
    fn a_minority_places_nothing_and_is_fenced_after_the_lease() {
        let mut f = fence();
        let spec = majority();
        f.observe(Millis(0), false);
        assert!(!f.admits(Millis(0), &spec, Ask::Place));
        assert_eq!(f.lease_left_ms(Millis(4_000)), 6_000);
        assert!(!f.fenced(Millis(9_999)));
        assert!(f.fenced(Millis(10_000)));
        assert_eq!(f.lease_left_ms(Millis(10_000)), 0);
        let run = Ask::Run {
            slot: &slot(),
            epoch: 1,
            listed: false,
        };
        assert!(!f.admits(Millis(10_000), &spec, run));
        f.observe(Millis(10_001), true);
        assert!(!f.fenced(Millis(10_001)));
        assert!(f.admits(Millis(10_001), &spec, Ask::Place));
    }

    #[test]
    fn an_absent_owner_is_replaced_only_after_lease_and_drift_seen_from_a_majority() {
        let mut f = fence();
        let spec = majority();
        f.observe(Millis(0), true);
        let replace = |known, gone_for| Ask::Replace { known, gone_for };
        assert!(!f.admits(Millis(11_999), &spec, replace(true, 50_000)));
        assert!(f.admits(Millis(12_000), &spec, replace(true, 12_000)));
        assert!(!f.admits(Millis(12_000), &spec, replace(true, 11_999)));
        assert!(!f.admits(Millis(50_000), &spec, replace(false, 50_000)));
    }

    #[test]
    fn a_won_claim_runs_after_the_confirm_delay_and_an_unvouched_one_is_released() {
        let mut f = fence();
        let spec = majority();
        f.observe(Millis(0), true);
        let slot = slot();
        let run = |listed| Ask::Run {
            slot: &slot,
            epoch: 1,
            listed,
        };
        assert!(
            f.admits(Millis(0), &spec, run(false)),
            "not listed yet: kept"
        );
        assert!(!f.admits(Millis(0), &spec, run(true)));
        f.won(Millis(0), &slot, 1);
        assert_eq!(f.next_start(Millis(0)), Some(Millis(2_000)));
        assert!(!f.admits(Millis(1_999), &spec, run(true)));
        assert!(f.admits(Millis(2_000), &spec, run(true)));
        assert_eq!(f.next_start(Millis(2_000)), None);
    }

    #[test]
    fn the_no_fence_bug_admits_everything() {
        let mut f = Fence::new(&CoreTiming::lan(), true);
        f.observe(Millis(0), false);
        assert!(f.admits(Millis(60_000), &majority(), Ask::Place));
        assert!(!f.fenced(Millis(60_000)));
        assert_eq!(f.lease_left_ms(Millis(60_000)), u64::MAX / 4);
    }
}
