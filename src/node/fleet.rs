//! How membership reaches the node: SWIM datagrams and addresses go out, member events update
//! the node's view of the fleet (`Members`) and start anti-entropy with members that appear,
//! and this node's metadata (capacity, allocation, draining) is handed to membership to
//! advertise. SWIM itself lives in `membership/`.

use rand::Rng;

use crate::ids::{Millis, NodeId};
use crate::membership::{MemberEvent, MemberOutput, MemberState, NodeMeta};
use crate::spec::Resources;

use super::{Node, NodeConfig, Output, PeerMeta, PeerState, PeerUpdate};

impl<R: Rng> Node<R> {
    /// Announces a graceful departure: peers mark this node `left` at once.
    pub fn leave(&mut self, now: Millis, out: &mut Vec<Output>) {
        if let Some(m) = &mut self.membership {
            let mut mo = Vec::new();
            m.leave(now, &mut mo);
            self.apply_member_outputs(now, mo, out);
        }
    }

    /// A SWIM datagram from a peer.
    pub(super) fn on_datagram(
        &mut self,
        now: Millis,
        from: &NodeId,
        bytes: &[u8],
        out: &mut Vec<Output>,
    ) {
        if let Some(m) = &mut self.membership {
            let mut mo = Vec::new();
            m.handle_datagram(now, from, bytes, &mut mo);
            self.apply_member_outputs(now, mo, out);
        }
    }

    /// The transport connected to `node`: announce ourselves unless it is an active member.
    pub(super) fn on_connected(&mut self, now: Millis, node: NodeId, out: &mut Vec<Output>) {
        let known = self
            .membership
            .as_ref()
            .is_some_and(|m| m.member(&node).is_some_and(|x| x.state.is_active()));
        if !known && let Some(m) = &mut self.membership {
            let mut mo = Vec::new();
            m.announce(now, node, &mut mo);
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
                MemberOutput::Event(ev) => {
                    self.dirty = true;
                    let (MemberEvent::Up(id)
                    | MemberEvent::Suspect(id)
                    | MemberEvent::Down(id)
                    | MemberEvent::Left(id)
                    | MemberEvent::MetaChanged(id)) = &ev;
                    if id == &self.cfg.id {
                        continue;
                    }
                    let Some(m) = self.membership.as_ref().and_then(|m| m.member(id)) else {
                        continue;
                    };
                    let update = PeerUpdate {
                        node: id.clone(),
                        state: match m.state {
                            MemberState::Alive => PeerState::Alive,
                            MemberState::Suspect => PeerState::Suspect,
                            MemberState::Down => PeerState::Down,
                            MemberState::Left => PeerState::Left,
                        },
                        incarnation: m.incarnation,
                        meta: m.meta.clone().map(PeerMeta::from_advertised),
                    };
                    match &ev {
                        MemberEvent::Up(_) => {
                            tracing::info!(peer = %id, incarnation = m.incarnation, "member up")
                        }
                        MemberEvent::Down(_) => tracing::warn!(peer = %id, "member down"),
                        MemberEvent::Left(_) => tracing::info!(peer = %id, "member left"),
                        _ => {}
                    }
                    let up = matches!(ev, MemberEvent::Up(_));
                    let known = self.members.peers().contains_key(id);
                    self.members.apply(now, update);
                    if up {
                        self.sync.member_up(now, id, known, &self.state, out);
                    }
                }
            }
        }
    }

    /// Hands changed metadata (allocation, draining) to membership, which rate-limits it.
    pub(super) fn publish_meta(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.membership.is_none() {
            return;
        }
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
        let m = self.membership.as_mut().expect("checked above");
        match m.set_meta(now, meta.clone(), &mut mo) {
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
