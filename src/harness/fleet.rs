//! A fleet of agents on 127.0.0.1 joined through the first one, in a temporary root folder
//! that holds the cluster key, every data dir and every log, and is removed when the fleet
//! drops (after its agents and their instances are killed).
//!
//! It forms the fleet and answers "has it formed?"; what to do with it is the caller's.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::agent::Agent;
use super::cli::AgentCli;
use super::{HarnessError, keygen, poll};

/// A folder under the system's temp dir, removed (with everything in it) on drop.
pub struct TempRoot {
    path: PathBuf,
}

impl TempRoot {
    /// Makes `$TMPDIR/PREFIX<pid>-<n>-<nanos>`.
    pub fn new(prefix: &str) -> Result<TempRoot, HarnessError> {
        static N: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "{prefix}{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| HarnessError::io(format!("cannot create {}", path.display()), e))?;
        Ok(TempRoot { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// How many members `cli`'s agent lists as alive; `None` when it does not answer.
pub fn alive_members(cli: &AgentCli) -> Option<usize> {
    let nodes = cli.nodes().ok()?;
    Some(nodes.iter().filter(|n| n.state == "alive").count())
}

/// Waits until every agent in `clis` lists exactly `n` alive members, asking each every
/// `every`.
pub fn wait_alive(
    clis: &[AgentCli],
    n: usize,
    timeout: Duration,
    every: Duration,
) -> Result<(), HarnessError> {
    poll(
        &format!("{n} alive members everywhere"),
        timeout,
        every,
        || {
            clis.iter()
                .all(|c| alive_members(c) == Some(n))
                .then_some(())
        },
    )
}

/// Agents on 127.0.0.1 sharing one cluster key, each joined through the first.
pub struct Fleet {
    pub shoal: PathBuf,
    /// Fields drop in order: the agents (and their instances) go before their folder.
    pub agents: Vec<Agent>,
    pub key: PathBuf,
    pub root: TempRoot,
}

impl Fleet {
    /// A root folder and a cluster key; no agent yet.
    pub fn new(shoal: &Path, prefix: &str) -> Result<Fleet, HarnessError> {
        let root = TempRoot::new(prefix)?;
        let key = root.path().join("cluster.key");
        keygen(shoal, &key)?;
        Ok(Fleet {
            shoal: shoal.to_path_buf(),
            agents: Vec::new(),
            key,
            root,
        })
    }

    /// Prepares agent `n<i>` with the cluster key, `runtime`, the first agent as its seed (none
    /// for the first), `args` and `env`; starts nothing. Returns its index.
    pub fn prepare(
        &mut self,
        runtime: Option<&str>,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<usize, HarnessError> {
        let i = self.agents.len();
        let mut a = Agent::new(&self.shoal, self.root.path(), &format!("n{i}"), args)?;
        a.launch.runtime = runtime.map(str::to_owned);
        a.launch.cluster_key = Some(self.key.clone());
        if let Some(seed) = self.agents.first() {
            a.launch.seeds = vec![seed.multiaddr()];
        }
        for (k, v) in env {
            a.launch.env.insert((*k).to_owned(), (*v).to_owned());
        }
        self.agents.push(a);
        Ok(i)
    }

    /// Starts `n` process-driver agents one after the other (each waits for its API), then
    /// waits until every one lists `n` alive members.
    pub fn start(
        shoal: &Path,
        n: usize,
        runtime: &str,
        args: &[String],
        env: &[(&str, &str)],
    ) -> Result<Fleet, HarnessError> {
        let mut f = Fleet::new(shoal, "shoal-fleet-")?;
        for _ in 0..n {
            let i = f.prepare(Some(runtime), args, env)?;
            f.agents[i].poll_every = Duration::from_millis(50);
            f.agents[i].start()?;
        }
        f.wait_alive(n, Duration::from_secs(60))?;
        Ok(f)
    }

    /// The CLIs of the agents that run.
    pub fn running_clis(&self) -> Vec<AgentCli> {
        self.agents
            .iter()
            .filter(|a| a.is_running())
            .map(Agent::cli)
            .collect()
    }

    /// Waits until every running agent lists `n` alive members.
    pub fn wait_alive(&self, n: usize, timeout: Duration) -> Result<(), HarnessError> {
        wait_alive(&self.running_clis(), n, timeout, Duration::from_millis(200))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_temp_root_is_removed_with_what_it_holds() {
        let r = TempRoot::new("shoal-harness-test-").unwrap();
        let p = r.path().to_path_buf();
        std::fs::write(p.join("x"), "y").unwrap();
        let other = TempRoot::new("shoal-harness-test-").unwrap();
        assert_ne!(other.path(), p);
        drop(r);
        assert!(!p.exists());
    }
}
