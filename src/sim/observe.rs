//! What the simulator checks and measures as it runs: the safety invariants after a runtime
//! change, the liveness invariants after faults heal, and the reads and CPU clock that
//! benchmarks use. Nothing here changes the simulation or draws randomness; the invariants
//! themselves are `sim/invariants.rs`.

use std::collections::BTreeSet;

use super::Sim;
use super::invariants::{self, Violation};
use crate::spec::ServiceName;

impl Sim {
    /// Safety invariants that a change on machine `i` could break.
    pub(super) fn check_safety(&mut self, i: usize) {
        if !self.cfg.check_safety {
            return;
        }
        let n = &self.nodes[i];
        if let Some(v) = invariants::capacity(self.now, i, &n.runtime, n.cfg.capacity) {
            self.violations.push(v);
        }
        if n.runtime.live().any(|x| x.majority()) {
            let v = invariants::majority_once(self.now, self.nodes.iter().map(|n| &n.runtime));
            self.violations.extend(v);
        }
    }

    /// Liveness invariants (call after faults healed and a quiet period): exactly N per
    /// service, identical digests on live nodes, no acknowledged write lost.
    pub fn liveness(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if let Some(d) = invariants::same_digest(self.up().map(|(_, n)| n.state())) {
            v.push(d);
        }
        if let Some((_, first)) = self.up().next() {
            v.extend(invariants::exactly_n(
                first.state(),
                self.nodes.iter().map(|n| &n.runtime),
            ));
        }
        for (i, n) in self.up() {
            v.extend(invariants::no_write_lost(i, n.state(), &self.acked));
        }
        v
    }

    /// Live nodes that hold revision `revision` of `service`.
    pub fn holding(&self, service: &ServiceName, revision: &str) -> usize {
        self.up()
            .filter(|(_, n)| {
                n.state()
                    .services
                    .get(service)
                    .is_some_and(|e| e.history.values().any(|r| r.id.0 == revision))
            })
            .count()
    }

    /// Node ids that are up, as a set.
    pub fn up_set(&self) -> BTreeSet<usize> {
        self.up().map(|(i, _)| i).collect()
    }
}

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time it does not
/// count the moments the OS ran something else, which on a shared 2-core machine made the
/// busiest node's figure swing by half from run to run.
pub(super) fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
