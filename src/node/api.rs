//! The requests the local API hands to the node core and the replies it gets back.
//!
//! These types are the JSON contract of the HTTP API and of `-o json` in the CLI: field names of
//! `PsEntry`, `HistoryEntry`, `NodeView` and `StatusView` are kept stable for scripts. They are
//! plain data; the handlers that fill them live in `node/mod.rs`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;
use crate::spec::{ServiceName, ServiceSpec};

/// A command or query for the node core, from the local API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiRequest {
    /// Write a new revision of each service whose spec differs from its current one.
    Deploy {
        specs: Vec<ServiceSpec>,
    },
    Remove {
        service: ServiceName,
    },
    Scale {
        service: ServiceName,
        replicas: u32,
    },
    /// Back to `to` (a revision id or its sequence number), or to the previous revision.
    Rollback {
        service: ServiceName,
        to: Option<String>,
    },
    History {
        service: ServiceName,
    },
    Ps {
        service: Option<ServiceName>,
    },
    Status,
    Nodes,
    /// Drain (`on`) or undrain a node; `None` means this node.
    Drain {
        node: Option<String>,
        on: bool,
    },
    /// TEST ONLY: replace the transport's fault injection. The agent handles it when started
    /// with `--test-faults`; otherwise the core refuses it.
    TestFaults(TestFaults),
}

/// `POST /v1/test/faults`: loss, delay and partitions injected into this node's transport.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFaults {
    /// Probability (0..1) of dropping each message, each way.
    #[serde(default)]
    pub drop_rate: f64,
    /// Extra delay per message, each way, in milliseconds.
    #[serde(default)]
    pub delay_ms: u64,
    /// Node ids (or unique prefixes) this node can no longer talk to.
    #[serde(default)]
    pub blocked: Vec<String>,
}

// `drop_rate` is never NaN (the API refuses values outside 0..=1).
impl Eq for TestFaults {}

/// The answer to an `ApiRequest`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ApiReply {
    Written(Vec<WriteResult>),
    History(Vec<HistoryEntry>),
    Ps(Vec<PsEntry>),
    Status(Box<StatusView>),
    Nodes(Vec<NodeView>),
}

/// A refused request: a message a person can act on, and an HTTP status class.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{error}")]
pub struct ApiError {
    pub kind: ApiErrorKind,
    pub error: String,
    pub hint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiErrorKind {
    NotFound,
    Invalid,
    Conflict,
    Unavailable,
}

impl ApiError {
    pub fn not_found(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            kind: ApiErrorKind::NotFound,
            error: error.into(),
            hint: Some(hint.into()),
        }
    }
    pub fn invalid(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError {
            kind: ApiErrorKind::Invalid,
            error: error.into(),
            hint: Some(hint.into()),
        }
    }
}

/// The outcome of one write (deploy, rm, scale, rollback, drain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    pub service: String,
    /// The revision now in force.
    pub revision: String,
    /// False when the spec was already current (deploy is idempotent).
    pub changed: bool,
}

/// One revision in `shoal history`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub revision: String,
    pub written_by: String,
    /// Unix milliseconds of the writer's hybrid logical clock.
    pub written_at: u64,
    pub current: bool,
    pub deleted: bool,
    /// The spec (`null` for a deletion).
    pub spec: Option<ServiceSpec>,
}

/// One slot in `shoal ps`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsEntry {
    pub service: String,
    pub slot: u32,
    /// The owner, `null` while the slot is unplaced.
    pub node: Option<String>,
    pub epoch: u64,
    pub revision: Option<String>,
    /// `running`, `starting`, `restarting`, `failed`, `oom-killed`, `stopping`, `exited`,
    /// `pending` (no owner yet) or `unknown` (the owner has not reported it yet).
    pub state: String,
    pub pid: Option<u32>,
    pub container: Option<String>,
    pub endpoint: Option<String>,
    pub restarts: u32,
    /// Why it is in this state: the last exit, pull progress, why it cannot be placed.
    pub detail: Option<String>,
}

/// One node in `shoal nodes`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub id: String,
    pub addresses: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// `alive`, `suspect`, `down` or `left`.
    pub state: String,
    pub incarnation: u64,
    pub capacity: ResourcesView,
    pub allocated: ResourcesView,
    pub runtimes: Vec<String>,
    pub draining: bool,
    /// Unix ms when this node last heard from it (its own entry: now).
    pub last_heard: u64,
    pub agent_version: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesView {
    pub cpu_millis: u64,
    pub memory_bytes: u64,
}

impl From<crate::spec::Resources> for ResourcesView {
    fn from(r: crate::spec::Resources) -> Self {
        ResourcesView {
            cpu_millis: r.cpu_millis,
            memory_bytes: r.memory_bytes,
        }
    }
}

/// `shoal status`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    pub node: String,
    pub incarnation: u64,
    pub agent_version: String,
    /// Hex digest of the replicated state: equal on nodes that hold the same state.
    pub digest: String,
    pub services: usize,
    /// Slots asked for by live services (sum of replicas).
    pub slots: usize,
    pub running: usize,
    pub members: MemberCounts,
    pub capacity: ResourcesView,
    pub allocated: ResourcesView,
    pub runtimes: Vec<String>,
    pub draining: bool,
    /// Slots that cannot be placed right now, with the reason.
    pub unplaceable: Vec<Unplaceable>,
    pub counters: Counters,
    /// Last successful anti-entropy exchange per peer (unix ms).
    pub last_sync: BTreeMap<String, u64>,
    /// Test-only fault injection switched on in this agent (empty in production).
    pub faults: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    pub alive: usize,
    pub suspect: usize,
    pub down: usize,
    pub left: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    pub service: String,
    pub slot: u32,
    pub reason: String,
}

/// Counters of replication and network health.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub deltas_sent: u64,
    pub deltas_received: u64,
    pub deltas_rejected: u64,
    pub bids_sent: u64,
    pub bids_received: u64,
    pub claims_won: u64,
    pub frames_rejected: u64,
    pub clock_skew_stamps: u64,
    /// Bytes this node's transport read and wrote (frames of SWIM and sync, gossip payloads).
    pub net_bytes_in: u64,
    pub net_bytes_out: u64,
}

impl ApiRequest {
    /// Whether the request writes state (and so must be persisted before it is acknowledged).
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            ApiRequest::Deploy { .. }
                | ApiRequest::Remove { .. }
                | ApiRequest::Scale { .. }
                | ApiRequest::Rollback { .. }
                | ApiRequest::Drain { .. }
        )
    }
}

/// A node id as given on the command line: the full id, or a unique prefix of it (with or
/// without the common `12D3KooW` prefix).
pub fn resolve_node<'a>(
    given: &str,
    known: impl Iterator<Item = &'a NodeId>,
) -> Result<NodeId, ApiError> {
    let matches: Vec<&NodeId> = known
        .filter(|n| *n.0 == *given || n.0.starts_with(given) || n.short().starts_with(given))
        .collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(ApiError::not_found(
            format!("no node {given}"),
            "see `shoal nodes` for node ids",
        )),
        _ => Err(ApiError::invalid(
            format!("node {given} is ambiguous ({} nodes match)", matches.len()),
            "give more characters of the id",
        )),
    }
}
