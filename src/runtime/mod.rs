//! The runtime boundary: the `Runtime` trait every driver implements, the data that crosses it,
//! and the drivers themselves (`process`, `docker`, and an in-memory `fake` for tests).
//!
//! Drivers do not decide anything: they start, stop, list and report. Restart policy, backoff,
//! adoption and reclaim decisions live in `reconcile/` (sans-IO); the agent shell turns
//! `RuntimeCommand`s into calls on a driver and driver observations into `RuntimeEvent`s.

#[cfg(feature = "testing")]
pub mod conformance;
pub mod docker;
#[cfg(feature = "testing")]
pub mod fake;
pub mod lease;
pub mod process;

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::ids::{InstanceKey, NodeId, RevisionId};
use crate::spec::{DriverKind, Resources, ServiceSpec};

/// Everything a driver needs to start one instance. Built by the core from the claim and the
/// service's revision, so a driver never reads cluster state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceSpec {
    pub key: InstanceKey,
    pub revision: RevisionId,
    /// `shoal.cluster` label: the cluster's id (a digest of its key), so two clusters sharing one
    /// Docker daemon never touch each other's instances.
    pub cluster: String,
    /// `shoal.node` label: the owner.
    pub node: NodeId,
    pub spec: ServiceSpec,
}

impl InstanceSpec {
    pub fn driver(&self) -> DriverKind {
        self.spec.workload.driver()
    }

    /// The labels every instance carries (docker labels; the process driver stores them in its
    /// instance record).
    pub fn labels(&self) -> BTreeMap<String, String> {
        let mut l = BTreeMap::new();
        l.insert("shoal.cluster".into(), self.cluster.clone());
        l.insert("shoal.node".into(), self.node.0.to_string());
        l.insert("shoal.service".into(), self.key.slot.service.0.to_string());
        l.insert("shoal.slot".into(), self.key.slot.index.to_string());
        l.insert("shoal.epoch".into(), self.key.epoch.to_string());
        l.insert("shoal.revision".into(), self.revision.0.clone());
        l
    }

    pub fn resources(&self) -> Resources {
        self.spec.resources
    }
}

/// How the runtime identifies a running instance.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Handle {
    /// Process driver: pid plus the process start time (clock ticks since boot, from
    /// `/proc/<pid>/stat`), so a recycled pid is never mistaken for ours.
    Pid { pid: u32, start_ticks: u64 },
    /// Docker driver: the container id.
    Container { id: String },
}

/// How an instance ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitInfo {
    /// Exit code when known (`None` when killed by a signal or when the process was adopted and
    /// its status could not be collected).
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// Killed by the kernel's OOM killer (docker reports it; the process driver cannot tell).
    pub oom_killed: bool,
}

impl ExitInfo {
    pub fn success(&self) -> bool {
        self.code == Some(0) && !self.oom_killed
    }
}

/// What the runtime says about one of our instances when it lists them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub key: InstanceKey,
    pub revision: RevisionId,
    pub handle: Handle,
    /// `host:port` of the first published port, if any.
    pub endpoint: Option<String>,
    /// All published ports by name (`name -> host port`).
    pub ports: BTreeMap<String, u16>,
    pub status: ObservedStatus,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ObservedStatus {
    Running,
    Exited(ExitInfo),
}

/// A runtime fact, delivered to the core as `Input::Runtime`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeEvent {
    /// A `Start` command succeeded.
    Started {
        key: InstanceKey,
        revision: RevisionId,
        handle: Handle,
        endpoint: Option<String>,
    },
    /// A `Start` command failed. `retryable` says whether trying again can help.
    StartFailed {
        key: InstanceKey,
        error: String,
        retryable: bool,
    },
    /// Progress of a slow start (image pull): shown in `shoal ps`, e.g. `pulling 45%`.
    Progress { key: InstanceKey, status: String },
    /// An instance ended on its own (or was killed from outside).
    Exited { key: InstanceKey, exit: ExitInfo },
    /// A `Stop` command finished: the instance is gone (stopped and removed).
    Stopped { key: InstanceKey },
    /// A `Stop` command failed.
    StopFailed { key: InstanceKey, error: String },
    /// The complete list of this node's instances on one driver (truth; repairs lost events).
    Listed {
        driver: DriverKind,
        instances: Vec<Observed>,
    },
}

/// What the core asks of the runtime, delivered through a bounded queue to a worker so that a
/// slow driver never stalls the node loop.
// Values of this enum are moved, not stored in bulk: boxing the large variant buys nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RuntimeCommand {
    Start(InstanceSpec),
    /// Stop with the grace period (SIGTERM / docker stop), then kill, then remove.
    Stop {
        key: InstanceKey,
        driver: DriverKind,
        grace_ms: u64,
    },
    /// List every instance of this node on the driver (answered with `RuntimeEvent::Listed`).
    List {
        driver: DriverKind,
    },
}

/// A driver failure. Each variant says whether retrying can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    /// The runtime is not reachable right now (daemon down, socket missing): retry later.
    #[error("runtime unavailable: {reason}")]
    Unavailable { reason: String },
    /// The image does not exist or cannot be pulled (bad name, registry refused it).
    #[error("image {image} not found: {reason}")]
    ImageNotFound { image: String, reason: String },
    /// The runtime refused the request as given (bad command, port taken, bad limit): retrying
    /// the same request will fail the same way.
    #[error("rejected: {reason}")]
    Rejected { reason: String },
    /// A local IO failure (log dir, instance record): retry may help once the disk is fixed.
    #[error("io error at {path}: {reason}")]
    Io { path: String, reason: String },
}

impl DriverError {
    pub fn retryable(&self) -> bool {
        !matches!(self, DriverError::Rejected { .. })
    }
}

/// The identity a driver needs to recognise its own instances: it touches only those carrying
/// both labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub cluster: String,
    pub node: NodeId,
}

/// A runtime driver. Every method is idempotent: starting what already runs (same key) succeeds
/// and reports the running instance; stopping what is gone succeeds.
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> DriverKind;

    /// Starts the instance and returns once it runs (or failed to). For docker this includes
    /// pulling the image; progress goes to `events`.
    fn start(
        &self,
        spec: &InstanceSpec,
        events: &tokio::sync::mpsc::Sender<RuntimeEvent>,
    ) -> impl Future<Output = Result<Observed, DriverError>> + Send;

    /// Stops the instance: graceful signal, `grace_ms` to exit, then kill; then removes it.
    fn stop(
        &self,
        key: &InstanceKey,
        grace_ms: u64,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Every instance of this owner (cluster and node labels), running or exited.
    fn list(&self) -> impl Future<Output = Result<Vec<Observed>, DriverError>> + Send;

    /// Starts watching for instances that end on their own; sends `RuntimeEvent::Exited` for
    /// each (at least once; the core tolerates duplicates). Returns when the watch is set up.
    fn watch(
        &self,
        events: tokio::sync::mpsc::Sender<RuntimeEvent>,
    ) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// The instance's log (stdout and stderr interleaved as the driver stores them). With
    /// `follow`, the stream goes on until the instance is gone or the receiver is dropped.
    fn logs(
        &self,
        key: &InstanceKey,
        follow: bool,
        tail_lines: Option<usize>,
    ) -> impl Future<Output = Result<tokio::sync::mpsc::Receiver<Vec<u8>>, DriverError>> + Send;
}
