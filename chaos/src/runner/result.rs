//! What a run returns: the verdict, every invariant's result with the violations found, the
//! measurements, and the timeline the report draws. Plain data, serialized into `report.json`;
//! how it is presented is `report.rs`, how it is filled is the rest of `runner/`.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::invariants::{Invariant, Violation};
use crate::model::{AckedWrite, Snapshot};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Fail,
    /// The harness could not run the scenario to its end.
    Error,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct InvariantResult {
    pub checked: bool,
    pub count: usize,
    pub violations: Vec<Found>,
}

impl InvariantResult {
    pub fn failed(&self) -> bool {
        self.count > 0
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Found {
    pub at_ms: u64,
    /// The scenario line of the step that found it (0: the sampler).
    pub line: u32,
    pub text: String,
    pub violation: Violation,
}

/// A shaded band on the timeline.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Band {
    pub start_ms: u64,
    pub end_ms: u64,
    pub label: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    pub end_ms: u64,
    pub bands: Vec<Band>,
    /// Instances per service over time, from the process table of every node namespace.
    pub series: BTreeMap<String, Vec<(u64, u32)>>,
    /// Writes and other instants worth a tick.
    pub marks: Vec<(u64, String)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioResult {
    pub name: String,
    pub description: String,
    pub bug: Option<String>,
    pub expect_fail: Option<Invariant>,
    pub verdict: Verdict,
    pub error: Option<String>,
    pub invariants: BTreeMap<Invariant, InvariantResult>,
    pub detection_ms: Vec<u64>,
    pub replacement_ms: Vec<u64>,
    pub convergence_ms: Vec<u64>,
    pub duration_ms: u64,
    /// Whether loss/delay went through netem (else through the agent's fault hook).
    pub netem: bool,
    pub writes: Vec<AckedWrite>,
    pub notes: Vec<String>,
    pub replay: Option<String>,
    pub logs: String,
    /// The snapshots the first failing checks looked at (at most 3), for diagnosis.
    pub evidence: Vec<Snapshot>,
    pub timeline: Timeline,
}

impl ScenarioResult {
    /// The invariants that failed.
    pub fn failed(&self) -> Vec<Invariant> {
        self.invariants
            .iter()
            .filter(|(_, r)| r.failed())
            .map(|(i, _)| *i)
            .collect()
    }

    /// The file-name-safe id of this result (name plus bug).
    pub fn slug(&self) -> String {
        match &self.bug {
            Some(b) => format!("{}--bug-{b}", self.name),
            None => self.name.clone(),
        }
    }
}
