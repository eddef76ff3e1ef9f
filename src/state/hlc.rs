//! Hybrid logical clock: timestamps that are totally ordered, monotonic per node, and after
//! anything the node has already observed, while staying close to wall-clock time.
//!
//! The clock never reads time itself: the caller passes `now` (see `ids::Millis`). Stamps from
//! peers that lie far in the future are still merged (a CRDT cannot refuse facts) but counted, so a
//! node with a wrong clock is visible in `shoal status` instead of silently winning every write.

use serde::{Deserialize, Serialize};

use crate::ids::{Millis, NodeId};

/// A timestamp `(wall_ms, logical, node)`. Ordered lexicographically; the node id breaks ties, so
/// two distinct writers never produce equal stamps.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    pub wall_ms: u64,
    pub logical: u32,
    pub node: NodeId,
}

/// How far ahead of local time a remote stamp may be before it is counted as clock skew.
pub const MAX_FORWARD_SKEW_MS: u64 = 60_000;

/// One node's clock state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HlcClock {
    node: NodeId,
    wall_ms: u64,
    logical: u32,
    /// Remote stamps seen more than `MAX_FORWARD_SKEW_MS` ahead of local time.
    pub skewed_stamps_seen: u64,
}

impl HlcClock {
    pub fn new(node: NodeId) -> HlcClock {
        HlcClock {
            node,
            wall_ms: 0,
            logical: 0,
            skewed_stamps_seen: 0,
        }
    }

    /// A new stamp for a local event at `now`: greater than every stamp issued or observed.
    pub fn stamp(&mut self, now: Millis) -> Hlc {
        if now.0 > self.wall_ms {
            self.wall_ms = now.0;
            self.logical = 0;
        } else {
            self.bump_logical();
        }
        Hlc {
            wall_ms: self.wall_ms,
            logical: self.logical,
            node: self.node.clone(),
        }
    }

    /// Folds a remote stamp in, so later local stamps order after it.
    pub fn observe(&mut self, now: Millis, remote: &Hlc) {
        if remote.wall_ms > now.0.saturating_add(MAX_FORWARD_SKEW_MS) {
            self.skewed_stamps_seen += 1;
        }
        if remote.wall_ms > self.wall_ms {
            self.wall_ms = remote.wall_ms;
            self.logical = remote.logical;
        } else if remote.wall_ms == self.wall_ms && remote.logical > self.logical {
            self.logical = remote.logical;
        }
    }

    fn bump_logical(&mut self) {
        match self.logical.checked_add(1) {
            Some(l) => self.logical = l,
            // 4 billion events within one millisecond: move the wall part forward instead.
            None => {
                self.wall_ms += 1;
                self.logical = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn n(s: &str) -> NodeId {
        NodeId(s.into())
    }

    #[test]
    fn stamps_grow_even_when_the_wall_clock_goes_backwards() {
        let mut c = HlcClock::new(n("a"));
        let s1 = c.stamp(Millis(1000));
        let s2 = c.stamp(Millis(500));
        let s3 = c.stamp(Millis(1000));
        assert!(s1 < s2 && s2 < s3);
    }

    #[test]
    fn a_stamp_after_observing_a_remote_one_orders_after_it() {
        let mut c = HlcClock::new(n("a"));
        let remote = Hlc {
            wall_ms: 5000,
            logical: 7,
            node: n("b"),
        };
        c.observe(Millis(1000), &remote);
        let s = c.stamp(Millis(1000));
        assert!(s > remote);
        assert_eq!(c.skewed_stamps_seen, 0);
    }

    #[test]
    fn far_future_remote_stamps_are_counted_as_skew() {
        let mut c = HlcClock::new(n("a"));
        c.observe(
            Millis(0),
            &Hlc {
                wall_ms: 10_000_000,
                logical: 0,
                node: n("b"),
            },
        );
        assert_eq!(c.skewed_stamps_seen, 1);
    }

    proptest! {
        #[test]
        fn local_stamps_are_strictly_increasing(times in proptest::collection::vec(0u64..10_000, 1..200)) {
            let mut c = HlcClock::new(n("a"));
            let mut last: Option<Hlc> = None;
            for t in times {
                let s = c.stamp(Millis(t));
                if let Some(l) = &last { prop_assert!(&s > l); }
                last = Some(s);
            }
        }
    }
}
