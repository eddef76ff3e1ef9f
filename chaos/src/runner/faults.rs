//! Faults from outside: kills, pauses, restarts, clock skew, partitions and link faults, loss,
//! delay and duplication, and their undoing (`heal`, `recover`). Each fault opens a band on the
//! timeline that the step undoing it closes, and starts the detection and replacement timers
//! the sampler stops. Which fault a scenario asks for is `scenario/`; how a link is cut is
//! `net.rs`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::Runner;
use super::result::Band;
use super::sampler::{Measure, MeasureKind, lock};
use crate::model::AgentState;
use crate::scenario::Fault;

/// Which band closes when.
#[derive(Clone, Debug, PartialEq)]
pub(super) enum Scope {
    /// Closed by heal or recover.
    Net,
    /// Closed by link-up of this pair, heal or recover.
    Pair(usize, usize),
    /// Closed when this node's agent runs again.
    Node(usize),
    /// Open to the end.
    Run,
}

impl Runner<'_> {
    fn open_band(&mut self, scope: Scope, label: String) {
        let at = self.now_ms();
        self.open.push((scope, at, label));
    }

    pub(super) fn close_bands(&mut self, pred: impl Fn(&Scope) -> bool) {
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

    pub(super) fn fault(&mut self, fault: &Fault) -> anyhow::Result<()> {
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
    pub(super) fn aim(&self, fault: &Fault, service: &str) -> anyhow::Result<Fault> {
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

    pub(super) fn heal(&mut self) -> anyhow::Result<()> {
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

    pub(super) fn recover(&mut self) -> anyhow::Result<()> {
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
