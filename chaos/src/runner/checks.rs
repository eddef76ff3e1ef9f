//! Waiting and checking: the first fresh snapshot, waiting for quiet convergence (and measuring
//! how long it took), running the invariants a `check` step names, and recording what they
//! found. The invariants themselves are plain functions in `invariants/`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::result::Found;
use super::sampler::lock;
use super::{KEEP_VIOLATIONS, QUERY_TIMEOUT, QUIET_MS, Runner};
use crate::fleet::query;
use crate::interrupt;
use crate::invariants::{self as inv, Invariant, Violation};
use crate::model::{AgentState, HistoryObs, Snapshot};

impl Runner<'_> {
    /// The first snapshot the sampler started at or after `since_ms`.
    pub(super) fn fresh_snapshot(
        &self,
        since_ms: u64,
        timeout: Duration,
    ) -> anyhow::Result<Arc<Snapshot>> {
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
    pub(super) fn wait_converged(&mut self, timeout: Duration) -> anyhow::Result<()> {
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

    pub(super) fn check(&mut self, list: &[Invariant]) -> anyhow::Result<()> {
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
}
