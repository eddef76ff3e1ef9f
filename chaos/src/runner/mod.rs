//! Runs one scenario against a real fleet: executes its steps in order, and returns a
//! `ScenarioResult`. Everything it made is torn down when it returns, whatever happened (the
//! `Fleet` and `TestNet` Drop guards).
//!
//! This file holds the `Runner` (the state of one run), the step dispatch and the final
//! verdict. The steps themselves are in the submodules: starting the fleet (`start.rs`),
//! writes through the CLI (`writes.rs`), faults and their timeline bands (`faults.rs`), waiting
//! and checking (`checks.rs`), and the background sampler (`sampler.rs`). The result types are
//! in `result.rs`. It decides nothing about verdict presentation (`report.rs`) and holds no
//! invariant logic (`invariants/`).

mod checks;
mod faults;
mod result;
mod sampler;
mod start;
mod writes;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::fleet::Fleet;
use crate::interrupt;
use crate::invariants::Invariant;
use crate::model::{AckedWrite, Snapshot};
use crate::scenario::{Located, Scenario, Step};

use faults::Scope;
pub use result::{Band, Found, InvariantResult, ScenarioResult, Timeline, Verdict};
use sampler::{Shared, lock};

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

#[cfg(test)]
mod tests {
    use super::*;

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
