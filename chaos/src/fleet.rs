//! The fleet: real `shoal agent` processes, one per node namespace, each with its own data dir
//! and log file; the `shoal` CLI run inside a node's namespace to query it; the agent's
//! test-only fault hook reached over HTTP from inside the namespace.
//!
//! Agents are started and queried through the one fleet harness (`shoal::harness`): this file
//! says which namespace, addresses, seeds and flags each node gets, and the harness's launch
//! hook enters the namespace with `setns` between fork and exec (what `ip netns exec` does for
//! the network, without its extra process). Agents get their own session so a Ctrl-C on the
//! terminal reaches only the harness, which then tears everything down. Dropping the `Fleet`
//! kills every agent and every process in its namespaces and deletes the namespaces.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use shoal::harness::{AgentLaunch, HarnessError, Hook, cli::AgentCli};

use crate::model::{AgentState, Res};
use crate::net::TestNet;
use crate::scenario::StartArgs;

pub const API: &str = "127.0.0.1:7800";
pub const PEER_PORT: u16 = 7801;

/// Loss, delay and duplication on one node, applied through netem or the agent's fault hook.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LinkFaults {
    #[serde(skip_serializing_if = "is_zero_f")]
    pub drop_rate: f64,
    #[serde(skip_serializing_if = "is_zero_u")]
    pub delay_ms: u64,
    /// Sent only when set: an agent whose hook has no duplication refuses the field.
    #[serde(skip_serializing_if = "is_zero_f")]
    pub duplicate_rate: f64,
}

fn is_zero_f(v: &f64) -> bool {
    *v == 0.0
}
fn is_zero_u(v: &u64) -> bool {
    *v == 0
}

impl LinkFaults {
    /// Whether nothing is injected.
    pub fn is_clear(&self) -> bool {
        *self == LinkFaults::default()
    }
    /// `tc qdisc ... netem` arguments.
    pub fn netem_args(&self) -> Vec<String> {
        let mut a = Vec::new();
        if self.delay_ms > 0 {
            a.extend(["delay".to_string(), format!("{}ms", self.delay_ms)]);
        }
        if self.drop_rate > 0.0 {
            a.extend(["loss".to_string(), format!("{}%", self.drop_rate * 100.0)]);
        }
        if self.duplicate_rate > 0.0 {
            a.extend([
                "duplicate".to_string(),
                format!("{}%", self.duplicate_rate * 100.0),
            ]);
        }
        a
    }
}

/// One node of the fleet.
pub struct FleetNode {
    pub node: usize,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub env: BTreeMap<String, String>,
    pub child: Option<Child>,
    pub state: AgentState,
    pub id: Option<String>,
    pub clock_offset_ms: i64,
    pub link: LinkFaults,
    pub capacity: Res,
}

/// What a query needs to reach a node, copied out so queries never hold the fleet's lock.
#[derive(Clone)]
pub struct Target {
    pub node: usize,
    pub state: AgentState,
    pub id: Option<String>,
    pub data_dir: PathBuf,
    pub ns: Arc<File>,
    pub capacity: Res,
}

pub struct Fleet {
    pub shoal: PathBuf,
    pub net: TestNet,
    pub key: PathBuf,
    pub work: PathBuf,
    pub start: StartArgs,
    pub nodes: Vec<FleetNode>,
    pub ns_files: Vec<Arc<File>>,
}

impl Fleet {
    /// Makes the network, the cluster key and the node folders; starts no agent yet.
    pub fn create(
        shoal: &Path,
        start: &StartArgs,
        extra_env: &BTreeMap<String, String>,
        logs: &Path,
        tag: u32,
    ) -> anyhow::Result<Fleet> {
        let net = TestNet::create(start.nodes, tag)?;
        let work = std::env::temp_dir().join(format!("{}work", net.prefix));
        std::fs::create_dir_all(&work)
            .with_context(|| format!("cannot create {}", work.display()))?;
        std::fs::create_dir_all(logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let key = work.join("cluster.key");
        match shoal::harness::keygen(shoal, &key) {
            Ok(()) => {}
            Err(e @ HarnessError::Spawn { .. }) => return Err(e.into()),
            Err(e) => {
                // An agent without `keygen` still reads the libp2p swarm.key format.
                write_swarm_key(&key).with_context(|| {
                    format!("{e}, and the harness could not write the key itself")
                })?;
            }
        }
        let capacity = Res {
            cpu_millis: crate::model::parse_cpu(&serde_json::Value::String(start.cpu.clone()))
                .with_context(|| format!("start: cpu {:?} cannot be read", start.cpu))?,
            memory_bytes: crate::model::parse_memory_str(&start.memory)
                .with_context(|| format!("start: memory {:?} cannot be read", start.memory))?,
        };
        let mut nodes = Vec::new();
        for i in 1..=start.nodes {
            let mut env = start.env.clone();
            env.extend(extra_env.clone());
            if let Some(e) = start.node_env.get(&i) {
                env.extend(e.clone());
            }
            nodes.push(FleetNode {
                node: i,
                data_dir: work.join(format!("n{i}")),
                log: logs.join(format!("n{i}.log")),
                env,
                child: None,
                state: AgentState::Stopped,
                id: None,
                clock_offset_ms: 0,
                link: LinkFaults::default(),
                capacity,
            });
        }
        let ns_files = net
            .nodes
            .iter()
            .map(|n| n.fd.try_clone().map(Arc::new))
            .collect::<Result<Vec<_>, _>>()
            .context("cannot duplicate a namespace handle")?;
        Ok(Fleet {
            shoal: shoal.to_path_buf(),
            net,
            key,
            work,
            start: start.clone(),
            nodes,
            ns_files,
        })
    }

    pub fn node(&mut self, i: usize) -> &mut FleetNode {
        &mut self.nodes[i - 1]
    }

    pub fn targets(&self) -> Vec<Target> {
        self.nodes
            .iter()
            .map(|n| Target {
                node: n.node,
                state: n.state,
                id: n.id.clone(),
                data_dir: n.data_dir.clone(),
                ns: self.ns_files[n.node - 1].clone(),
                capacity: n.capacity,
            })
            .collect()
    }

    /// Namespace inode → node number.
    pub fn namespaces(&self) -> BTreeMap<u64, usize> {
        self.net
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.inode, i + 1))
            .collect()
    }

    fn peer_addr(&self, i: usize) -> String {
        format!("/ip4/{}/tcp/{PEER_PORT}", self.net.node(i).addr)
    }

    /// Starts node `i`'s agent. The first start of node 1 founds the cluster; every other start
    /// names the other nodes as seeds.
    pub fn spawn(&mut self, i: usize, first_start: bool) -> anyhow::Result<()> {
        let seeds: Vec<String> = if first_start && i == 1 {
            Vec::new()
        } else if first_start {
            vec![self.peer_addr(1)]
        } else {
            (1..=self.nodes.len())
                .filter(|&j| j != i)
                .map(|j| self.peer_addr(j))
                .collect()
        };
        let listen = self.peer_addr(i);
        let start = self.start.clone();
        let shoal = self.shoal.clone();
        let key = self.key.clone();
        let ns = self.ns_files[i - 1].clone();
        let n = self.node(i);
        let mut launch = AgentLaunch::new(&shoal, &n.data_dir, API, &listen, &n.log);
        launch.runtime = Some("process".into());
        launch.cluster_key = Some(key);
        launch.seeds = seeds;
        launch.args = vec![
            "--cpu".into(),
            start.cpu.clone(),
            "--memory".into(),
            start.memory.clone(),
            "--test-faults".into(),
        ];
        for (k, v) in &start.labels {
            launch.args.extend(["--label".into(), format!("{k}={v}")]);
        }
        if let Some(p) = &start.profile {
            launch.args.extend(["--profile".into(), p.clone()]);
        }
        if n.clock_offset_ms != 0 {
            launch
                .args
                .push(format!("--test-clock-offset-ms={}", n.clock_offset_ms));
        }
        launch.clear_shoal_env = true;
        // Plain logs in the log file.
        launch.env.insert("NO_COLOR".into(), "1".into());
        launch.env.extend(n.env.clone());
        launch.hook = Hook {
            namespace: Some(ns),
            new_session: true,
        };
        let child = launch.spawn()?;
        n.child = Some(child);
        n.state = AgentState::Running;
        Ok(())
    }

    /// Sends a signal to node `i`'s agent (not its instances).
    pub fn signal(&mut self, i: usize, sig: i32) {
        if let Some(c) = &self.node(i).child {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(c.id() as i32, sig) };
        }
    }

    /// kill -9 of the agent, reaped.
    pub fn kill9(&mut self, i: usize) {
        let n = self.node(i);
        if let Some(mut c) = n.child.take() {
            // SAFETY: as above.
            unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
            let _ = c.kill();
            let _ = c.wait();
        }
        n.state = AgentState::Stopped;
    }

    /// Power loss: the agent and everything in its namespace.
    pub fn kill9_with_instances(&mut self, i: usize) {
        self.kill9(i);
        crate::net::kill_namespace_processes(self.net.node(i).inode);
    }

    /// Whether node `i`'s agent has exited on its own (and reaps it).
    pub fn exited(&mut self, i: usize) -> Option<String> {
        let n = self.node(i);
        let c = n.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(status)) => {
                n.child = None;
                n.state = AgentState::Stopped;
                Some(status.to_string())
            }
            _ => None,
        }
    }

    /// Applies node `i`'s loss/delay/duplication: netem when the kernel has it, else the agent's
    /// fault hook.
    pub fn apply_link(&mut self, i: usize) -> anyhow::Result<()> {
        let link = self.nodes[i - 1].link.clone();
        if self.net.netem {
            if link.is_clear() {
                self.net.clear_netem(i);
                return Ok(());
            }
            return self.net.netem(i, &link.netem_args());
        }
        if self.nodes[i - 1].state != AgentState::Running && link.is_clear() {
            return Ok(());
        }
        let t = self.targets()[i - 1].clone();
        // `{}` clears the hook.
        let body = serde_json::to_string(&link).expect("plain struct");
        // A busy agent may miss one call; one without the hook never has it.
        let mut last = None;
        for attempt in 0..3 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500));
            }
            match post_fault_hook(&t, &body) {
                Ok(()) => return Ok(()),
                Err(e) if e.downcast_ref::<NoFaultHook>().is_some() => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("three attempts"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for i in 1..=self.nodes.len() {
            self.kill9(i);
        }
        // TestNet's own drop kills what is left in the namespaces and deletes them.
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Writes a random cluster key in libp2p's `swarm.key` format, mode 0600.
fn write_swarm_key(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut bytes = [0u8; 32];
    File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    write!(f, "/key/swarm/psk/1.0.0/\n/base16/\n{hex}\n")?;
    Ok(())
}

/// Runs `shoal ARGS -o json --api 127.0.0.1:7800 --data-dir DIR` inside the node's namespace
/// and returns stdout; kills it after `timeout` (a paused agent never answers).
pub fn cli(shoal: &Path, t: &Target, args: &[&str], timeout: Duration) -> anyhow::Result<String> {
    let mut a = args.to_vec();
    a.extend(["-o", "json"]);
    Ok(agent_cli(shoal, t, timeout).run(&a)?)
}

/// The harness's CLI for the node's agent: inside its namespace, without the caller's
/// `SHOAL_*` variables, killed after `timeout`.
pub fn agent_cli(shoal: &Path, t: &Target, timeout: Duration) -> AgentCli {
    let mut c = AgentCli::new(shoal, API, &t.data_dir);
    c.hook = Hook {
        namespace: Some(t.ns.clone()),
        new_session: false,
    };
    c.clear_shoal_env = true;
    c.timeout = Some(timeout);
    c.name = format!("n{}", t.node);
    c
}

/// `cli` and parse its JSON.
pub fn query<T: serde::de::DeserializeOwned>(
    shoal: &Path,
    t: &Target,
    args: &[&str],
    timeout: Duration,
) -> anyhow::Result<T> {
    let text = cli(shoal, t, args, timeout)?;
    serde_json::from_str(&text).with_context(|| {
        format!(
            "shoal {} on n{} printed unexpected JSON: {}",
            args.join(" "),
            t.node,
            text.chars().take(200).collect::<String>()
        )
    })
}

/// The agent has no test fault hook and the kernel no netem: loss and delay cannot be injected.
#[derive(Debug, thiserror::Error)]
#[error(
    "n{node}: the agent has no fault hook (POST /v1/test/faults answered 404) and the kernel has no netem, so loss and delay cannot be injected"
)]
pub struct NoFaultHook {
    pub node: usize,
}

/// `POST /v1/test/faults` with the node's API token, from a thread inside its namespace.
pub fn post_fault_hook(t: &Target, body: &str) -> anyhow::Result<()> {
    let token_path = t.data_dir.join("api-token");
    let token = std::fs::read_to_string(&token_path)
        .with_context(|| format!("cannot read {}", token_path.display()))?;
    let request = format!(
        "POST /v1/test/faults HTTP/1.1\r\nHost: {API}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    let ns = t.ns.clone();
    let node = t.node;
    let response = std::thread::spawn(move || -> anyhow::Result<String> {
        crate::net::enter(&ns).context("cannot enter the node's namespace")?;
        let addr = API.parse().expect("constant address");
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("cannot reach the API of n{node}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(request.as_bytes())?;
        let mut buf = Vec::new();
        let _ = s.take(64 * 1024).read_to_end(&mut buf);
        Ok(String::from_utf8_lossy(&buf).into_owned())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("fault hook thread panicked"))??;
    let status_line = response.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    match code {
        200..=299 => Ok(()),
        404 => Err(NoFaultHook { node }.into()),
        _ => {
            let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
            bail!("n{node}: POST /v1/test/faults answered {status_line:?}: {body}")
        }
    }
}

/// Finds the `shoal` binary: the given path, else `target/release/shoal`, else
/// `target/debug/shoal` (relative to the current folder and to the workspace).
pub fn find_shoal(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        if p.is_file() {
            return Ok(p.canonicalize()?);
        }
        bail!("--shoal {}: no such file", p.display());
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for base in [Path::new("."), workspace.as_path()] {
        let release = base.join("target/release/shoal");
        let debug = base.join("target/debug/shoal");
        if release.is_file() {
            let modified = |p: &Path| p.metadata().and_then(|m| m.modified()).ok();
            if debug.is_file() && modified(&debug) > modified(&release) {
                eprintln!(
                    "shoal-chaos: warning: {} is older than {}; pass --shoal to pick",
                    release.display(),
                    debug.display()
                );
            }
            return Ok(release.canonicalize()?);
        }
        if debug.is_file() {
            return Ok(debug.canonicalize()?);
        }
    }
    bail!(
        "no shoal binary in target/release or target/debug: build it with `cargo build --release --bin shoal` or pass --shoal PATH"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fault_hook_body_carries_only_what_is_set() {
        assert_eq!(serde_json::to_string(&LinkFaults::default()).unwrap(), "{}");
        let l = LinkFaults {
            drop_rate: 0.1,
            delay_ms: 0,
            duplicate_rate: 0.0,
        };
        assert_eq!(serde_json::to_string(&l).unwrap(), r#"{"drop_rate":0.1}"#);
        assert_eq!(l.netem_args(), vec!["loss".to_string(), "10%".to_string()]);
    }
}
