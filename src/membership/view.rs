//! This node's view of the members: mirrors foca's member states into `Member` records and
//! turns their changes into `MemberEvent`s (and `Left` where a leaving notice says so).
//!
//! Part of `Membership`; pure bookkeeping, no IO.

use super::*;

/// One member as tracked here: the public record plus what the diff against foca needs.
pub(super) struct Tracked {
    pub(super) member: Member,
    pub(super) renewal: u32,
    /// Foca's view of this life: `state` may say `Left` where foca still says alive or down.
    pub(super) foca_state: MemberState,
    /// Foca's incarnation of this life (bumped by the member to refute suspicion).
    pub(super) foca_incarnation: u16,
    /// The scan that last found it in foca's state (tombstones foca forgot are dropped).
    pub(super) seen: u64,
}

/// The events a state change produces, in order. `from` is `None` for a member (or a life of
/// it) seen for the first time.
fn transition(node: &NodeId, from: Option<MemberState>, to: MemberState) -> Vec<MemberEvent> {
    use MemberState::*;
    let n = || node.clone();
    let Some(from) = from else {
        return match to {
            Alive => vec![MemberEvent::Up(n())],
            Suspect => vec![MemberEvent::Up(n()), MemberEvent::Suspect(n())],
            Down | Left => vec![],
        };
    };
    match (from, to) {
        (Alive, Alive) | (Suspect, Suspect) | (Down, Down) | (Left, Left) => vec![],
        (Suspect, Alive) | (Down | Left, Alive) => vec![MemberEvent::Up(n())],
        (Alive, Suspect) => vec![MemberEvent::Suspect(n())],
        (Down | Left, Suspect) => vec![MemberEvent::Up(n()), MemberEvent::Suspect(n())],
        (Alive | Suspect, Down) => vec![MemberEvent::Down(n())],
        (Left, Down) => vec![],
        (Alive | Suspect | Down, Left) => vec![MemberEvent::Left(n())],
    }
}

impl Membership {
    /// A packet that cannot change any member state: it carries no membership update and its
    /// sender is a life foca already holds alive at the incarnation the header names. (Foca
    /// applies "sender alive at its incarnation", a no-op then.) Most pings and acks are quiet,
    /// which spares the O(members) scan.
    pub(super) fn is_quiet(&self, header: &foca::Header<MemberId>, rest: &[u8]) -> bool {
        let no_updates = match rest {
            [] | [_] => true,
            [hi, lo, ..] => {
                header.message == foca::Message::Broadcast || u16::from_be_bytes([*hi, *lo]) == 0
            }
        };
        no_updates
            && self.tracked.get(&header.src.node).is_some_and(|t| {
                (t.member.incarnation, t.renewal, &t.member.addrs)
                    == (
                        header.src.incarnation,
                        header.src.renewal,
                        &header.src.addrs,
                    )
                    && t.foca_state == MemberState::Alive
                    && t.foca_incarnation == header.src_incarnation
            })
    }

    /// Compares foca's member states with `tracked` and emits the transitions, in id order.
    /// With `only`, just the members with those keys (one 128-bit compare per other member);
    /// without, every member, one map lookup and a few integer compares each, and tombstones
    /// foca forgot are dropped. Callers skip it when foca provably changed nothing.
    pub(super) fn sync_members(
        &mut self,
        now: Millis,
        only: Option<&[NodeKey]>,
        out: &mut Vec<MemberOutput>,
    ) {
        if only.is_none() {
            self.scan += 1;
        }
        let scan = self.scan;
        let store = self.store.lock();
        // (node, state before or None for a fresh arrival, state now, addresses changed)
        let mut changes: Vec<(NodeId, Option<MemberState>, MemberState, bool)> = Vec::new();
        for fm in self.foca.iter_membership_state() {
            let id = fm.id();
            if only.is_some_and(|keys| !keys.contains(&foca::Identity::addr(id))) {
                continue;
            }
            if id.node == self.me {
                // Our own previous life, which foca keeps as down after we rejoined.
                continue;
            }
            let foca_state = match fm.state() {
                foca::State::Alive => MemberState::Alive,
                foca::State::Suspect => MemberState::Suspect,
                foca::State::Down => MemberState::Down,
            };
            let leaving = || store.leaving.get(&id.node) == Some(&(id.incarnation, id.renewal));
            let Some(t) = self.tracked.get_mut(&id.node) else {
                let state = if leaving() {
                    MemberState::Left
                } else {
                    foca_state
                };
                let member = Member {
                    id: id.node.clone(),
                    incarnation: id.incarnation,
                    state,
                    meta: store.metas.get(&id.node).map(|r| r.meta.clone()),
                    addrs: id.addrs.clone(),
                    last_heard: Millis(0),
                    state_since: now,
                };
                changes.push((id.node.clone(), None, state, true));
                if member.meta.is_none() {
                    self.no_meta.insert(id.node.clone());
                }
                let tracked = Tracked {
                    member,
                    renewal: id.renewal,
                    foca_state,
                    foca_incarnation: fm.incarnation(),
                    seen: scan,
                };
                self.tracked.insert(id.node.clone(), tracked);
                continue;
            };
            t.seen = scan;
            // Lives are told apart by their counters: the agent persists its incarnation, so a
            // restart never reuses one (an identity with equal counters and other addresses
            // would replace this one in foca unnoticed here until its counters change).
            let new_life = t.member.incarnation != id.incarnation || t.renewal != id.renewal;
            if !new_life && t.foca_state == foca_state && t.foca_incarnation == fm.incarnation() {
                continue; // nothing foca knows about it changed
            }
            t.foca_state = foca_state;
            t.foca_incarnation = fm.incarnation();
            let m = &mut t.member;
            let addrs_changed = m.addrs != id.addrs;
            if new_life || addrs_changed {
                m.incarnation = id.incarnation;
                t.renewal = id.renewal;
                m.addrs = id.addrs.clone();
            }
            let old = m.state;
            let new = match (old, foca_state) {
                // A life that said it leaves stays left whatever foca still believes.
                (MemberState::Left, _) if !new_life => MemberState::Left,
                _ if leaving() => MemberState::Left,
                (_, s) => s,
            };
            if new != old {
                m.state = new;
                m.state_since = now;
            }
            if new != old || (new_life && new.is_active()) {
                // A new life counts as a fresh arrival even when both lives look alive.
                let from = if new_life && new.is_active() {
                    None
                } else {
                    Some(old)
                };
                changes.push((id.node.clone(), from, new, addrs_changed));
            }
        }
        drop(store);
        // Tombstones foca forgot (after `remove_down_after_ms`) go here too.
        if only.is_none() && self.tracked.len() > self.foca.iter_membership_state().len() + 1 {
            let me = &self.me;
            let forgotten: Vec<NodeId> = self
                .tracked
                .iter()
                .filter(|(node, t)| t.seen != scan && *node != me)
                .map(|(node, _)| node.clone())
                .collect();
            let mut store = self.store.lock();
            for node in forgotten {
                self.tracked.remove(&node);
                self.suspects.remove(&node);
                self.no_meta.remove(&node);
                self.pulled.remove(&node);
                store.metas.remove(&node);
                store.leaving.remove(&node);
            }
        }
        changes.sort();
        for (node, _, to, _) in &changes {
            if *to == MemberState::Suspect {
                self.suspects.insert(node.clone());
            } else {
                self.suspects.remove(node);
            }
            if to.is_active() && self.no_meta.contains(node) {
                self.note_missing_meta(now);
            }
        }
        for (node, from, to, addrs_changed) in changes {
            if addrs_changed && to.is_active() {
                let addrs = self.tracked[&node].member.addrs.clone();
                out.push(MemberOutput::Addresses {
                    node: node.clone(),
                    addrs: addrs.to_vec(),
                });
            }
            for event in transition(&node, from, to) {
                let member = self.tracked[&node].member.clone();
                out.push(MemberOutput::Event(event, member));
            }
        }
    }

    /// Applies metadata and leaving notices that arrived through broadcasts or pulls.
    pub(super) fn sync_store(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        let mut store = self.store.lock();
        let mut left = std::mem::take(&mut store.left);
        let mut changed = std::mem::take(&mut store.meta_changed);
        left.sort();
        left.dedup();
        changed.sort();
        changed.dedup();
        for node in left {
            let (Some(t), Some(life)) = (self.tracked.get_mut(&node), store.leaving.get(&node))
            else {
                continue;
            };
            if node != self.me
                && (t.member.incarnation, t.renewal) == *life
                && t.member.state != MemberState::Left
            {
                t.member.state = MemberState::Left;
                t.member.state_since = now;
                self.suspects.remove(&node);
                out.push(MemberOutput::Event(
                    MemberEvent::Left(node),
                    t.member.clone(),
                ));
            }
        }
        for node in changed {
            let (Some(t), Some(record)) = (self.tracked.get_mut(&node), store.metas.get(&node))
            else {
                continue;
            };
            if node != self.me && t.member.meta.as_ref() != Some(&record.meta) {
                t.member.meta = Some(record.meta.clone());
                self.no_meta.remove(&node);
                out.push(MemberOutput::Event(
                    MemberEvent::MetaChanged(node),
                    t.member.clone(),
                ));
            }
        }
    }

    /// The indexes kept beside `tracked` agree with it (tests call this after their runs).
    #[cfg(test)]
    pub(super) fn check_indexes(&self) {
        let suspects: BTreeSet<NodeId> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.member.state == MemberState::Suspect)
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(suspects, self.suspects, "suspect index out of step");
        let no_meta: BTreeSet<NodeId> = self
            .tracked
            .iter()
            .filter(|(n, t)| **n != self.me && t.member.meta.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        assert_eq!(no_meta, self.no_meta, "missing-metadata index out of step");
    }
}
