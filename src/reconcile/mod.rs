//! Reconcile: desired (the claims this node owns) against actual (what its runtimes report),
//! and the runtime commands that close the gap.
//!
//! It starts what is missing, stops what is surplus or stale (reclaim), restarts what exited per
//! the service's restart policy with capped exponential backoff, replaces instances running an
//! old revision (stop, then start), adopts instances found running after an agent restart, and
//! gives a slot up after a crash loop. It never starts anything on a driver before that driver
//! has listed what already runs, so an agent restart adopts instead of duplicating.
//!
//! Sans-IO: commands are returned, facts come in as `RuntimeEvent`s with `now`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::ids::{InstanceKey, Millis, SlotId};
use crate::runtime::{
    ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus, RuntimeCommand, RuntimeEvent,
};
use crate::spec::{DriverKind, Resources, RestartMode, ServiceSpec};
use crate::state::{Hlc, InstanceReport, InstanceState, Revision};

/// Reconcile timing. Units are milliseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReconcileTiming {
    /// First restart delay after an exit; doubles per consecutive failure.
    pub backoff_initial_ms: u64,
    /// Cap of the restart delay.
    pub backoff_max_ms: u64,
    /// Running this long resets the backoff to its initial value.
    pub healthy_reset_ms: u64,
    /// After a crash loop the node stays out of the slot for this long.
    pub crash_exclusion_ms: u64,
    /// A running instance missing from a listing is declared gone only if it has been running
    /// at least this long (a listing may race a start).
    pub vanish_grace_ms: u64,
}

impl Default for ReconcileTiming {
    fn default() -> Self {
        ReconcileTiming {
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            healthy_reset_ms: 30_000,
            crash_exclusion_ms: 300_000,
            vanish_grace_ms: 2_000,
        }
    }
}

/// One slot this node should run: the claim's epoch and the service's current revision.
#[derive(Clone, Debug)]
pub struct Desired<'a> {
    pub key: InstanceKey,
    pub revision: &'a Revision,
    pub spec: &'a ServiceSpec,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    Starting {
        since: Millis,
    },
    Running {
        since: Millis,
    },
    /// Ended. `restart_at: None` means it will not be restarted.
    Exited {
        at: Millis,
        exit: Option<ExitInfo>,
        restart_at: Option<Millis>,
        reason: String,
    },
    /// A stop command is in flight; `then_start` restarts it afterwards (revision change).
    Stopping {
        since: Millis,
        then_start: bool,
    },
}

/// One instance this node runs or is starting or stopping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    pub key: InstanceKey,
    pub driver: DriverKind,
    pub revision: crate::ids::RevisionId,
    pub rev_stamp: Option<Hlc>,
    pub resources: Resources,
    pub grace_ms: u64,
    pub phase: Phase,
    pub handle: Option<Handle>,
    pub endpoint: Option<String>,
    pub detail: Option<String>,
    pub restarts: u32,
    pub recent_failures: VecDeque<Millis>,
    pub backoff_ms: u64,
}

impl Local {
    fn state(&self) -> InstanceState {
        match &self.phase {
            Phase::Starting { .. } => InstanceState::Starting,
            Phase::Running { .. } => InstanceState::Running,
            Phase::Stopping { .. } => InstanceState::Stopping,
            Phase::Exited {
                exit, restart_at, ..
            } => {
                let oom = exit.as_ref().is_some_and(|e| e.oom_killed);
                match (restart_at, oom) {
                    (_, true) => InstanceState::OomKilled,
                    (Some(_), false) => InstanceState::Restarting,
                    (None, false) if exit.as_ref().is_some_and(ExitInfo::success) => {
                        InstanceState::Exited
                    }
                    (None, false) => InstanceState::Failed,
                }
            }
        }
    }

    fn since(&self) -> Millis {
        match &self.phase {
            Phase::Starting { since }
            | Phase::Running { since }
            | Phase::Stopping { since, .. } => *since,
            Phase::Exited { at, .. } => *at,
        }
    }

    /// Whether it still holds (or may hold again) resources on the node.
    pub fn holds_resources(&self) -> bool {
        !matches!(
            self.phase,
            Phase::Exited {
                restart_at: None,
                ..
            }
        )
    }
}

/// What reconcile asks of the node besides runtime commands.
// Values of this enum are moved, not stored in bulk: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    Runtime(RuntimeCommand),
    /// Give the slot up (crash loop): write a released claim.
    Release(SlotId),
}

/// Identity used to build instance specs: the runtime's own (one definition, in `runtime/`).
pub use crate::runtime::Owner;

/// A crash-loop hold: this node stays out of a slot until `until`, for as long as its service's
/// current revision is the one whose instance kept crashing here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exclusion {
    pub until: Millis,
    pub revision: Hlc,
}

/// The reconciler of one node.
#[derive(Clone, Debug)]
pub struct Reconciler {
    pub timing: ReconcileTiming,
    pub instances: BTreeMap<InstanceKey, Local>,
    /// Drivers that have answered a listing since start.
    listed: BTreeSet<DriverKind>,
    /// Slots this node gave up after a crash loop, and until when it stays out.
    pub exclusions: BTreeMap<SlotId, Exclusion>,
    /// Set when anything reportable changed.
    pub dirty: bool,
}

impl Reconciler {
    pub fn new(timing: ReconcileTiming) -> Reconciler {
        Reconciler {
            timing,
            instances: BTreeMap::new(),
            listed: BTreeSet::new(),
            exclusions: BTreeMap::new(),
            dirty: true,
        }
    }

    pub fn has_listed(&self, driver: DriverKind) -> bool {
        self.listed.contains(&driver)
    }

    /// Until when this node stays out of `slot` after a crash loop, while the service's current
    /// revision is still the one that crashed (`current`, its stamp): a new revision, a
    /// rollback or a removal ends the hold at once, since the fix may be in it.
    pub fn excluded(&self, slot: &SlotId, now: Millis, current: Option<&Hlc>) -> Option<Millis> {
        self.exclusions
            .get(slot)
            .filter(|e| e.until > now && Some(&e.revision) == current)
            .map(|e| e.until)
    }

    /// Folds a runtime event in.
    pub fn on_event(
        &mut self,
        now: Millis,
        ev: RuntimeEvent,
        desired: &BTreeMap<SlotId, Desired<'_>>,
        out: &mut Vec<Effect>,
    ) {
        self.dirty = true;
        match ev {
            RuntimeEvent::Started {
                key,
                revision,
                handle,
                endpoint,
            } => {
                if let Some(l) = self.instances.get_mut(&key)
                    && matches!(l.phase, Phase::Starting { .. })
                    && l.revision == revision
                {
                    l.phase = Phase::Running { since: now };
                    l.handle = Some(handle);
                    l.endpoint = endpoint;
                    l.detail = None;
                }
            }
            RuntimeEvent::Progress { key, status } => {
                if let Some(l) = self.instances.get_mut(&key)
                    && matches!(l.phase, Phase::Starting { .. })
                {
                    l.detail = Some(status);
                }
            }
            RuntimeEvent::StartFailed {
                key,
                error,
                retryable,
            } => {
                if let Some(l) = self.instances.get_mut(&key)
                    && matches!(l.phase, Phase::Starting { .. })
                {
                    let reason = format!("start failed: {error}");
                    Self::failed(
                        &self.timing,
                        &mut self.exclusions,
                        now,
                        l,
                        None,
                        reason,
                        retryable,
                        desired,
                        out,
                    );
                }
            }
            RuntimeEvent::Exited { key, exit } => {
                if let Some(l) = self.instances.get_mut(&key)
                    && matches!(l.phase, Phase::Running { .. } | Phase::Starting { .. })
                {
                    let reason = describe_exit(&exit);
                    Self::exited(
                        &self.timing,
                        &mut self.exclusions,
                        now,
                        l,
                        exit,
                        reason,
                        desired,
                        out,
                    );
                }
            }
            RuntimeEvent::Stopped { key } => {
                if let Some(l) = self.instances.get(&key)
                    && let Phase::Stopping { then_start, .. } = l.phase
                {
                    if then_start {
                        // Revision change: start the same slot again at the desired revision
                        // on the next step.
                        self.instances.remove(&key);
                    } else {
                        self.instances.remove(&key);
                    }
                }
            }
            RuntimeEvent::StopFailed { key, error } => {
                if let Some(l) = self.instances.get_mut(&key) {
                    // Retry the stop on the next step.
                    l.detail = Some(format!("stop failed: {error}"));
                    l.phase = Phase::Running { since: now };
                }
            }
            RuntimeEvent::Listed { driver, instances } => {
                self.listed.insert(driver);
                self.on_listed(now, driver, instances, desired, out);
            }
        }
    }

    fn on_listed(
        &mut self,
        now: Millis,
        driver: DriverKind,
        observed: Vec<Observed>,
        desired: &BTreeMap<SlotId, Desired<'_>>,
        out: &mut Vec<Effect>,
    ) {
        let seen: BTreeSet<InstanceKey> = observed.iter().map(|o| o.key.clone()).collect();
        for o in observed {
            match self.instances.get_mut(&o.key) {
                Some(l) => match (&l.phase, &o.status) {
                    (Phase::Running { .. }, ObservedStatus::Exited(exit)) => {
                        let reason = describe_exit(exit);
                        let exit = exit.clone();
                        Self::exited(
                            &self.timing,
                            &mut self.exclusions,
                            now,
                            l,
                            exit,
                            reason,
                            desired,
                            out,
                        );
                    }
                    (Phase::Running { .. }, ObservedStatus::Running) => {
                        l.handle = Some(o.handle.clone());
                        if o.endpoint.is_some() {
                            l.endpoint = o.endpoint.clone();
                        }
                    }
                    _ => {}
                },
                None => {
                    // Found in the runtime but unknown here: adopt it when it is what we want,
                    // reclaim it otherwise (decided in `step`).
                    let d = desired.get(&o.key.slot).filter(|d| d.key == o.key);
                    let phase = match &o.status {
                        ObservedStatus::Running => Phase::Running { since: now },
                        ObservedStatus::Exited(exit) => Phase::Exited {
                            at: now,
                            exit: Some(exit.clone()),
                            restart_at: Some(now),
                            reason: describe_exit(exit),
                        },
                    };
                    let (resources, grace_ms, rev_stamp) = match d {
                        Some(d) if d.revision.id == o.revision => (
                            d.spec.resources,
                            d.spec.stop_grace_ms,
                            Some(d.revision.stamp.clone()),
                        ),
                        Some(d) => (d.spec.resources, d.spec.stop_grace_ms, None),
                        None => (Resources::default(), 10_000, None),
                    };
                    self.instances.insert(
                        o.key.clone(),
                        Local {
                            key: o.key.clone(),
                            driver,
                            revision: o.revision.clone(),
                            rev_stamp,
                            resources,
                            grace_ms,
                            phase,
                            handle: Some(o.handle.clone()),
                            endpoint: o.endpoint.clone(),
                            detail: None,
                            restarts: 0,
                            recent_failures: VecDeque::new(),
                            backoff_ms: self.timing.backoff_initial_ms,
                        },
                    );
                }
            }
        }
        // Running instances the runtime no longer knows: lost events; treat as exited.
        let grace = self.timing.vanish_grace_ms;
        let vanished: Vec<InstanceKey> = self
            .instances
            .values()
            .filter(|l| l.driver == driver && !seen.contains(&l.key))
            .filter(|l| matches!(l.phase, Phase::Running { since } if now.since(since) >= grace))
            .map(|l| l.key.clone())
            .collect();
        for key in vanished {
            if let Some(l) = self.instances.get_mut(&key) {
                let exit = ExitInfo {
                    code: None,
                    signal: None,
                    oom_killed: false,
                };
                Self::exited(
                    &self.timing,
                    &mut self.exclusions,
                    now,
                    l,
                    exit,
                    "vanished from the runtime".into(),
                    desired,
                    out,
                );
            }
        }
        // Stopping instances the runtime no longer has: the stop is done.
        self.instances.retain(|k, l| {
            !(l.driver == driver && !seen.contains(k) && matches!(l.phase, Phase::Stopping { .. }))
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn exited(
        timing: &ReconcileTiming,
        exclusions: &mut BTreeMap<SlotId, Exclusion>,
        now: Millis,
        l: &mut Local,
        exit: ExitInfo,
        reason: String,
        desired: &BTreeMap<SlotId, Desired<'_>>,
        out: &mut Vec<Effect>,
    ) {
        let policy = desired
            .get(&l.key.slot)
            .filter(|d| d.key == l.key)
            .map(|d| d.spec.restart);
        let Some(policy) = policy else {
            // Not desired any more: it will be removed by `step`.
            l.phase = Phase::Exited {
                at: now,
                exit: Some(exit),
                restart_at: None,
                reason,
            };
            return;
        };
        let restart = match policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => !exit.success(),
            RestartMode::Never => false,
        };
        if !restart {
            l.phase = Phase::Exited {
                at: now,
                exit: Some(exit),
                restart_at: None,
                reason,
            };
            return;
        }
        Self::failed(
            timing,
            exclusions,
            now,
            l,
            Some(exit),
            reason,
            true,
            desired,
            out,
        );
    }

    /// An exit or failed start that the policy wants restarted: back off, or give the slot up
    /// after too many failures within the window.
    #[allow(clippy::too_many_arguments)]
    fn failed(
        timing: &ReconcileTiming,
        exclusions: &mut BTreeMap<SlotId, Exclusion>,
        now: Millis,
        l: &mut Local,
        exit: Option<ExitInfo>,
        reason: String,
        retryable: bool,
        desired: &BTreeMap<SlotId, Desired<'_>>,
        out: &mut Vec<Effect>,
    ) {
        let Some(d) = desired.get(&l.key.slot).filter(|d| d.key == l.key) else {
            l.phase = Phase::Exited {
                at: now,
                exit,
                restart_at: None,
                reason,
            };
            return;
        };
        let window = d.spec.restart.window_ms;
        l.recent_failures.push_back(now);
        while l
            .recent_failures
            .front()
            .is_some_and(|t| now.since(*t) > window)
        {
            l.recent_failures.pop_front();
        }
        // Bound the queue whatever the policy says.
        while l.recent_failures.len() > 1024 {
            l.recent_failures.pop_front();
        }
        if !retryable || l.recent_failures.len() as u32 > d.spec.restart.max_restarts {
            let why = if retryable {
                format!(
                    "{reason}; released after {} failures within {}s",
                    l.recent_failures.len(),
                    window / 1000
                )
            } else {
                format!("{reason}; released (retrying cannot help here)")
            };
            l.phase = Phase::Exited {
                at: now,
                exit,
                restart_at: None,
                reason: why,
            };
            exclusions.insert(
                l.key.slot.clone(),
                Exclusion {
                    until: now.plus(timing.crash_exclusion_ms),
                    revision: d.revision.stamp.clone(),
                },
            );
            out.push(Effect::Release(l.key.slot.clone()));
            return;
        }
        let delay = l.backoff_ms;
        l.backoff_ms = (l.backoff_ms.saturating_mul(2)).min(timing.backoff_max_ms);
        l.phase = Phase::Exited {
            at: now,
            exit,
            restart_at: Some(now.plus(delay)),
            reason,
        };
    }

    /// Compares desired with actual and emits the commands that close the gap.
    pub fn step(
        &mut self,
        now: Millis,
        owner: &Owner,
        desired: &BTreeMap<SlotId, Desired<'_>>,
        out: &mut Vec<Effect>,
    ) {
        self.exclusions.retain(|_, e| e.until > now);
        // 1. Stop what is not desired (reclaim, scale down, moved on) or runs an old revision.
        let keys: Vec<InstanceKey> = self.instances.keys().cloned().collect();
        for key in keys {
            let l = self.instances.get_mut(&key).expect("key from the map");
            let want = desired.get(&key.slot).filter(|d| d.key == key);
            // Found running while not (yet) desired, then desired at the revision it runs: it is
            // that revision, adopt it rather than replace it.
            if let Some(d) = want
                && l.rev_stamp.is_none()
                && l.revision == d.revision.id
            {
                l.rev_stamp = Some(d.revision.stamp.clone());
            }
            match (&l.phase, want) {
                (Phase::Stopping { .. }, _) => {}
                (_, None) => {
                    out.push(Effect::Runtime(RuntimeCommand::Stop {
                        key: key.clone(),
                        driver: l.driver,
                        grace_ms: l.grace_ms,
                    }));
                    l.phase = Phase::Stopping {
                        since: now,
                        then_start: false,
                    };
                    self.dirty = true;
                }
                (
                    Phase::Exited {
                        restart_at: None, ..
                    },
                    Some(d),
                ) if l.rev_stamp.as_ref() != Some(&d.revision.stamp) => {
                    // A finished instance and a new revision: remove it so the new one starts.
                    out.push(Effect::Runtime(RuntimeCommand::Stop {
                        key: key.clone(),
                        driver: l.driver,
                        grace_ms: 0,
                    }));
                    l.phase = Phase::Stopping {
                        since: now,
                        then_start: true,
                    };
                    self.dirty = true;
                }
                (_, Some(d)) if l.rev_stamp.as_ref() != Some(&d.revision.stamp) => {
                    if matches!(l.phase, Phase::Starting { .. }) {
                        // Let the start finish first; the next step replaces it.
                        continue;
                    }
                    out.push(Effect::Runtime(RuntimeCommand::Stop {
                        key: key.clone(),
                        driver: l.driver,
                        grace_ms: l.grace_ms,
                    }));
                    l.phase = Phase::Stopping {
                        since: now,
                        then_start: true,
                    };
                    self.dirty = true;
                }
                (Phase::Running { since }, Some(_))
                    if now.since(*since) >= self.timing.healthy_reset_ms =>
                {
                    l.backoff_ms = self.timing.backoff_initial_ms;
                }
                _ => {}
            }
        }
        // 2. Start what is missing, restart what is due.
        for (slot, d) in desired {
            let driver = d.spec.workload.driver();
            if !self.listed.contains(&driver) {
                continue; // adopt before starting anything on this driver
            }
            match self.instances.get_mut(&d.key) {
                Some(l) => {
                    if let Phase::Exited {
                        restart_at: Some(at),
                        ..
                    } = l.phase
                        && at <= now
                    {
                        l.restarts += 1;
                        l.phase = Phase::Starting { since: now };
                        l.detail = None;
                        out.push(Effect::Runtime(RuntimeCommand::Start(instance_spec(
                            owner, d,
                        ))));
                        self.dirty = true;
                    }
                }
                None => {
                    // One instance per slot on a node: wait until any other epoch of it is gone.
                    if self.instances.keys().any(|k| &k.slot == slot) {
                        continue;
                    }
                    self.instances.insert(
                        d.key.clone(),
                        Local {
                            key: d.key.clone(),
                            driver,
                            revision: d.revision.id.clone(),
                            rev_stamp: Some(d.revision.stamp.clone()),
                            resources: d.spec.resources,
                            grace_ms: d.spec.stop_grace_ms,
                            phase: Phase::Starting { since: now },
                            handle: None,
                            endpoint: None,
                            detail: None,
                            restarts: 0,
                            recent_failures: VecDeque::new(),
                            backoff_ms: self.timing.backoff_initial_ms,
                        },
                    );
                    out.push(Effect::Runtime(RuntimeCommand::Start(instance_spec(
                        owner, d,
                    ))));
                    self.dirty = true;
                }
            }
        }
    }

    /// The earliest time a restart is due.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.instances
            .values()
            .filter_map(|l| match l.phase {
                Phase::Exited { restart_at, .. } => restart_at,
                _ => None,
            })
            .min()
    }

    /// This node's instances as its report states them.
    pub fn report(&self, wall_offset: impl Fn(Millis) -> u64) -> BTreeMap<SlotId, InstanceReport> {
        let mut r = BTreeMap::new();
        for l in self.instances.values() {
            let rep = InstanceReport {
                epoch: l.key.epoch,
                revision: l.revision.clone(),
                state: l.state(),
                detail: l.detail.clone().or_else(|| match &l.phase {
                    Phase::Exited { reason, .. } => Some(reason.clone()),
                    _ => None,
                }),
                handle: l.handle.clone(),
                endpoint: l.endpoint.clone(),
                restarts: l.restarts,
                since_ms: wall_offset(l.since()),
            };
            // Two epochs of one slot during a hand-over: report the newer.
            match r.get(&l.key.slot) {
                Some(InstanceReport { epoch, .. }) if *epoch > l.key.epoch => {}
                _ => {
                    r.insert(l.key.slot.clone(), rep);
                }
            }
        }
        r
    }
}

/// The instance spec the runtime needs for a desired slot.
pub fn instance_spec(owner: &Owner, d: &Desired<'_>) -> InstanceSpec {
    InstanceSpec {
        key: d.key.clone(),
        revision: d.revision.id.clone(),
        cluster: owner.cluster.clone(),
        node: owner.node.clone(),
        spec: d.spec.clone(),
    }
}

fn describe_exit(exit: &ExitInfo) -> String {
    if exit.oom_killed {
        return "killed for exceeding its memory limit (oom)".into();
    }
    match (exit.code, exit.signal) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        (None, None) => "exited".into(),
    }
}
