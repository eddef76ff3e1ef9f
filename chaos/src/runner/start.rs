//! Starting the fleet: namespaces, agents spawned one by one, each API waited for, the fleet
//! formed, then the sampler started. Restarting a node after a fault is `faults.rs`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;

use super::sampler::sampler;
use super::{API_TIMEOUT, FORM_TIMEOUT, QUERY_TIMEOUT, Runner};
use crate::fleet::{Fleet, Target, query};
use crate::interrupt;
use crate::model::StatusObs;

impl Runner<'_> {
    pub(super) fn start(&mut self, args: &crate::scenario::StartArgs) -> anyhow::Result<()> {
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
    pub(super) fn wait_api(&mut self, i: usize) -> anyhow::Result<StatusObs> {
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
}
