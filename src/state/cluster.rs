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

impl Claim {
    /// Whether `node` holds this claim: it names the node and is not released.
    pub fn held_by(&self, node: &NodeId) -> bool {
        !self.released && self.node == *node
    }
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

    /// The claim on `slot` if it is live: not released, of a live service, and within that
    /// service's replica count. The one definition of a live claim: what a node holds, counts
    /// against its capacity and runs.
    pub fn live_claim(&self, slot: &SlotId) -> Option<(&Claim, &Revision, &ServiceSpec)> {
        let c = self.claims.get(slot).filter(|c| !c.released)?;
        self.live_for(slot).map(|(rev, spec)| (c, rev, spec))
    }

    /// Every live claim (see [`ClusterState::live_claim`]), in slot order.
    pub fn live_claims(&self) -> impl Iterator<Item = (&SlotId, &Claim, &Revision, &ServiceSpec)> {
        self.claims
            .iter()
            .filter(|(_, c)| !c.released)
            .filter_map(|(slot, c)| self.live_for(slot).map(|(r, s)| (slot, c, r, s)))
    }

    /// Every live claim `node` holds, in slot order.
    pub fn live_claims_held_by<'a, 'n>(
        &'a self,
        node: &'n NodeId,
    ) -> impl Iterator<Item = (&'a SlotId, &'a Claim, &'a Revision, &'a ServiceSpec)> + use<'a, 'n>
    {
        self.claims
            .iter()
            .filter(move |(_, c)| c.held_by(node))
            .filter_map(|(slot, c)| self.live_for(slot).map(|(r, s)| (slot, c, r, s)))
    }

    /// The current revision and spec of `slot`'s service, if it is live and the slot within
    /// its replica count.
    fn live_for(&self, slot: &SlotId) -> Option<(&Revision, &ServiceSpec)> {
        let rev = self.services.get(&slot.service)?.current()?;
        let spec = rev.spec()?;
        (slot.index < spec.replicas).then_some((rev, spec))
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
/// from one place stay in cache where a copy per claim would not.
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
#[path = "cluster_tests.rs"]
pub(crate) mod tests;
