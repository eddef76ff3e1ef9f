//! Faults and node lifecycle in the simulator: starting nodes (with the seeds they join
//! through), crashing an agent or a whole machine, restarting, pausing and resuming. Each is a
//! change to `Sim`'s nodes at the current virtual time; none draws randomness.
//!
//! Network faults (partitions, one-way links, loss) are the simulated network's (`sim/net.rs`).
//! Carrying out outputs is `sim/deliver.rs`; the invariants are `sim/invariants.rs`.

use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{Sim, mix, node_config};
use crate::node::{Input, Node};

/// How a node goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The agent process dies; its instances keep running.
    Agent,
    /// The machine dies: the agent and every instance (their records stay, exited).
    Machine,
}

impl Sim {
    /// Starts every node, `stagger_ms` apart, each joining through the seeds (nodes 0, 1, 2).
    pub fn start_all(&mut self, stagger_ms: u64) {
        let seeds: Vec<usize> = (0..self.nodes.len().min(3)).collect();
        for i in 0..self.nodes.len() {
            self.run_until(self.now.plus(if i == 0 { 0 } else { stagger_ms }));
            self.boot(i, seeds.clone());
        }
    }

    /// Starts (or restarts) node `i`'s agent from its disk with the next incarnation, joining
    /// through `seeds`: the core dials them (`Output::Dial`) while it knows no peer, and a
    /// reachable seed makes it announce.
    pub fn boot(&mut self, i: usize, seeds: Vec<usize>) {
        assert!(!self.nodes[i].up(), "node {i} is already up");
        let incarnation = self.nodes[i].cfg.incarnation + 1;
        let seeds: Vec<usize> = seeds.into_iter().filter(|s| *s != i).collect();
        let cfg = node_config(&self.cfg, i, incarnation, &seeds);
        let rng = StdRng::seed_from_u64(mix(self.cfg.seed, i as u64, incarnation));
        let mut node = Node::new(cfg.clone(), self.nodes[i].disk.clone(), rng)
            .expect("simulated node config is valid");
        node.share_member_records(self.records.clone());
        let n = &mut self.nodes[i];
        n.cfg = cfg;
        n.node = Some(node);
        n.paused = false;
        n.inbox.clear();
        n.tick_at = None;
        n.down_at = None;
        n.first_swim_after_down = None;
        n.first_check_after_down = None;
        self.input(i, Input::Tick);
    }

    /// Node `i` goes down (see `Crash`).
    pub fn crash(&mut self, i: usize, how: Crash) {
        let n = &mut self.nodes[i];
        n.node = None;
        n.paused = false;
        n.inbox.clear();
        n.tick_at = None;
        n.down_at = Some(self.now);
        n.first_swim_after_down = None;
        n.first_check_after_down = None;
        if how == Crash::Machine {
            n.runtime.power_off();
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.forget(i);
        }
    }

    /// Restarts a crashed node with the fleet's seeds (nodes 0, 1, 2).
    pub fn restart(&mut self, i: usize) {
        let seeds: Vec<usize> = (0..self.nodes.len().min(3)).collect();
        self.boot(i, seeds);
    }

    /// Node `i` stops (SIGSTOP): its inputs wait until `resume`.
    pub fn pause(&mut self, i: usize) {
        if self.nodes[i].up() {
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if !self.nodes[i].paused {
            return;
        }
        self.nodes[i].paused = false;
        let inbox = std::mem::take(&mut self.nodes[i].inbox);
        for input in inbox {
            self.input(i, input);
        }
        self.input(i, Input::Tick);
    }
}
