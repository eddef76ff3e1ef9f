//! The service spec: what an operator writes (YAML or JSON, one service or a list) and the
//! validated, replicated form the rest of Shoal works with.
//!
//! This module owns parsing and validation only. It does not decide placement or talk to a
//! runtime; the types here are plain data that travel in `ClusterState` (serde + postcard).
//!
//! Reading goes text → located tree (`tree.rs`) → validated [`ServiceSpec`] (`service.rs`, with
//! field helpers in `fields.rs` and quantities in `quantity.rs`); every rejection is a
//! [`SpecError`] (`error.rs`) naming the file, line, field and what to change. Nothing here
//! panics on any input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

mod error;
mod fields;
mod quantity;
mod service;
mod tree;

#[cfg(test)]
mod tests;

pub use error::{Format, NameKind, Place, QuantityKind, SpecError};
pub use quantity::{parse_cpu, parse_duration_ms, parse_memory};
pub use service::{DEFAULT_CPU_MILLIS, DEFAULT_MEMORY_BYTES, DEFAULT_STOP_GRACE_MS, MAX_REPLICAS};

/// Parses a spec file's text, YAML or JSON, holding one service (a mapping) or a list of
/// services; several YAML documents (`---`) are read as one list. `file` is used in messages.
pub fn parse(file: &str, text: &str) -> Result<Vec<ServiceSpec>, SpecError> {
    // Editors hide a byte-order mark; serde_json rejects one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let docs = tree::load(file, text)?;
    service::services(&fields::Source { file, text }, &docs)
}

/// [`parse`] for bytes; bytes that are not UTF-8 are an error naming the line of the first bad byte.
pub fn parse_bytes(file: &str, bytes: &[u8]) -> Result<Vec<ServiceSpec>, SpecError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => parse(file, text),
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line_start = good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            // `good` is valid UTF-8 by construction, so this never falls back.
            let column =
                std::str::from_utf8(&good[line_start..]).map_or(0, |s| s.chars().count()) + 1;
            Err(SpecError::NotUtf8 {
                at: Place::at(file, line, column, ""),
                byte: e.valid_up_to(),
            })
        }
    }
}

/// A service name: a DNS label (`[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?`), validated on parse.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ServiceName(pub std::sync::Arc<str>);

impl ServiceName {
    /// Longest name allowed: a DNS label.
    pub const MAX_LEN: usize = 63;

    /// Checks `s` is a DNS label: 1 to 63 characters of `a-z`, `0-9` and `-`, not starting or
    /// ending with `-`. The error is a lowercase reason that says what to change.
    pub fn new(s: &str) -> Result<ServiceName, String> {
        const RULE: &str =
            "use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'";
        if s.is_empty() {
            return Err(format!("empty, {RULE}"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            let hint = if c.is_uppercase() {
                format!(" (try {:?})", s.to_lowercase())
            } else {
                String::new()
            };
            return Err(format!("contains {c:?}{hint}, {RULE}"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(format!("{} characters long, {RULE}", s.len()));
        }
        if s.starts_with('-') || s.ends_with('-') {
            return Err(format!("starts or ends with '-', {RULE}"));
        }
        Ok(ServiceName(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// CPU and memory, in integers (floats differ across machines).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    /// Thousandths of a CPU core (`0.5` and `500m` both read as 500).
    pub cpu_millis: u64,
    /// Bytes (`256Mi` = 268435456, `1G` = 1000000000).
    pub memory_bytes: u64,
}

/// What an instance runs: a container image (docker driver) or a command (process driver).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Workload {
    /// Runs on the docker driver; `command` overrides the image's entrypoint arguments.
    Image {
        image: String,
        command: Option<Vec<String>>,
    },
    /// Runs on the process driver: argv, `command[0]` is looked up in `PATH`.
    Command { command: Vec<String> },
}

/// Which runtime driver a workload needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DriverKind {
    Docker,
    Process,
}

impl Workload {
    pub fn driver(&self) -> DriverKind {
        match self {
            Workload::Image { .. } => DriverKind::Docker,
            Workload::Command { .. } => DriverKind::Process,
        }
    }
}

/// One published port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortSpec {
    /// Upper-case-able name used for `SHOAL_PORT_<NAME>` (process driver). Defaults to `p<container>`
    /// or `port<index>` when there is no container port.
    pub name: String,
    /// The port inside the container (required for `image` services; ignored by the process driver).
    pub container: Option<u16>,
    /// A fixed host port. `None`: the node picks a free port per instance and reports it.
    /// A fixed port means at most one instance of the service per node.
    pub host: Option<u16>,
}

/// `label == value` or `label != value` over node labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Constraint {
    pub label: String,
    pub op: ConstraintOp,
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ConstraintOp {
    Eq,
    Ne,
}

impl Constraint {
    /// Whether a node with `labels` satisfies this constraint. A missing label never equals a value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.label);
        match self.op {
            ConstraintOp::Eq => v == Some(&self.value),
            ConstraintOp::Ne => v != Some(&self.value),
        }
    }
}

impl std::str::FromStr for Constraint {
    type Err = String;

    /// Reads `label == value` or `label != value` (spaces around the operator optional). The
    /// error is a lowercase reason that says what to change.
    fn from_str(s: &str) -> Result<Constraint, String> {
        const FORM: &str = "write \"label == value\" or \"label != value\"";
        let found = [("==", ConstraintOp::Eq), ("!=", ConstraintOp::Ne)]
            .into_iter()
            .filter_map(|(token, op)| s.find(token).map(|i| (i, op)))
            .min_by_key(|(i, _)| *i);
        let Some((i, op)) = found else {
            return Err(format!("no operator, {FORM}"));
        };
        let (label, value) = (s[..i].trim(), s[i + 2..].trim());
        check_label(label).map_err(|reason| format!("label {label:?}: {reason}"))?;
        if value.is_empty() {
            return Err(format!("no value after the operator, {FORM}"));
        }
        if let Some(c) = value
            .chars()
            .find(|c| c.is_whitespace() || matches!(c, '=' | '!'))
        {
            return Err(format!("value {value:?} contains {c:?}, {FORM}"));
        }
        Ok(Constraint {
            label: label.to_owned(),
            op,
            value: value.to_owned(),
        })
    }
}

/// A node label name: 1 to 253 characters of letters, digits, `.`, `_`, `/` and `-`
/// (Kubernetes-style names like `topology.kubernetes.io/zone` fit).
pub(crate) fn check_label(label: &str) -> Result<(), String> {
    const RULE: &str = "use 1 to 253 letters, digits, '.', '_', '/' and '-'";
    if label.is_empty() {
        return Err(format!("empty, {RULE}"));
    }
    if let Some(c) = label
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')))
    {
        return Err(format!("contains {c:?}, {RULE}"));
    }
    if label.len() > 253 {
        return Err(format!("{} characters long, {RULE}", label.len()));
    }
    Ok(())
}

impl std::fmt::Display for Constraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = match self.op {
            ConstraintOp::Eq => "==",
            ConstraintOp::Ne => "!=",
        };
        write!(f, "{} {} {}", self.label, op, self.value)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Strategy {
    /// Prefer the node with the most free resources after placement (default).
    #[default]
    Spread,
    /// Prefer the node with the least free resources that still fits.
    Binpack,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RestartMode {
    #[default]
    Always,
    OnFailure,
    Never,
}

/// When an exited instance is restarted, and when its owner gives the slot up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// More restarts than this within `window_ms` make the owner release the slot.
    pub max_restarts: u32,
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            max_restarts: 5,
            window_ms: 60_000,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PartitionMode {
    /// Each side of a partition keeps and re-places what it can (default).
    #[default]
    Available,
    /// Never two copies, even during a partition: only a strict majority re-places.
    Majority,
}

/// A validated service spec. Constructed only by [`parse`] (or tests), so every value here
/// already passed validation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: ServiceName,
    pub workload: Workload,
    pub replicas: u32,
    pub resources: Resources,
    pub ports: Vec<PortSpec>,
    pub env: BTreeMap<String, String>,
    pub constraints: Vec<Constraint>,
    pub spread: Option<String>,
    pub strategy: Strategy,
    pub restart: RestartPolicy,
    pub partition: PartitionMode,
    /// Time between SIGTERM (docker stop) and SIGKILL when an instance is stopped.
    pub stop_grace_ms: u64,
}

impl ServiceSpec {
    /// Whether this service binds a fixed host port (at most one instance per node).
    pub fn has_fixed_host_port(&self) -> bool {
        self.ports.iter().any(|p| p.host.is_some())
    }
}
