//! What the harness observes and what it expects: the `-o json` output of the `shoal` CLI
//! (read leniently: unknown fields are ignored so the agent can grow), instance processes found
//! in the process table, and the harness's own model of the desired state built from the writes
//! the fleet acknowledged.
//!
//! The shapes stay declared here, read leniently, because the harness may drive an agent binary
//! of another version (`--shoal PATH`); a test reads what the agent's own types
//! (`shoal::node::api`) write, so a renamed field fails here first.
//!
//! Plain data and pure helpers only: no IO here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// CPU millicores and memory bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Res {
    #[serde(default)]
    pub cpu_millis: u64,
    #[serde(default)]
    pub memory_bytes: u64,
}

impl Res {
    pub fn add(self, o: Res) -> Res {
        Res {
            cpu_millis: self.cpu_millis + o.cpu_millis,
            memory_bytes: self.memory_bytes + o.memory_bytes,
        }
    }
    pub fn fits_in(self, cap: Res) -> bool {
        self.cpu_millis <= cap.cpu_millis && self.memory_bytes <= cap.memory_bytes
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberCounts {
    #[serde(default)]
    pub alive: usize,
    #[serde(default)]
    pub suspect: usize,
    #[serde(default)]
    pub down: usize,
    #[serde(default)]
    pub left: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unplaceable {
    pub service: String,
    pub slot: u32,
    #[serde(default)]
    pub reason: String,
}

/// `shoal status -o json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusObs {
    pub node: String,
    pub digest: String,
    #[serde(default)]
    pub services: usize,
    #[serde(default)]
    pub slots: usize,
    #[serde(default)]
    pub running: usize,
    #[serde(default)]
    pub members: MemberCounts,
    #[serde(default)]
    pub capacity: Res,
    #[serde(default)]
    pub allocated: Res,
    #[serde(default)]
    pub unplaceable: Vec<Unplaceable>,
    #[serde(default)]
    pub faults: Vec<String>,
}

/// One row of `shoal ps -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsObs {
    pub service: String,
    pub slot: u32,
    #[serde(default)]
    pub node: Option<String>,
    #[serde(default)]
    pub epoch: u64,
    #[serde(default)]
    pub revision: Option<String>,
    pub state: String,
    #[serde(default)]
    pub pid: Option<u32>,
}

/// One row of `shoal nodes -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeObs {
    pub id: String,
    pub state: String,
    #[serde(default)]
    pub incarnation: u64,
    #[serde(default)]
    pub capacity: Res,
    #[serde(default)]
    pub allocated: Res,
}

/// One row of `shoal history SERVICE -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryObs {
    pub revision: String,
    #[serde(default)]
    pub written_by: String,
    #[serde(default)]
    pub written_at: u64,
    #[serde(default)]
    pub current: bool,
    #[serde(default)]
    pub deleted: bool,
}

/// One row of `shoal deploy|scale|rm -o json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteObs {
    pub service: String,
    pub revision: String,
    #[serde(default)]
    pub changed: bool,
}

/// What the harness's process of an agent is doing, as the harness made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Running,
    Paused,
    /// Killed or not started: its instances may still run, but nobody can stop them.
    Stopped,
}

/// One instance process found in the process table of a node's namespace (one per session:
/// a shell and its children count once).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceProc {
    pub pid: u32,
    /// 1-based node number whose namespace the process runs in.
    pub node: usize,
    pub service: String,
    pub slot: u32,
    pub epoch: u64,
    pub revision: Option<String>,
}

/// One node at one instant: the harness's knowledge plus the agent's answers (None when the
/// query was not made or failed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeSnap {
    /// 1-based node number.
    pub node: usize,
    /// The node id (learnt from `status`), once known.
    pub id: Option<String>,
    pub agent: AgentState,
    /// The capacity the harness gave it.
    pub capacity: Res,
    pub status: Option<StatusObs>,
    pub ps: Option<Vec<PsObs>>,
    pub nodes: Option<Vec<NodeObs>>,
    /// Why a query failed, if one did.
    #[serde(default)]
    pub error: Option<String>,
}

/// The whole fleet at one instant.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Milliseconds since the scenario started.
    pub at_ms: u64,
    pub nodes: Vec<NodeSnap>,
    pub procs: Vec<InstanceProc>,
}

impl Snapshot {
    /// Nodes whose agent runs (not paused, not stopped).
    pub fn live(&self) -> impl Iterator<Item = &NodeSnap> {
        self.nodes.iter().filter(|n| n.agent == AgentState::Running)
    }

    pub fn agent(&self, node: usize) -> AgentState {
        self.nodes
            .iter()
            .find(|n| n.node == node)
            .map(|n| n.agent)
            .unwrap_or(AgentState::Stopped)
    }
}

/// The harness's model of one service, from acknowledged writes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceModel {
    pub replicas: u32,
    pub majority: bool,
    pub deleted: bool,
    /// Resources per revision id (an instance's `SHOAL_REVISION` finds its requests).
    pub resources: BTreeMap<String, Res>,
    /// Requests of the latest spec, for instances whose revision is unknown.
    pub latest: Res,
}

/// Desired state per service, as acknowledged.
pub type Expected = BTreeMap<String, ServiceModel>;

/// An acknowledged write, in the order the harness made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckedWrite {
    pub at_ms: u64,
    pub service: String,
    pub revision: String,
    pub changed: bool,
    pub deleted: bool,
}

/// The fields of a service spec the harness needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SpecInfo {
    pub name: String,
    pub replicas: u32,
    pub majority: bool,
    pub resources: Res,
}

/// A spec the harness cannot read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SpecError {
    #[error("spec is not YAML: {0}")]
    Yaml(String),
    #[error("service #{index} has no name")]
    NoName { index: usize },
    #[error("service {service}: {field} {value:?} cannot be read ({hint})")]
    Field {
        service: String,
        field: &'static str,
        value: String,
        hint: &'static str,
    },
}

/// Reads one service or a list of services (YAML or JSON).
pub fn parse_specs(text: &str) -> Result<Vec<SpecInfo>, SpecError> {
    let v: serde_json::Value = serde_saphyr::from_str(text).map_err(|e| {
        SpecError::Yaml(e.to_string().lines().next().unwrap_or_default().to_string())
    })?;
    let items = match v {
        serde_json::Value::Array(a) => a,
        other => vec![other],
    };
    let mut out = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(name) = item.get("name").and_then(|n| n.as_str()) else {
            return Err(SpecError::NoName { index });
        };
        let field =
            |field: &'static str, value: &serde_json::Value, hint: &'static str| SpecError::Field {
                service: name.to_string(),
                field,
                value: value.to_string(),
                hint,
            };
        let replicas = match item.get("replicas") {
            None => 1,
            Some(r) => r
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| field("replicas", r, "a whole number"))?,
        };
        let majority = item.get("partition").and_then(|p| p.as_str()) == Some("majority");
        let mut resources = Res::default();
        if let Some(r) = item.get("resources") {
            if let Some(c) = r.get("cpu") {
                resources.cpu_millis =
                    parse_cpu(c).ok_or_else(|| field("cpu", c, "write 0.5 or 500m"))?;
            }
            if let Some(m) = r.get("memory") {
                resources.memory_bytes =
                    parse_memory(m).ok_or_else(|| field("memory", m, "write 64Mi or 1G"))?;
            }
        }
        out.push(SpecInfo {
            name: name.to_string(),
            replicas,
            majority,
            resources,
        });
    }
    Ok(out)
}

/// `0.5`, `2`, `"500m"`, `"1.5"` → millicores.
pub fn parse_cpu(v: &serde_json::Value) -> Option<u64> {
    if let Some(f) = v.as_f64() {
        return (f >= 0.0).then(|| (f * 1000.0).round() as u64);
    }
    let s = v.as_str()?.trim();
    if let Some(m) = s.strip_suffix('m') {
        return m.trim().parse().ok();
    }
    let f: f64 = s.parse().ok()?;
    (f >= 0.0).then(|| (f * 1000.0).round() as u64)
}

/// `"64Mi"`, `"1G"`, `1048576` → bytes.
pub fn parse_memory(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    parse_memory_str(v.as_str()?)
}

pub fn parse_memory_str(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim() {
        "" => 1,
        "k" | "K" | "kB" | "KB" => 1000,
        "Ki" | "KiB" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "Mi" | "MiB" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "Gi" | "GiB" => 1 << 30,
        "T" | "TB" => 1_000_000_000_000,
        "Ti" | "TiB" => 1 << 40,
        _ => return None,
    };
    Some((num * mult as f64).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn quantities_read_as_people_write_them() {
        assert_eq!(parse_cpu(&json!(0.5)), Some(500));
        assert_eq!(parse_cpu(&json!("100m")), Some(100));
        assert_eq!(parse_cpu(&json!("2")), Some(2000));
        assert_eq!(parse_memory(&json!("64Mi")), Some(64 << 20));
        assert_eq!(parse_memory(&json!("1G")), Some(1_000_000_000));
        assert_eq!(parse_memory(&json!(4096)), Some(4096));
        assert_eq!(parse_memory(&json!("12 parsecs")), None);
    }

    #[test]
    fn specs_read_one_service_or_a_list() {
        let one = parse_specs(
            "name: web\nreplicas: 3\nresources: { cpu: 100m, memory: 16Mi }\npartition: majority\n",
        )
        .unwrap();
        assert_eq!(
            one,
            vec![SpecInfo {
                name: "web".into(),
                replicas: 3,
                majority: true,
                resources: Res {
                    cpu_millis: 100,
                    memory_bytes: 16 << 20
                }
            }]
        );
        let two = parse_specs("- name: a\n- name: b\n  replicas: 2\n").unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].replicas, 1);
        assert!(!two[1].majority);
        assert_eq!(
            parse_specs("replicas: 2\n"),
            Err(SpecError::NoName { index: 0 })
        );
    }

    #[test]
    fn cli_json_with_unknown_fields_still_reads() {
        let s: StatusObs = serde_json::from_str(
            r#"{"node":"12D3","digest":"ab","members":{"alive":3,"suspect":0,"down":0,"left":0},
               "capacity":{"cpu_millis":2000,"memory_bytes":5},"allocated":{"cpu_millis":100,"memory_bytes":1},
               "unplaceable":[],"faults":[],"counters":{"x":1},"something_new":true}"#,
        )
        .unwrap();
        assert_eq!(s.members.alive, 3);
        assert_eq!(s.capacity.cpu_millis, 2000);
    }

    #[test]
    fn the_shapes_read_what_the_agents_own_types_write() {
        use shoal::node::api;
        let res = api::ResourcesView {
            cpu_millis: 2000,
            memory_bytes: 5,
        };
        let status = api::StatusView {
            node: "12D3".into(),
            digest: "ab".into(),
            services: 2,
            slots: 3,
            running: 1,
            members: api::MemberCounts {
                alive: 3,
                suspect: 1,
                down: 0,
                left: 2,
            },
            capacity: res,
            unplaceable: vec![api::Unplaceable {
                service: "web".into(),
                slot: 1,
                reason: "no room".into(),
            }],
            faults: vec!["drop".into()],
            ..Default::default()
        };
        let s: StatusObs = serde_json::from_value(serde_json::to_value(&status).unwrap()).unwrap();
        assert_eq!((s.node.as_str(), s.digest.as_str()), ("12D3", "ab"));
        assert_eq!((s.services, s.slots, s.running), (2, 3, 1));
        assert_eq!(
            (s.members.alive, s.members.suspect, s.members.left),
            (3, 1, 2)
        );
        assert_eq!(s.capacity.cpu_millis, 2000);
        assert_eq!(s.unplaceable[0].reason, "no room");
        assert_eq!(s.faults, vec!["drop".to_string()]);

        let ps = api::PsEntry {
            service: "web".into(),
            slot: 4,
            node: Some("12D3".into()),
            epoch: 7,
            revision: Some("r1".into()),
            state: "running".into(),
            pid: Some(42),
            container: None,
            endpoint: None,
            restarts: 0,
            detail: None,
        };
        let p: PsObs = serde_json::from_value(serde_json::to_value(&ps).unwrap()).unwrap();
        assert_eq!(
            (p.slot, p.node.as_deref(), p.epoch, p.pid),
            (4, Some("12D3"), 7, Some(42))
        );
        assert_eq!(
            (p.revision.as_deref(), p.state.as_str()),
            (Some("r1"), "running")
        );

        let node = api::NodeView {
            id: "12D3".into(),
            addresses: vec![],
            labels: BTreeMap::new(),
            state: "suspect".into(),
            incarnation: 3,
            capacity: res,
            allocated: api::ResourcesView::default(),
            runtimes: vec![],
            draining: false,
            last_heard: 0,
            agent_version: None,
        };
        let n: NodeObs = serde_json::from_value(serde_json::to_value(&node).unwrap()).unwrap();
        assert_eq!((n.state.as_str(), n.incarnation), ("suspect", 3));
        assert_eq!(n.capacity.memory_bytes, 5);

        let h = api::HistoryEntry {
            revision: "r2".into(),
            written_by: "12D3".into(),
            written_at: 9,
            current: true,
            deleted: false,
            spec: None,
        };
        let h: HistoryObs = serde_json::from_value(serde_json::to_value(&h).unwrap()).unwrap();
        assert_eq!(
            (h.revision.as_str(), h.written_at, h.current),
            ("r2", 9, true)
        );

        let w = api::WriteResult {
            service: "web".into(),
            revision: "r3".into(),
            changed: true,
        };
        let w: WriteObs = serde_json::from_value(serde_json::to_value(&w).unwrap()).unwrap();
        assert_eq!(
            (w.service.as_str(), w.revision.as_str(), w.changed),
            ("web", "r3", true)
        );
    }
}
