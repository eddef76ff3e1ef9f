//! The requests the local API hands to the node core and the replies it gets back.
//!
//! These types are the JSON contract of the HTTP API and of `-o json` in the CLI: field names of
//! `PsEntry`, `HistoryEntry`, `NodeView` and `StatusView` are kept stable for scripts.
//!
//! Below the types, the node's handling of each request: writes (deploy, remove, scale,
//! rollback, drain) go out as a `Persist` then a gossip `Broadcast` before the `Reply` that
//! acknowledges them; reads are answered from `views.rs`.

use std::collections::BTreeMap;

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::ids::{Millis, NodeId, RevisionId};
use crate::spec::{ServiceName, ServiceSpec};
use crate::state::{ClusterState, Crdt, Revision, RevisionBody};

use super::{Node, Output};

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

/// A deploy's revisions share a delta up to this many encoded bytes (a spec is a few hundred
/// bytes to a few KiB), well under the 64 KiB gossip limit.
pub const DEPLOY_DELTA_BYTES: usize = 32 * 1024;

impl<R: Rng> Node<R> {
    pub(super) fn on_api(
        &mut self,
        now: Millis,
        req: ApiRequest,
        out: &mut Vec<Output>,
    ) -> Result<ApiReply, ApiError> {
        match req {
            ApiRequest::Deploy { specs } => {
                // The revisions of one deploy go out together, in as few deltas as the gossip
                // limit allows: a node that saw only part of a deploy would plan and bid (and
                // reserve capacity) for that part alone, then find itself without room for the
                // slots the whole deploy's plan gives it.
                let mut results = Vec::new();
                let mut delta = ClusterState::default();
                let mut delta_bytes: usize = 0;
                for spec in specs {
                    let name = spec.name.clone();
                    let current = self.state.services.get(&name).and_then(|e| e.current());
                    if let Some(cur) = current.filter(|c| c.spec() == Some(&spec)) {
                        results.push(WriteResult {
                            service: name.0.to_string(),
                            revision: cur.id.0.clone(),
                            changed: false,
                        });
                        continue;
                    }
                    let rev = self.new_revision(now, &name, RevisionBody::Spec(spec));
                    let bytes = postcard::experimental::serialized_size(&rev).unwrap_or(usize::MAX);
                    if delta_bytes > 0 && delta_bytes.saturating_add(bytes) > DEPLOY_DELTA_BYTES {
                        self.write(std::mem::take(&mut delta), out);
                        delta_bytes = 0;
                    }
                    results.push(WriteResult {
                        service: name.0.to_string(),
                        revision: rev.id.0.clone(),
                        changed: true,
                    });
                    delta.merge(&self.state.put_revision(&name, rev));
                    delta_bytes = delta_bytes.saturating_add(bytes);
                }
                if delta_bytes > 0 {
                    self.write(delta, out);
                }
                Ok(ApiReply::Written(results))
            }
            ApiRequest::Remove { service } => {
                self.live(&service)?;
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Deleted,
                    out,
                )]))
            }
            ApiRequest::Scale { service, replicas } => {
                let mut spec = self.live(&service)?.clone();
                if replicas > crate::spec::MAX_REPLICAS {
                    return Err(ApiError::invalid(
                        format!(
                            "replicas {replicas} is more than {}",
                            crate::spec::MAX_REPLICAS
                        ),
                        format!("use at most {} replicas", crate::spec::MAX_REPLICAS),
                    ));
                }
                if spec.replicas == replicas {
                    let cur = self.state.services[&service]
                        .current()
                        .expect("live service has a revision");
                    return Ok(ApiReply::Written(vec![WriteResult {
                        service: service.0.to_string(),
                        revision: cur.id.0.clone(),
                        changed: false,
                    }]));
                }
                spec.replicas = replicas;
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Spec(spec),
                    out,
                )]))
            }
            ApiRequest::Rollback { service, to } => {
                let entry = self
                    .state
                    .services
                    .get(&service)
                    .ok_or_else(|| unknown_service(&service))?;
                let current = entry.current().expect("entries are never empty");
                let target = match &to {
                    Some(to) => find_revision(entry.history.values(), to)?,
                    None => entry
                        .history
                        .values()
                        .rev()
                        .skip(1)
                        .find(|r| r.spec().is_some() && r.spec() != current.spec())
                        .ok_or_else(|| {
                            ApiError::not_found(
                                format!(
                                    "service {service} has no earlier revision to roll back to"
                                ),
                                format!("see `shoal history {service}`"),
                            )
                        })?,
                };
                let Some(spec) = target.spec().cloned() else {
                    return Err(ApiError::invalid(
                        format!("revision {} of {service} is a removal", target.id),
                        "roll back to a revision that has a spec",
                    ));
                };
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Spec(spec),
                    out,
                )]))
            }
            ApiRequest::History { service } => {
                let entry = self
                    .state
                    .services
                    .get(&service)
                    .ok_or_else(|| unknown_service(&service))?;
                let current = entry.current().map(|r| r.stamp.clone());
                Ok(ApiReply::History(
                    entry
                        .history
                        .values()
                        .rev()
                        .map(|r| HistoryEntry {
                            revision: r.id.0.clone(),
                            written_by: r.stamp.node.0.to_string(),
                            written_at: r.stamp.wall_ms,
                            current: Some(&r.stamp) == current.as_ref(),
                            deleted: r.spec().is_none(),
                            spec: r.spec().cloned(),
                        })
                        .collect(),
                ))
            }
            ApiRequest::Ps { service } => {
                if let Some(s) = &service {
                    self.state
                        .services
                        .get(s)
                        .ok_or_else(|| unknown_service(s))?;
                }
                Ok(ApiReply::Ps(self.ps(now, service.as_ref())))
            }
            ApiRequest::Status => Ok(ApiReply::Status(Box::new(self.status(now)))),
            ApiRequest::Nodes => Ok(ApiReply::Nodes(self.nodes(now))),
            ApiRequest::TestFaults(_) => Err(ApiError::invalid(
                "fault injection is off on this agent",
                "start the agent with --test-faults (test clusters only)",
            )),
            ApiRequest::Drain { node, on } => {
                let target = match node {
                    None => self.cfg.id.clone(),
                    Some(n) => {
                        let known: Vec<NodeId> = std::iter::once(self.cfg.id.clone())
                            .chain(self.members.peers().keys().cloned())
                            .collect();
                        resolve_node(&n, known.iter())?
                    }
                };
                let stamp = self.clock.stamp(now);
                let changed = self.state.draining(&target) != on;
                if changed {
                    let delta = self.state.put_drain(&target, stamp, on);
                    self.write(delta, out);
                }
                Ok(ApiReply::Written(vec![WriteResult {
                    service: String::new(),
                    revision: target.0.to_string(),
                    changed,
                }]))
            }
        }
    }

    fn new_revision(&mut self, now: Millis, name: &ServiceName, body: RevisionBody) -> Revision {
        let seq = self
            .state
            .services
            .get(name)
            .and_then(|e| e.current())
            .map_or(0, |r| r.id.seq())
            + 1;
        let stamp = self.clock.stamp(now);
        let bytes = postcard::to_stdvec(&stamp).expect("in-memory encoding cannot fail");
        let tag = xxhash_rust::xxh3::xxh3_64(&bytes) & 0xffff;
        Revision {
            id: RevisionId(format!("{seq}.{tag:04x}")),
            stamp,
            body,
        }
    }

    fn write_revision(
        &mut self,
        now: Millis,
        name: &ServiceName,
        body: RevisionBody,
        out: &mut Vec<Output>,
    ) -> WriteResult {
        let rev = self.new_revision(now, name, body);
        let id = rev.id.0.clone();
        let delta = self.state.put_revision(name, rev);
        self.write(delta, out);
        WriteResult {
            service: name.0.to_string(),
            revision: id,
            changed: true,
        }
    }

    fn live(&self, service: &ServiceName) -> Result<&ServiceSpec, ApiError> {
        self.state
            .live_spec(service)
            .ok_or_else(|| unknown_service(service))
    }
}

fn unknown_service(s: &ServiceName) -> ApiError {
    ApiError::not_found(
        format!("no service {s}"),
        "see `shoal ps` for the services deployed",
    )
}

fn find_revision<'a>(
    revs: impl Iterator<Item = &'a Revision>,
    to: &str,
) -> Result<&'a Revision, ApiError> {
    let revs: Vec<&Revision> = revs.collect();
    if let Some(r) = revs.iter().find(|r| r.id.0 == to) {
        return Ok(r);
    }
    let by_seq: Vec<&&Revision> = revs
        .iter()
        .filter(|r| r.id.0.split('.').next() == Some(to))
        .collect();
    match by_seq.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::not_found(
            format!("no revision {to} in the last {} revisions", revs.len()),
            "see `shoal history SERVICE` for revision ids",
        )),
        many => Err(ApiError::invalid(
            format!(
                "revision {to} is ambiguous: {}",
                many.iter()
                    .map(|r| r.id.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "give the full revision id",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Hlc;

    fn rev(id: &str, wall_ms: u64) -> Revision {
        Revision {
            id: RevisionId(id.into()),
            stamp: Hlc {
                wall_ms,
                logical: 0,
                node: NodeId("a".into()),
            },
            body: RevisionBody::Deleted,
        }
    }

    #[test]
    fn a_revision_is_found_by_its_id_or_its_unambiguous_sequence_number() {
        let revs = [rev("1.aaaa", 1), rev("2.bbbb", 2), rev("2.cccc", 3)];
        assert_eq!(find_revision(revs.iter(), "1").unwrap().id.0, "1.aaaa");
        assert_eq!(find_revision(revs.iter(), "2.cccc").unwrap().id.0, "2.cccc");
        let ambiguous = find_revision(revs.iter(), "2").unwrap_err();
        assert_eq!(ambiguous.kind, ApiErrorKind::Invalid);
        assert!(
            ambiguous.error.contains("2.bbbb, 2.cccc"),
            "{}",
            ambiguous.error
        );
        let missing = find_revision(revs.iter(), "9").unwrap_err();
        assert_eq!(missing.kind, ApiErrorKind::NotFound);
    }

    #[test]
    fn a_node_is_named_by_its_id_a_prefix_of_it_or_its_short_form() {
        let ids = [
            NodeId("12D3KooWAbcdefghijklmnop".into()),
            NodeId("12D3KooWXyz".into()),
        ];
        let found = resolve_node("Abcdef", ids.iter()).unwrap();
        assert_eq!(found, ids[0]);
        assert_eq!(resolve_node("12D3KooWXyz", ids.iter()).unwrap(), ids[1]);
        assert!(resolve_node("nobody", ids.iter()).is_err());
    }
}
