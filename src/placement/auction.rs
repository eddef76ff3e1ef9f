//! One node's auction book: the slots it considers open, the bids it has seen for each, and its
//! own outstanding bids with the resources they reserve.
//!
//! The rules of the auction live here: when a slot is due for a bid, what a bid reserves, and
//! who takes a slot when its window closes (`winner`, the same on every node). The fields are
//! private; the node asks for the slots due and the claims won. What is open, and whether this
//! node may bid at all, is decided elsewhere (`open_slots`, `score`). No IO, no clock.

use std::collections::BTreeMap;

use crate::ids::{Millis, NodeId, SlotId};
use crate::spec::Resources;

use super::{Bid, winner};

/// The bids seen for one slot and epoch, at most one per node (a newer bid from a node
/// replaces its older one). A sorted vector: a slot sees a handful of bids, and a node holds
/// one of these per open slot, so a map's node allocation per slot would dominate the memory
/// of a large deploy.
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

/// One slot this node considers open, with the bids seen for its next epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSlot {
    epoch: u64,
    /// When this node last examined the slot for a bid at this epoch (bid or chose not to);
    /// `None` when it has only seen others' bids, so it considers bidding at once.
    opened_at: Option<Millis>,
    bids: Bids,
    /// This node's own bid, whose resources stay reserved until the window closes.
    my_bid: Option<Bid>,
    my_reservation: Resources,
    /// When this node first saw the slot open at this epoch (not reset by re-bids).
    first_seen: Millis,
}

impl OpenSlot {
    fn new(epoch: u64, opened_at: Option<Millis>, now: Millis) -> OpenSlot {
        OpenSlot {
            epoch,
            opened_at,
            bids: Bids::default(),
            my_bid: None,
            my_reservation: Resources::default(),
            first_seen: now,
        }
    }

    /// The epoch the bids are for.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every bid seen for this epoch, this node's own included.
    pub fn bids(&self) -> &Bids {
        &self.bids
    }
}

/// The auction state of one node: open slots and reservations. Bounded by the number of slots
/// in the cluster state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Auction {
    open: BTreeMap<SlotId, OpenSlot>,
    /// The earliest `opened_at` of this node's outstanding bids, as the last `bid` or `close`
    /// left it (a bid dropped by `retain_open` in between leaves it early, which costs one
    /// spurious wake): read on every wake instead of walking every open slot.
    my_bids_since: Option<Millis>,
}

impl Auction {
    /// The slot's auction, if this node tracks one.
    pub fn get(&self, slot: &SlotId) -> Option<&OpenSlot> {
        self.open.get(slot)
    }

    /// Resources reserved by this node's outstanding bids.
    pub fn reserved(&self) -> Resources {
        self.open.values().map(|o| o.my_reservation).sum()
    }

    /// This node's outstanding bids, in slot order.
    pub fn my_bids(&self) -> impl Iterator<Item = &Bid> {
        self.open.values().filter_map(|o| o.my_bid.as_ref())
    }

    /// The earliest moment one of this node's outstanding bids was placed: its window closes
    /// first.
    pub fn my_bids_since(&self) -> Option<Millis> {
        self.my_bids_since
    }

    /// Records a bid seen from any node (ourselves included). Bids for an older epoch than the
    /// one we track are ignored; a newer epoch replaces what we track.
    pub fn record(&mut self, now: Millis, bid: Bid) {
        let entry = self
            .open
            .entry(bid.slot.clone())
            .or_insert_with(|| OpenSlot::new(bid.epoch, None, now));
        if bid.epoch < entry.epoch {
            return;
        }
        if bid.epoch > entry.epoch {
            *entry = OpenSlot::new(bid.epoch, None, now);
        }
        entry.bids.insert(bid);
    }

    /// Forgets every slot that is no longer open at the epoch tracked (claimed meanwhile).
    /// Both maps are in slot order: walked in step rather than looked up.
    pub fn retain_open(&mut self, open: &BTreeMap<SlotId, u64>) {
        let mut still = open.iter().peekable();
        self.open.retain(|slot, o| {
            while still.next_if(|(s, _)| *s < slot).is_some() {}
            still
                .peek()
                .is_some_and(|(s, e)| *s == slot && **e == o.epoch)
        });
    }

    /// The slots of `open` due for this node to examine: never seen, or seen only in others'
    /// bids (bid now, within their window), or examined without a bid at least `rebid_ms` ago.
    pub fn due<'a>(
        &self,
        open: &'a BTreeMap<SlotId, u64>,
        now: Millis,
        rebid_ms: u64,
    ) -> impl Iterator<Item = (&'a SlotId, u64)> {
        let mut known = self.open.iter().peekable();
        open.iter().filter_map(move |(slot, epoch)| {
            while known.next_if(|(s, _)| *s < slot).is_some() {}
            let ready = match known.next_if(|(s, _)| *s == slot) {
                None => true,
                Some((_, o)) => {
                    o.my_bid.is_none() && o.opened_at.is_none_or(|t| now.since(t) >= rebid_ms)
                }
            };
            ready.then_some((slot, *epoch))
        })
    }

    /// Marks the slot examined for a bid at `epoch` now; returns how long it has been open in
    /// this node's eyes (since it first saw it at this epoch).
    pub fn examine(&mut self, slot: &SlotId, epoch: u64, now: Millis) -> u64 {
        let entry = self
            .open
            .entry(slot.clone())
            .or_insert_with(|| OpenSlot::new(epoch, Some(now), now));
        entry.opened_at = Some(now);
        now.since(entry.first_seen)
    }

    /// Places this node's bid on an examined slot, reserving `reservation` until its window
    /// closes.
    pub fn bid(&mut self, bid: Bid, reservation: Resources) {
        let entry = self
            .open
            .get_mut(&bid.slot)
            .expect("a slot is examined before this node bids for it");
        entry.my_bid = Some(bid.clone());
        entry.my_reservation = reservation;
        entry.bids.insert(bid);
        if let Some(t) = entry.opened_at {
            self.my_bids_since = Some(self.my_bids_since.map_or(t, |s| s.min(t)));
        }
    }

    /// Closes the windows of this node's bids placed at least `window_ms` ago: their
    /// reservations end, and the bids `me` won are returned (those slots leave the book; the
    /// caller claims them). A slot another node won stays, so that this node bids again after
    /// `rebid_ms` if the winner never claims it.
    pub fn close(&mut self, now: Millis, window_ms: u64, me: &NodeId) -> Vec<Bid> {
        let mut won = Vec::new();
        let mut since: Option<Millis> = None;
        self.open.retain(|slot, o| {
            if o.my_bid.is_none() || o.opened_at.is_none_or(|t| now.since(t) < window_ms) {
                if o.my_bid.is_some()
                    && let Some(t) = o.opened_at
                {
                    since = Some(since.map_or(t, |s| s.min(t)));
                }
                return true;
            }
            let win = winner(o.bids.values()).cloned();
            tracing::debug!(
                slot = %slot,
                bids = ?o.bids.values().map(|b| (b.node.short(), b.score)).collect::<Vec<_>>(),
                "bid window closed"
            );
            o.my_bid = None;
            o.my_reservation = Resources::default();
            match win {
                Some(win) if win.node == *me => {
                    won.push(win);
                    false
                }
                _ => true,
            }
        });
        self.my_bids_since = since;
        won
    }

    /// Whether `slot` has waited for a winner longer than `window_ms` without a bid from this
    /// node (or is not in the book at all): a slot nobody can take.
    pub fn stalled(&self, slot: &SlotId, now: Millis, window_ms: u64) -> bool {
        self.open.get(slot).is_none_or(|o| {
            now.since(o.opened_at.unwrap_or(o.first_seen)) >= window_ms && o.my_bid.is_none()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::ServiceName;

    fn slot(i: u32) -> SlotId {
        SlotId::new(&ServiceName("web".into()), i)
    }

    fn bid(i: u32, epoch: u64, score: u64, node: &str) -> Bid {
        Bid {
            slot: slot(i),
            epoch,
            score,
            node: NodeId(node.into()),
        }
    }

    fn cpu(cpu_millis: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes: 0,
        }
    }

    #[test]
    fn a_bid_reserves_until_its_window_closes_and_the_winner_takes_the_slot() {
        let me = NodeId("b".into());
        let mut a = Auction::default();
        assert_eq!(a.examine(&slot(0), 1, Millis(100)), 0);
        a.bid(bid(0, 1, 5, "b"), cpu(300));
        a.record(Millis(120), bid(0, 1, 4, "a"));
        assert_eq!(a.reserved(), cpu(300));
        assert_eq!(a.my_bids_since(), Some(Millis(100)));
        assert!(a.close(Millis(399), 300, &me).is_empty());
        assert_eq!(a.close(Millis(400), 300, &me), vec![bid(0, 1, 5, "b")]);
        assert_eq!(a.reserved(), Resources::default());
        assert!(a.get(&slot(0)).is_none());
    }

    #[test]
    fn a_slot_another_node_won_stays_and_comes_due_again_after_the_rebid_delay() {
        let me = NodeId("a".into());
        let mut a = Auction::default();
        a.examine(&slot(0), 1, Millis(0));
        a.bid(bid(0, 1, 4, "a"), cpu(300));
        a.record(Millis(10), bid(0, 1, 9, "z"));
        assert!(a.close(Millis(300), 300, &me).is_empty());
        assert_eq!(a.reserved(), Resources::default());
        let open: BTreeMap<SlotId, u64> = [(slot(0), 1)].into();
        assert_eq!(a.due(&open, Millis(1_999), 2_000).count(), 0);
        assert_eq!(a.due(&open, Millis(2_000), 2_000).count(), 1);
    }

    #[test]
    fn a_slot_seen_only_in_others_bids_is_due_at_once_and_old_epochs_are_ignored() {
        let mut a = Auction::default();
        a.record(Millis(0), bid(0, 2, 1, "x"));
        a.record(Millis(0), bid(0, 1, 7, "y"));
        assert_eq!(a.get(&slot(0)).map(|o| o.bids().len()), Some(1));
        let open: BTreeMap<SlotId, u64> = [(slot(0), 2), (slot(1), 1)].into();
        let due: Vec<(&SlotId, u64)> = a.due(&open, Millis(0), 2_000).collect();
        assert_eq!(due, vec![(&slot(0), 2), (&slot(1), 1)]);
    }

    #[test]
    fn slots_claimed_meanwhile_leave_the_book() {
        let mut a = Auction::default();
        a.record(Millis(0), bid(0, 1, 1, "x"));
        a.record(Millis(0), bid(1, 1, 1, "x"));
        a.record(Millis(0), bid(2, 1, 1, "x"));
        a.retain_open(&[(slot(1), 1), (slot(2), 2)].into());
        assert!(a.get(&slot(0)).is_none());
        assert!(a.get(&slot(1)).is_some());
        assert!(a.get(&slot(2)).is_none(), "open at another epoch now");
    }

    #[test]
    fn a_slot_without_a_bid_from_this_node_stalls_after_the_window() {
        let mut a = Auction::default();
        assert!(a.stalled(&slot(0), Millis(0), 300));
        a.examine(&slot(0), 1, Millis(0));
        assert!(!a.stalled(&slot(0), Millis(299), 300));
        assert!(a.stalled(&slot(0), Millis(300), 300));
        a.bid(bid(0, 1, 1, "a"), cpu(1));
        assert!(!a.stalled(&slot(0), Millis(900), 300));
    }
}
