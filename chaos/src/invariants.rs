//! The invariants, each a plain function from observations to typed violations. They read only
//! what `model.rs` holds (snapshots taken from outside: the process table and the CLI's JSON)
//! and the harness's model of acknowledged writes, so unit tests feed them synthetic
//! observations.
//!
//! Which nodes count: an instance on a node whose agent was killed is out of everyone's reach
//! until that node returns (availability first, DESIGN.md section 5), so the "after
//! convergence" invariants (exactly N, no orphan) look at nodes whose agent runs. The safety
//! invariants sampled all along look wider: capacity at every node, and "majority never twice"
//! at every node that has an agent process (running or paused).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{AckedWrite, AgentState, Expected, HistoryObs, InstanceProc, Res, Snapshot};

/// The invariants, by the names scenarios and `--expect` use.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// 1. exactly N running instances per service after convergence, each slot once.
    ExactlyN,
    /// 2. no instance whose (service, slot, epoch) is not the live claim.
    NoOrphan,
    /// 3. no node above its capacity, at any sampled instant.
    Capacity,
    /// 4. one digest on every live node after quiescence.
    Digest,
    /// 5. every acknowledged write is in the final history.
    NoLostWrite,
    /// 6. a `partition: majority` service never runs twice at any sampled instant.
    Majority,
    /// 7. convergence within the scenario's timeout.
    Convergence,
}

impl Invariant {
    pub const ALL: [Invariant; 7] = [
        Invariant::ExactlyN,
        Invariant::NoOrphan,
        Invariant::Capacity,
        Invariant::Digest,
        Invariant::NoLostWrite,
        Invariant::Majority,
        Invariant::Convergence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::ExactlyN => "exactly-n",
            Invariant::NoOrphan => "no-orphan",
            Invariant::Capacity => "capacity",
            Invariant::Digest => "digest",
            Invariant::NoLostWrite => "no-lost-write",
            Invariant::Majority => "majority",
            Invariant::Convergence => "convergence",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a count came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The process table, read from outside.
    Processes,
    /// `shoal ps` on this node (1-based).
    Ps(usize),
    /// `shoal status` on this node.
    Status(usize),
}

/// One broken invariant, with what is needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "kebab-case")]
pub enum Violation {
    SlotCount {
        service: String,
        slot: u32,
        found: usize,
        source: Source,
    },
    /// A slot at or past `replicas` still runs (scale down or rm not applied).
    SurplusSlot {
        service: String,
        slot: u32,
        source: Source,
    },
    Orphan {
        pid: u32,
        node: usize,
        service: String,
        slot: u32,
        epoch: u64,
        /// The live claim `(node, epoch)`, if any.
        claim: Option<(usize, u64)>,
    },
    OverCapacity {
        node: usize,
        used: Res,
        capacity: Res,
        source: Source,
    },
    DigestMismatch {
        digests: BTreeMap<usize, String>,
    },
    NoDigest {
        node: usize,
        reason: String,
    },
    LostWrite {
        service: String,
        revision: String,
    },
    WrongFinalRevision {
        service: String,
        expected: String,
        found: Option<String>,
    },
    MajorityTwice {
        service: String,
        slot: u32,
        nodes: Vec<usize>,
    },
    NotConverged {
        waited_ms: u64,
        timeout_ms: u64,
    },
}

impl Violation {
    pub fn invariant(&self) -> Invariant {
        match self {
            Violation::SlotCount { .. } | Violation::SurplusSlot { .. } => Invariant::ExactlyN,
            Violation::Orphan { .. } => Invariant::NoOrphan,
            Violation::OverCapacity { .. } => Invariant::Capacity,
            Violation::DigestMismatch { .. } | Violation::NoDigest { .. } => Invariant::Digest,
            Violation::LostWrite { .. } | Violation::WrongFinalRevision { .. } => {
                Invariant::NoLostWrite
            }
            Violation::MajorityTwice { .. } => Invariant::Majority,
            Violation::NotConverged { .. } => Invariant::Convergence,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Processes => write!(f, "process table"),
            Source::Ps(n) => write!(f, "ps on n{n}"),
            Source::Status(n) => write!(f, "status on n{n}"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::SlotCount {
                service,
                slot,
                found,
                source,
            } => write!(
                f,
                "{service}/{slot} runs {found} times, not once ({source})"
            ),
            Violation::SurplusSlot {
                service,
                slot,
                source,
            } => write!(
                f,
                "{service}/{slot} is past the replica count and still runs ({source})"
            ),
            Violation::Orphan {
                pid,
                node,
                service,
                slot,
                epoch,
                claim,
            } => match claim {
                Some((cn, ce)) => write!(
                    f,
                    "pid {pid} on n{node} runs {service}/{slot} epoch {epoch}, but the claim is n{cn} epoch {ce}"
                ),
                None => write!(
                    f,
                    "pid {pid} on n{node} runs {service}/{slot} epoch {epoch}, which no live node claims"
                ),
            },
            Violation::OverCapacity {
                node,
                used,
                capacity,
                source,
            } => write!(
                f,
                "n{node} uses {}m cpu / {} bytes, above its capacity {}m / {} ({source})",
                used.cpu_millis, used.memory_bytes, capacity.cpu_millis, capacity.memory_bytes
            ),
            Violation::DigestMismatch { digests } => {
                write!(f, "digests differ:")?;
                for (n, d) in digests {
                    write!(f, " n{n}={}", d.get(..12).unwrap_or(d))?;
                }
                Ok(())
            }
            Violation::NoDigest { node, reason } => {
                write!(f, "n{node} did not report a digest: {reason}")
            }
            Violation::LostWrite { service, revision } => {
                write!(
                    f,
                    "acknowledged write {service}@{revision} is in no live node's history"
                )
            }
            Violation::WrongFinalRevision {
                service,
                expected,
                found,
            } => write!(
                f,
                "{service}: the current revision is {}, the last acknowledged write was {expected}",
                found.as_deref().unwrap_or("none")
            ),
            Violation::MajorityTwice {
                service,
                slot,
                nodes,
            } => write!(
                f,
                "majority service {service}/{slot} runs on {nodes:?} at once"
            ),
            Violation::NotConverged {
                waited_ms,
                timeout_ms,
            } => write!(
                f,
                "not converged after {waited_ms} ms (timeout {timeout_ms} ms)"
            ),
        }
    }
}

/// Node numbers by node id, from the snapshot.
fn numbers_by_id(snap: &Snapshot) -> BTreeMap<&str, usize> {
    snap.nodes
        .iter()
        .filter_map(|n| n.id.as_deref().map(|id| (id, n.node)))
        .collect()
}

/// Slots every live node reports as unplaceable (a missing instance there is not a violation:
/// the fleet has no room for it).
fn unplaceable(snap: &Snapshot) -> BTreeSet<(String, u32)> {
    let mut out: Option<BTreeSet<(String, u32)>> = None;
    for n in snap.live() {
        let Some(st) = &n.status else { continue };
        let here: BTreeSet<_> = st
            .unplaceable
            .iter()
            .map(|u| (u.service.clone(), u.slot))
            .collect();
        out = Some(match out {
            None => here,
            Some(prev) => prev.intersection(&here).cloned().collect(),
        });
    }
    out.unwrap_or_default()
}

/// Invariant 1: Exactly N running instances per service, each slot exactly once, from the process table
/// of live nodes and from `ps` on every live node.
pub fn exactly_n(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut v = Vec::new();
    let excused = unplaceable(snap);
    let ids = numbers_by_id(snap);
    // Process table: live nodes only.
    let mut counts: BTreeMap<(&str, u32), usize> = BTreeMap::new();
    for p in &snap.procs {
        if snap.agent(p.node) == AgentState::Running {
            *counts.entry((p.service.as_str(), p.slot)).or_default() += 1;
        }
    }
    for (service, model) in expected {
        let want = if model.deleted { 0 } else { model.replicas };
        for slot in 0..want {
            let found = counts.get(&(service.as_str(), slot)).copied().unwrap_or(0);
            let missing_ok = found == 0 && excused.contains(&(service.clone(), slot));
            if found != 1 && !missing_ok {
                v.push(Violation::SlotCount {
                    service: service.clone(),
                    slot,
                    found,
                    source: Source::Processes,
                });
            }
        }
    }
    for (&(service, slot), _) in counts.iter() {
        let want = expected
            .get(service)
            .map(|m| if m.deleted { 0 } else { m.replicas })
            .unwrap_or(0);
        if slot >= want {
            v.push(Violation::SurplusSlot {
                service: service.to_string(),
                slot,
                source: Source::Processes,
            });
        }
    }
    // `ps` on every live node: each wanted slot is one running row owned by a live node.
    for n in snap.live() {
        let Some(ps) = &n.ps else { continue };
        let source = Source::Ps(n.node);
        let mut running: BTreeMap<(&str, u32), usize> = BTreeMap::new();
        for row in ps {
            let owner_live = row
                .node
                .as_deref()
                .and_then(|id| ids.get(id))
                .is_some_and(|&o| snap.agent(o) == AgentState::Running);
            if row.state == "running" && owner_live {
                *running.entry((row.service.as_str(), row.slot)).or_default() += 1;
            }
        }
        for (service, model) in expected {
            let want = if model.deleted { 0 } else { model.replicas };
            for slot in 0..want {
                let found = running.get(&(service.as_str(), slot)).copied().unwrap_or(0);
                let missing_ok = found == 0 && excused.contains(&(service.clone(), slot));
                if found != 1 && !missing_ok {
                    v.push(Violation::SlotCount {
                        service: service.clone(),
                        slot,
                        found,
                        source: source.clone(),
                    });
                }
            }
        }
        for (&(service, slot), _) in running.iter() {
            let want = expected
                .get(service)
                .map(|m| if m.deleted { 0 } else { m.replicas })
                .unwrap_or(0);
            if slot >= want {
                v.push(Violation::SurplusSlot {
                    service: service.to_string(),
                    slot,
                    source: source.clone(),
                });
            }
        }
    }
    v
}

/// The live claim of every slot: the greatest `(epoch, node)` any live node's `ps` reports
/// (claims merge by the greatest epoch, so a lagging view cannot hide a newer claim).
pub fn live_claims(snap: &Snapshot) -> BTreeMap<(String, u32), (usize, u64)> {
    let ids = numbers_by_id(snap);
    let mut claims: BTreeMap<(String, u32), (usize, u64)> = BTreeMap::new();
    for n in snap.live() {
        for row in n.ps.iter().flatten() {
            let Some(owner) = row.node.as_deref().and_then(|id| ids.get(id)) else {
                continue;
            };
            let key = (row.service.clone(), row.slot);
            let cand = (*owner, row.epoch);
            let e = claims.entry(key).or_insert(cand);
            if (cand.1, cand.0) > (e.1, e.0) {
                *e = cand;
            }
        }
    }
    claims
}

/// Invariant 2: No orphan: every instance process on a live node is the live claim of its slot.
pub fn no_orphan(snap: &Snapshot) -> Vec<Violation> {
    if snap.live().all(|n| n.ps.is_none()) {
        return Vec::new();
    }
    let claims = live_claims(snap);
    snap.procs
        .iter()
        .filter(|p| snap.agent(p.node) == AgentState::Running)
        .filter_map(|p| {
            let claim = claims.get(&(p.service.clone(), p.slot)).copied();
            (claim != Some((p.node, p.epoch))).then(|| Violation::Orphan {
                pid: p.pid,
                node: p.node,
                service: p.service.clone(),
                slot: p.slot,
                epoch: p.epoch,
                claim,
            })
        })
        .collect()
}

/// The requests of one instance process, by its revision (else the service's latest).
pub fn requests_of(expected: &Expected, p: &InstanceProc) -> Res {
    let Some(m) = expected.get(&p.service) else {
        return Res::default();
    };
    p.revision
        .as_ref()
        .and_then(|r| m.resources.get(r))
        .copied()
        .unwrap_or(m.latest)
}

/// Invariant 3: No node above its capacity: `status` allocated vs capacity on every answering node, and
/// the process table × spec requests vs the capacity the harness gave each node.
pub fn capacity(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut v = Vec::new();
    for n in &snap.nodes {
        if let Some(st) = &n.status
            && !st.allocated.fits_in(st.capacity)
        {
            v.push(Violation::OverCapacity {
                node: n.node,
                used: st.allocated,
                capacity: st.capacity,
                source: Source::Status(n.node),
            });
        }
        let used = snap
            .procs
            .iter()
            .filter(|p| p.node == n.node)
            .fold(Res::default(), |acc, p| acc.add(requests_of(expected, p)));
        if !used.fits_in(n.capacity) {
            v.push(Violation::OverCapacity {
                node: n.node,
                used,
                capacity: n.capacity,
                source: Source::Processes,
            });
        }
    }
    v
}

/// Invariant 4: Every live node reports the same digest.
pub fn digest(snap: &Snapshot) -> Vec<Violation> {
    let mut digests = BTreeMap::new();
    let mut v = Vec::new();
    for n in snap.live() {
        match &n.status {
            Some(st) => {
                digests.insert(n.node, st.digest.clone());
            }
            None => v.push(Violation::NoDigest {
                node: n.node,
                reason: n.error.clone().unwrap_or_else(|| "no answer".into()),
            }),
        }
    }
    let distinct: BTreeSet<&String> = digests.values().collect();
    if distinct.len() > 1 {
        v.push(Violation::DigestMismatch { digests });
    }
    v
}

/// How many revisions a history keeps (DESIGN.md section 4: last N, default 10); an acknowledged
/// revision may have aged out of a history that is full.
pub const HISTORY_KEEP: usize = 10;

/// Invariant 5: Every acknowledged write appears in the final history of some live node, and the current
/// revision of each service is its last acknowledged write (the harness writes one at a time).
/// `histories[node][service]` is that node's `history` (absent: the service is unknown there).
pub fn no_lost_write(
    acked: &[AckedWrite],
    histories: &BTreeMap<usize, BTreeMap<String, Vec<HistoryObs>>>,
) -> Vec<Violation> {
    let mut v = Vec::new();
    for w in acked {
        let found = histories.values().any(|h| {
            h.get(&w.service)
                .is_some_and(|revs| revs.iter().any(|r| r.revision == w.revision))
        });
        let aged_out = histories.values().any(|h| {
            h.get(&w.service)
                .is_some_and(|revs| revs.len() >= HISTORY_KEEP)
        });
        if !found && !aged_out {
            v.push(Violation::LostWrite {
                service: w.service.clone(),
                revision: w.revision.clone(),
            });
        }
    }
    let mut last: BTreeMap<&str, &AckedWrite> = BTreeMap::new();
    for w in acked {
        last.insert(&w.service, w);
    }
    for (service, w) in last {
        for h in histories.values() {
            let current = h
                .get(service)
                .and_then(|revs| revs.iter().find(|r| r.current));
            let ok = match current {
                Some(c) => c.revision == w.revision,
                // A service nobody knows any more: fine only if it was removed.
                None => w.deleted,
            };
            if !ok {
                v.push(Violation::WrongFinalRevision {
                    service: service.to_string(),
                    expected: w.revision.clone(),
                    found: current.map(|c| c.revision.clone()),
                });
                break;
            }
        }
    }
    v
}

/// Invariant 6: A `partition: majority` slot never runs on two nodes at once (nodes with an agent
/// process, running or paused).
pub fn majority_once(expected: &Expected, snap: &Snapshot) -> Vec<Violation> {
    let mut by_slot: BTreeMap<(&str, u32), Vec<usize>> = BTreeMap::new();
    for p in &snap.procs {
        let majority = expected.get(&p.service).is_some_and(|m| m.majority);
        if majority && snap.agent(p.node) != AgentState::Stopped {
            by_slot
                .entry((&p.service, p.slot))
                .or_default()
                .push(p.node);
        }
    }
    by_slot
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|((service, slot), nodes)| Violation::MajorityTwice {
            service: service.to_string(),
            slot,
            nodes,
        })
        .collect()
}

/// Invariant 7: Convergence within the timeout; `waited_ms` None means it never converged.
pub fn convergence(waited_ms: Option<u64>, timeout_ms: u64) -> Vec<Violation> {
    match waited_ms {
        Some(w) if w <= timeout_ms => Vec::new(),
        Some(w) => vec![Violation::NotConverged {
            waited_ms: w,
            timeout_ms,
        }],
        None => vec![Violation::NotConverged {
            waited_ms: timeout_ms,
            timeout_ms,
        }],
    }
}

/// Whether the fleet looks converged in this snapshot: every live node answered, one digest,
/// exactly N and no orphan.
pub fn converged(expected: &Expected, snap: &Snapshot) -> bool {
    let live: Vec<_> = snap.live().collect();
    !live.is_empty()
        && live.iter().all(|n| n.status.is_some() && n.ps.is_some())
        && digest(snap).is_empty()
        && exactly_n(expected, snap).is_empty()
        && no_orphan(snap).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NodeSnap, PsObs, ServiceModel, StatusObs};

    fn model(replicas: u32, majority: bool) -> ServiceModel {
        ServiceModel {
            replicas,
            majority,
            deleted: false,
            resources: BTreeMap::from([(
                "r1".to_string(),
                Res {
                    cpu_millis: 500,
                    memory_bytes: 100,
                },
            )]),
            latest: Res {
                cpu_millis: 500,
                memory_bytes: 100,
            },
        }
    }

    fn proc_(pid: u32, node: usize, service: &str, slot: u32, epoch: u64) -> InstanceProc {
        InstanceProc {
            pid,
            node,
            service: service.into(),
            slot,
            epoch,
            revision: Some("r1".into()),
        }
    }

    fn row(service: &str, slot: u32, node: usize, epoch: u64) -> PsObs {
        PsObs {
            service: service.into(),
            slot,
            node: Some(format!("id{node}")),
            epoch,
            revision: Some("r1".into()),
            state: "running".into(),
            pid: None,
        }
    }

    fn node(n: usize, agent: AgentState, ps: Vec<PsObs>, digest: &str) -> NodeSnap {
        NodeSnap {
            node: n,
            id: Some(format!("id{n}")),
            agent,
            capacity: Res {
                cpu_millis: 1000,
                memory_bytes: 1000,
            },
            status: Some(StatusObs {
                node: format!("id{n}"),
                digest: digest.into(),
                capacity: Res {
                    cpu_millis: 1000,
                    memory_bytes: 1000,
                },
                ..StatusObs::default()
            }),
            ps: Some(ps),
            nodes: None,
            error: None,
        }
    }

    /// Three live nodes agreeing that web/0 is on n1 and web/1 on n2, both running there.
    fn healthy() -> (Expected, Snapshot) {
        let expected = BTreeMap::from([("web".to_string(), model(2, false))]);
        let ps = vec![row("web", 0, 1, 1), row("web", 1, 2, 1)];
        let snap = Snapshot {
            at_ms: 0,
            nodes: (1..=3)
                .map(|n| node(n, AgentState::Running, ps.clone(), "d1"))
                .collect(),
            procs: vec![proc_(100, 1, "web", 0, 1), proc_(200, 2, "web", 1, 1)],
        };
        (expected, snap)
    }

    #[test]
    fn a_healthy_fleet_breaks_nothing() {
        let (e, s) = healthy();
        assert_eq!(exactly_n(&e, &s), vec![]);
        assert_eq!(no_orphan(&s), vec![]);
        assert_eq!(capacity(&e, &s), vec![]);
        assert_eq!(digest(&s), vec![]);
        assert_eq!(majority_once(&e, &s), vec![]);
        assert!(converged(&e, &s));
    }

    #[test]
    fn two_processes_for_one_slot_break_exactly_n() {
        let (e, mut s) = healthy();
        s.procs.push(proc_(300, 3, "web", 0, 2));
        assert_eq!(
            exactly_n(&e, &s),
            vec![Violation::SlotCount {
                service: "web".into(),
                slot: 0,
                found: 2,
                source: Source::Processes
            }]
        );
        assert!(!converged(&e, &s));
    }

    #[test]
    fn a_missing_instance_breaks_exactly_n_unless_every_node_calls_it_unplaceable() {
        let (e, mut s) = healthy();
        s.procs.retain(|p| p.slot != 1);
        assert_eq!(exactly_n(&e, &s).len(), 1);
        for n in &mut s.nodes {
            n.status
                .as_mut()
                .unwrap()
                .unplaceable
                .push(crate::model::Unplaceable {
                    service: "web".into(),
                    slot: 1,
                    reason: "no room".into(),
                });
            for r in n.ps.as_mut().unwrap() {
                if r.slot == 1 {
                    r.state = "pending".into();
                    r.node = None;
                }
            }
        }
        assert_eq!(exactly_n(&e, &s), vec![]);
    }

    #[test]
    fn ps_showing_a_slot_on_a_dead_node_breaks_exactly_n() {
        let (e, mut s) = healthy();
        s.nodes[1].agent = AgentState::Stopped;
        s.procs.retain(|p| p.node != 2);
        let v = exactly_n(&e, &s);
        assert!(v.contains(&Violation::SlotCount {
            service: "web".into(),
            slot: 1,
            found: 0,
            source: Source::Ps(1)
        }));
    }

    #[test]
    fn a_slot_past_the_replica_count_is_surplus() {
        let (mut e, s) = healthy();
        e.get_mut("web").unwrap().replicas = 1;
        let v = exactly_n(&e, &s);
        assert!(v.contains(&Violation::SurplusSlot {
            service: "web".into(),
            slot: 1,
            source: Source::Processes
        }));
    }

    #[test]
    fn a_stale_instance_of_a_returned_node_is_an_orphan() {
        let (_, mut s) = healthy();
        // n3 came back and still runs web/0 at epoch 1, but the claim moved to n1 at epoch 2.
        for n in &mut s.nodes {
            n.ps.as_mut().unwrap()[0].epoch = 2;
        }
        s.procs[0].epoch = 2;
        s.procs.push(proc_(300, 3, "web", 0, 1));
        assert_eq!(
            no_orphan(&s),
            vec![Violation::Orphan {
                pid: 300,
                node: 3,
                service: "web".into(),
                slot: 0,
                epoch: 1,
                claim: Some((1, 2))
            }]
        );
    }

    #[test]
    fn an_instance_of_a_removed_service_is_an_orphan_and_surplus() {
        let (mut e, mut s) = healthy();
        e.get_mut("web").unwrap().deleted = true;
        for n in &mut s.nodes {
            n.ps = Some(vec![]);
        }
        assert_eq!(no_orphan(&s).len(), 2);
        assert_eq!(exactly_n(&e, &s).len(), 2);
    }

    #[test]
    fn instances_on_a_stopped_agent_are_out_of_reach_not_orphans() {
        let (e, mut s) = healthy();
        s.nodes[2].agent = AgentState::Stopped;
        s.procs.push(proc_(300, 3, "web", 0, 1));
        assert_eq!(no_orphan(&s), vec![]);
        assert_eq!(exactly_n(&e, &s), vec![]);
    }

    #[test]
    fn more_instances_than_capacity_break_capacity_from_the_process_table() {
        let (e, mut s) = healthy();
        s.procs.push(proc_(101, 1, "web", 5, 1));
        s.procs.push(proc_(102, 1, "web", 6, 1));
        let v = capacity(&e, &s);
        assert_eq!(
            v,
            vec![Violation::OverCapacity {
                node: 1,
                used: Res {
                    cpu_millis: 1500,
                    memory_bytes: 300
                },
                capacity: Res {
                    cpu_millis: 1000,
                    memory_bytes: 1000
                },
                source: Source::Processes
            }]
        );
    }

    #[test]
    fn an_agent_reporting_more_allocated_than_capacity_breaks_capacity() {
        let (e, mut s) = healthy();
        s.nodes[0].status.as_mut().unwrap().allocated = Res {
            cpu_millis: 1001,
            memory_bytes: 0,
        };
        assert_eq!(capacity(&e, &s).len(), 1);
        assert_eq!(capacity(&e, &s)[0].invariant(), Invariant::Capacity);
    }

    #[test]
    fn different_digests_on_live_nodes_break_digest_but_a_paused_node_does_not_count() {
        let (_, mut s) = healthy();
        s.nodes[2].status.as_mut().unwrap().digest = "d2".into();
        assert_eq!(digest(&s).len(), 1);
        s.nodes[2].agent = AgentState::Paused;
        assert_eq!(digest(&s), vec![]);
    }

    #[test]
    fn a_majority_slot_on_two_nodes_breaks_majority_even_when_one_agent_is_paused() {
        let (mut e, mut s) = healthy();
        e.get_mut("web").unwrap().majority = true;
        s.procs.push(proc_(300, 3, "web", 0, 2));
        s.nodes[2].agent = AgentState::Paused;
        assert_eq!(
            majority_once(&e, &s),
            vec![Violation::MajorityTwice {
                service: "web".into(),
                slot: 0,
                nodes: vec![1, 3]
            }]
        );
        e.get_mut("web").unwrap().majority = false;
        assert_eq!(majority_once(&e, &s), vec![]);
    }

    fn hist(revs: &[(&str, bool)]) -> Vec<HistoryObs> {
        revs.iter()
            .map(|(r, current)| HistoryObs {
                revision: r.to_string(),
                written_by: String::new(),
                written_at: 0,
                current: *current,
                deleted: false,
            })
            .collect()
    }

    fn ack(service: &str, revision: &str) -> AckedWrite {
        AckedWrite {
            at_ms: 0,
            service: service.into(),
            revision: revision.into(),
            changed: true,
            deleted: false,
        }
    }

    #[test]
    fn an_acknowledged_revision_missing_from_every_history_is_lost() {
        let acked = vec![ack("web", "r1"), ack("web", "r2")];
        let good = BTreeMap::from([(
            1,
            BTreeMap::from([("web".into(), hist(&[("r2", true), ("r1", false)]))]),
        )]);
        assert_eq!(no_lost_write(&acked, &good), vec![]);
        let lost = BTreeMap::from([(1, BTreeMap::from([("web".into(), hist(&[("r1", true)]))]))]);
        let v = no_lost_write(&acked, &lost);
        assert!(v.contains(&Violation::LostWrite {
            service: "web".into(),
            revision: "r2".into()
        }));
        assert!(v.contains(&Violation::WrongFinalRevision {
            service: "web".into(),
            expected: "r2".into(),
            found: Some("r1".into())
        }));
    }

    #[test]
    fn an_old_revision_may_age_out_of_a_full_history() {
        let mut acked = vec![ack("web", "r0")];
        let mut revs = Vec::new();
        for i in 1..=HISTORY_KEEP {
            acked.push(ack("web", &format!("r{i}")));
            revs.push((format!("r{i}"), i == HISTORY_KEEP));
        }
        let revs: Vec<(&str, bool)> = revs.iter().map(|(r, c)| (r.as_str(), *c)).collect();
        let h = BTreeMap::from([(1, BTreeMap::from([("web".into(), hist(&revs))]))]);
        assert_eq!(no_lost_write(&acked, &h), vec![]);
    }

    #[test]
    fn convergence_fails_past_its_timeout() {
        assert_eq!(convergence(Some(900), 1000), vec![]);
        assert_eq!(
            convergence(Some(1100), 1000)[0].invariant(),
            Invariant::Convergence
        );
        assert_eq!(convergence(None, 1000).len(), 1);
    }
}
