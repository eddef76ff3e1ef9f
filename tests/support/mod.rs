//! Helpers for tests that run the real `shoal` binary: agents in temp data dirs on 127.0.0.1,
//! and the CLI against them, over the one fleet harness (`shoal::harness`). Where the harness
//! returns an error, these helpers panic with the agent's log: a test stops at the first thing
//! that went wrong. Every process started here is killed when its guard drops.
#![allow(dead_code)]

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use shoal::harness::{self, fleet::TempRoot, procs};

pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    harness::free_port().unwrap()
}

/// How long `stop` waits for an agent to exit on SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// One agent process: the harness's agent, with methods that panic on failure. Its fields
/// (`dir`, `api`, `log`, `p2p_port`) are the harness agent's.
pub struct Agent(pub harness::Agent);

impl Deref for Agent {
    type Target = harness::Agent;
    fn deref(&self) -> &harness::Agent {
        &self.0
    }
}

impl DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut harness::Agent {
        &mut self.0
    }
}

impl Agent {
    /// Prepares an agent with its own data dir (not started).
    pub fn new(root: &Path, name: &str, extra: &[&str]) -> Agent {
        let args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let mut a = harness::Agent::new(Path::new(shoal_bin()), root, name, &args).unwrap();
        a.launch
            .env
            .insert("SHOAL_LOG".into(), "info,shoal=debug".into());
        Agent(a)
    }

    pub fn multiaddr(&self) -> String {
        self.0.multiaddr()
    }

    pub fn start(&mut self) {
        assert!(!self.0.is_running(), "already running");
        self.0.spawn().expect("spawn shoal agent");
        self.wait_ready();
    }

    /// Waits until the API answers `status`.
    pub fn wait_ready(&mut self) {
        if let Err(e) = self.0.wait_ready() {
            panic!(
                "agent in {} did not become ready: {e}\n--- agent log ---\n{}",
                self.dir.display(),
                self.log_text()
            );
        }
    }

    pub fn log_text(&self) -> String {
        self.0.log_text()
    }

    pub fn pid(&self) -> u32 {
        self.0.pid().expect("running")
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(&mut self) {
        if let Err(e) = self.0.stop(STOP_TIMEOUT) {
            panic!("agent did not exit on SIGTERM ({e})\n{}", self.log_text());
        }
    }

    /// SIGKILL (power loss of the agent; its instances keep running).
    pub fn kill9(&mut self) {
        self.0.kill9();
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.0.cli().output(args).expect("run shoal")
    }

    /// Runs a CLI command that must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "shoal {args:?} failed: {}\n--- agent log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_text()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Pids of the instances this agent's process driver recorded.
    pub fn instance_pids(&self) -> Vec<u32> {
        self.0.instance_pids()
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout` (a correctness bound,
/// not a performance assertion).
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    match harness::poll(what, timeout, Duration::from_millis(100), f) {
        Ok(v) => v,
        Err(_) => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Whether a process runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    procs::alive(pid)
}

/// A plain HTTP GET to 127.0.0.1; returns the status line.
pub fn http_get(endpoint: &str) -> Option<String> {
    use std::io::{Read, Write};
    let port = endpoint.rsplit(':').next()?;
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("127.0.0.1:{port}").parse().ok()?,
        Duration::from_secs(2),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    text.lines()
        .next()
        .map(|l| l.to_string())
        .filter(|l| l.starts_with("HTTP/"))
}

/// Kills every process still running from `pids` (test cleanup).
pub fn kill_all(pids: &[u32]) {
    procs::kill_all(pids);
}

/// A fleet of agents on 127.0.0.1 joined through the first one.
pub struct Fleet {
    /// Fields drop in order: the agents (and their instances) go before their folder.
    pub agents: Vec<Agent>,
    pub key: PathBuf,
    pub config: PathBuf,
    pub root: TempRoot,
}

impl Fleet {
    /// Starts `n` agents; the first creates the cluster key, the others join through it.
    pub fn start(n: usize, extra: &[&str]) -> Fleet {
        let root = TempRoot::new("shoal-test-").unwrap();
        let key = root.path().join("cluster.key");
        if let Err(e) = harness::keygen(Path::new(shoal_bin()), &key) {
            panic!("keygen: {e}");
        }
        // A more patient failure detector than the LAN preset: these agents are debug builds
        // sharing two cores with the test suite, and a scheduling stall is not a death. The
        // LAN preset's own figures are measured by `shoal-chaos measure` on release builds.
        let config = root.path().join("agent.toml");
        std::fs::write(
            &config,
            "[swim]\nprobe_period_ms = 500\nprobe_rtt_ms = 300\nsuspect_to_down_ms = 3000\n",
        )
        .unwrap();
        let mut fleet = Fleet {
            root,
            agents: Vec::new(),
            key,
            config,
        };
        for _ in 0..n {
            fleet.add(extra);
        }
        fleet.wait_members(n);
        fleet
    }

    /// Adds and starts one more agent joined through the first.
    pub fn add(&mut self, extra: &[&str]) -> usize {
        let i = self.agents.len();
        let mut args: Vec<String> = vec![
            "--runtime".into(),
            "process".into(),
            "--cluster-key".into(),
            self.key.display().to_string(),
            "--config".into(),
            self.config.display().to_string(),
        ];
        if let Some(seed) = self.agents.first() {
            args.push("--seed".into());
            args.push(seed.multiaddr());
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut a = Agent::new(self.root.path(), &format!("n{i}"), &refs);
        a.start();
        self.agents.push(a);
        i
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.agents.len())
            .filter(|i| self.agents[*i].is_running())
            .collect()
    }

    pub fn id(&self, i: usize) -> String {
        self.status(i).node
    }

    /// `shoal status` of agent `i`, typed.
    pub fn status(&self, i: usize) -> shoal::node::api::StatusView {
        match self.agents[i].0.cli().status() {
            Ok(s) => s,
            Err(e) => panic!("{e}\n--- agent log ---\n{}", self.agents[i].log_text()),
        }
    }

    /// Waits until every running agent lists `n` alive members.
    pub fn wait_members(&self, n: usize) {
        let clis: Vec<_> = self
            .running()
            .iter()
            .map(|i| self.agents[*i].0.cli())
            .collect();
        if let Err(e) = harness::fleet::wait_alive(
            &clis,
            n,
            Duration::from_secs(60),
            Duration::from_millis(100),
        ) {
            panic!("{e}");
        }
    }

    /// The state of node `id` as agent `i` sees it.
    pub fn state_of(&self, i: usize, id: &str) -> Option<(String, u64)> {
        let nodes = match self.agents[i].0.cli().nodes() {
            Ok(n) => n,
            Err(e) => panic!("{e}\n--- agent log ---\n{}", self.agents[i].log_text()),
        };
        nodes
            .into_iter()
            .find(|x| x.id == id)
            .map(|x| (x.state, x.incarnation))
    }

    /// Waits until every running agent reports the same state digest; returns it.
    pub fn wait_same_digest(&self) -> String {
        wait_for(
            "identical digests on every live node",
            Duration::from_secs(90),
            || {
                let digests: Vec<String> = self
                    .running()
                    .iter()
                    .map(|i| self.status(*i).digest)
                    .collect();
                digests
                    .windows(2)
                    .all(|w| w[0] == w[1])
                    .then(|| digests[0].clone())
            },
        )
    }

    /// `ps` rows of a service as agent `i` sees them.
    pub fn ps(&self, i: usize, service: &str) -> Vec<serde_json::Value> {
        self.agents[i]
            .json(&["ps", service])
            .as_array()
            .unwrap()
            .clone()
    }
}

/// Live instance processes of `service` (read from the process table: the truth, whatever the
/// agents say), as (slot, epoch, pid). One per instance: the process driver starts each in a
/// session of its own, so only session leaders count (a `partition: majority` instance is its
/// `shoal lease-run` supervisor plus the command it runs, in one session).
pub fn instance_processes(service: &str) -> Vec<(u32, u64, u32)> {
    let mut found: Vec<(u32, u64, u32)> = procs::instances_of(service)
        .into_iter()
        .filter(|i| i.is_leader())
        .map(|i| (i.slot, i.epoch, i.pid))
        .collect();
    found.sort();
    found
}

/// A unique service name for a test (so leftovers of other runs never count).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

/// Writes a spec file and returns its path.
pub fn spec_file(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(format!("{name}.yaml"));
    std::fs::write(&p, body).unwrap();
    p.display().to_string()
}

/// Writes the spec of a `sleep` service with `replicas` small replicas (10m CPU, 8Mi), plus
/// `extra` YAML lines, and returns its path.
pub fn sleep_service(dir: &Path, name: &str, replicas: u32, extra: &str) -> String {
    spec_file(
        dir,
        name,
        &format!(
            "name: {name}\ncommand: [sleep, '100000']\nreplicas: {replicas}\nresources: {{cpu: 10m, memory: 8Mi}}\n{extra}"
        ),
    )
}

/// A plain HTTP/1.1 POST with a bearer token to 127.0.0.1; returns the whole response.
pub fn http_post(api: &str, path: &str, token: &str, body: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {api}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        token.trim(),
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf
}
