//! The sampler: a background thread that snapshots the fleet every ~500 ms (process table plus
//! `status`, `ps` and `nodes` of every running agent), checks the safety invariants on every
//! snapshot, stops the detection and replacement timers, and notices agents that exit on their
//! own. It shares its findings with the runner through `Shared`; it runs no steps.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::QUERY_TIMEOUT;
use crate::fleet::{Fleet, Target, query};
use crate::interrupt;
use crate::invariants::{self as inv, Violation};
use crate::model::{AgentState, Expected, NodeObs, NodeSnap, PsObs, Snapshot, StatusObs};

/// What starts a timer the sampler stops.
#[derive(Clone, Debug)]
pub(super) enum MeasureKind {
    /// Every running survivor shows every victim `down`.
    Detection { victims: Vec<String> },
    /// Exactly N again from the live nodes.
    Replacement,
}

#[derive(Clone, Debug)]
pub(super) struct Measure {
    pub(super) kind: MeasureKind,
    pub(super) start_ms: u64,
    /// Nodes whose agent running again before the timer stops cancels it (a paused node that
    /// resumed was not replaced, it came back).
    pub(super) cancel_if_back: Vec<usize>,
}

/// Safety violations seen so far (for de-duplication) and each with when it was first seen.
pub(super) type Seen = (BTreeSet<Violation>, Vec<(u64, Violation)>);

/// State shared with the sampler thread.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) stop: AtomicBool,
    pub(super) expected: Mutex<Expected>,
    pub(super) latest: Mutex<Option<Arc<Snapshot>>>,
    pub(super) series: Mutex<BTreeMap<String, Vec<(u64, u32)>>>,
    pub(super) safety: Mutex<Seen>,
    pub(super) measures: Mutex<Vec<Measure>>,
    pub(super) detection: Mutex<Vec<u64>>,
    pub(super) replacement: Mutex<Vec<u64>>,
    pub(super) crashes: Mutex<Vec<String>>,
    pub(super) samples: Mutex<u64>,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
pub(super) fn sampler(
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
}
