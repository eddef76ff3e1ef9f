//! Chaos scenarios: the YAML format in `chaos/scenarios/`, parsed and checked into a typed
//! timeline of steps. Every error names the file and the line of the step at fault.
//!
//! This file only reads and validates; running a scenario is `runner.rs`, and the random nemesis
//! builds the same `Scenario` value from a seed (`nemesis.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::invariants::Invariant;

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

// ---- the YAML shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    converge_timeout: Option<Dur>,
    #[serde(default)]
    bugs: BTreeMap<String, Invariant>,
    steps: Vec<Spanned<RawStep>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum RawStep {
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
enum FaultKind {
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
struct RawFault {
    kind: FaultKind,
    #[serde(default)]
    nodes: Vec<usize>,
    #[serde(default)]
    groups: Vec<Vec<usize>>,
    #[serde(default)]
    from: Vec<usize>,
    #[serde(default)]
    to: Vec<usize>,
    #[serde(default)]
    rate: Option<f64>,
    #[serde(default)]
    delay: Option<Dur>,
    /// Clock offset in milliseconds, may be negative.
    #[serde(default)]
    offset_ms: Option<i64>,
    /// For `restart`: SIGTERM and wait (true, default) or kill -9.
    #[serde(default)]
    graceful: Option<bool>,
    /// Aim at the node that runs slot 0 of this service when the step runs.
    #[serde(default)]
    owner_of: Option<String>,
    /// For `kill-instance`: the instance's service and slot (default 0).
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    slot: Option<u32>,
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

/// Reads and validates a scenario file. `deploy.file` paths are relative to the scenario's
/// folder.
pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScenarioError::Read {
        file: file.clone(),
        reason: e.to_string(),
    })?;
    parse(&file, &text, path.parent())
}

/// Parses and validates scenario text; `file` names it in errors.
pub fn parse(file: &str, text: &str, dir: Option<&Path>) -> Result<Scenario, ScenarioError> {
    let raw: RawScenario = serde_saphyr::from_str(text).map_err(|e| {
        let reason = match e.location() {
            Some(loc) if loc.line() > 0 => format!("line {}: {}", loc.line(), first_line(&e)),
            _ => first_line(&e),
        };
        ScenarioError::Yaml {
            file: file.to_string(),
            reason,
        }
    })?;
    let mut v = Validator {
        file,
        dir,
        nodes: None,
    };
    let steps = v.steps(raw.steps, true)?;
    if raw.name.trim().is_empty() {
        return Err(v.err(1, "name is empty"));
    }
    Ok(Scenario {
        name: raw.name,
        description: raw.description,
        converge_timeout: raw
            .converge_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(60)),
        bugs: raw.bugs,
        steps,
    })
}

/// The error's message without the source snippet serde-saphyr renders below it.
fn first_line(e: &serde_saphyr::Error) -> String {
    e.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

struct Validator<'a> {
    file: &'a str,
    dir: Option<&'a Path>,
    /// Node count, once `start` was seen.
    nodes: Option<usize>,
}

impl Validator<'_> {
    fn err(&self, line: u32, reason: impl Into<String>) -> ScenarioError {
        ScenarioError::Invalid {
            file: self.file.to_string(),
            line,
            reason: reason.into(),
        }
    }

    fn steps(
        &mut self,
        raw: Vec<Spanned<RawStep>>,
        top: bool,
    ) -> Result<Vec<Located>, ScenarioError> {
        let mut out = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let line = s.referenced.line() as u32;
            let step = self.step(line, s.value, top && i == 0)?;
            out.push(Located { line, step });
        }
        if top && out.is_empty() {
            return Err(self.err(1, "steps is empty: start with `- start: { nodes: 3 }`"));
        }
        Ok(out)
    }

    fn node_list(
        &self,
        line: u32,
        what: &str,
        nodes: &[usize],
    ) -> Result<Vec<usize>, ScenarioError> {
        let n = self.nodes.expect("checked by caller");
        if nodes.is_empty() {
            return Err(self.err(line, format!("{what} needs nodes, for example nodes: [1]")));
        }
        for &i in nodes {
            if i == 0 || i > n {
                return Err(self.err(
                    line,
                    format!("{what}: node {i} does not exist (nodes are numbered 1 to {n})"),
                ));
            }
        }
        let mut v = nodes.to_vec();
        v.sort_unstable();
        v.dedup();
        Ok(v)
    }

    fn via(&self, line: u32, via: Option<usize>) -> Result<Option<usize>, ScenarioError> {
        if let Some(v) = via {
            self.node_list(line, "via", &[v])?;
        }
        Ok(via)
    }

    fn step(&mut self, line: u32, raw: RawStep, first: bool) -> Result<Step, ScenarioError> {
        if let RawStep::Start(args) = raw {
            if !first {
                return Err(self.err(line, "start must be the first step, and only once"));
            }
            if args.nodes == 0 || args.nodes > 32 {
                return Err(self.err(line, "start: nodes must be between 1 and 32"));
            }
            for &k in args.node_env.keys() {
                if k == 0 || k > args.nodes {
                    return Err(self.err(
                        line,
                        format!("start: node_env names node {k}, which does not exist"),
                    ));
                }
            }
            self.nodes = Some(args.nodes);
            return Ok(Step::Start(args));
        }
        if self.nodes.is_none() {
            return Err(self.err(line, "the first step must be `start: { nodes: N }`"));
        }
        Ok(match raw {
            RawStep::Start(_) => unreachable!("handled above"),
            RawStep::Deploy { spec, file, via } => {
                let spec = match (spec, file) {
                    (Some(s), None) => s,
                    (None, Some(f)) => {
                        let p = self
                            .dir
                            .map(|d| d.join(&f))
                            .unwrap_or_else(|| f.clone().into());
                        std::fs::read_to_string(&p).map_err(|e| {
                            self.err(line, format!("deploy: cannot read {}: {e}", p.display()))
                        })?
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            "deploy needs exactly one of spec (inline YAML) or file",
                        ));
                    }
                };
                if let Err(e) = crate::model::parse_specs(&spec) {
                    return Err(self.err(line, format!("deploy: {e}")));
                }
                Step::Deploy {
                    spec,
                    via: self.via(line, via)?,
                }
            }
            RawStep::Scale {
                service,
                replicas,
                via,
            } => Step::Scale {
                service,
                replicas,
                via: self.via(line, via)?,
            },
            RawStep::Rm { service, via } => Step::Rm {
                service,
                via: self.via(line, via)?,
            },
            RawStep::Fault(mut f) => {
                let owner_of = f.owner_of.take();
                if let Some(service) = &owner_of {
                    if !matches!(
                        f.kind,
                        FaultKind::Kill9
                            | FaultKind::Kill9WithInstances
                            | FaultKind::Pause
                            | FaultKind::Isolate
                            | FaultKind::Partition
                    ) {
                        return Err(self.err(
                            line,
                            format!("fault {} does not take owner_of", kind_name(f.kind)),
                        ));
                    }
                    if !f.nodes.is_empty() || !f.groups.is_empty() {
                        return Err(self.err(
                            line,
                            format!(
                                "fault {}: owner_of {service} picks the nodes; drop nodes/groups",
                                kind_name(f.kind)
                            ),
                        ));
                    }
                    // A placeholder the runner replaces with the owner.
                    f.nodes = vec![1];
                }
                Step::Fault {
                    fault: self.fault(line, f)?,
                    owner_of,
                }
            }
            RawStep::Heal => Step::Heal,
            RawStep::Recover => Step::Recover,
            RawStep::Wait { duration } => Step::Wait(duration.0),
            RawStep::WaitConverged { timeout } => Step::WaitConverged(timeout.map(|d| d.0)),
            RawStep::Check => Step::Check(Vec::new()),
            RawStep::CheckOnly(v) => {
                if v.is_empty() {
                    return Err(self.err(line, "check_only needs at least one invariant"));
                }
                Step::Check(v)
            }
            RawStep::Repeat { times, steps } => {
                if times == 0 || times > 1000 {
                    return Err(self.err(line, "repeat: times must be between 1 and 1000"));
                }
                let steps = self.steps(steps, false)?;
                if steps.is_empty() {
                    return Err(self.err(line, "repeat: steps is empty"));
                }
                Step::Repeat { times, steps }
            }
        })
    }

    fn fault(&self, line: u32, f: RawFault) -> Result<Fault, ScenarioError> {
        let n = self.nodes.expect("start seen");
        let name = format!("fault {}", kind_name(f.kind));
        let only = |allowed: &[&str]| -> Result<(), ScenarioError> {
            let given = [
                ("nodes", !f.nodes.is_empty()),
                ("groups", !f.groups.is_empty()),
                ("from", !f.from.is_empty()),
                ("to", !f.to.is_empty()),
                ("rate", f.rate.is_some()),
                ("delay", f.delay.is_some()),
                ("offset_ms", f.offset_ms.is_some()),
                ("graceful", f.graceful.is_some()),
                ("service", f.service.is_some()),
                ("slot", f.slot.is_some()),
            ];
            for (field, set) in given {
                if set && !allowed.contains(&field) {
                    return Err(self.err(line, format!("{name} does not take {field}")));
                }
            }
            Ok(())
        };
        let rate = |r: Option<f64>| -> Result<f64, ScenarioError> {
            match r {
                Some(r) if (0.0..=1.0).contains(&r) => Ok(r),
                Some(r) => Err(self.err(line, format!("{name}: rate {r} is not between 0 and 1"))),
                None => Err(self.err(line, format!("{name} needs rate, for example rate: 0.1"))),
            }
        };
        let fault = match f.kind {
            FaultKind::Kill9
            | FaultKind::Kill9WithInstances
            | FaultKind::Pause
            | FaultKind::Resume
            | FaultKind::Isolate => {
                only(&["nodes"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                match f.kind {
                    FaultKind::Kill9 => Fault::Kill9 { nodes },
                    FaultKind::Kill9WithInstances => Fault::Kill9WithInstances { nodes },
                    FaultKind::Pause => Fault::Pause { nodes },
                    FaultKind::Resume => Fault::Resume { nodes },
                    _ => Fault::Isolate { nodes },
                }
            }
            FaultKind::Restart => {
                only(&["nodes", "graceful"])?;
                Fault::Restart {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    graceful: f.graceful.unwrap_or(true),
                }
            }
            FaultKind::Partition => {
                only(&["nodes", "groups"])?;
                let groups = match (f.groups.is_empty(), f.nodes.is_empty()) {
                    (false, true) => {
                        let mut gs = Vec::new();
                        for g in &f.groups {
                            gs.push(self.node_list(line, &name, g)?);
                        }
                        gs
                    }
                    (true, false) => {
                        let side = self.node_list(line, &name, &f.nodes)?;
                        let rest: Vec<usize> = (1..=n).filter(|i| !side.contains(i)).collect();
                        vec![side, rest]
                    }
                    _ => {
                        return Err(self.err(
                            line,
                            "fault partition needs groups: [[1, 2, 3], [4, 5]] or nodes: [4, 5] (cut off from the rest)",
                        ));
                    }
                };
                let mut seen = vec![false; n + 1];
                for g in &groups {
                    for &i in g {
                        if std::mem::replace(&mut seen[i], true) {
                            return Err(self
                                .err(line, format!("fault partition: node {i} is in two groups")));
                        }
                    }
                }
                if groups.len() < 2 || groups.iter().any(Vec::is_empty) {
                    return Err(
                        self.err(line, "fault partition needs at least two non-empty groups")
                    );
                }
                Fault::Partition { groups }
            }
            FaultKind::OneWay => {
                only(&["from", "to"])?;
                let from = self.node_list(line, &format!("{name} from"), &f.from)?;
                let to = self.node_list(line, &format!("{name} to"), &f.to)?;
                if from.iter().any(|i| to.contains(i)) {
                    return Err(self.err(line, "fault one-way: a node is in both from and to"));
                }
                Fault::OneWay { from, to }
            }
            FaultKind::Bridge => {
                only(&[])?;
                if n < 4 {
                    return Err(self.err(line, "fault bridge needs at least 4 nodes"));
                }
                Fault::Bridge
            }
            FaultKind::LinkDown | FaultKind::LinkUp => {
                only(&["nodes"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                if nodes.len() != 2 {
                    return Err(self.err(line, format!("{name} needs exactly two nodes")));
                }
                Fault::Link {
                    nodes,
                    up: f.kind == FaultKind::LinkUp,
                }
            }
            FaultKind::Loss | FaultKind::Duplicate => {
                only(&["nodes", "rate"])?;
                let nodes = self.node_list(line, &name, &f.nodes)?;
                let rate = rate(f.rate)?;
                if f.kind == FaultKind::Loss {
                    Fault::Loss { nodes, rate }
                } else {
                    Fault::Duplicate { nodes, rate }
                }
            }
            FaultKind::Delay => {
                only(&["nodes", "delay"])?;
                let Some(d) = f.delay else {
                    return Err(self.err(line, "fault delay needs delay, for example delay: 50ms"));
                };
                Fault::Delay {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    delay_ms: d.0.as_millis() as u64,
                }
            }
            FaultKind::KillInstance => {
                only(&["service", "slot"])?;
                let Some(service) = f.service.clone() else {
                    return Err(self.err(
                        line,
                        "fault kill-instance needs service, for example service: web",
                    ));
                };
                Fault::KillInstance {
                    service,
                    slot: f.slot.unwrap_or(0),
                }
            }
            FaultKind::Skew => {
                only(&["nodes", "offset_ms"])?;
                let Some(offset_ms) = f.offset_ms else {
                    return Err(self.err(
                        line,
                        "fault skew needs offset_ms, for example offset_ms: 30000",
                    ));
                };
                Fault::Skew {
                    nodes: self.node_list(line, &name, &f.nodes)?,
                    offset_ms,
                }
            }
        };
        Ok(fault)
    }
}

fn kind_name(k: FaultKind) -> &'static str {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = "name: web\ncommand: [sleep, '100000']\nreplicas: 3\nresources: { cpu: 100m, memory: 16Mi }\n";

    fn parse_ok(text: &str) -> Scenario {
        parse("t.yaml", text, None).unwrap_or_else(|e| panic!("{e}"))
    }

    fn parse_err(text: &str) -> String {
        parse("t.yaml", text, None)
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn a_full_scenario_parses_into_typed_steps() {
        let text = format!(
            "name: kill-one
converge_timeout: 20s
bugs: {{ skip-reclaim: no-orphan }}
steps:
  - start: {{ nodes: 3, cpu: '1' }}
  - deploy:
      spec: |
{}
  - wait_converged: {{}}
  - fault: {{ kind: kill9, nodes: [2] }}
  - wait: {{ for: 500ms }}
  - fault: {{ kind: partition, nodes: [3] }}
  - heal
  - repeat:
      times: 2
      steps:
        - fault: {{ kind: link-down, nodes: [1, 2] }}
        - fault: {{ kind: link-up, nodes: [1, 2] }}
  - check_only: [capacity, majority]
  - check
",
            SPEC.lines()
                .map(|l| format!("        {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let s = parse_ok(&text);
        assert_eq!(s.name, "kill-one");
        assert_eq!(s.converge_timeout, Duration::from_secs(20));
        assert_eq!(s.bugs.get("skip-reclaim"), Some(&Invariant::NoOrphan));
        assert_eq!(s.start().nodes, 3);
        assert_eq!(s.start().cpu, "1");
        assert_eq!(s.start().memory, "2Gi");
        let steps: Vec<&Step> = s.steps.iter().map(|l| &l.step).collect();
        assert_eq!(
            steps[3],
            &Step::Fault {
                fault: Fault::Kill9 { nodes: vec![2] },
                owner_of: None
            }
        );
        assert_eq!(s.steps[3].line, 13);
        assert_eq!(steps[4], &Step::Wait(Duration::from_millis(500)));
        assert_eq!(
            steps[5],
            &Step::Fault {
                fault: Fault::Partition {
                    groups: vec![vec![3], vec![1, 2]]
                },
                owner_of: None
            }
        );
        assert_eq!(steps[6], &Step::Heal);
        match steps[7] {
            Step::Repeat { times: 2, steps } => {
                assert_eq!(steps.len(), 2);
                assert_eq!(steps[1].line, 21);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            steps[8],
            &Step::Check(vec![Invariant::Capacity, Invariant::Majority])
        );
        assert_eq!(steps[9], &Step::Check(vec![]));
    }

    #[test]
    fn an_unknown_field_names_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: kill9, node: [2] }\n",
        );
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("node"), "{e}");
    }

    #[test]
    fn an_unknown_fault_kind_names_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: 1s }\n  - fault: { kind: explode, nodes: [2] }\n",
        );
        assert!(e.contains("line 5"), "{e}");
    }

    #[test]
    fn a_node_out_of_range_names_the_line_and_the_range() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: 1s }\n  - fault: { kind: kill9, nodes: [4] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 5: fault kill9: node 4 does not exist (nodes are numbered 1 to 3)"
        );
    }

    #[test]
    fn a_field_the_fault_kind_does_not_take_is_refused() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: kill9, nodes: [1], rate: 0.5 }\n",
        );
        assert_eq!(e, "scenario t.yaml line 4: fault kill9 does not take rate");
    }

    #[test]
    fn a_bad_duration_names_its_line() {
        let e = parse_err("name: x\nsteps:\n  - start: { nodes: 3 }\n  - wait: { for: soon }\n");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("soon"), "{e}");
    }

    #[test]
    fn owner_of_aims_a_fault_at_a_service_and_excludes_nodes() {
        let s = parse_ok(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: partition, owner_of: leader }\n",
        );
        assert!(matches!(&s.steps[1].step, Step::Fault { owner_of: Some(o), .. } if o == "leader"));
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: kill9, owner_of: leader, nodes: [2] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault kill9: owner_of leader picks the nodes; drop nodes/groups"
        );
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 5 }\n  - fault: { kind: loss, owner_of: leader, rate: 0.1 }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault loss does not take owner_of"
        );
    }

    #[test]
    fn start_must_come_first() {
        let e = parse_err("name: x\nsteps:\n  - heal\n  - start: { nodes: 3 }\n");
        assert_eq!(
            e,
            "scenario t.yaml line 3: the first step must be `start: { nodes: N }`"
        );
        let e = parse_err("name: x\nsteps:\n  - start: { nodes: 3 }\n  - start: { nodes: 3 }\n");
        assert_eq!(
            e,
            "scenario t.yaml line 4: start must be the first step, and only once"
        );
    }

    #[test]
    fn a_node_in_two_partition_groups_is_refused() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - fault: { kind: partition, groups: [[1, 2], [2, 3]] }\n",
        );
        assert_eq!(
            e,
            "scenario t.yaml line 4: fault partition: node 2 is in two groups"
        );
    }

    #[test]
    fn a_deploy_whose_spec_has_no_name_is_refused_with_its_line() {
        let e = parse_err(
            "name: x\nsteps:\n  - start: { nodes: 3 }\n  - deploy: { spec: 'replicas: 2' }\n",
        );
        assert!(e.starts_with("scenario t.yaml line 4: deploy:"), "{e}");
    }

    #[test]
    fn every_shipped_scenario_parses() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut count = 0;
        for entry in std::fs::read_dir(&dir).expect("chaos/scenarios exists") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "yaml") {
                load(&path).unwrap_or_else(|e| panic!("{e}"));
                count += 1;
            }
        }
        assert!(count >= 12, "only {count} scenarios");
    }
}
