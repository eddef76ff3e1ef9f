//! Which slots need an owner: a pure function of the replicated state, what this node knows
//! of each claim's owner, and the fencing rules (`Gate`, kept by `node/fence.rs`).
//!
//! A slot is open when it has never been claimed, when its claim was released, when its owner
//! is draining, or when its owner has been absent long enough. Every node computes the same
//! open slots from the same facts. No IO, no clock: time comes in as `now`.

use crate::ids::{Millis, NodeId, SlotId};
use crate::spec::ServiceSpec;
use crate::state::ClusterState;

/// What this node knows of a claim's owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerSeen {
    /// Alive or suspect: it still owns its slots.
    Present,
    /// Down or left, since `since`.
    Absent { since: Millis },
    /// Never heard of (membership may not have converged since this node started).
    Unknown,
}

/// The rules that hold some slots back from placement: majority fencing for
/// `partition: majority` services (see `node/fence.rs`).
pub trait Gate {
    /// Whether this node may place slots of `spec` at all.
    fn may_place(&self, spec: &ServiceSpec) -> bool;
    /// Whether a slot of `spec` whose owner has been absent for `gone_for` milliseconds may be
    /// placed again; `known` is false when this node never heard of the owner.
    fn may_replace(&self, spec: &ServiceSpec, known: bool, gone_for: u64) -> bool;
}

/// Slots that need an owner, with the epoch the next claim takes, in slot order.
///
/// `me` always counts as present. `settled_for` is how long this node has run once past its
/// startup grace (`None` before): a claim of a node it never heard of counts as orphaned only
/// then, and as absent for that long.
pub fn open_slots(
    state: &ClusterState,
    me: &NodeId,
    now: Millis,
    settled_for: Option<u64>,
    seen: impl Fn(&NodeId) -> OwnerSeen,
    gate: &impl Gate,
) -> Vec<(SlotId, u64)> {
    let mut open = Vec::new();
    for (name, _rev, spec) in state.live_services() {
        if !gate.may_place(spec) {
            continue;
        }
        // The service's claims, in index order, walked in step with its slots: one pass
        // instead of a map lookup (and a slot id built) per slot.
        let mut claims = state.claims_of(name).peekable();
        for index in 0..spec.replicas {
            while claims.next_if(|(slot, _)| slot.index < index).is_some() {}
            let Some((slot, c)) = claims.next_if(|(slot, _)| slot.index == index) else {
                open.push((SlotId::new(name, index), 1));
                continue;
            };
            if c.released {
                open.push((slot.clone(), c.epoch + 1));
                continue;
            }
            let seen = if c.node == *me {
                OwnerSeen::Present
            } else {
                seen(&c.node)
            };
            let (known, gone_for) = match seen {
                OwnerSeen::Present => {
                    if state.draining(&c.node) {
                        open.push((slot.clone(), c.epoch + 1));
                    }
                    continue;
                }
                OwnerSeen::Absent { since } => (true, now.since(since)),
                OwnerSeen::Unknown => match settled_for {
                    Some(ran) => (false, ran),
                    None => continue,
                },
            };
            if gate.may_replace(spec, known, gone_for) {
                open.push((slot.clone(), c.epoch + 1));
            }
        }
    }
    open
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Hlc;

    struct Open;
    impl Gate for Open {
        fn may_place(&self, _: &ServiceSpec) -> bool {
            true
        }
        fn may_replace(&self, _: &ServiceSpec, _: bool, gone_for: u64) -> bool {
            gone_for >= 1_000
        }
    }

    struct Closed;
    impl Gate for Closed {
        fn may_place(&self, _: &ServiceSpec) -> bool {
            false
        }
        fn may_replace(&self, _: &ServiceSpec, _: bool, _: u64) -> bool {
            true
        }
    }

    fn node(n: &str) -> NodeId {
        NodeId(n.into())
    }

    /// `web` with 4 replicas and claims `(index, node, released)` at epoch 1.
    fn state(claims: &[(u32, &str, bool)]) -> ClusterState {
        let claims: Vec<_> = claims.iter().map(|&(i, n, r)| (i, n, 1, r)).collect();
        crate::state::cluster::tests::state_with(
            crate::state::cluster::tests::spec("web", 4),
            &claims,
        )
    }

    fn indexes(open: &[(SlotId, u64)]) -> Vec<(u32, u64)> {
        open.iter().map(|(s, e)| (s.index, *e)).collect()
    }

    #[test]
    fn unclaimed_released_and_abandoned_slots_are_open_at_the_next_epoch() {
        let s = state(&[(0, "me", false), (1, "b", true), (2, "gone", false)]);
        let seen = |n: &NodeId| match &*n.0 {
            "gone" => OwnerSeen::Absent { since: Millis(0) },
            _ => OwnerSeen::Present,
        };
        let open = open_slots(&s, &node("me"), Millis(1_000), None, seen, &Open);
        assert_eq!(indexes(&open), vec![(1, 2), (2, 2), (3, 1)]);
        let early = open_slots(&s, &node("me"), Millis(999), None, seen, &Open);
        assert_eq!(indexes(&early), vec![(1, 2), (3, 1)]);
    }

    #[test]
    fn an_unknown_owner_counts_as_absent_only_after_the_startup_grace() {
        let s = state(&[(0, "stranger", false)]);
        let seen = |_: &NodeId| OwnerSeen::Unknown;
        let me = node("me");
        let open = open_slots(&s, &me, Millis(5), None, seen, &Open);
        assert_eq!(indexes(&open), vec![(1, 1), (2, 1), (3, 1)]);
        let open = open_slots(&s, &me, Millis(5), Some(1_000), seen, &Open);
        assert_eq!(indexes(&open), vec![(0, 2), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn a_draining_owner_gives_its_slots_up_and_a_closed_gate_places_nothing() {
        let mut s = state(&[(0, "b", false)]);
        let stamp = Hlc {
            wall_ms: 2,
            logical: 0,
            node: node("b"),
        };
        s.put_drain(&node("b"), stamp, true);
        let seen = |_: &NodeId| OwnerSeen::Present;
        let open = open_slots(&s, &node("me"), Millis(0), None, seen, &Open);
        assert_eq!(indexes(&open)[0], (0, 2));
        assert!(open_slots(&s, &node("me"), Millis(0), None, seen, &Closed).is_empty());
    }
}
