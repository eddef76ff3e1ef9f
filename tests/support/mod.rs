//! Helpers for tests that run the real `shoal` binary: agents in temp data dirs on 127.0.0.1,
//! and the CLI against them. Every process started here is killed when its guard drops.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn shoal_bin() -> &'static str {
    env!("CARGO_BIN_EXE_shoal")
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One agent process.
pub struct Agent {
    pub dir: PathBuf,
    pub api: String,
    pub p2p_port: u16,
    pub extra: Vec<String>,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Agent {
    /// Prepares an agent with its own data dir (not started).
    pub fn new(root: &Path, name: &str, extra: &[&str]) -> Agent {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        Agent {
            log: root.join(format!("{name}.log")),
            dir,
            api: format!("127.0.0.1:{}", free_port()),
            p2p_port: free_port(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            child: None,
        }
    }

    pub fn multiaddr(&self) -> String {
        format!("/ip4/127.0.0.1/tcp/{}", self.p2p_port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(shoal_bin())
            .arg("agent")
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--api")
            .arg(&self.api)
            .arg("--listen")
            .arg(self.multiaddr())
            .args(&self.extra)
            .env("SHOAL_LOG", "info,shoal=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn shoal agent");
        self.child = Some(child);
        self.wait_ready();
    }

    /// Waits until the API answers `status`.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.cli(&["status", "-o", "json"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "agent in {} did not become ready: {}\n--- agent log ---\n{}",
                    self.dir.display(),
                    String::from_utf8_lossy(&out.stderr),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGTERM, then wait for exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                if c.try_wait().unwrap().is_some() {
                    return;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("agent did not exit on SIGTERM\n{}", self.log_text());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// SIGKILL (power loss of the agent; its instances keep running).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Runs a CLI command against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(shoal_bin())
            .args(args)
            .arg("--api")
            .arg(&self.api)
            .arg("--data-dir")
            .arg(&self.dir)
            .output()
            .expect("run shoal")
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
}

impl Agent {
    /// Pids of the instances this agent's process driver recorded.
    pub fn instance_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        let Ok(dir) = std::fs::read_dir(self.dir.join("instances")) else {
            return pids;
        };
        for e in dir.flatten() {
            let Ok(text) = std::fs::read_to_string(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                continue;
            };
            if let Some(pid) = v["pid"].as_u64() {
                pids.push(pid as u32);
            }
        }
        pids
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // Instances outlive their agent by design; a test must not leave them behind.
        kill_all(&self.instance_pids());
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout` (a correctness bound,
/// not a performance assertion).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether a process runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let state = s
                .rsplit_once(')')
                .and_then(|(_, r)| r.trim_start().chars().next());
            !matches!(state, Some('Z') | Some('X'))
        }
        Err(_) => false,
    }
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
    for p in pids {
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
}

/// A fleet of agents on 127.0.0.1 joined through the first one.
pub struct Fleet {
    pub root: tempfile::TempDir,
    pub agents: Vec<Agent>,
    pub key: PathBuf,
    pub config: PathBuf,
}

impl Fleet {
    /// Starts `n` agents; the first creates the cluster key, the others join through it.
    pub fn start(n: usize, extra: &[&str]) -> Fleet {
        let root = tempfile::tempdir().unwrap();
        let key = root.path().join("cluster.key");
        let out = Command::new(shoal_bin())
            .args(["keygen", "--out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "keygen: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A more patient failure detector than the LAN preset: these agents are debug builds
        // sharing two cores with the test suite, and a scheduling stall is not a death. The
        // LAN preset's own figures are measured by scripts/measure.py on release builds.
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
            .filter(|i| self.agents[*i].child.is_some())
            .collect()
    }

    pub fn id(&self, i: usize) -> String {
        self.agents[i].json(&["status"])["node"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Waits until every running agent lists `n` alive members.
    pub fn wait_members(&self, n: usize) {
        wait_for(
            &format!("{n} alive members everywhere"),
            Duration::from_secs(60),
            || {
                self.running()
                    .iter()
                    .all(|i| {
                        let nodes = self.agents[*i].json(&["nodes"]);
                        nodes
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|x| x["state"] == "alive")
                            .count()
                            == n
                    })
                    .then_some(())
            },
        );
    }

    /// The state of node `id` as agent `i` sees it.
    pub fn state_of(&self, i: usize, id: &str) -> Option<(String, u64)> {
        let nodes = self.agents[i].json(&["nodes"]);
        nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .map(|x| {
                (
                    x["state"].as_str().unwrap().to_string(),
                    x["incarnation"].as_u64().unwrap(),
                )
            })
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
                    .map(|i| {
                        self.agents[*i].json(&["status"])["digest"]
                            .as_str()
                            .unwrap()
                            .to_string()
                    })
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
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if !alive(pid) || session_of(pid) != Some(pid) {
            continue;
        }
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let mut svc = None;
        let mut slot = None;
        let mut epoch = None;
        for kv in env.split(|b| *b == 0) {
            let kv = String::from_utf8_lossy(kv);
            if let Some(v) = kv.strip_prefix("SHOAL_SERVICE=") {
                svc = Some(v.to_string());
            } else if let Some(v) = kv.strip_prefix("SHOAL_SLOT=") {
                slot = v.parse().ok();
            } else if let Some(v) = kv.strip_prefix("SHOAL_EPOCH=") {
                epoch = v.parse().ok();
            }
        }
        if svc.as_deref() == Some(service)
            && let (Some(s), Some(ep)) = (slot, epoch)
        {
            found.push((s, ep, pid));
        }
    }
    found.sort();
    found
}

/// The session id of a process (field 6 of `/proc/<pid>/stat`).
fn session_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
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
