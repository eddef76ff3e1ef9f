//! Chaos scenarios: the YAML format in `chaos/scenarios/`, parsed and checked into a typed
//! timeline of steps. Every error names the file and the line of the step at fault.
//!
//! This file holds the typed scenario (`Scenario`, `Step`, `Fault`) and its error; the YAML
//! shape is `raw.rs` and reading and validating it is `parse.rs`. Running a scenario is
//! `runner/`, and the random nemesis builds the same `Scenario` value from a seed
//! (`nemesis.rs`).

mod parse;
mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

use crate::invariants::Invariant;

pub use parse::load;

/// A parsed, validated scenario.
#[derive(Clone, Debug, PartialEq)]
pub struct Scenario {
    pub name: String,
    pub description: String,
    /// A `wait_converged` without its own timeout waits this long; exceeding it fails the
    /// convergence invariant.
    pub converge_timeout: Duration,
    /// Which invariant each deliberate bug (`SHOAL_TEST_BUGS`) is expected to break here.
    pub bugs: BTreeMap<String, Invariant>,
    pub steps: Vec<Located>,
}

/// A step with the line it was written on (0 for generated steps).
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub line: u32,
    pub step: Step,
}

/// One step of a timeline.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    Start(StartArgs),
    Deploy {
        spec: String,
        /// The node (1-based) whose API takes the write; the first reachable one when absent.
        via: Option<usize>,
    },
    Scale {
        service: String,
        replicas: u32,
        via: Option<usize>,
    },
    Rm {
        service: String,
        via: Option<usize>,
    },
    Fault {
        fault: Fault,
        /// Aim at the node running slot 0 of this service, found when the step runs (the
        /// fault's nodes are then filled in by the runner).
        owner_of: Option<String>,
    },
    /// Removes every network fault (routes, netem, fault hook).
    Heal,
    /// Heal, resume every paused agent and start every stopped one.
    Recover,
    Wait(Duration),
    WaitConverged(Option<Duration>),
    /// Checks these invariants now (all of them when empty).
    Check(Vec<Invariant>),
    Repeat {
        times: u32,
        steps: Vec<Located>,
    },
}

/// How the fleet is started.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartArgs {
    pub nodes: usize,
    /// Labels given to every node.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Capacity each node offers (`--cpu`), default 2.
    #[serde(default = "default_cpu")]
    pub cpu: String,
    /// Memory each node offers (`--memory`), default 2Gi.
    #[serde(default = "default_memory")]
    pub memory: String,
    /// Environment of every agent.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Environment of single agents, by node number (1-based).
    #[serde(default)]
    pub node_env: BTreeMap<usize, BTreeMap<String, String>>,
    /// Timing profile (`lan` or `wan`); the agent's default when absent.
    #[serde(default)]
    pub profile: Option<String>,
}

fn default_cpu() -> String {
    "2".into()
}
fn default_memory() -> String {
    "2Gi".into()
}

/// A fault, with its targets resolved to 1-based node numbers.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Kill9 {
        nodes: Vec<usize>,
    },
    Kill9WithInstances {
        nodes: Vec<usize>,
    },
    Pause {
        nodes: Vec<usize>,
    },
    Resume {
        nodes: Vec<usize>,
    },
    Restart {
        nodes: Vec<usize>,
        graceful: bool,
    },
    /// Every group reaches only itself.
    Partition {
        groups: Vec<Vec<usize>>,
    },
    /// `from` cannot reach `to`; `to` still reaches `from`.
    OneWay {
        from: Vec<usize>,
        to: Vec<usize>,
    },
    /// Every node sees a majority of the fleet, and no two nodes see the same one.
    Bridge,
    Isolate {
        nodes: Vec<usize>,
    },
    /// Cut or restore the link between exactly two nodes (for flapping).
    Link {
        nodes: Vec<usize>,
        up: bool,
    },
    Loss {
        nodes: Vec<usize>,
        rate: f64,
    },
    Delay {
        nodes: Vec<usize>,
        delay_ms: u64,
    },
    Duplicate {
        nodes: Vec<usize>,
        rate: f64,
    },
    /// Restart these nodes with their clock moved by `offset_ms`.
    Skew {
        nodes: Vec<usize>,
        offset_ms: i64,
    },
    /// kill -9 the instance of `service/slot` from outside (the workload crashes).
    KillInstance {
        service: String,
        slot: u32,
    },
}

impl Fault {
    /// A short label for reports and timelines.
    pub fn label(&self) -> String {
        let n = |v: &[usize]| {
            v.iter()
                .map(|i| format!("n{i}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            Fault::Kill9 { nodes } => format!("kill9 {}", n(nodes)),
            Fault::Kill9WithInstances { nodes } => format!("kill9+instances {}", n(nodes)),
            Fault::Pause { nodes } => format!("pause {}", n(nodes)),
            Fault::Resume { nodes } => format!("resume {}", n(nodes)),
            Fault::Restart { nodes, graceful } => {
                format!("restart{} {}", if *graceful { "" } else { " -9" }, n(nodes))
            }
            Fault::Partition { groups } => format!(
                "partition {}",
                groups.iter().map(|g| n(g)).collect::<Vec<_>>().join(" | ")
            ),
            Fault::OneWay { from, to } => format!("one-way {} -/-> {}", n(from), n(to)),
            Fault::Bridge => "bridge".into(),
            Fault::Isolate { nodes } => format!("isolate {}", n(nodes)),
            Fault::Link { nodes, up } => {
                format!("link {} {}", n(nodes), if *up { "up" } else { "down" })
            }
            Fault::Loss { nodes, rate } => format!("loss {:.0}% {}", rate * 100.0, n(nodes)),
            Fault::Delay { nodes, delay_ms } => format!("delay {delay_ms}ms {}", n(nodes)),
            Fault::Duplicate { nodes, rate } => format!("dup {:.0}% {}", rate * 100.0, n(nodes)),
            Fault::Skew { nodes, offset_ms } => format!("skew {offset_ms}ms {}", n(nodes)),
            Fault::KillInstance { service, slot } => format!("kill instance {service}/{slot}"),
        }
    }
}

/// A scenario that cannot be used, with where and why.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScenarioError {
    #[error("cannot read scenario {file}: {reason}")]
    Read { file: String, reason: String },
    #[error("scenario {file}: {reason}")]
    Yaml { file: String, reason: String },
    #[error("scenario {file} line {line}: {reason}")]
    Invalid {
        file: String,
        line: u32,
        reason: String,
    },
}

impl Scenario {
    /// Runs every agent with this timing profile.
    pub fn set_profile(&mut self, profile: &str) {
        if let Some(Located {
            step: Step::Start(a),
            ..
        }) = self.steps.first_mut()
        {
            a.profile = Some(profile.to_string());
        }
    }

    /// The fleet's start step.
    pub fn start(&self) -> &StartArgs {
        match &self.steps.first().map(|s| &s.step) {
            Some(Step::Start(a)) => a,
            _ => panic!("a validated scenario starts with start"),
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Start(a) => write!(f, "start {} nodes", a.nodes),
            Step::Deploy { .. } => write!(f, "deploy"),
            Step::Scale {
                service, replicas, ..
            } => write!(f, "scale {service} {replicas}"),
            Step::Rm { service, .. } => write!(f, "rm {service}"),
            Step::Fault {
                fault,
                owner_of: None,
            } => write!(f, "fault {}", fault.label()),
            Step::Fault {
                fault,
                owner_of: Some(s),
            } => write!(f, "fault {} (owner of {s})", fault.label()),
            Step::Heal => write!(f, "heal"),
            Step::Recover => write!(f, "recover"),
            Step::Wait(d) => write!(f, "wait {}", humantime::format_duration(*d)),
            Step::WaitConverged(_) => write!(f, "wait_converged"),
            Step::Check(v) if v.is_empty() => write!(f, "check"),
            Step::Check(v) => write!(f, "check {v:?}"),
            Step::Repeat { times, .. } => write!(f, "repeat {times}x"),
        }
    }
}
