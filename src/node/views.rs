//! The node's read views: `shoal ps`, `shoal status`, `shoal nodes`, and why a slot cannot be
//! placed (`explain`). Reads only: nothing here changes the node or emits an output.

use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use crate::ids::{Millis, NodeId, SlotId};
use crate::membership::MemberState;
use crate::placement::{self, Ineligible, NodeFacts};
use crate::reconcile;
use crate::runtime::Handle;
use crate::spec::{ServiceName, ServiceSpec};
use crate::state::InstanceReport;

use super::{Node, api};

impl<R: Rng> Node<R> {
    /// Why a slot of `spec` cannot be placed, judged from this node's view of every present
    /// node's advertised facts.
    pub fn explain(&self, now: Millis, slot: &SlotId, spec: &ServiceSpec) -> String {
        // The same facts the plan ranks from (advertised, plus the replicated claims), with this
        // node's own real facts (instances still stopping, outstanding bids) for itself.
        let mut candidates: Vec<(NodeId, NodeFacts)> =
            vec![(self.cfg.id.clone(), self.my_facts(now))];
        candidates.extend(
            self.fleet_facts(false, &BTreeSet::new())
                .0
                .into_iter()
                .skip(1)
                .map(|c| (c.node, c.facts)),
        );
        let current = self
            .state
            .services
            .get(&slot.service)
            .and_then(|e| e.current());
        if let Some(until) = self
            .reconciler
            .excluded(slot, now, current.map(|r| &r.stamp))
            && candidates.len() == 1
        {
            return format!(
                "released after a crash loop; this node stays out of it for {}s more and no other node can take it",
                until.since(now) / 1000
            );
        }
        let reasons: Vec<(NodeId, Ineligible)> = candidates
            .iter()
            .filter_map(|(id, f)| placement::eligible(f, spec).err().map(|e| (id.clone(), e)))
            .collect();
        if reasons.len() < candidates.len() {
            return "waiting for the bid window to close".into();
        }
        if let Some((_, Ineligible::Constraint(c))) = reasons
            .iter()
            .find(|(_, r)| matches!(r, Ineligible::Constraint(_)))
            && reasons
                .iter()
                .all(|(_, r)| matches!(r, Ineligible::Constraint(_)))
        {
            return format!("constraint {c} matches no alive node");
        }
        if reasons
            .iter()
            .all(|(_, r)| matches!(r, Ineligible::NoDriver(_)))
        {
            return format!(
                "no alive node offers the {} runtime",
                placement::driver_name(spec.workload.driver())
            );
        }
        if reasons
            .iter()
            .all(|(_, r)| matches!(r, Ineligible::Draining))
        {
            return "every eligible node is draining".into();
        }
        let best_cpu = candidates
            .iter()
            .max_by_key(|(id, f)| (f.free().cpu_millis, id.clone()));
        if let Some((id, f)) = best_cpu
            && f.free().cpu_millis < spec.resources.cpu_millis
        {
            return format!(
                "needs cpu {}, largest free {} on {}",
                placement::fmt_cpu(spec.resources.cpu_millis),
                placement::fmt_cpu(f.free().cpu_millis),
                id.short()
            );
        }
        let best_mem = candidates
            .iter()
            .max_by_key(|(id, f)| (f.free().memory_bytes, id.clone()));
        if let Some((id, f)) = best_mem
            && f.free().memory_bytes < spec.resources.memory_bytes
        {
            return format!(
                "needs memory {}, largest free {} on {}",
                placement::fmt_bytes(spec.resources.memory_bytes),
                placement::fmt_bytes(f.free().memory_bytes),
                id.short()
            );
        }
        let summary: Vec<String> = reasons
            .iter()
            .map(|(id, r)| format!("{}: {r}", id.short()))
            .collect();
        format!("no node can host it ({})", summary.join("; "))
    }

    /// Slots that have been open longer than the bid window, with the reason.
    pub fn unplaceable(&self, now: Millis) -> Vec<(SlotId, String)> {
        let window = self.bid_window();
        self.open_slots(now)
            .into_iter()
            .filter(|(slot, _)| self.auction.stalled(slot, now, window))
            .filter_map(|(slot, _)| {
                let spec = self.state.live_spec(&slot.service)?;
                let reason = self.explain(now, &slot, spec);
                Some((slot, reason))
            })
            .collect()
    }

    pub(super) fn ps(&self, now: Millis, only: Option<&ServiceName>) -> Vec<api::PsEntry> {
        let pending: BTreeMap<SlotId, String> = self.unplaceable(now).into_iter().collect();
        let mine = self.reconciler.report(|m| m.0);
        let mut rows = Vec::new();
        for (name, _rev, spec) in self.state.live_services() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            for index in 0..spec.replicas {
                let slot = SlotId::new(name, index);
                let claim = self.state.claims.get(&slot).filter(|c| !c.released);
                let report: Option<&InstanceReport> = claim.and_then(|c| {
                    if c.node == self.cfg.id {
                        mine.get(&slot)
                    } else {
                        self.state
                            .report(&c.node)
                            .and_then(|r| r.instances.get(&slot))
                    }
                });
                let report = report.filter(|r| claim.is_some_and(|c| r.epoch == c.epoch));
                let (pid, container) = match report.and_then(|r| r.handle.as_ref()) {
                    Some(Handle::Pid { pid, .. }) => (Some(*pid), None),
                    Some(Handle::Container { id }) => (None, Some(id.chars().take(12).collect())),
                    None => (None, None),
                };
                let state = match (claim, report) {
                    (None, _) => "pending".to_string(),
                    (Some(_), Some(r)) => r.state.as_str().to_string(),
                    (Some(_), None) => "unknown".to_string(),
                };
                let detail = report
                    .and_then(|r| r.detail.clone())
                    .or_else(|| pending.get(&slot).cloned());
                rows.push(api::PsEntry {
                    service: name.0.to_string(),
                    slot: index,
                    node: claim.map(|c| c.node.0.to_string()),
                    epoch: claim.map_or(0, |c| c.epoch),
                    revision: report.map(|r| r.revision.0.clone()),
                    state,
                    pid,
                    container,
                    endpoint: report.and_then(|r| r.endpoint.clone()),
                    restarts: report.map_or(0, |r| r.restarts),
                    detail,
                });
            }
        }
        rows
    }

    pub(super) fn status(&self, now: Millis) -> api::StatusView {
        let mut members = api::MemberCounts {
            alive: 1,
            ..Default::default()
        };
        for p in self.members.peers().values() {
            match p.state {
                MemberState::Alive => members.alive += 1,
                MemberState::Suspect => members.suspect += 1,
                MemberState::Down => members.down += 1,
                MemberState::Left => members.left += 1,
            }
        }
        let running = self
            .reconciler
            .instances
            .values()
            .filter(|l| matches!(l.phase, reconcile::Phase::Running { .. }))
            .count();
        api::StatusView {
            node: self.cfg.id.0.to_string(),
            incarnation: self.cfg.incarnation,
            agent_version: self.cfg.agent_version.clone(),
            digest: format!("{:016x}", self.state.digest()),
            services: self.state.live_services().count(),
            slots: self
                .state
                .live_services()
                .map(|(_, _, s)| s.replicas as usize)
                .sum(),
            running,
            members,
            capacity: self.cfg.capacity.into(),
            allocated: self.allocated(now).into(),
            runtimes: self
                .cfg
                .runtimes
                .iter()
                .map(|d| placement::driver_name(*d).to_string())
                .collect(),
            draining: self.state.draining(&self.cfg.id),
            unplaceable: self
                .unplaceable(now)
                .into_iter()
                .map(|(slot, reason)| api::Unplaceable {
                    service: slot.service.0.to_string(),
                    slot: slot.index,
                    reason,
                })
                .collect(),
            counters: self.counters(),
            last_sync: self
                .sync
                .last_sync()
                .iter()
                .map(|(n, t)| (n.0.to_string(), t.0))
                .collect(),
            faults: Vec::new(),
        }
    }

    pub(super) fn nodes(&self, now: Millis) -> Vec<api::NodeView> {
        let me = self.meta(now);
        let mut rows = vec![api::NodeView {
            id: self.cfg.id.0.to_string(),
            addresses: self.cfg.addrs.clone(),
            labels: me.labels().clone(),
            state: "alive".into(),
            incarnation: self.cfg.incarnation,
            capacity: me.capacity().into(),
            allocated: me.allocated().into(),
            runtimes: me
                .runtimes()
                .iter()
                .map(|d| placement::driver_name(*d).to_string())
                .collect(),
            draining: me.draining(),
            last_heard: now.0,
            agent_version: Some(me.agent_version().to_string()),
        }];
        for (id, p) in self.members.peers() {
            let m = p.meta.clone().unwrap_or_default();
            rows.push(api::NodeView {
                id: id.0.to_string(),
                addresses: m.addrs().to_vec(),
                labels: m.labels().clone(),
                state: p.state.as_str().into(),
                incarnation: p.incarnation,
                capacity: m.capacity().into(),
                allocated: m.allocated().into(),
                runtimes: m
                    .runtimes()
                    .iter()
                    .map(|d| placement::driver_name(*d).to_string())
                    .collect(),
                draining: m.draining() || self.state.draining(id),
                last_heard: p.last_heard.0,
                agent_version: p.meta.as_ref().map(|m| m.agent_version().to_string()),
            });
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{api, member, ready, web};
    use super::*;
    use crate::node::ApiRequest;

    #[test]
    fn ps_shows_a_slot_nobody_can_take_as_pending_with_the_reason() {
        let mut n = ready("a");
        let mut s = web(2);
        s.resources.cpu_millis = 6000;
        api(&mut n, 0, ApiRequest::Deploy { specs: vec![s] });
        let rows = n.ps(Millis(5_000), None);
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert_eq!(r.state, "pending");
            assert_eq!(r.node, None);
            assert_eq!(
                r.detail.as_deref(),
                Some("needs cpu 6, largest free 4 on a")
            );
        }
    }

    #[test]
    fn nodes_and_status_show_every_member_in_the_state_membership_reported() {
        let mut n = ready("a");
        member(&mut n, "c", MemberState::Alive, 1);
        member(&mut n, "b", MemberState::Alive, 1);
        member(&mut n, "b", MemberState::Down, 2);
        let rows = n.nodes(Millis(3));
        let seen: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.id.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(seen, vec![("a", "alive"), ("b", "down"), ("c", "alive")]);
        let st = n.status(Millis(3));
        assert_eq!((st.members.alive, st.members.down), (2, 1));
        assert_eq!(st.node, "a");
    }
}
