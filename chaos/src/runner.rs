//! Runs one scenario against a real fleet: executes its steps, samples the fleet every
//! ~500 ms in a background thread (process table plus `status`, `ps` and `nodes` of every
//! running agent), checks the invariants, measures detection, replacement and convergence, and
//! returns a `ScenarioResult`. Everything it made is torn down when it returns, whatever
//! happened (the `Fleet` and `TestNet` Drop guards).
//!
//! It decides nothing about verdict presentation (`report.rs`) and holds no invariant logic
//! (`invariants.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::fleet::{Fleet, Target, cli, query};
use crate::interrupt;
use crate::invariants::{self as inv, Invariant, Violation};
use crate::model::{
    AckedWrite, AgentState, Expected, HistoryObs, NodeObs, NodeSnap, PsObs, Snapshot, StatusObs,
    WriteObs, parse_specs,
};
use crate::scenario::{Fault, Located, Scenario, Step};

/// How long the fleet must stay converged, unchanged, to count as converged.
const QUIET_MS: u64 = 2_000;
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);
const API_TIMEOUT: Duration = Duration::from_secs(30);
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
/// Violations kept per invariant (the first ones; the count is kept in full).
const KEEP_VIOLATIONS: usize = 50;

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOpts {
    pub shoal: PathBuf,
    pub out: PathBuf,
    /// `SHOAL_TEST_BUGS` for every agent.
    pub bug: Option<String>,
    /// The invariant the bug must break (the verdict inverts).
    pub expect_fail: Option<Invariant>,
    /// Distinguishes fleets of one process in namespace names and folders.
    pub tag: u32,
    /// Printed with a failure so it can be run again.
    pub replay: Option<String>,
    /// How often the sampler takes a snapshot (~500 ms).
    pub sample_every: Duration,
}

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

/// What starts a timer the sampler stops.
#[derive(Clone, Debug)]
enum MeasureKind {
    /// Every running survivor shows every victim `down`.
    Detection { victims: Vec<String> },
    /// Exactly N again from the live nodes.
    Replacement,
}

#[derive(Clone, Debug)]
struct Measure {
    kind: MeasureKind,
    start_ms: u64,
    /// Nodes whose agent running again before the timer stops cancels it (a paused node that
    /// resumed was not replaced, it came back).
    cancel_if_back: Vec<usize>,
}

/// Safety violations seen so far (for de-duplication) and each with when it was first seen.
type Seen = (BTreeSet<Violation>, Vec<(u64, Violation)>);

/// State shared with the sampler thread.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    expected: Mutex<Expected>,
    latest: Mutex<Option<Arc<Snapshot>>>,
    series: Mutex<BTreeMap<String, Vec<(u64, u32)>>>,
    safety: Mutex<Seen>,
    measures: Mutex<Vec<Measure>>,
    detection: Mutex<Vec<u64>>,
    replacement: Mutex<Vec<u64>>,
    crashes: Mutex<Vec<String>>,
    samples: Mutex<u64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which band closes when.
#[derive(Clone, Debug, PartialEq)]
enum Scope {
    /// Closed by heal or recover.
    Net,
    /// Closed by link-up of this pair, heal or recover.
    Pair(usize, usize),
    /// Closed when this node's agent runs again.
    Node(usize),
    /// Open to the end.
    Run,
}

struct Runner<'a> {
    sc: &'a Scenario,
    opts: &'a RunOpts,
    t0: Instant,
    logs: PathBuf,
    fleet: Option<Arc<Mutex<Fleet>>>,
    shared: Arc<Shared>,
    sampler: Option<JoinHandle<()>>,
    acked: Vec<AckedWrite>,
    blocks: BTreeSet<(usize, usize)>,
    bands: Vec<Band>,
    open: Vec<(Scope, u64, String)>,
    marks: Vec<(u64, String)>,
    last_disruption_ms: u64,
    results: BTreeMap<Invariant, InvariantResult>,
    convergence_ms: Vec<u64>,
    line: u32,
    notes: Vec<String>,
    netem: bool,
    deploys: u32,
    evidence: Vec<Snapshot>,
}

/// Runs a scenario; never panics on fleet trouble, which becomes an `Error` verdict.
pub fn run(sc: &Scenario, opts: &RunOpts) -> ScenarioResult {
    let slug = match &opts.bug {
        Some(b) => format!("{}--bug-{b}", sc.name),
        None => sc.name.clone(),
    };
    let logs = opts.out.join(&slug);
    let _ = std::fs::remove_dir_all(&logs);
    let mut r = Runner {
        sc,
        opts,
        t0: Instant::now(),
        logs,
        fleet: None,
        shared: Arc::new(Shared::default()),
        sampler: None,
        acked: Vec::new(),
        blocks: BTreeSet::new(),
        bands: Vec::new(),
        open: Vec::new(),
        marks: Vec::new(),
        last_disruption_ms: 0,
        results: Invariant::ALL
            .iter()
            .map(|&i| (i, InvariantResult::default()))
            .collect(),
        convergence_ms: Vec::new(),
        line: 0,
        notes: Vec::new(),
        netem: false,
        deploys: 0,
        evidence: Vec::new(),
    };
    let mut outcome = r.steps(&sc.steps);
    if outcome.is_ok()
        && !matches!(sc.steps.last().map(|l| &l.step), Some(Step::Check(v)) if v.is_empty())
    {
        // Every scenario ends with every invariant checked after convergence.
        r.line = 0;
        outcome = r
            .step(&Step::WaitConverged(None))
            .and_then(|_| r.step(&Step::Check(Vec::new())));
    }
    r.finish(outcome)
}

impl Runner<'_> {
    fn now_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn fleet(&self) -> anyhow::Result<MutexGuard<'_, Fleet>> {
        match &self.fleet {
            Some(f) => Ok(lock(f)),
            None => bail!("no fleet: the scenario has not started one"),
        }
    }

    fn shoal(&self) -> &Path {
        &self.opts.shoal
    }

    fn say(&self, what: impl std::fmt::Display) {
        eprintln!(
            "[{:>7.1}s] {}: {what}",
            self.now_ms() as f64 / 1000.0,
            self.sc.name
        );
    }

    fn steps(&mut self, steps: &[Located]) -> anyhow::Result<()> {
        for l in steps {
            interrupt::check()?;
            if l.line > 0 {
                self.line = l.line;
            }
            self.say(&l.step);
            self.step(&l.step).with_context(|| match l.line {
                0 => format!("step {}", l.step),
                n => format!("line {n}: {}", l.step),
            })?;
            if let Some(crash) = lock(&self.shared.crashes).first() {
                bail!("{crash}");
            }
        }
        Ok(())
    }

    fn step(&mut self, step: &Step) -> anyhow::Result<()> {
        match step {
            Step::Start(args) => self.start(args),
            Step::Deploy { spec, via } => self.deploy(spec, *via),
            Step::Scale {
                service,
                replicas,
                via,
            } => {
                let writes = self.write(&["scale", service, &replicas.to_string()], *via)?;
                let mut e = lock(&self.shared.expected);
                let m = e.entry(service.clone()).or_default();
                m.replicas = *replicas;
                for w in &writes {
                    let latest = m.latest;
                    m.resources.insert(w.revision.clone(), latest);
                }
                drop(e);
                self.ack(writes, false);
                Ok(())
            }
            Step::Rm { service, via } => {
                let writes = self.write(&["rm", service], *via)?;
                lock(&self.shared.expected)
                    .entry(service.clone())
                    .or_default()
                    .deleted = true;
                self.ack(writes, true);
                Ok(())
            }
            Step::Fault { fault, owner_of } => match owner_of {
                None => self.fault(fault),
                Some(service) => {
                    let aimed = self.aim(fault, service)?;
                    self.say(format!(
                        "aimed at the owner of {service}: {}",
                        aimed.label()
                    ));
                    self.fault(&aimed)
                }
            },
            Step::Heal => self.heal(),
            Step::Recover => self.recover(),
            Step::Wait(d) => interrupt::sleep(*d),
            Step::WaitConverged(t) => self.wait_converged(t.unwrap_or(self.sc.converge_timeout)),
            Step::Check(list) => self.check(list),
            Step::Repeat { times, steps } => {
                for _ in 0..*times {
                    self.steps(steps)?;
                }
                Ok(())
            }
        }
    }

    // ---- the fleet ----

    fn start(&mut self, args: &crate::scenario::StartArgs) -> anyhow::Result<()> {
        if let Ok(load) = std::fs::read_to_string("/proc/loadavg") {
            let cores = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let load: String = load
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            self.notes.push(format!(
                "host load average at start: {load} on {cores} cores"
            ));
        }
        let removed = crate::net::sweep();
        if !removed.is_empty() {
            self.notes.push(format!(
                "removed stale namespaces of earlier runs: {}",
                removed.join(" ")
            ));
        }
        let mut env = BTreeMap::new();
        if let Some(b) = &self.opts.bug {
            env.insert("SHOAL_TEST_BUGS".to_string(), b.clone());
        }
        let fleet = Fleet::create(self.shoal(), args, &env, &self.logs, self.opts.tag)?;
        self.netem = fleet.net.netem;
        if !self.netem {
            self.notes.push(
                "tc netem is not available in this kernel: loss, delay and duplication go through the agents' fault hook"
                    .into(),
            );
        }
        self.fleet = Some(Arc::new(Mutex::new(fleet)));
        self.fleet()?.spawn(1, true)?;
        self.wait_api(1)?;
        for i in 2..=args.nodes {
            self.fleet()?.spawn(i, true)?;
        }
        for i in 2..=args.nodes {
            self.wait_api(i)?;
        }
        self.wait_formed(args.nodes)?;
        self.start_sampler();
        Ok(())
    }

    fn target(&self, i: usize) -> anyhow::Result<Target> {
        Ok(self.fleet()?.targets()[i - 1].clone())
    }

    /// Waits for node `i`'s API without holding the fleet's lock while querying.
    fn wait_api(&mut self, i: usize) -> anyhow::Result<StatusObs> {
        let deadline = Instant::now() + API_TIMEOUT;
        loop {
            interrupt::check()?;
            {
                let mut f = self.fleet()?;
                if let Some(status) = f.exited(i) {
                    bail!(
                        "the agent of n{i} exited ({status}) before its API answered; see {}",
                        f.nodes[i - 1].log.display()
                    );
                }
            }
            let t = self.target(i)?;
            match query::<StatusObs>(self.shoal(), &t, &["status"], QUERY_TIMEOUT) {
                Ok(st) => {
                    self.fleet()?.node(i).id = Some(st.node.clone());
                    return Ok(st);
                }
                Err(e) if Instant::now() > deadline => {
                    bail!("the API of n{i} did not answer within {API_TIMEOUT:?}: {e:#}");
                }
                Err(_) => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every node sees every node alive.
    fn wait_formed(&mut self, n: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + FORM_TIMEOUT;
        loop {
            interrupt::check()?;
            let mut views = Vec::new();
            let targets = self.fleet()?.targets();
            for t in targets {
                let alive = query::<StatusObs>(self.shoal(), &t, &["status"], QUERY_TIMEOUT)
                    .map(|s| s.members.alive)
                    .unwrap_or(0);
                views.push(alive);
            }
            if views.iter().all(|&a| a == n) {
                self.say(format!("fleet of {n} formed"));
                return Ok(());
            }
            if Instant::now() > deadline {
                let seen: Vec<String> = views
                    .iter()
                    .enumerate()
                    .map(|(i, a)| format!("n{} sees {a} alive", i + 1))
                    .collect();
                bail!(
                    "the fleet did not form within {FORM_TIMEOUT:?}: {} (does this agent join fleets?)",
                    seen.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn start_sampler(&mut self) {
        let fleet = self.fleet.clone().expect("started");
        let shared = self.shared.clone();
        let shoal = self.opts.shoal.clone();
        let t0 = self.t0;
        let every = self.opts.sample_every;
        self.sampler = Some(std::thread::spawn(move || {
            sampler(fleet, shared, shoal, t0, every)
        }));
    }

    // ---- writes ----

    /// The node whose API takes a write: `via`, else the first running one.
    fn via(&self, via: Option<usize>) -> anyhow::Result<Target> {
        let targets = self.fleet()?.targets();
        match via {
            Some(i) => {
                let t = targets[i - 1].clone();
                if t.state != AgentState::Running {
                    bail!("cannot write through n{i}: its agent is {:?}", t.state);
                }
                Ok(t)
            }
            None => targets
                .into_iter()
                .find(|t| t.state == AgentState::Running)
                .context("no running agent to write through"),
        }
    }

    fn write(&mut self, args: &[&str], via: Option<usize>) -> anyhow::Result<Vec<WriteObs>> {
        let t = self.via(via)?;
        let text = cli(self.shoal(), &t, args, WRITE_TIMEOUT)?;
        let writes: Vec<WriteObs> = serde_json::from_str::<Vec<WriteObs>>(&text)
            .or_else(|_| serde_json::from_str::<WriteObs>(&text).map(|w| vec![w]))
            .with_context(|| format!("shoal {} printed unexpected JSON: {text}", args.join(" ")))?;
        let at = self.now_ms();
        // Convergence is measured from the last fault or write.
        self.last_disruption_ms = at;
        let what = match args {
            ["deploy", ..] => "deploy".to_string(),
            _ => args.join(" "),
        };
        self.marks.push((at, format!("{what} via n{}", t.node)));
        Ok(writes)
    }

    fn ack(&mut self, writes: Vec<WriteObs>, deleted: bool) {
        let at_ms = self.now_ms();
        for w in writes {
            self.acked.push(AckedWrite {
                at_ms,
                service: w.service,
                revision: w.revision,
                changed: w.changed,
                deleted,
            });
        }
    }

    fn deploy(&mut self, spec: &str, via: Option<usize>) -> anyhow::Result<()> {
        let infos = parse_specs(spec)?;
        self.deploys += 1;
        let path = self
            .fleet()?
            .work
            .join(format!("deploy-{}.yaml", self.deploys));
        std::fs::write(&path, spec).with_context(|| format!("cannot write {}", path.display()))?;
        let path_s = path.to_string_lossy().into_owned();
        let writes = self.write(&["deploy", "-f", &path_s], via)?;
        {
            let mut e = lock(&self.shared.expected);
            for w in &writes {
                let Some(info) = infos.iter().find(|i| i.name == w.service) else {
                    continue;
                };
                let m = e.entry(w.service.clone()).or_default();
                m.replicas = info.replicas;
                m.majority = info.majority;
                m.deleted = false;
                m.latest = info.resources;
                m.resources.insert(w.revision.clone(), info.resources);
            }
        }
        self.ack(writes, false);
        Ok(())
    }

    // ---- faults ----

    fn open_band(&mut self, scope: Scope, label: String) {
        let at = self.now_ms();
        self.open.push((scope, at, label));
    }

    fn close_bands(&mut self, pred: impl Fn(&Scope) -> bool) {
        let now = self.now_ms();
        let (close, keep): (Vec<_>, Vec<_>) = self.open.drain(..).partition(|(s, _, _)| pred(s));
        self.open = keep;
        for (_, start_ms, label) in close {
            self.bands.push(Band {
                start_ms,
                end_ms: now.max(start_ms + 1),
                label,
            });
        }
    }

    fn measure(&self, kind: MeasureKind, cancel_if_back: &[usize]) {
        lock(&self.shared.measures).push(Measure {
            kind,
            start_ms: self.now_ms(),
            cancel_if_back: cancel_if_back.to_vec(),
        });
    }

    fn victims(&self, nodes: &[usize]) -> anyhow::Result<Vec<String>> {
        let f = self.fleet()?;
        Ok(nodes
            .iter()
            .filter_map(|&i| f.nodes[i - 1].id.clone())
            .collect())
    }

    fn block_pair(&mut self, a: usize, b: usize, both: bool) -> anyhow::Result<()> {
        let f = self.fleet()?;
        f.net.block(a, b)?;
        drop(f);
        self.blocks.insert((a, b));
        if both {
            self.fleet()?.net.block(b, a)?;
            self.blocks.insert((b, a));
        }
        Ok(())
    }

    fn fault(&mut self, fault: &Fault) -> anyhow::Result<()> {
        let label = fault.label();
        self.last_disruption_ms = self.now_ms();
        let n = self.fleet()?.nodes.len();
        match fault {
            Fault::Kill9 { nodes } | Fault::Kill9WithInstances { nodes } => {
                let victims = self.victims(nodes)?;
                let with = matches!(fault, Fault::Kill9WithInstances { .. });
                for &i in nodes {
                    let mut f = self.fleet()?;
                    if with {
                        f.kill9_with_instances(i);
                    } else {
                        f.kill9(i);
                    }
                }
                self.measure(MeasureKind::Detection { victims }, nodes);
                self.measure(MeasureKind::Replacement, nodes);
                for &i in nodes {
                    self.open_band(Scope::Node(i), label.clone());
                }
            }
            Fault::Pause { nodes } => {
                let victims = self.victims(nodes)?;
                for &i in nodes {
                    let mut f = self.fleet()?;
                    f.signal(i, libc::SIGSTOP);
                    f.node(i).state = AgentState::Paused;
                }
                self.measure(MeasureKind::Detection { victims }, nodes);
                self.measure(MeasureKind::Replacement, nodes);
                for &i in nodes {
                    self.open_band(Scope::Node(i), label.clone());
                }
            }
            Fault::Resume { nodes } => {
                for &i in nodes {
                    self.resume(i)?;
                }
            }
            Fault::Restart { nodes, graceful } => {
                for &i in nodes {
                    self.restart(i, *graceful, &label)?;
                }
            }
            Fault::Skew { nodes, offset_ms } => {
                for &i in nodes {
                    self.fleet()?.node(i).clock_offset_ms = *offset_ms;
                    self.restart(i, true, &label)?;
                    self.open_band(Scope::Run, format!("skew {offset_ms}ms n{i}"));
                }
            }
            Fault::Partition { groups } => {
                for (gi, g) in groups.iter().enumerate() {
                    for h in &groups[gi + 1..] {
                        for &a in g {
                            for &b in h {
                                self.block_pair(a, b, true)?;
                            }
                        }
                    }
                }
                self.open_band(Scope::Net, label);
            }
            Fault::OneWay { from, to } => {
                for &a in from {
                    for &b in to {
                        self.block_pair(a, b, false)?;
                    }
                }
                self.open_band(Scope::Net, label);
            }
            Fault::Bridge => {
                for (a, b) in crate::net::bridge_cuts(n) {
                    self.block_pair(a, b, true)?;
                }
                self.open_band(Scope::Net, label);
            }
            Fault::Isolate { nodes } => {
                let victims = self.victims(nodes)?;
                for &a in nodes {
                    for b in (1..=n).filter(|b| !nodes.contains(b)) {
                        self.block_pair(a, b, true)?;
                    }
                }
                self.measure(MeasureKind::Detection { victims }, &[]);
                self.open_band(Scope::Net, label);
            }
            Fault::Link { nodes, up } => {
                let (a, b) = (nodes[0], nodes[1]);
                if *up {
                    let f = self.fleet()?;
                    f.net.unblock(a, b)?;
                    f.net.unblock(b, a)?;
                    drop(f);
                    self.blocks.remove(&(a, b));
                    self.blocks.remove(&(b, a));
                    self.close_bands(|s| *s == Scope::Pair(a, b));
                } else {
                    self.block_pair(a, b, true)?;
                    self.open_band(Scope::Pair(a, b), label);
                }
            }
            Fault::Loss { nodes, rate } | Fault::Duplicate { nodes, rate } => {
                let dup = matches!(fault, Fault::Duplicate { .. });
                for &i in nodes {
                    let mut f = self.fleet()?;
                    if dup {
                        f.node(i).link.duplicate_rate = *rate;
                    } else {
                        f.node(i).link.drop_rate = *rate;
                    }
                    let r = f.apply_link(i);
                    drop(f);
                    self.injected(i, &label, r)?;
                }
                self.open_band(Scope::Net, label);
            }
            Fault::KillInstance { service, slot } => {
                let snap = self.fresh_snapshot(self.now_ms(), Duration::from_secs(30))?;
                let victims: Vec<u32> = snap
                    .procs
                    .iter()
                    .filter(|p| &p.service == service && p.slot == *slot)
                    .map(|p| p.pid)
                    .collect();
                if victims.is_empty() {
                    bail!("no instance of {service}/{slot} runs");
                }
                for pid in victims {
                    // The instance is a session (and process group) led by `pid`.
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                self.measure(MeasureKind::Replacement, &[]);
                self.bands.push(Band {
                    start_ms: self.now_ms(),
                    end_ms: self.now_ms() + 200,
                    label,
                });
            }
            Fault::Delay { nodes, delay_ms } => {
                for &i in nodes {
                    let mut f = self.fleet()?;
                    f.node(i).link.delay_ms = *delay_ms;
                    let r = f.apply_link(i);
                    drop(f);
                    self.injected(i, &label, r)?;
                }
                self.open_band(Scope::Net, label);
            }
        }
        Ok(())
    }

    /// A fault hook or netem call that failed: fatal when loss and delay cannot be injected at
    /// all, else noted (an agent too busy to answer its hook is itself a finding).
    fn injected(&mut self, node: usize, what: &str, r: anyhow::Result<()>) -> anyhow::Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(e) if e.downcast_ref::<crate::fleet::NoFaultHook>().is_some() => Err(e),
            Err(e) => {
                self.say(format!("could not apply {what} on n{node}: {e:#}"));
                self.notes.push(format!(
                    "line {}: could not apply {what} on n{node}: {e:#}",
                    self.line
                ));
                Ok(())
            }
        }
    }

    /// The fault aimed at the node that runs slot 0 of `service` (from the process table of
    /// running agents, in a fresh snapshot).
    fn aim(&self, fault: &Fault, service: &str) -> anyhow::Result<Fault> {
        let snap = self.fresh_snapshot(self.now_ms(), Duration::from_secs(30))?;
        let owner = snap
            .procs
            .iter()
            .find(|p| {
                p.service == service && p.slot == 0 && snap.agent(p.node) == AgentState::Running
            })
            .map(|p| p.node)
            .with_context(|| format!("no running instance of {service}/0 to aim at"))?;
        let n = snap.nodes.len();
        Ok(match fault {
            Fault::Kill9 { .. } => Fault::Kill9 { nodes: vec![owner] },
            Fault::Kill9WithInstances { .. } => Fault::Kill9WithInstances { nodes: vec![owner] },
            Fault::Pause { .. } => Fault::Pause { nodes: vec![owner] },
            Fault::Isolate { .. } => Fault::Isolate { nodes: vec![owner] },
            Fault::Partition { .. } => {
                // The owner and its next neighbours, as large a minority as there is.
                let side: Vec<usize> = (0..(n - 1) / 2).map(|k| (owner - 1 + k) % n + 1).collect();
                let mut side = if side.is_empty() { vec![owner] } else { side };
                side.sort_unstable();
                let rest = (1..=n).filter(|i| !side.contains(i)).collect();
                Fault::Partition {
                    groups: vec![side, rest],
                }
            }
            other => bail!("fault {} cannot be aimed with owner_of", other.label()),
        })
    }

    fn resume(&mut self, i: usize) -> anyhow::Result<()> {
        let mut f = self.fleet()?;
        if f.nodes[i - 1].state == AgentState::Paused {
            f.signal(i, libc::SIGCONT);
            f.node(i).state = AgentState::Running;
            // A heal while it was paused could not reach its fault hook: bring the hook in
            // line with what the harness wants now.
            if !f.net.netem {
                f.apply_link(i)?;
            }
        }
        drop(f);
        self.last_disruption_ms = self.now_ms();
        self.close_bands(|s| *s == Scope::Node(i));
        Ok(())
    }

    /// Stops node `i` (SIGTERM or kill -9), starts it again on the same data dir, and waits for
    /// its API.
    fn restart(&mut self, i: usize, graceful: bool, label: &str) -> anyhow::Result<()> {
        let start = self.now_ms();
        let child = {
            let mut f = self.fleet()?;
            let c = f.node(i).child.take();
            f.node(i).state = AgentState::Stopped;
            c
        };
        if let Some(c) = child {
            stop_child(c, graceful);
        }
        self.start_again(i)?;
        self.bands.push(Band {
            start_ms: start,
            end_ms: self.now_ms().max(start + 1),
            label: label.to_string(),
        });
        Ok(())
    }

    fn start_again(&mut self, i: usize) -> anyhow::Result<()> {
        self.fleet()?.spawn(i, false)?;
        self.wait_api(i)?;
        let mut f = self.fleet()?;
        if !f.nodes[i - 1].link.is_clear() && !f.net.netem {
            f.apply_link(i)?;
        }
        drop(f);
        self.last_disruption_ms = self.now_ms();
        self.close_bands(|s| *s == Scope::Node(i));
        Ok(())
    }

    fn heal(&mut self) -> anyhow::Result<()> {
        let blocks: Vec<_> = std::mem::take(&mut self.blocks).into_iter().collect();
        let mut failed = Vec::new();
        {
            let mut f = self.fleet()?;
            for (a, b) in blocks {
                f.net.unblock(a, b)?;
            }
            for i in 1..=f.nodes.len() {
                if !f.nodes[i - 1].link.is_clear() {
                    f.node(i).link = Default::default();
                    // A paused or stopped agent cannot take the hook; it is set again when it
                    // resumes, and a restarted one starts clean.
                    let r = f.apply_link(i);
                    if f.nodes[i - 1].state == AgentState::Running {
                        failed.push((i, r));
                    }
                }
            }
        }
        for (i, r) in failed {
            self.injected(i, "heal", r)?;
        }
        self.last_disruption_ms = self.now_ms();
        self.close_bands(|s| matches!(s, Scope::Net | Scope::Pair(..)));
        Ok(())
    }

    fn recover(&mut self) -> anyhow::Result<()> {
        self.heal()?;
        let states: Vec<AgentState> = self.fleet()?.nodes.iter().map(|n| n.state).collect();
        for (k, s) in states.into_iter().enumerate() {
            match s {
                AgentState::Paused => self.resume(k + 1)?,
                AgentState::Stopped => self.start_again(k + 1)?,
                AgentState::Running => {}
            }
        }
        Ok(())
    }

    // ---- waiting and checking ----

    /// The first snapshot the sampler started at or after `since_ms`.
    fn fresh_snapshot(&self, since_ms: u64, timeout: Duration) -> anyhow::Result<Arc<Snapshot>> {
        let deadline = Instant::now() + timeout;
        loop {
            interrupt::check()?;
            if let Some(s) = lock(&self.shared.latest).clone()
                && s.at_ms >= since_ms
            {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("the sampler took no snapshot for {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until every snapshot over `QUIET_MS` is converged with the same digest
    /// (quiescence: a single converged snapshot can be a coincidence in the middle of a merge).
    /// The convergence time is when that quiet stretch began.
    fn wait_converged(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = self.now_ms();
        let deadline = Instant::now() + timeout;
        let mut since = start;
        // The first snapshot of the current converged run, and its digest.
        let mut first: Option<(u64, String)> = None;
        loop {
            let snap = self.fresh_snapshot(since, Duration::from_secs(30))?;
            since = snap.at_ms + 1;
            let expected = lock(&self.shared.expected).clone();
            if inv::converged(&expected, &snap) {
                let digest = snap
                    .live()
                    .find_map(|n| n.status.as_ref().map(|s| s.digest.clone()))
                    .unwrap_or_default();
                match &first {
                    Some((at, d)) if *d == digest && snap.at_ms >= at + QUIET_MS => {
                        let at = *at;
                        let from = self.last_disruption_ms.min(start);
                        let took = at.saturating_sub(from);
                        self.convergence_ms.push(took);
                        self.say(format!("converged {took} ms after the last fault or write"));
                        self.record(
                            Invariant::Convergence,
                            inv::convergence(Some(at - start), timeout.as_millis() as u64),
                        );
                        return Ok(());
                    }
                    Some((_, d)) if *d == digest => {}
                    _ => first = Some((snap.at_ms, digest)),
                }
            } else {
                first = None;
            }
            if Instant::now() > deadline {
                let waited = self.now_ms() - start;
                self.say(format!("not converged after {waited} ms"));
                let why: Vec<String> = inv::digest(&snap)
                    .into_iter()
                    .chain(inv::exactly_n(&expected, &snap))
                    .chain(inv::no_orphan(&snap))
                    .take(3)
                    .map(|v| v.to_string())
                    .collect();
                self.notes.push(format!(
                    "line {}: not converged after {waited} ms: {}",
                    self.line,
                    why.join("; ")
                ));
                self.record(
                    Invariant::Convergence,
                    inv::convergence(None, timeout.as_millis() as u64),
                );
                return Ok(());
            }
        }
    }

    fn record(&mut self, which: Invariant, violations: Vec<Violation>) {
        let at_ms = self.now_ms();
        let line = self.line;
        let r = self.results.entry(which).or_default();
        r.checked = true;
        for v in violations {
            r.count += 1;
            if r.violations.len() < KEEP_VIOLATIONS {
                r.violations.push(Found {
                    at_ms,
                    line,
                    text: v.to_string(),
                    violation: v,
                });
            }
        }
    }

    fn check(&mut self, list: &[Invariant]) -> anyhow::Result<()> {
        let all = list.is_empty();
        let wants = |i: Invariant| all || list.contains(&i);
        let snap = self.fresh_snapshot(self.now_ms(), Duration::from_secs(30))?;
        let expected = lock(&self.shared.expected).clone();
        let before: usize = self.results.values().map(|r| r.count).sum();
        if wants(Invariant::ExactlyN) {
            self.record(Invariant::ExactlyN, inv::exactly_n(&expected, &snap));
        }
        if wants(Invariant::NoOrphan) {
            self.record(Invariant::NoOrphan, inv::no_orphan(&snap));
        }
        if wants(Invariant::Capacity) {
            self.record(Invariant::Capacity, inv::capacity(&expected, &snap));
        }
        if wants(Invariant::Digest) {
            self.record(Invariant::Digest, inv::digest(&snap));
        }
        if wants(Invariant::Majority) {
            self.record(Invariant::Majority, inv::majority_once(&expected, &snap));
        }
        if wants(Invariant::NoLostWrite) {
            let histories = self.histories()?;
            self.record(
                Invariant::NoLostWrite,
                inv::no_lost_write(&self.acked, &histories),
            );
        }
        if wants(Invariant::Convergence) {
            self.results
                .entry(Invariant::Convergence)
                .or_default()
                .checked = true;
        }
        let after: usize = self.results.values().map(|r| r.count).sum();
        if after > before && self.evidence.len() < 3 {
            self.evidence.push((*snap).clone());
        }
        if after > before {
            self.say(format!("check found {} violation(s)", after - before));
        }
        Ok(())
    }

    /// `history SERVICE` of every acknowledged service on every running node.
    fn histories(&self) -> anyhow::Result<BTreeMap<usize, BTreeMap<String, Vec<HistoryObs>>>> {
        let services: BTreeSet<&str> = self.acked.iter().map(|w| w.service.as_str()).collect();
        let mut out = BTreeMap::new();
        let targets = self.fleet()?.targets();
        for t in targets {
            if t.state != AgentState::Running {
                continue;
            }
            let mut per = BTreeMap::new();
            let mut answered = true;
            for &s in &services {
                match query::<Vec<HistoryObs>>(self.shoal(), &t, &["history", s], QUERY_TIMEOUT) {
                    Ok(h) => {
                        per.insert(s.to_string(), h);
                    }
                    // The node knows no such service: no history.
                    Err(e) if format!("{e:#}").contains("no service") => {}
                    Err(e) => {
                        self.say(format!("history {s} on n{}: {e:#}", t.node));
                        answered = false;
                    }
                }
            }
            // A node that did not answer proves nothing either way.
            if answered {
                out.insert(t.node, per);
            }
        }
        Ok(out)
    }

    fn finish(mut self, outcome: anyhow::Result<()>) -> ScenarioResult {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.sampler.take() {
            let _ = h.join();
        }
        let end_ms = self.now_ms();
        self.close_bands(|_| true);
        // Safety violations the sampler saw all along.
        let safety = std::mem::take(&mut lock(&self.shared.safety).1);
        let sampled = *lock(&self.shared.samples) > 0;
        for (at_ms, v) in safety {
            let r = self.results.entry(v.invariant()).or_default();
            r.count += 1;
            if r.violations.len() < KEEP_VIOLATIONS {
                r.violations.push(Found {
                    at_ms,
                    line: 0,
                    text: v.to_string(),
                    violation: v,
                });
            }
        }
        if sampled {
            for i in [Invariant::Capacity, Invariant::Majority] {
                self.results.entry(i).or_default().checked = true;
            }
        }
        let mut error = outcome.err().map(|e| format!("{e:#}"));
        let crashes = lock(&self.shared.crashes).clone();
        if error.is_none() && !crashes.is_empty() {
            error = Some(crashes.join("; "));
        }
        // Tear down now, so the result is only returned once nothing is left running.
        self.fleet = None;
        let failed: Vec<Invariant> = self
            .results
            .iter()
            .filter(|(_, r)| r.failed())
            .map(|(i, _)| *i)
            .collect();
        let verdict = match (&error, self.opts.expect_fail) {
            (Some(_), _) => Verdict::Error,
            (None, Some(want)) if failed.contains(&want) => Verdict::Pass,
            (None, Some(_)) => Verdict::Fail,
            (None, None) if failed.is_empty() => Verdict::Pass,
            (None, None) => Verdict::Fail,
        };
        let timeline = Timeline {
            end_ms,
            bands: self.bands.clone(),
            series: std::mem::take(&mut lock(&self.shared.series)),
            marks: self.marks.clone(),
        };
        ScenarioResult {
            name: self.sc.name.clone(),
            description: self.sc.description.clone(),
            bug: self.opts.bug.clone(),
            expect_fail: self.opts.expect_fail,
            verdict,
            error,
            invariants: std::mem::take(&mut self.results),
            detection_ms: lock(&self.shared.detection).clone(),
            replacement_ms: lock(&self.shared.replacement).clone(),
            convergence_ms: self.convergence_ms.clone(),
            duration_ms: end_ms,
            netem: self.netem,
            writes: self.acked.clone(),
            notes: self.notes.clone(),
            replay: self.opts.replay.clone(),
            logs: self.logs.display().to_string(),
            evidence: std::mem::take(&mut self.evidence),
            timeline,
        }
    }
}

/// Stops a child agent: SIGTERM and up to 10 s, or kill -9 at once.
fn stop_child(mut c: std::process::Child, graceful: bool) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
    if graceful {
        // SAFETY: as above.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Takes one snapshot: the process table, and `status`, `ps` (and `nodes` when `with_nodes`:
/// only detection timers need it) of every running agent, all queries in parallel so a hung
/// agent costs one timeout. A paused or stopped agent is not asked.
fn snapshot(
    shoal: &Path,
    targets: &[Target],
    namespaces: &BTreeMap<u64, usize>,
    at_ms: u64,
    with_nodes: bool,
) -> Snapshot {
    let nodes: Vec<NodeSnap> = std::thread::scope(|s| {
        let handles: Vec<_> = targets
            .iter()
            .map(|t| {
                let running = t.state == AgentState::Running;
                let status = running.then(|| {
                    s.spawn(move || query::<StatusObs>(shoal, t, &["status"], QUERY_TIMEOUT))
                });
                let ps = running.then(|| {
                    s.spawn(move || query::<Vec<PsObs>>(shoal, t, &["ps"], QUERY_TIMEOUT))
                });
                let nodes = (running && with_nodes).then(|| {
                    s.spawn(move || query::<Vec<NodeObs>>(shoal, t, &["nodes"], QUERY_TIMEOUT))
                });
                (t, status, ps, nodes)
            })
            .collect();
        handles
            .into_iter()
            .map(|(t, status, ps, nodes)| {
                let mut errors = Vec::new();
                let status = joined(status, &mut errors);
                let ps = joined(ps, &mut errors);
                let nodes = joined(nodes, &mut errors);
                NodeSnap {
                    node: t.node,
                    id: t.id.clone(),
                    agent: t.state,
                    capacity: t.capacity,
                    status,
                    ps,
                    nodes,
                    error: (!errors.is_empty()).then(|| errors.join("; ")),
                }
            })
            .collect()
    });
    let raw = crate::procs::scan(namespaces);
    Snapshot {
        at_ms,
        nodes,
        procs: crate::procs::instances(&raw, namespaces),
    }
}

/// The answer of a query thread, if one was asked; its error goes to `errors`.
fn joined<T>(
    h: Option<std::thread::ScopedJoinHandle<'_, anyhow::Result<T>>>,
    errors: &mut Vec<String>,
) -> Option<T> {
    match h.map(|h| h.join().expect("query thread")) {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            errors.push(format!("{e:#}"));
            None
        }
        None => None,
    }
}

/// The sampler: a snapshot every ~500 ms until told to stop. Checks the safety invariants on
/// each, stops measurement timers, and notices agents that exit on their own.
fn sampler(
    fleet: Arc<Mutex<Fleet>>,
    shared: Arc<Shared>,
    shoal: PathBuf,
    t0: Instant,
    every: Duration,
) {
    let namespaces = lock(&fleet).namespaces();
    while !shared.stop.load(Ordering::SeqCst) && !interrupt::interrupted() {
        let tick = Instant::now();
        let targets = {
            let mut f = lock(&fleet);
            for i in 1..=f.nodes.len() {
                if let Some(status) = f.exited(i) {
                    lock(&shared.crashes).push(format!(
                        "the agent of n{i} exited on its own ({status}); see {}",
                        f.nodes[i - 1].log.display()
                    ));
                }
            }
            f.targets()
        };
        let at_ms = t0.elapsed().as_millis() as u64;
        let with_nodes = lock(&shared.measures)
            .iter()
            .any(|m| matches!(m.kind, MeasureKind::Detection { .. }));
        let snap = snapshot(&shoal, &targets, &namespaces, at_ms, with_nodes);
        let expected = lock(&shared.expected).clone();
        {
            let mut safety = lock(&shared.safety);
            let found = inv::capacity(&expected, &snap)
                .into_iter()
                .chain(inv::majority_once(&expected, &snap));
            for v in found {
                if safety.0.insert(v.clone()) {
                    safety.1.push((at_ms, v));
                }
            }
        }
        {
            let mut series = lock(&shared.series);
            let mut counts: BTreeMap<&str, u32> =
                expected.keys().map(|k| (k.as_str(), 0)).collect();
            for p in &snap.procs {
                *counts.entry(p.service.as_str()).or_default() += 1;
            }
            for (s, c) in counts {
                series.entry(s.to_string()).or_default().push((at_ms, c));
            }
        }
        resolve_measures(&shared, &expected, &snap);
        *lock(&shared.latest) = Some(Arc::new(snap));
        *lock(&shared.samples) += 1;
        if let Some(rest) = every.checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

fn resolve_measures(shared: &Shared, expected: &Expected, snap: &Snapshot) {
    let mut measures = lock(&shared.measures);
    measures.retain(|m| {
        if snap.at_ms < m.start_ms {
            return true;
        }
        if m.cancel_if_back
            .iter()
            .any(|&n| snap.agent(n) == AgentState::Running)
        {
            return false;
        }
        let done = match &m.kind {
            MeasureKind::Detection { victims } => {
                let survivors: Vec<&NodeSnap> = snap
                    .live()
                    .filter(|n| n.id.as_ref().is_none_or(|id| !victims.contains(id)))
                    .collect();
                !survivors.is_empty()
                    && survivors.iter().all(|n| {
                        n.nodes.as_ref().is_some_and(|rows| {
                            victims
                                .iter()
                                .all(|v| rows.iter().any(|r| &r.id == v && r.state == "down"))
                        })
                    })
            }
            MeasureKind::Replacement => {
                snap.live().all(|n| n.ps.is_some()) && inv::exactly_n(expected, snap).is_empty()
            }
        };
        if done {
            let took = snap.at_ms - m.start_ms;
            match m.kind {
                MeasureKind::Detection { .. } => lock(&shared.detection).push(took),
                MeasureKind::Replacement => lock(&shared.replacement).push(took),
            }
        }
        !done
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ServiceModel, StatusObs};

    fn snap_with(agent2: AgentState, at_ms: u64) -> Snapshot {
        let node = |n: usize, agent: AgentState| NodeSnap {
            node: n,
            id: Some(format!("id{n}")),
            agent,
            capacity: Default::default(),
            status: Some(StatusObs::default()),
            ps: Some(Vec::new()),
            nodes: Some(vec![NodeObs {
                id: "id2".into(),
                state: "down".into(),
                incarnation: 1,
                capacity: Default::default(),
                allocated: Default::default(),
            }]),
            error: None,
        };
        Snapshot {
            at_ms,
            nodes: vec![node(1, AgentState::Running), node(2, agent2)],
            procs: Vec::new(),
        }
    }

    #[test]
    fn detection_stops_when_every_survivor_shows_the_victim_down() {
        let shared = Shared::default();
        lock(&shared.measures).push(Measure {
            kind: MeasureKind::Detection {
                victims: vec!["id2".into()],
            },
            start_ms: 1_000,
            cancel_if_back: vec![2],
        });
        resolve_measures(
            &shared,
            &Expected::new(),
            &snap_with(AgentState::Stopped, 2_500),
        );
        assert_eq!(*lock(&shared.detection), vec![1_500]);
        assert!(lock(&shared.measures).is_empty());
    }

    #[test]
    fn a_victim_back_before_its_replacement_cancels_the_timer() {
        let shared = Shared::default();
        lock(&shared.measures).push(Measure {
            kind: MeasureKind::Replacement,
            start_ms: 1_000,
            cancel_if_back: vec![2],
        });
        let expected = Expected::from([(
            "web".to_string(),
            ServiceModel {
                replicas: 1,
                ..ServiceModel::default()
            },
        )]);
        // Paused victim, nothing running yet: the timer keeps going.
        resolve_measures(&shared, &expected, &snap_with(AgentState::Paused, 1_500));
        assert_eq!(lock(&shared.measures).len(), 1);
        // The victim resumed before any replacement: nothing is recorded.
        resolve_measures(&shared, &expected, &snap_with(AgentState::Running, 2_000));
        assert!(lock(&shared.measures).is_empty());
        assert!(lock(&shared.replacement).is_empty());
    }

    /// The real thing, end to end: a one-node fleet in a namespace, a crash of an instance and
    /// a restart of the agent, then nothing left behind. Needs root and a built `shoal`; says
    /// why it did not run otherwise (on CI it must run).
    #[test]
    fn a_one_node_scenario_runs_end_to_end_and_leaves_nothing_behind() {
        let ci = std::env::var_os("CI").is_some();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!ci, "this test needs root on CI");
            eprintln!("skipped: needs root to create network namespaces");
            return;
        }
        // The binary `cargo test --workspace` builds (a release one may be stale).
        let shoal = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/shoal");
        if !shoal.is_file() {
            assert!(!ci, "no {}: build the workspace first", shoal.display());
            eprintln!("skipped: no {} (cargo build --bin shoal)", shoal.display());
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let sc = crate::scenario::load(&dir.join("instance-crash.yaml")).expect("scenario");
        let out = tempfile::tempdir().expect("tempdir");
        let opts = RunOpts {
            shoal,
            out: out.path().to_path_buf(),
            bug: None,
            expect_fail: None,
            tag: 9_100,
            replay: None,
            sample_every: Duration::from_millis(500),
        };
        let r = run(&sc, &opts);
        assert_eq!(r.error, None);
        assert_eq!(r.verdict, Verdict::Pass, "{:?}", r.failed());
        assert_eq!(r.replacement_ms.len(), 1, "the crash was measured");
        assert!(r.timeline.series.get("web").is_some_and(|s| !s.is_empty()));
        let prefix = format!("{}{}x9100-", crate::net::PREFIX, std::process::id());
        let left = crate::net::sh("ip", &["netns", "list"]).expect("ip netns list");
        assert!(!left.contains(&prefix), "namespaces left: {left}");
        assert!(!std::env::temp_dir().join(format!("{prefix}work")).exists());
    }
}
