//! Centralised placement baselines for the simulator's placement-quality figure: online
//! best-fit (each request, in arrival order, goes to the open machine it leaves fullest) and
//! first-fit-decreasing (requests sorted largest first, each to the first machine it fits),
//! plus the volume lower bound no packing can beat.
//!
//! Pure functions over capacities and requests, two resources (CPU and memory), integers only.
//! They see every request at once and every machine's exact free capacity, which no node in
//! an auction does: that is what makes them the reference. They do not model constraints,
//! ports, spread labels or the same-service penalty of `placement::score`.

use crate::spec::Resources;

/// Why a baseline could not place every request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BaselineError {
    #[error(
        "request {index} (cpu {} millis, memory {} bytes) fits on no machine",
        needs.cpu_millis,
        needs.memory_bytes
    )]
    DoesNotFit { index: usize, needs: Resources },
}

/// Where a baseline put each request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packing {
    /// `machine[i]`: the index (into the capacities) of the machine hosting request `i`.
    pub machine: Vec<usize>,
    /// Machines hosting at least one request.
    pub machines_used: usize,
}

/// Free capacity of each machine as the packing goes.
struct Bins {
    capacity: Vec<Resources>,
    free: Vec<Resources>,
    used: Vec<bool>,
}

impl Bins {
    fn new(capacity: &[Resources]) -> Bins {
        Bins {
            capacity: capacity.to_vec(),
            free: capacity.to_vec(),
            used: vec![false; capacity.len()],
        }
    }

    fn fits(&self, m: usize, r: Resources) -> bool {
        self.free[m].cpu_millis >= r.cpu_millis && self.free[m].memory_bytes >= r.memory_bytes
    }

    /// Free capacity of machine `m` after placing `r`, as a sum of the two free fractions
    /// scaled by both capacities (so it compares across machines without floats).
    fn left_after(&self, m: usize, r: Resources) -> u128 {
        let (cap, free) = (self.capacity[m], self.free[m]);
        let cpu = u128::from(free.cpu_millis - r.cpu_millis) * u128::from(cap.memory_bytes);
        let mem = u128::from(free.memory_bytes - r.memory_bytes) * u128::from(cap.cpu_millis);
        cpu + mem
    }

    fn put(&mut self, m: usize, r: Resources) {
        self.free[m].cpu_millis -= r.cpu_millis;
        self.free[m].memory_bytes -= r.memory_bytes;
        self.used[m] = true;
    }

    fn count_used(&self) -> usize {
        self.used.iter().filter(|u| **u).count()
    }
}

/// Online best-fit: requests in the given order; each goes to the machine already in use that
/// it leaves with the least free capacity, or, when it fits on none of them, to the first
/// unused machine it fits on (machines are opened in index order).
pub fn best_fit(capacity: &[Resources], requests: &[Resources]) -> Result<Packing, BaselineError> {
    let mut bins = Bins::new(capacity);
    let mut machine = Vec::with_capacity(requests.len());
    for (index, r) in requests.iter().enumerate() {
        let used_best = (0..capacity.len())
            .filter(|m| bins.used[*m] && bins.fits(*m, *r))
            .min_by_key(|m| (bins.left_after(*m, *r), *m));
        let m = used_best
            .or_else(|| (0..capacity.len()).find(|m| !bins.used[*m] && bins.fits(*m, *r)))
            .ok_or(BaselineError::DoesNotFit { index, needs: *r })?;
        bins.put(m, *r);
        machine.push(m);
    }
    Ok(Packing {
        machines_used: bins.count_used(),
        machine,
    })
}

/// First-fit-decreasing: requests sorted by size (the larger of their two fractions of the
/// first machine's capacity, then CPU, then memory, largest first; ties keep arrival order),
/// each to the lowest-indexed machine it fits on.
pub fn first_fit_decreasing(
    capacity: &[Resources],
    requests: &[Resources],
) -> Result<Packing, BaselineError> {
    let reference = capacity.first().copied().unwrap_or_default();
    let size = |r: &Resources| {
        let cpu = u128::from(r.cpu_millis) * u128::from(reference.memory_bytes.max(1));
        let mem = u128::from(r.memory_bytes) * u128::from(reference.cpu_millis.max(1));
        (cpu.max(mem), r.cpu_millis, r.memory_bytes)
    };
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by_key(|i| std::cmp::Reverse(size(&requests[*i])));
    let mut bins = Bins::new(capacity);
    let mut machine = vec![0; requests.len()];
    for index in order {
        let r = requests[index];
        let m = (0..capacity.len())
            .find(|m| bins.fits(*m, r))
            .ok_or(BaselineError::DoesNotFit { index, needs: r })?;
        bins.put(m, r);
        machine[index] = m;
    }
    Ok(Packing {
        machines_used: bins.count_used(),
        machine,
    })
}

/// The volume lower bound for identical machines of `capacity`: no packing uses fewer
/// machines than the total demand of either resource divided by one machine's, rounded up.
pub fn lower_bound(capacity: Resources, requests: &[Resources]) -> usize {
    let cpu: u64 = requests.iter().map(|r| r.cpu_millis).sum();
    let mem: u64 = requests.iter().map(|r| r.memory_bytes).sum();
    let bound = |total: u64, cap: u64| {
        if total == 0 {
            0
        } else {
            total.div_ceil(cap.max(1)) as usize
        }
    };
    bound(cpu, capacity.cpu_millis).max(bound(mem, capacity.memory_bytes))
}

/// How evenly a spread placement uses the machines: `(min, max, mean × 1000)` instances per
/// machine over `machines` machines (those hosting nothing count as 0).
pub fn evenness(per_machine: &[usize], machines: usize) -> (usize, usize, usize) {
    let min = if per_machine.len() < machines {
        0
    } else {
        per_machine.iter().copied().min().unwrap_or(0)
    };
    let max = per_machine.iter().copied().max().unwrap_or(0);
    let total: usize = per_machine.iter().sum();
    (min, max, (total * 1000).checked_div(machines).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(cpu_millis: u64, memory_bytes: u64) -> Resources {
        Resources {
            cpu_millis,
            memory_bytes,
        }
    }

    fn machines(n: usize) -> Vec<Resources> {
        vec![r(10, 10); n]
    }

    #[test]
    fn best_fit_puts_each_request_where_it_leaves_least_room() {
        // 6 then 5 open two machines; 4 fits only on the first (leaving 0); 5 fits the second.
        let reqs = [r(6, 6), r(5, 5), r(4, 4), r(5, 5)];
        let p = best_fit(&machines(4), &reqs).unwrap();
        assert_eq!(p.machine, vec![0, 1, 0, 1]);
        assert_eq!(p.machines_used, 2);
    }

    #[test]
    fn best_fit_prefers_the_fuller_machine_over_the_first() {
        // After 6 on m0 and 7 on m1, a 3 fits both: best-fit picks m1 (leaves 0) where
        // first-fit would pick m0 (leaves 1).
        let reqs = [r(6, 6), r(7, 7), r(3, 3)];
        let p = best_fit(&machines(3), &reqs).unwrap();
        assert_eq!(p.machine, vec![0, 1, 1]);
        // A request that fits a machine in use never opens a new one.
        let reqs = [r(2, 2), r(7, 7), r(3, 3)];
        let p = best_fit(&machines(3), &reqs).unwrap();
        assert_eq!(p.machine, vec![0, 0, 1]);
    }

    #[test]
    fn first_fit_decreasing_packs_the_classic_example_optimally() {
        // Sizes 2,5,4,7,1,3,8 into bins of 10: FFD gives {8,2} {7,3} {5,4,1}: 3 bins, which
        // is the volume bound (30 / 10). Online best-fit in arrival order needs 4.
        let sizes = [2, 5, 4, 7, 1, 3, 8];
        let reqs: Vec<Resources> = sizes.iter().map(|s| r(*s, *s)).collect();
        let ffd = first_fit_decreasing(&machines(7), &reqs).unwrap();
        assert_eq!(ffd.machines_used, 3);
        assert_eq!(ffd.machine, vec![0, 2, 2, 1, 2, 1, 0]);
        assert_eq!(lower_bound(r(10, 10), &reqs), 3);
        let bf = best_fit(&machines(7), &reqs).unwrap();
        assert_eq!(bf.machines_used, 4);
    }

    #[test]
    fn both_resources_must_fit() {
        // CPU-heavy and memory-heavy requests pair up; two CPU-heavy ones never share.
        let reqs = [r(8, 1), r(8, 1), r(1, 8), r(1, 8)];
        let p = first_fit_decreasing(&machines(4), &reqs).unwrap();
        assert_eq!(p.machines_used, 2);
        let p = best_fit(&machines(4), &reqs).unwrap();
        assert_eq!(p.machine, vec![0, 1, 0, 1]);
        assert_eq!(lower_bound(r(10, 10), &reqs), 2);
    }

    #[test]
    fn a_request_larger_than_every_machine_is_an_error_not_a_panic() {
        let reqs = [r(1, 1), r(11, 1)];
        let err = best_fit(&machines(2), &reqs).unwrap_err();
        assert_eq!(
            err,
            BaselineError::DoesNotFit {
                index: 1,
                needs: r(11, 1)
            }
        );
        assert!(first_fit_decreasing(&machines(2), &reqs).is_err());
        assert!(best_fit(&[], &reqs).is_err());
        assert_eq!(best_fit(&[], &[]).unwrap().machines_used, 0);
    }

    #[test]
    fn evenness_counts_empty_machines_as_zero() {
        assert_eq!(evenness(&[2, 3], 3), (0, 3, 1666));
        assert_eq!(evenness(&[2, 2, 2], 3), (2, 2, 2000));
        assert_eq!(evenness(&[], 0), (0, 0, 0));
    }
}
