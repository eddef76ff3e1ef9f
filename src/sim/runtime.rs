//! The simulated runtime of one machine: which instances exist on it and in what state. This is
//! the truth the invariants read (what actually runs), as opposed to what nodes believe.
//!
//! It only records; `Sim` schedules the delays (start, stop) and turns completions into
//! `RuntimeEvent`s for the node's agent. It survives the agent: a crashed agent leaves its
//! instances behind (or, for a machine crash, exited) for the next incarnation to adopt or
//! reclaim.

use std::collections::BTreeMap;

use crate::ids::InstanceKey;
use crate::runtime::{ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus};
use crate::spec::{DriverKind, PartitionMode, Resources};

/// State of one instance in the simulated runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstStatus {
    /// Start requested; holds its resources; not listed yet.
    Starting,
    Running,
    Exited(ExitInfo),
}

#[derive(Clone, Debug)]
pub struct SimInstance {
    pub spec: InstanceSpec,
    pub handle: Handle,
    pub status: InstStatus,
}

impl SimInstance {
    /// Whether it uses the machine's resources (and counts as a copy of its slot).
    pub fn live(&self) -> bool {
        matches!(self.status, InstStatus::Starting | InstStatus::Running)
    }

    pub fn majority(&self) -> bool {
        self.spec.spec.partition == PartitionMode::Majority
    }
}

/// One machine's instances.
#[derive(Clone, Debug, Default)]
pub struct SimRuntime {
    pub instances: BTreeMap<InstanceKey, SimInstance>,
    /// Grows at every machine crash: completions scheduled before it are void.
    pub boot: u64,
    next_pid: u32,
}

impl SimRuntime {
    /// Records a start request. Returns false when the instance already runs (idempotent
    /// start: the caller answers `Started` at once).
    pub fn begin_start(&mut self, spec: InstanceSpec) -> bool {
        if let Some(i) = self.instances.get(&spec.key)
            && i.live()
        {
            return false;
        }
        self.next_pid += 1;
        let handle = Handle::Pid {
            pid: self.next_pid,
            start_ticks: self.boot,
        };
        self.instances.insert(
            spec.key.clone(),
            SimInstance {
                spec,
                handle,
                status: InstStatus::Starting,
            },
        );
        true
    }

    /// Completes a start: the instance runs. None if it is gone meanwhile.
    pub fn finish_start(&mut self, key: &InstanceKey) -> Option<&SimInstance> {
        let i = self.instances.get_mut(key)?;
        if i.status == InstStatus::Starting {
            i.status = InstStatus::Running;
        }
        Some(i)
    }

    /// A start that failed: the instance never ran.
    pub fn fail_start(&mut self, key: &InstanceKey) {
        if self
            .instances
            .get(key)
            .is_some_and(|i| i.status == InstStatus::Starting)
        {
            self.instances.remove(key);
        }
    }

    /// The instance ends on its own (a crash loop).
    pub fn exit(&mut self, key: &InstanceKey, code: i32) -> bool {
        match self.instances.get_mut(key) {
            Some(i) if i.status == InstStatus::Running => {
                i.status = InstStatus::Exited(ExitInfo {
                    code: Some(code),
                    signal: None,
                    oom_killed: false,
                });
                true
            }
            _ => false,
        }
    }

    /// Stops and removes an instance (gone already is fine).
    pub fn stop(&mut self, key: &InstanceKey) {
        self.instances.remove(key);
    }

    /// The machine went down: every instance is killed; the records stay (as a stopped
    /// container does), for the next agent to reclaim.
    pub fn power_off(&mut self) {
        self.boot += 1;
        for i in self.instances.values_mut() {
            if i.live() {
                i.status = InstStatus::Exited(ExitInfo {
                    code: None,
                    signal: Some(9),
                    oom_killed: false,
                });
            }
        }
    }

    /// What `List` reports: every instance of the driver that exists (not those still starting).
    pub fn list(&self, driver: DriverKind) -> Vec<Observed> {
        self.instances
            .values()
            .filter(|i| i.spec.driver() == driver)
            .filter_map(|i| {
                let status = match &i.status {
                    InstStatus::Starting => return None,
                    InstStatus::Running => ObservedStatus::Running,
                    InstStatus::Exited(e) => ObservedStatus::Exited(e.clone()),
                };
                Some(Observed {
                    key: i.spec.key.clone(),
                    revision: i.spec.revision.clone(),
                    handle: i.handle.clone(),
                    endpoint: None,
                    ports: BTreeMap::new(),
                    status,
                })
            })
            .collect()
    }

    /// Resources held by live instances.
    pub fn used(&self) -> Resources {
        let mut r = Resources::default();
        for i in self.instances.values().filter(|i| i.live()) {
            r.cpu_millis += i.spec.resources().cpu_millis;
            r.memory_bytes += i.spec.resources().memory_bytes;
        }
        r
    }

    pub fn live(&self) -> impl Iterator<Item = &SimInstance> {
        self.instances.values().filter(|i| i.live())
    }
}
