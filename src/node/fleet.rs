//! How membership reaches the node: SWIM datagrams and addresses go out, member events update
//! the node's view of the fleet (`Members`) and start anti-entropy with members that appear,
//! and this node's metadata (capacity, allocation, draining) is handed to membership to
//! advertise. SWIM itself lives in `membership/`.

use rand::Rng;

use crate::ids::{Millis, NodeId};
use crate::membership::{Member, MemberEvent, MemberOutput, NodeMeta};
use crate::spec::Resources;

use super::{Node, NodeConfig, Output};

impl<R: Rng> Node<R> {
    /// Announces a graceful departure: peers mark this node `left` at once.
    pub fn leave(&mut self, now: Millis, out: &mut Vec<Output>) {
        let mut mo = Vec::new();
        self.membership.leave(now, &mut mo);
        self.apply_member_outputs(now, mo, out);
    }

    /// A SWIM datagram from a peer.
    pub(super) fn on_datagram(
        &mut self,
        now: Millis,
        from: &NodeId,
        bytes: &[u8],
        out: &mut Vec<Output>,
    ) {
        let mut mo = Vec::new();
        self.membership.handle_datagram(now, from, bytes, &mut mo);
        self.apply_member_outputs(now, mo, out);
    }

    /// The transport connected to `node`: announce ourselves unless it is an active member.
    pub(super) fn on_connected(&mut self, now: Millis, node: NodeId, out: &mut Vec<Output>) {
        let known = self
            .membership
            .member(&node)
            .is_some_and(|x| x.state.is_active());
        if !known {
            let mut mo = Vec::new();
            self.membership.announce(now, node, &mut mo);
            self.apply_member_outputs(now, mo, out);
        }
    }

    /// Folds membership outputs in: datagrams and addresses go out, events update the view.
    pub(super) fn apply_member_outputs(
        &mut self,
        now: Millis,
        mo: Vec<MemberOutput>,
        out: &mut Vec<Output>,
    ) {
        for o in mo {
            match o {
                MemberOutput::Datagram { to, bytes } => out.push(Output::Datagram { to, bytes }),
                MemberOutput::Addresses { node, addrs } => {
                    out.push(Output::Addresses { node, addrs })
                }
                MemberOutput::Event(ev, member) => self.on_member_event(now, &ev, &member, out),
            }
        }
    }

    /// A member changed: the view takes it in, and a member that came up is synced with.
    pub(super) fn on_member_event(
        &mut self,
        now: Millis,
        ev: &MemberEvent,
        m: &Member,
        out: &mut Vec<Output>,
    ) {
        self.dirty = true;
        let id = &m.id;
        if *id == self.cfg.id {
            return;
        }
        match ev {
            MemberEvent::Up(_) => {
                tracing::info!(peer = %id, incarnation = m.incarnation, "member up")
            }
            MemberEvent::Down(_) => tracing::warn!(peer = %id, "member down"),
            MemberEvent::Left(_) => tracing::info!(peer = %id, "member left"),
            MemberEvent::Suspect(_) | MemberEvent::MetaChanged(_) => {}
        }
        let known = self.members.peers().contains_key(id);
        self.members.apply(now, m);
        if matches!(ev, MemberEvent::Up(_)) {
            self.sync.member_up(now, id, known, &self.state, out);
        }
    }

    /// Hands changed metadata (allocation, draining) to membership, which rate-limits it.
    pub(super) fn publish_meta(&mut self, now: Millis, out: &mut Vec<Output>) {
        let meta = node_meta(
            &self.cfg,
            self.allocated(now),
            self.state.draining(&self.cfg.id),
        );
        if self
            .published_meta
            .as_ref()
            .is_some_and(|p| same_meta(p, &meta))
        {
            return;
        }
        let mut mo = Vec::new();
        match self.membership.set_meta(now, meta.clone(), &mut mo) {
            Ok(()) => self.published_meta = Some(meta),
            Err(e) => tracing::warn!(error = %e, "cannot publish node metadata"),
        }
        self.apply_member_outputs(now, mo, out);
    }
}

/// The metadata record this node advertises through membership.
pub(super) fn node_meta(cfg: &NodeConfig, allocated: Resources, draining: bool) -> NodeMeta {
    NodeMeta {
        version: 0,
        labels: cfg.labels.clone(),
        cpu_millis: cfg.capacity.cpu_millis,
        memory_bytes: cfg.capacity.memory_bytes,
        allocated_cpu_millis: allocated.cpu_millis,
        allocated_memory_bytes: allocated.memory_bytes,
        draining,
        runtimes: cfg.runtimes.iter().copied().collect(),
        agent_version: cfg.agent_version.clone(),
        addrs: cfg.addrs.clone(),
    }
}

fn same_meta(a: &NodeMeta, b: &NodeMeta) -> bool {
    NodeMeta {
        version: 0,
        ..a.clone()
    } == NodeMeta {
        version: 0,
        ..b.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{member, ready};
    use super::*;
    use crate::membership::MemberState;

    fn syncs_with(out: &[Output], peer: &str) -> bool {
        out.iter()
            .any(|o| matches!(o, Output::SyncRequest { to, .. } if &*to.0 == peer))
    }

    #[test]
    fn a_member_that_comes_up_is_synced_with_and_one_that_goes_down_is_not() {
        let mut n = ready("a");
        let out = member(&mut n, "b", MemberState::Alive, 1);
        assert!(syncs_with(&out, "b"));
        assert_eq!(n.members().present_count(), 2);
        let out = member(&mut n, "b", MemberState::Down, 2);
        assert!(!syncs_with(&out, "b"));
        assert_eq!(n.members().present_count(), 1);
    }
}
