//! `ClusterState`: the whole desired state of the fleet, replicated on every node as one
//! state-based CRDT (see `crdt.rs` for the laws), and the parts it is made of.
//!
//! | part | merge |
//! | --- | --- |
//! | services | per service, the union of revisions keeping the newest `HISTORY_LEN` by HLC stamp; the current revision is the newest (last writer wins on `(hlc, node id)`) |
//! | deletions | a revision whose body is `Deleted` (a tombstone), merged like any revision |
//! | claims | per slot, the greatest `Claim` by `(epoch, score, node, released, revision)` |
//! | node reports | per node, a `crdts::LWWReg` whose marker `(incarnation, seq)` only that node writes |
//! | graveyard | per service, the greatest tombstone stamp of a compacted (garbage-collected) service |
//!
//! A delta is a `ClusterState` holding only the entries a change touched: merging a delta is
//! merging a (partial) state, so deltas and full states travel through the same code.
//!
//! **Tombstone garbage collection** (`compact`): a service whose current revision is a tombstone
//! older than `TOMBSTONE_TTL_MS` (by its HLC wall time against the local clock) is dropped with
//! its claims, and its name goes to the graveyard with the tombstone's stamp. Revisions of that
//! service no newer than the graveyard stamp are ignored on merge, so a node that was away cannot
//! resurrect it. Graveyard records are dropped after `GRAVEYARD_TTL_MS`; a node partitioned for
//! longer than that must be wiped before it rejoins (documented in the README).
//!
//! This file does not decide anything (placement and reconcile read it) and performs no IO.

use std::collections::BTreeMap;
use std::sync::Arc;

use crdts::LWWReg;
use serde::{Deserialize, Serialize};

use super::crdt::Crdt;
use super::hlc::Hlc;
use crate::ids::{Millis, NodeId, RevisionId, SlotId};
use crate::runtime::Handle;
use crate::spec::{Resources, ServiceName, ServiceSpec};

/// Revisions kept per service (the current one included).
pub const HISTORY_LEN: usize = 10;
/// How long a tombstone is kept before the service is compacted into the graveyard: 7 days.
pub const TOMBSTONE_TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a graveyard record is kept: 30 days.
pub const GRAVEYARD_TTL_MS: u64 = 30 * 24 * 3600 * 1000;

/// One immutable version of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Revision {
    pub id: RevisionId,
    /// When and by whom it was written (`stamp.node`).
    pub stamp: Hlc,
    pub body: RevisionBody,
}

// Values of this enum are moved, not stored in bulk: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RevisionBody {
    Spec(ServiceSpec),
    /// The service was removed.
    Deleted,
}

impl Revision {
    pub fn spec(&self) -> Option<&ServiceSpec> {
        match &self.body {
            RevisionBody::Spec(s) => Some(s),
            RevisionBody::Deleted => None,
        }
    }
}

/// A service's revisions, newest last. Never empty once created.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceEntry {
    pub history: BTreeMap<Hlc, Revision>,
}

impl ServiceEntry {
    /// The newest revision: last writer wins on `(hlc, node id)`.
    pub fn current(&self) -> Option<&Revision> {
        self.history.values().next_back()
    }

    /// The spec in force, unless the service is deleted.
    pub fn live_spec(&self) -> Option<&ServiceSpec> {
        self.current().and_then(Revision::spec)
    }

    fn trim(&mut self) {
        while self.history.len() > HISTORY_LEN {
            self.history.pop_first();
        }
    }
}

impl Crdt for ServiceEntry {
    fn merge(&mut self, other: &Self) -> bool {
        let mut changed = false;
        for (stamp, rev) in &other.history {
            // An entry older than everything we keep, with a full history, would be trimmed again.
            if self.history.len() >= HISTORY_LEN
                && self
                    .history
                    .first_key_value()
                    .is_some_and(|(oldest, _)| stamp < oldest)
            {
                continue;
            }
            if !self.history.contains_key(stamp) {
                self.history.insert(stamp.clone(), rev.clone());
                changed = true;
            }
        }
        self.trim();
        changed
    }
}

/// Which node owns a slot, at which epoch. Merge keeps the greatest by the derived order, which
/// is lexicographic over the fields in declaration order: `(epoch, score, node, released,
/// revision)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Claim {
    /// Grows each time the slot is placed again.
    pub epoch: u64,
    /// The winning bid's score: between two claims at one epoch, the better bid wins.
    pub score: u64,
    pub node: NodeId,
    /// The owner gave the slot up (drain, crash loop, lost resources): the slot is open again
    /// and the next claim is at `epoch + 1`. Only the owner writes this.
    pub released: bool,
    /// The stamp of the revision the owner runs or is moving to. Only the owner updates it.
    pub revision: Hlc,
}

impl Crdt for Claim {
    fn merge(&mut self, other: &Self) -> bool {
        if other > self {
            *self = other.clone();
            true
        } else {
            false
        }
    }
}

/// What an instance is doing, as its owner reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum InstanceState {
    /// Asked to start; for docker possibly pulling (see `detail`).
    Starting,
    Running,
    /// Exited and waiting for its backoff before the next start.
    Restarting,
    /// Exited and will not be restarted (policy `never`/`on-failure`, or a start the runtime
    /// rejected); `detail` says why.
    Failed,
    /// Killed for exceeding its memory limit; restarted per policy like any exit.
    OomKilled,
    /// Being stopped (replaced, reclaimed, scaled down).
    Stopping,
    /// Ended with success and not restarted (policy `on-failure` or `never`).
    Exited,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Running => "running",
            InstanceState::Restarting => "restarting",
            InstanceState::Failed => "failed",
            InstanceState::OomKilled => "oom-killed",
            InstanceState::Stopping => "stopping",
            InstanceState::Exited => "exited",
        }
    }
}

/// One instance as its owner reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct InstanceReport {
    pub epoch: u64,
    pub revision: RevisionId,
    pub state: InstanceState,
    /// Human-readable detail: `pulling 45%`, the last exit, why it failed.
    pub detail: Option<String>,
    pub handle: Option<Handle>,
    pub endpoint: Option<String>,
    pub restarts: u32,
    /// Wall-clock ms (node clock) when `state` was entered.
    pub since_ms: u64,
}

/// Everything one node says about itself. Written only by that node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeReport {
    pub instances: BTreeMap<SlotId, InstanceReport>,
    /// Resources requested by the instances this node runs or is starting.
    pub allocated: Resources,
}

/// `(incarnation, seq)`: grows with every report a node writes, across restarts.
pub type ReportMarker = (u64, u64);

/// The replicated desired state of the fleet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub services: BTreeMap<ServiceName, ServiceEntry>,
    pub claims: BTreeMap<SlotId, Claim>,
    /// The report is shared (`Arc`): a copy of the state handed to the store, or a delta
    /// merged by many simulated nodes, holds the same report instead of a deep copy.
    pub reports: BTreeMap<NodeId, LWWReg<Arc<NodeReport>, ReportMarker>>,
    pub graveyard: BTreeMap<ServiceName, Hlc>,
    /// Per node, whether an operator asked it to drain (`shoal drain`), last writer wins.
    pub drains: BTreeMap<NodeId, (Hlc, bool)>,
}

impl ClusterState {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
            && self.claims.is_empty()
            && self.reports.is_empty()
            && self.graveyard.is_empty()
            && self.drains.is_empty()
    }

    /// Whether an operator asked `node` to drain.
    pub fn draining(&self, node: &NodeId) -> bool {
        self.drains.get(node).is_some_and(|(_, on)| *on)
    }

    /// Writes a drain flag; returns the delta.
    pub fn put_drain(&mut self, node: &NodeId, stamp: Hlc, on: bool) -> ClusterState {
        let mut delta = ClusterState::default();
        delta.drains.insert(node.clone(), (stamp, on));
        self.merge(&delta);
        delta
    }

    /// The spec in force for a service, unless it is deleted or unknown.
    pub fn live_spec(&self, name: &ServiceName) -> Option<&ServiceSpec> {
        self.services.get(name).and_then(ServiceEntry::live_spec)
    }

    /// Every live (not deleted) service with its current revision.
    pub fn live_services(&self) -> impl Iterator<Item = (&ServiceName, &Revision, &ServiceSpec)> {
        self.services.iter().filter_map(|(n, e)| {
            let rev = e.current()?;
            rev.spec().map(|s| (n, rev, s))
        })
    }

    /// The name as this state holds it (one shared allocation per service; see `Canonical`).
    pub fn canonical_service(&self, name: &ServiceName) -> ServiceName {
        self.services.canonical(name)
    }

    /// A service's claims in slot order. The range's two ends are found once; walking it
    /// compares no keys (a `take_while` on the service name would compare every claim's name,
    /// a cold heap string each, on every pass over a large service).
    pub fn claims_of(
        &self,
        name: &ServiceName,
    ) -> std::collections::btree_map::Range<'_, SlotId, Claim> {
        self.claims
            .range(SlotId::new(name, 0)..=SlotId::new(name, u32::MAX))
    }

    /// The revision with this stamp, if still in history.
    pub fn revision_by_stamp(&self, name: &ServiceName, stamp: &Hlc) -> Option<&Revision> {
        self.services.get(name)?.history.get(stamp)
    }

    pub fn report(&self, node: &NodeId) -> Option<&NodeReport> {
        self.reports.get(node).map(|r| &*r.val)
    }

    /// Writes a revision; returns the delta.
    pub fn put_revision(&mut self, name: &ServiceName, rev: Revision) -> ClusterState {
        let mut entry = ServiceEntry::default();
        entry.history.insert(rev.stamp.clone(), rev);
        let mut delta = ClusterState::default();
        delta.services.insert(name.clone(), entry);
        self.merge(&delta);
        delta
    }

    /// Writes a claim; returns the delta (empty-effect if an equal or greater claim is known).
    pub fn put_claim(&mut self, slot: &SlotId, claim: Claim) -> ClusterState {
        let mut delta = ClusterState::default();
        delta.claims.insert(slot.clone(), claim);
        self.merge(&delta);
        delta
    }

    /// Writes this node's report; returns the delta.
    pub fn put_report(
        &mut self,
        node: &NodeId,
        report: NodeReport,
        marker: ReportMarker,
    ) -> ClusterState {
        let mut delta = ClusterState::default();
        delta.reports.insert(
            node.clone(),
            LWWReg {
                val: Arc::new(report),
                marker,
            },
        );
        self.merge(&delta);
        delta
    }

    /// This state's current value of every entry `keys` touches (entries it no longer holds are
    /// left out). Used to hand a consistent snapshot of changed entries to the store writer.
    pub fn entries_for(&self, keys: &ClusterState) -> ClusterState {
        let mut out = ClusterState::default();
        for k in keys.services.keys() {
            if let Some(v) = self.services.get(k) {
                out.services.insert(k.clone(), v.clone());
            }
        }
        for k in keys.claims.keys() {
            if let Some(v) = self.claims.get(k) {
                out.claims.insert(k.clone(), v.clone());
            }
        }
        for k in keys.reports.keys() {
            if let Some(v) = self.reports.get(k) {
                out.reports.insert(k.clone(), v.clone());
            }
        }
        for k in keys.graveyard.keys() {
            if let Some(v) = self.graveyard.get(k) {
                out.graveyard.insert(k.clone(), v.clone());
            }
        }
        for k in keys.drains.keys() {
            if let Some(v) = self.drains.get(k) {
                out.drains.insert(k.clone(), v.clone());
            }
        }
        out
    }

    /// A digest of the whole state: equal on two nodes iff they hold the same state (up to hash
    /// collisions). Computed over the postcard encoding of ordered maps, which is deterministic.
    pub fn digest(&self) -> u64 {
        let bytes = postcard::to_stdvec(self).expect("in-memory encoding cannot fail");
        xxhash_rust::xxh3::xxh3_64(&bytes)
    }

    /// Applies the tombstone garbage-collection rule (module docs) at local time `now`.
    /// Returns true if anything was dropped.
    pub fn compact(&mut self, now: Millis) -> bool {
        let mut changed = false;
        let expired: Vec<(ServiceName, Hlc)> = self
            .services
            .iter()
            .filter_map(|(name, e)| {
                let cur = e.current()?;
                (matches!(cur.body, RevisionBody::Deleted)
                    && cur.stamp.wall_ms.saturating_add(TOMBSTONE_TTL_MS) < now.0)
                    .then(|| (name.clone(), cur.stamp.clone()))
            })
            .collect();
        for (name, stamp) in expired {
            self.services.remove(&name);
            let g = self.graveyard.entry(name).or_insert_with(|| stamp.clone());
            if stamp > *g {
                *g = stamp;
            }
            changed = true;
        }
        let before_claims = self.claims.len();
        let (graveyard, services) = (&self.graveyard, &self.services);
        self.claims.retain(|slot, _| {
            !graveyard.contains_key(&slot.service) || services.contains_key(&slot.service)
        });
        changed |= before_claims != self.claims.len();
        let before = self.graveyard.len();
        self.graveyard
            .retain(|_, stamp| stamp.wall_ms.saturating_add(GRAVEYARD_TTL_MS) >= now.0);
        changed || before != self.graveyard.len()
    }

    fn buried(&self, name: &ServiceName, stamp: &Hlc) -> bool {
        self.graveyard.get(name).is_some_and(|g| stamp <= g)
    }
}

impl Crdt for ClusterState {
    fn merge(&mut self, other: &Self) -> bool {
        let mut changed = false;
        for (name, stamp) in &other.graveyard {
            match self.graveyard.get_mut(name) {
                Some(g) if *g >= *stamp => {}
                Some(g) => {
                    *g = stamp.clone();
                    changed = true;
                }
                None => {
                    self.graveyard.insert(name.clone(), stamp.clone());
                    changed = true;
                }
            }
        }
        for (name, entry) in &other.services {
            let mut incoming = entry.clone();
            incoming
                .history
                .retain(|stamp, _| !self.buried(name, stamp));
            if incoming.history.is_empty() {
                continue;
            }
            match self.services.get_mut(name) {
                Some(mine) => changed |= mine.merge(&incoming),
                None => {
                    incoming.trim();
                    self.services.insert(name.clone(), incoming);
                    changed = true;
                }
            }
        }
        for (slot, claim) in &other.claims {
            match self.claims.get_mut(slot) {
                Some(mine) => {
                    if mine.merge(claim) {
                        mine.node = self.reports.canonical(&mine.node);
                        changed = true;
                    }
                }
                None => {
                    let slot = SlotId {
                        service: self.services.canonical(&slot.service),
                        index: slot.index,
                    };
                    let mut claim = claim.clone();
                    claim.node = self.reports.canonical(&claim.node);
                    self.claims.insert(slot, claim);
                    changed = true;
                }
            }
        }
        for (node, report) in &other.reports {
            match self.reports.get_mut(node) {
                Some(mine) => {
                    if report.marker > mine.marker {
                        crdts::CvRDT::merge(mine, report.clone());
                        changed = true;
                    }
                }
                None => {
                    self.reports.insert(node.clone(), report.clone());
                    changed = true;
                }
            }
        }
        for (node, (stamp, on)) in &other.drains {
            match self.drains.get_mut(node) {
                Some(mine) if mine.0 >= *stamp => {}
                Some(mine) => {
                    *mine = (stamp.clone(), *on);
                    changed = true;
                }
                None => {
                    self.drains.insert(node.clone(), (stamp.clone(), *on));
                    changed = true;
                }
            }
        }
        changed |= self.bury();
        changed
    }
}

/// The key this map already holds for a name, or the name itself: claims share their
/// service's and their owner's name with the maps that hold them, one allocation per name for
/// the whole state. Placement walks and looks up thousands of claims on every pass; names read
/// from one place stay in cache where a copy per claim would not (a large deploy's CPU went
/// mostly to such reads).
trait Canonical<K> {
    fn canonical(&self, key: &K) -> K;
}

impl<K: Ord + Clone, V> Canonical<K> for BTreeMap<K, V> {
    fn canonical(&self, key: &K) -> K {
        self.get_key_value(key)
            .map_or_else(|| key.clone(), |(k, _)| k.clone())
    }
}

impl ClusterState {
    /// Applies the graveyard to everything held: revisions no newer than a service's graveyard
    /// stamp are dropped. Claims are left alone here (dropping them depends on which services
    /// exist, which would make merge order matter); `compact` drops the claims of buried services.
    fn bury(&mut self) -> bool {
        let mut changed = false;
        for (name, g) in &self.graveyard {
            if let Some(entry) = self.services.get_mut(name) {
                let before = entry.history.len();
                entry.history.retain(|stamp, _| stamp > g);
                changed |= before != entry.history.len();
                if entry.history.is_empty() {
                    self.services.remove(name);
                }
            }
        }
        changed
    }
}

impl crdts::CvRDT for ClusterState {
    type Validation = std::convert::Infallible;

    fn validate_merge(&self, _other: &Self) -> Result<(), Self::Validation> {
        Ok(())
    }

    fn merge(&mut self, other: Self) {
        Crdt::merge(self, &other);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spec::{PartitionMode, RestartPolicy, Strategy as Placement, Workload};
    use proptest::prelude::*;

    pub fn spec(name: &str, replicas: u32) -> ServiceSpec {
        ServiceSpec {
            name: ServiceName(name.into()),
            workload: Workload::Command {
                command: vec!["sleep".into(), "1000".into()],
            },
            replicas,
            resources: Resources {
                cpu_millis: 100,
                memory_bytes: 64 << 20,
            },
            ports: vec![],
            env: Default::default(),
            constraints: vec![],
            spread: None,
            strategy: Placement::Spread,
            restart: RestartPolicy::default(),
            partition: PartitionMode::Available,
            stop_grace_ms: 10_000,
        }
    }

    fn node(i: u8) -> NodeId {
        NodeId(format!("n{i}").into())
    }

    // Generators respect real invariants: a stamp (wall, logical, node) is unique per write, so a
    // stamp always maps to the same revision content (derived from the stamp here).
    fn stamp() -> impl Strategy<Value = Hlc> {
        (0u64..50, 0u32..3, 0u8..4).prop_map(|(w, l, n)| Hlc {
            wall_ms: w,
            logical: l,
            node: node(n),
        })
    }

    fn revision_for(name: &str, stamp: Hlc) -> Revision {
        let body = if stamp.wall_ms.is_multiple_of(7) {
            RevisionBody::Deleted
        } else {
            RevisionBody::Spec(spec(name, (stamp.wall_ms % 5) as u32))
        };
        Revision {
            id: RevisionId(format!("{}.{:04x}", stamp.wall_ms, stamp.logical)),
            stamp,
            body,
        }
    }

    fn claim() -> impl Strategy<Value = Claim> {
        (0u64..4, 0u64..3, 0u8..4, any::<bool>(), stamp()).prop_map(
            |(epoch, score, n, released, revision)| Claim {
                epoch,
                score,
                node: node(n),
                released,
                revision,
            },
        )
    }

    fn state() -> impl Strategy<Value = ClusterState> {
        let names = prop::sample::select(vec!["web", "db", "cache"]);
        (
            prop::collection::vec((names.clone(), stamp()), 0..8),
            prop::collection::vec(((names.clone(), 0u32..3), claim()), 0..6),
            prop::collection::vec((0u8..4, 0u64..3, 0u64..5), 0..4),
            prop::collection::vec((names, stamp()), 0..2),
            prop::collection::vec((0u8..4, stamp()), 0..3),
        )
            .prop_map(|(revs, claims, reports, graves, drains)| {
                let mut s = ClusterState::default();
                for (name, st) in revs {
                    s.put_revision(&ServiceName(name.into()), revision_for(name, st));
                }
                for ((name, idx), c) in claims {
                    s.put_claim(&SlotId::new(&ServiceName(name.into()), idx), c);
                }
                for (n, inc, seq) in reports {
                    // Marker content is a function of the marker: one writer, unique markers.
                    let report = NodeReport {
                        instances: BTreeMap::new(),
                        allocated: Resources {
                            cpu_millis: inc * 10 + seq,
                            memory_bytes: 0,
                        },
                    };
                    s.put_report(&node(n), report, (inc, seq));
                }
                for (name, st) in graves {
                    let mut g = ClusterState::default();
                    g.graveyard.insert(ServiceName(name.into()), st);
                    s.merge(&g);
                }
                for (n, st) in drains {
                    // One stamp, one value: derive the flag from the stamp.
                    let on = st.wall_ms % 2 == 0;
                    s.put_drain(&node(n), st, on);
                }
                s
            })
    }

    /// Claims merged in from a peer's delta (its own copies of every name) hold the names this
    /// state already keeps: one allocation per service and per node, however many claims.
    #[test]
    fn merged_claims_share_their_names_with_the_state() {
        let stamp = Hlc {
            wall_ms: 1,
            logical: 0,
            node: node(1),
        };
        let web = ServiceName("web".into());
        let mut s = ClusterState::default();
        s.put_revision(&web, revision_for("web", stamp.clone()));
        s.put_report(&node(1), NodeReport::default(), (1, 0));
        let mut delta = ClusterState::default();
        for index in 0..3 {
            delta.claims.insert(
                SlotId::new(&ServiceName("web".into()), index),
                Claim {
                    epoch: 1,
                    score: 1,
                    node: node(1),
                    released: false,
                    revision: stamp.clone(),
                },
            );
        }
        assert!(s.merge(&delta));
        let held_name = s.services.get_key_value(&web).unwrap().0.clone();
        let held_node = s.reports.get_key_value(&node(1)).unwrap().0.clone();
        assert_eq!(s.claims.len(), 3);
        for (slot, c) in &s.claims {
            assert!(std::sync::Arc::ptr_eq(&slot.service.0, &held_name.0));
            assert!(std::sync::Arc::ptr_eq(&c.node.0, &held_node.0));
        }
        // A newer claim that replaces one held keeps the shared owner name too.
        let mut newer = delta.clone();
        newer.claims.values_mut().for_each(|c| c.epoch = 2);
        assert!(s.merge(&newer));
        assert!(
            s.claims
                .values()
                .all(|c| c.epoch == 2 && std::sync::Arc::ptr_eq(&c.node.0, &held_node.0))
        );
    }

    proptest! {
        #[test]
        fn cluster_state_merge_obeys_the_laws(a in state(), b in state(), c in state()) {
            if let Err(e) = crate::state::crdt::laws::check(&a, &b, &c) {
                prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn claim_merge_obeys_the_laws(a in claim(), b in claim(), c in claim()) {
            if let Err(e) = crate::state::crdt::laws::check(&a, &b, &c) {
                prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn service_history_merge_obeys_the_laws(
            a in prop::collection::vec(stamp(), 0..14),
            b in prop::collection::vec(stamp(), 0..14),
            c in prop::collection::vec(stamp(), 0..14),
        ) {
            let entry = |stamps: Vec<Hlc>| {
                let mut e = ServiceEntry::default();
                for s in stamps { e.history.insert(s.clone(), revision_for("web", s)); }
                e.trim();
                e
            };
            if let Err(e) = crate::state::crdt::laws::check(&entry(a), &entry(b), &entry(c)) {
                prop_assert!(false, "{}", e);
            }
        }

        #[test]
        fn merging_deltas_equals_merging_the_full_state(base in state(), writes in prop::collection::vec(stamp(), 1..6)) {
            // Apply writes on a copy, collect their deltas; a peer that merges only the deltas
            // ends where a peer that merges the full result ends.
            let mut writer = base.clone();
            let mut deltas = Vec::new();
            for st in writes {
                deltas.push(writer.put_revision(&ServiceName("web".into()), revision_for("web", st)));
            }
            let mut via_deltas = base.clone();
            for d in &deltas { via_deltas.merge(d); }
            let mut via_full = base.clone();
            via_full.merge(&writer);
            prop_assert_eq!(via_deltas, via_full);
        }
    }

    #[test]
    fn last_writer_wins_and_history_keeps_both_concurrent_revisions() {
        let web = ServiceName("web".into());
        let a = Hlc {
            wall_ms: 10,
            logical: 0,
            node: node(1),
        };
        let b = Hlc {
            wall_ms: 10,
            logical: 0,
            node: node(2),
        };
        let mut s1 = ClusterState::default();
        s1.put_revision(&web, revision_for("web", a.clone()));
        let mut s2 = ClusterState::default();
        s2.put_revision(&web, revision_for("web", b.clone()));
        s1.merge(&s2);
        s2.merge(&s1);
        assert_eq!(s1, s2);
        assert_eq!(s1.services[&web].current().unwrap().stamp, b);
        assert_eq!(s1.services[&web].history.len(), 2);
    }

    #[test]
    fn history_keeps_the_newest_ten() {
        let web = ServiceName("web".into());
        let mut s = ClusterState::default();
        for w in 1..=15 {
            s.put_revision(
                &web,
                revision_for(
                    "web",
                    Hlc {
                        wall_ms: w,
                        logical: 0,
                        node: node(1),
                    },
                ),
            );
        }
        let h = &s.services[&web].history;
        assert_eq!(h.len(), HISTORY_LEN);
        assert_eq!(h.keys().next().unwrap().wall_ms, 6);
    }

    #[test]
    fn compacted_tombstone_cannot_be_resurrected_by_an_old_peer() {
        let web = ServiceName("web".into());
        let mut old_peer = ClusterState::default();
        old_peer.put_revision(
            &web,
            revision_for(
                "web",
                Hlc {
                    wall_ms: 1,
                    logical: 0,
                    node: node(1),
                },
            ),
        );
        let mut s = old_peer.clone();
        s.put_revision(
            &web,
            Revision {
                id: RevisionId("2.0000".into()),
                stamp: Hlc {
                    wall_ms: 2,
                    logical: 0,
                    node: node(1),
                },
                body: RevisionBody::Deleted,
            },
        );
        assert!(s.compact(Millis(TOMBSTONE_TTL_MS + 10)));
        assert!(!s.services.contains_key(&web));
        s.merge(&old_peer);
        assert!(!s.services.contains_key(&web), "old revision came back");
        // And the peer learns the burial from us.
        old_peer.merge(&s);
        assert!(!old_peer.services.contains_key(&web));
    }

    #[test]
    fn digest_is_equal_for_equal_states_and_differs_otherwise() {
        let web = ServiceName("web".into());
        let mut a = ClusterState::default();
        let mut b = ClusterState::default();
        assert_eq!(a.digest(), b.digest());
        a.put_revision(
            &web,
            revision_for(
                "web",
                Hlc {
                    wall_ms: 1,
                    logical: 0,
                    node: node(1),
                },
            ),
        );
        assert_ne!(a.digest(), b.digest());
        b.merge(&a);
        assert_eq!(a.digest(), b.digest());
    }
}
