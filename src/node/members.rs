//! The node core's view of the fleet: which peers are alive and what they advertise.
//!
//! Fed by membership events (SWIM through foca, in `membership/`); read by placement (who can
//! bid, who is down, what capacity others advertise) and by `shoal nodes`. Sans-IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ids::{Millis, NodeId};
use crate::membership::{Member, MemberState, NodeMeta};
use crate::spec::{DriverKind, Resources};

/// What a node advertises about itself (gossiped with membership, versioned): the record
/// membership holds, shared (one copy per member per node, however many views read it: in a
/// fleet of thousands the records are most of a node's membership memory). Every figure is
/// read from the record, so a `PeerMeta` cannot disagree with what the peer advertised.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerMeta(Arc<NodeMeta>);

impl PeerMeta {
    /// The peer's metadata as membership received it.
    pub fn from_advertised(m: Arc<NodeMeta>) -> PeerMeta {
        PeerMeta(m)
    }

    /// The record itself.
    pub fn advertised(&self) -> &Arc<NodeMeta> {
        &self.0
    }

    pub fn capacity(&self) -> Resources {
        Resources {
            cpu_millis: self.0.cpu_millis,
            memory_bytes: self.0.memory_bytes,
        }
    }

    /// What the peer says is allocated to its instances.
    pub fn allocated(&self) -> Resources {
        Resources {
            cpu_millis: self.0.allocated_cpu_millis,
            memory_bytes: self.0.allocated_memory_bytes,
        }
    }

    pub fn runtimes(&self) -> &[DriverKind] {
        &self.0.runtimes
    }

    pub fn draining(&self) -> bool {
        self.0.draining
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        &self.0.labels
    }

    pub fn agent_version(&self) -> &str {
        &self.0.agent_version
    }

    pub fn addrs(&self) -> &[String] {
        &self.0.addrs
    }
}

/// A peer as this node's core sees it: membership's view of it, and since when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub state: MemberState,
    pub incarnation: u64,
    pub meta: Option<PeerMeta>,
    pub since: Millis,
    pub last_heard: Millis,
}

/// Every peer this node has heard of (itself excluded).
///
/// Invariant: `present` and `not_left` are the counts of `peers` in a present state and in a
/// state other than `Left`: `peers` changes only through `apply`, which keeps them, so that
/// majority checks on every pass are O(1) instead of a walk over the fleet.
#[derive(Clone, Debug, Default)]
pub struct Members {
    peers: BTreeMap<NodeId, Peer>,
    present: usize,
    not_left: usize,
}

impl Members {
    /// Every peer, by id.
    pub fn peers(&self) -> &BTreeMap<NodeId, Peer> {
        &self.peers
    }

    fn count(&mut self, state: MemberState, add: bool) {
        let step = |n: &mut usize| {
            if add { *n += 1 } else { *n -= 1 }
        };
        if state.is_active() {
            step(&mut self.present);
        }
        if state != MemberState::Left {
            step(&mut self.not_left);
        }
    }

    /// Takes a member as membership reports it in; returns true if its state, life or
    /// metadata changed. An older life than the one known is ignored.
    pub fn apply(&mut self, now: Millis, m: &Member) -> bool {
        let before = match self.peers.get(&m.id) {
            Some(p) if m.incarnation < p.incarnation => return false,
            Some(p) => Some(p.state),
            None => None,
        };
        if let Some(state) = before {
            self.count(state, false);
        }
        self.count(m.state, true);
        let meta = m.meta.clone().map(PeerMeta::from_advertised);
        match self.peers.get_mut(&m.id) {
            Some(p) => {
                let changed = p.state != m.state
                    || (meta.is_some() && meta != p.meta)
                    || p.incarnation != m.incarnation;
                if p.state != m.state {
                    p.since = now;
                }
                p.state = m.state;
                p.incarnation = m.incarnation;
                if meta.is_some() {
                    p.meta = meta;
                }
                p.last_heard = now;
                changed
            }
            None => {
                self.peers.insert(
                    m.id.clone(),
                    Peer {
                        state: m.state,
                        incarnation: m.incarnation,
                        meta,
                        since: now,
                        last_heard: now,
                    },
                );
                true
            }
        }
    }

    pub fn state(&self, node: &NodeId) -> Option<MemberState> {
        self.peers.get(node).map(|p| p.state)
    }

    /// Present peers (alive or suspect), self excluded.
    pub fn present(&self) -> impl Iterator<Item = (&NodeId, &Peer)> {
        self.peers.iter().filter(|(_, p)| p.state.is_active())
    }

    /// Present members including self.
    pub fn present_count(&self) -> usize {
        1 + self.present
    }

    /// Whether this node sees a strict majority of the last stable membership.
    pub fn sees_majority(&self) -> bool {
        self.present_count() * 2 > self.stable_size()
    }

    /// The reference for "strict majority" of `partition: majority` services: every member
    /// known (self included) but those that left gracefully. It grows at once and shrinks only
    /// when a member leaves gracefully (a crashed or cut-off member still counts against
    /// majority).
    pub fn stable_size(&self) -> usize {
        1 + self.not_left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member as membership would report it.
    pub(crate) fn member(node: &str, state: MemberState, incarnation: u64) -> Member {
        Member {
            id: NodeId(node.into()),
            incarnation,
            state,
            meta: None,
            addrs: Vec::new().into(),
            last_heard: Millis(0),
            state_since: Millis(0),
        }
    }

    /// Every node holds one `Peer` per member: in the simulator that is one per (node,
    /// member) pair, 10⁶ of them at 1,000 nodes. The metadata is the shared record itself.
    #[test]
    fn a_peer_entry_stays_small() {
        assert_eq!(
            std::mem::size_of::<PeerMeta>(),
            std::mem::size_of::<usize>()
        );
        let size = std::mem::size_of::<Peer>();
        assert!(size <= 40, "a Peer is {size} bytes");
    }

    #[test]
    fn counts_follow_every_transition_and_ignore_stale_lives() {
        use MemberState::*;
        let mut m = Members::default();
        let steps = [
            member("a", Alive, 1),
            member("b", Suspect, 1),
            member("c", Down, 1),
            member("a", Suspect, 1),
            member("b", Down, 1),
            member("c", Left, 1),
            member("c", Alive, 0), // an older life: ignored
            member("b", Alive, 2),
            member("d", Left, 3),
            member("a", Left, 1),
        ];
        for (k, u) in steps.into_iter().enumerate() {
            m.apply(Millis(k as u64), &u);
            let present = m.peers().values().filter(|p| p.state.is_active()).count();
            let known = m.peers().values().filter(|p| p.state != Left).count();
            assert_eq!(m.present_count(), 1 + present, "step {k}");
            assert_eq!(m.stable_size(), 1 + known, "step {k}");
        }
        assert_eq!(m.present_count(), 2); // self and b
        assert_eq!(m.stable_size(), 2);
        assert!(m.sees_majority());
    }
}
