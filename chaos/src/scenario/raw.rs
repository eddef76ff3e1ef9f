//! The YAML shape of a scenario file as serde reads it, before validation: every field as
//! written, node numbers unchecked. It checks nothing: `parse.rs` validates it and turns it
//! into the typed `Scenario`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::StartArgs;
use crate::invariants::Invariant;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScenario {
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    #[serde(default)]
    pub(super) converge_timeout: Option<Dur>,
    #[serde(default)]
    pub(super) bugs: BTreeMap<String, Invariant>,
    pub(super) steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawStep {
    Start(StartArgs),
    Deploy {
        #[serde(default)]
        spec: Option<String>,
        #[serde(default)]
        file: Option<String>,
        #[serde(default)]
        via: Option<usize>,
    },
    Scale {
        service: String,
        replicas: u32,
        #[serde(default)]
        via: Option<usize>,
    },
    Rm {
        service: String,
        #[serde(default)]
        via: Option<usize>,
    },
    Fault(RawFault),
    Heal,
    Recover,
    Wait {
        #[serde(rename = "for")]
        duration: Dur,
    },
    WaitConverged {
        #[serde(default)]
        timeout: Option<Dur>,
    },
    Check,
    CheckOnly(Vec<Invariant>),
    Repeat {
        times: u32,
        steps: Vec<Spanned<RawStep>>,
    },
}

#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum FaultKind {
    Kill9,
    Kill9WithInstances,
    Pause,
    Resume,
    Restart,
    Partition,
    OneWay,
    Bridge,
    Isolate,
    LinkDown,
    LinkUp,
    Loss,
    Delay,
    Duplicate,
    Skew,
    KillInstance,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFault {
    pub(super) kind: FaultKind,
    #[serde(default)]
    pub(super) nodes: Vec<usize>,
    #[serde(default)]
    pub(super) groups: Vec<Vec<usize>>,
    #[serde(default)]
    pub(super) from: Vec<usize>,
    #[serde(default)]
    pub(super) to: Vec<usize>,
    #[serde(default)]
    pub(super) rate: Option<f64>,
    #[serde(default)]
    pub(super) delay: Option<Dur>,
    /// Clock offset in milliseconds, may be negative.
    #[serde(default)]
    pub(super) offset_ms: Option<i64>,
    /// For `restart`: SIGTERM and wait (true, default) or kill -9.
    #[serde(default)]
    pub(super) graceful: Option<bool>,
    /// Aim at the node that runs slot 0 of this service when the step runs.
    #[serde(default)]
    pub(super) owner_of: Option<String>,
    /// For `kill-instance`: the instance's service and slot (default 0).
    #[serde(default)]
    pub(super) service: Option<String>,
    #[serde(default)]
    pub(super) slot: Option<u32>,
}

/// A duration written as people write it (`500ms`, `10s`, `2m`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map(Dur).map_err(|e| {
            serde::de::Error::custom(format!("duration {s:?}: {e} (write 500ms, 10s or 2m)"))
        })
    }
}

/// The name a fault kind is written with (its serde name), for error messages.
pub(super) fn kind_name(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Kill9 => "kill9",
        FaultKind::Kill9WithInstances => "kill9-with-instances",
        FaultKind::Pause => "pause",
        FaultKind::Resume => "resume",
        FaultKind::Restart => "restart",
        FaultKind::Partition => "partition",
        FaultKind::OneWay => "one-way",
        FaultKind::Bridge => "bridge",
        FaultKind::Isolate => "isolate",
        FaultKind::LinkDown => "link-down",
        FaultKind::LinkUp => "link-up",
        FaultKind::Loss => "loss",
        FaultKind::Delay => "delay",
        FaultKind::Duplicate => "duplicate",
        FaultKind::Skew => "skew",
        FaultKind::KillInstance => "kill-instance",
    }
}
