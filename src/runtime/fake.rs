//! An in-memory runtime driver for tests: deterministic, no processes, no sleeps, no tasks.
//!
//! It keeps the `Runtime` contract (idempotent start and stop, owner filtering, `Exited` through
//! `watch`) and gives tests controls the real drivers cannot: crash an instance, fail the next
//! start, plant another owner's instance. It does not simulate time (stop ignores its grace
//! period) or resources; the simulator's runtime lives with the simulator.
//!
//! Workloads are read as a tiny script, from the command (`Command`, or `Image`'s `command`):
//! - `["exit", CODE]`: exits with `CODE` as soon as it starts;
//! - `["echo", WORDS...]`: writes the words and a newline to its log, then runs;
//! - anything else: runs silently until stopped or crashed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use tokio::sync::mpsc;

use super::{
    DriverError, ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus, Owner, Runtime,
    RuntimeEvent,
};
use crate::ids::{InstanceKey, NodeId};
use crate::spec::{DriverKind, Workload};

/// Events kept while no watcher takes them; more means a test forgot to watch or to drain.
const PENDING_LIMIT: usize = 1024;
/// Capacity of a log channel, as in the real drivers.
const LOG_CHANNEL: usize = 16;
/// The first host port handed out when a port has no fixed one.
const FIRST_PORT: u16 = 20_000;

/// An in-memory driver. See the module docs for how it reads workloads.
pub struct FakeDriver {
    kind: DriverKind,
    owner: Owner,
    state: Mutex<FakeState>,
}

#[derive(Default)]
struct FakeState {
    instances: BTreeMap<InstanceKey, FakeInstance>,
    /// Instances of other owners: never listed, never stopped.
    foreign: BTreeMap<(String, NodeId, InstanceKey), InstanceSpec>,
    fail_next_start: Option<DriverError>,
    watcher: Option<mpsc::Sender<RuntimeEvent>>,
    /// Events not yet taken by a watcher (none set, or its channel full), oldest first.
    pending: VecDeque<RuntimeEvent>,
    /// Starts so far: makes handles and ports unique.
    starts: u32,
}

struct FakeInstance {
    observed: Observed,
    log: Vec<u8>,
    /// Followers of the log: dropped on stop, which ends their streams.
    followers: Vec<mpsc::Sender<Vec<u8>>>,
}

impl FakeDriver {
    /// A fake process driver for `owner`.
    pub fn new(owner: Owner) -> FakeDriver {
        FakeDriver::with_kind(owner, DriverKind::Process)
    }

    /// A fake driver reporting `kind` (and accepting only that kind's workloads).
    pub fn with_kind(owner: Owner, kind: DriverKind) -> FakeDriver {
        FakeDriver {
            kind,
            owner,
            state: Mutex::default(),
        }
    }

    fn state(&self) -> MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the running instance `key` exit with `code`, reporting it through `watch`.
    ///
    /// # Panics
    /// If `key` is not running: a test crashing what does not run has a bug.
    pub fn crash(&self, key: &InstanceKey, code: i32) {
        let mut state = self.state();
        let instance = match state.instances.get_mut(key) {
            Some(i) if i.observed.status == ObservedStatus::Running => i,
            _ => panic!("FakeDriver::crash: instance {key} is not running"),
        };
        let exit = ExitInfo {
            code: Some(code),
            signal: None,
            oom_killed: false,
        };
        instance.observed.status = ObservedStatus::Exited(exit.clone());
        state.emit(RuntimeEvent::Exited {
            key: key.clone(),
            exit,
        });
    }

    /// Makes the next `start` fail with `err` (whatever it starts).
    pub fn fail_next_start(&self, err: DriverError) {
        self.state().fail_next_start = Some(err);
    }

    /// The instances running now, in key order.
    pub fn running(&self) -> Vec<InstanceKey> {
        let state = self.state();
        state
            .instances
            .values()
            .filter(|i| i.observed.status == ObservedStatus::Running)
            .map(|i| i.observed.key.clone())
            .collect()
    }

    /// Plants a running instance of the owner `spec` names (meant to be another owner): it is
    /// never listed nor stopped by this driver.
    pub fn add_foreign(&self, spec: InstanceSpec) {
        self.state().foreign.insert(
            (spec.cluster.clone(), spec.node.clone(), spec.key.clone()),
            spec,
        );
    }

    /// How many instances of other owners run (they never change unless a test adds some).
    pub fn foreign_count(&self) -> usize {
        self.state().foreign.len()
    }
}

impl FakeState {
    /// Delivers `event` to the watcher, or keeps it until one can take it.
    fn emit(&mut self, event: RuntimeEvent) {
        self.pending.push_back(event);
        assert!(
            self.pending.len() <= PENDING_LIMIT,
            "FakeDriver: {PENDING_LIMIT} events undelivered: watch and drain the channel"
        );
        self.flush();
    }

    fn flush(&mut self) {
        let Some(watcher) = &self.watcher else { return };
        while let Some(event) = self.pending.pop_front() {
            match watcher.try_send(event) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(event)) => {
                    self.pending.push_front(event);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(event)) => {
                    self.pending.push_front(event);
                    self.watcher = None;
                    return;
                }
            }
        }
    }
}

/// The last `lines` lines of `log` (a final newline ends the last line).
fn tail(log: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return &log[log.len()..];
    }
    let body = log.strip_suffix(b"\n").unwrap_or(log);
    let start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|&(_, &b)| b == b'\n')
        .nth(lines - 1)
        .map_or(0, |(i, _)| i + 1);
    &log[start..]
}

impl Runtime for FakeDriver {
    fn kind(&self) -> DriverKind {
        self.kind
    }

    async fn start(
        &self,
        spec: &InstanceSpec,
        _events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<Observed, DriverError> {
        let mut state = self.state();
        state.flush();
        if let Some(err) = state.fail_next_start.take() {
            return Err(err);
        }
        if spec.driver() != self.kind {
            return Err(DriverError::Rejected {
                reason: format!("a {:?} driver cannot run {}", self.kind, spec.key.name()),
            });
        }
        if spec.cluster != self.owner.cluster || spec.node != self.owner.node {
            return Err(DriverError::Rejected {
                reason: format!("instance {} belongs to another owner", spec.key.name()),
            });
        }
        if let Some(i) = state.instances.get(&spec.key)
            && i.observed.status == ObservedStatus::Running
        {
            return Ok(i.observed.clone());
        }
        let taken: Vec<u16> = state
            .instances
            .values()
            .filter(|i| i.observed.key != spec.key && i.observed.status == ObservedStatus::Running)
            .flat_map(|i| i.observed.ports.values().copied())
            .collect();
        state.starts += 1;
        let n = state.starts;
        let mut ports = BTreeMap::new();
        let mut endpoint = None;
        for (i, p) in spec.spec.ports.iter().enumerate() {
            let port = match p.host {
                Some(fixed) if taken.contains(&fixed) => {
                    return Err(DriverError::Rejected {
                        reason: format!("host port {fixed} (port {}) is already in use", p.name),
                    });
                }
                Some(fixed) => fixed,
                None => FIRST_PORT
                    .wrapping_add((n * 8) as u16)
                    .wrapping_add(i as u16),
            };
            ports.insert(p.name.clone(), port);
            endpoint.get_or_insert_with(|| format!("127.0.0.1:{port}"));
        }
        let handle = match self.kind {
            DriverKind::Process => Handle::Pid {
                pid: 1000 + n,
                start_ticks: u64::from(n),
            },
            DriverKind::Docker => Handle::Container {
                id: format!("fake{n:08}"),
            },
        };
        let command = match &spec.spec.workload {
            Workload::Command { command } => command.clone(),
            Workload::Image { command, .. } => command.clone().unwrap_or_default(),
        };
        let mut log = Vec::new();
        let mut status = ObservedStatus::Running;
        match command.first().map(String::as_str) {
            Some("exit") => {
                let code = command.get(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                status = ObservedStatus::Exited(ExitInfo {
                    code: Some(code),
                    signal: None,
                    oom_killed: false,
                });
            }
            Some("echo") => {
                log = command[1..].join(" ").into_bytes();
                log.push(b'\n');
            }
            _ => {}
        }
        let observed = Observed {
            key: spec.key.clone(),
            revision: spec.revision.clone(),
            handle,
            endpoint,
            ports,
            status: status.clone(),
        };
        state.instances.insert(
            spec.key.clone(),
            FakeInstance {
                observed: observed.clone(),
                log,
                followers: Vec::new(),
            },
        );
        if let ObservedStatus::Exited(exit) = status {
            state.emit(RuntimeEvent::Exited {
                key: spec.key.clone(),
                exit,
            });
        }
        Ok(observed)
    }

    async fn stop(&self, key: &InstanceKey, _grace_ms: u64) -> Result<(), DriverError> {
        let mut state = self.state();
        state.flush();
        // Dropping the instance drops its followers, which ends their streams.
        state.instances.remove(key);
        state
            .pending
            .retain(|e| !matches!(e, RuntimeEvent::Exited { key: k, .. } if k == key));
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        let mut state = self.state();
        state.flush();
        Ok(state
            .instances
            .values()
            .map(|i| i.observed.clone())
            .collect())
    }

    async fn watch(&self, events: mpsc::Sender<RuntimeEvent>) -> Result<(), DriverError> {
        let mut state = self.state();
        state.watcher = Some(events);
        state.flush();
        Ok(())
    }

    async fn logs(
        &self,
        key: &InstanceKey,
        follow: bool,
        tail_lines: Option<usize>,
    ) -> Result<mpsc::Receiver<Vec<u8>>, DriverError> {
        let mut state = self.state();
        state.flush();
        let Some(instance) = state.instances.get_mut(key) else {
            return Err(DriverError::Rejected {
                reason: format!("no instance {} on this node", key.name()),
            });
        };
        let (tx, rx) = mpsc::channel(LOG_CHANNEL);
        let content = match tail_lines {
            Some(n) => tail(&instance.log, n),
            None => &instance.log[..],
        };
        if !content.is_empty() {
            tx.try_send(content.to_vec())
                .expect("a new log channel has room for one chunk");
        }
        if follow {
            instance.followers.retain(|f| !f.is_closed());
            instance.followers.push(tx);
        }
        Ok(rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::conformance::{self, Fixture, HELLO, instance_spec};

    fn owner() -> Owner {
        Owner {
            cluster: "c1".into(),
            node: NodeId("n1".into()),
        }
    }

    struct FakeFixture(Owner);

    impl FakeFixture {
        fn spec(&self, key: InstanceKey, command: &[&str]) -> InstanceSpec {
            let command = command.iter().map(|s| s.to_string()).collect();
            instance_spec(&self.0, key, Workload::Command { command }, Vec::new())
        }
    }

    impl Fixture for FakeFixture {
        fn long_running(&self, key: InstanceKey) -> InstanceSpec {
            self.spec(key, &["echo", HELLO])
        }
        fn exits_with(&self, key: InstanceKey, code: i32) -> InstanceSpec {
            self.spec(key, &["exit", &code.to_string()])
        }
        fn ignores_sigterm(&self, key: InstanceKey) -> InstanceSpec {
            self.spec(key, &["echo", HELLO])
        }
        fn serves_http(&self, _key: InstanceKey) -> Option<InstanceSpec> {
            None
        }
    }

    #[tokio::test]
    async fn fake_driver_passes_the_conformance_suite() {
        conformance::run_all(&FakeDriver::new(owner()), &FakeFixture(owner())).await;
    }

    #[tokio::test]
    async fn crash_before_watch_is_delivered_once_watched() {
        let fake = FakeDriver::new(owner());
        let key = conformance::key("web");
        let (progress, _) = mpsc::channel(1);
        fake.start(&FakeFixture(owner()).long_running(key.clone()), &progress)
            .await
            .unwrap();
        fake.crash(&key, 7);
        assert!(fake.running().is_empty());
        let (tx, mut rx) = mpsc::channel(4);
        fake.watch(tx).await.unwrap();
        let exit = ExitInfo {
            code: Some(7),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(rx.try_recv().unwrap(), RuntimeEvent::Exited { key, exit });
    }

    #[tokio::test]
    async fn events_wait_while_the_watch_channel_is_full() {
        let fake = FakeDriver::new(owner());
        let fixture = FakeFixture(owner());
        let (tx, mut rx) = mpsc::channel(1);
        fake.watch(tx).await.unwrap();
        let (progress, _) = mpsc::channel(1);
        for service in ["a", "b"] {
            fake.start(&fixture.exits_with(conformance::key(service), 1), &progress)
                .await
                .unwrap();
        }
        let first = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err(), "the second event waits for room");
        fake.list().await.unwrap();
        let second = rx.try_recv().unwrap();
        assert!(matches!(first, RuntimeEvent::Exited { key, .. } if key == conformance::key("a")));
        assert!(matches!(second, RuntimeEvent::Exited { key, .. } if key == conformance::key("b")));
    }

    #[tokio::test]
    async fn failed_start_fails_once_with_the_given_error() {
        let fake = FakeDriver::new(owner());
        let spec = FakeFixture(owner()).long_running(conformance::key("web"));
        let err = DriverError::Unavailable {
            reason: "daemon down".into(),
        };
        fake.fail_next_start(err.clone());
        let (progress, _) = mpsc::channel(1);
        assert_eq!(fake.start(&spec, &progress).await, Err(err));
        assert!(fake.start(&spec, &progress).await.is_ok());
        assert_eq!(fake.running(), vec![spec.key]);
    }

    #[tokio::test]
    async fn foreign_instances_are_never_listed_or_stopped() {
        let fake = FakeDriver::new(owner());
        let other = Owner {
            cluster: "c1".into(),
            node: NodeId("n2".into()),
        };
        let key = conformance::key("web");
        fake.add_foreign(FakeFixture(other).long_running(key.clone()));
        assert!(fake.list().await.unwrap().is_empty());
        fake.stop(&key, 0).await.unwrap();
        assert_eq!(fake.foreign_count(), 1);
    }

    #[tokio::test]
    async fn start_of_another_owners_spec_is_rejected() {
        let fake = FakeDriver::new(owner());
        let other = Owner {
            cluster: "c2".into(),
            node: NodeId("n1".into()),
        };
        let (progress, _) = mpsc::channel(1);
        let spec = FakeFixture(other).long_running(conformance::key("web"));
        assert!(matches!(
            fake.start(&spec, &progress).await,
            Err(DriverError::Rejected { .. })
        ));
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail(b"a\nb\nc\n", 2), b"b\nc\n");
        assert_eq!(tail(b"a\nb\nc", 2), b"b\nc");
        assert_eq!(tail(b"a\nb\n", 5), b"a\nb\n");
        assert_eq!(tail(b"a\n", 0), b"");
        assert_eq!(tail(b"", 3), b"");
    }
}
