//! One `shoal agent` on 127.0.0.1 with its own process: free ports, a data dir and a log file
//! under a root folder; start (and wait for the API), SIGTERM, kill -9, pause, resume, restart
//! with the same data dir; the CLI against it; its cost read from `/proc`.
//!
//! Dropping an [`Agent`] kills its process and the instances its process driver recorded:
//! instances outlive their agent by design, and a harness must not leave them behind.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use super::cli::AgentCli;
use super::launch::AgentLaunch;
use super::{HarnessError, free_port, procs};

/// How long `start` waits for the API to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One agent process on 127.0.0.1.
pub struct Agent {
    pub dir: PathBuf,
    /// `127.0.0.1:PORT` of the HTTP API.
    pub api: String,
    pub p2p_port: u16,
    pub log: PathBuf,
    /// How it is started (every start uses it unchanged).
    pub launch: AgentLaunch,
    /// How often `wait_ready` asks `status`.
    pub poll_every: Duration,
    child: Option<Child>,
}

impl Agent {
    /// Prepares an agent in `root/name` logging to `root/name.log`, with fresh ports and `args`
    /// after the address flags. Starts nothing.
    pub fn new(
        shoal: &Path,
        root: &Path,
        name: &str,
        args: &[String],
    ) -> Result<Agent, HarnessError> {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| HarnessError::io(format!("cannot create {}", dir.display()), e))?;
        let api = format!("127.0.0.1:{}", free_port()?);
        let p2p_port = free_port()?;
        let log = root.join(format!("{name}.log"));
        let listen = format!("/ip4/127.0.0.1/tcp/{p2p_port}");
        let mut launch = AgentLaunch::new(shoal, &dir, &api, &listen, &log);
        launch.args = args.to_vec();
        Ok(Agent {
            dir,
            api,
            p2p_port,
            log,
            launch,
            poll_every: Duration::from_millis(100),
            child: None,
        })
    }

    /// The peer-to-peer address others use as `--seed`.
    pub fn multiaddr(&self) -> String {
        self.launch.listen.clone()
    }

    /// The CLI against this agent.
    pub fn cli(&self) -> AgentCli {
        AgentCli::new(&self.launch.shoal, &self.api, &self.dir)
    }

    /// Starts the process without waiting for its API.
    pub fn spawn(&mut self) -> Result<(), HarnessError> {
        assert!(
            self.child.is_none(),
            "agent in {} already running",
            self.dir.display()
        );
        self.child = Some(self.launch.spawn()?);
        Ok(())
    }

    /// Starts the process and waits until its API answers `status`.
    pub fn start(&mut self) -> Result<(), HarnessError> {
        self.spawn()?;
        self.wait_ready()
    }

    /// Waits until the API answers `status` (up to [`READY_TIMEOUT`]); errs early if the
    /// process exits.
    pub fn wait_ready(&mut self) -> Result<(), HarnessError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let cli = self.cli();
        loop {
            let last = match cli.output(&["status", "-o", "json"]) {
                Ok(out) if out.status.success() => return Ok(()),
                Ok(out) => String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                Err(e) => e.to_string(),
            };
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                self.child = None;
                return Err(HarnessError::Exited {
                    dir: self.dir.clone(),
                    log: self.log.clone(),
                    status: status.to_string(),
                });
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Timeout {
                    what: format!(
                        "the API of the agent in {} (last answer: {last})",
                        self.dir.display()
                    ),
                    after: READY_TIMEOUT,
                });
            }
            std::thread::sleep(self.poll_every);
        }
    }

    /// Whether the harness has a process of this agent (paused counts).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The agent's pid, while it has a process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `sig` to the agent (not its instances).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// SIGSTOP: the agent stops answering, as a stalled machine would.
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// SIGCONT after [`Agent::pause`].
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    /// SIGTERM, then waits up to `timeout` for the exit; past it, kill -9 and a `Timeout`.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let Some(mut c) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            if !matches!(c.try_wait(), Ok(None)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(HarnessError::Timeout {
                    what: format!("the agent in {} to exit on SIGTERM", self.dir.display()),
                    after: timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9 of the agent, reaped (its instances keep running, as on a power loss of the
    /// agent alone).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Everything the agent has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pids of the instances this agent's process driver recorded in its data dir.
    pub fn instance_pids(&self) -> Vec<u32> {
        let Ok(dir) = std::fs::read_dir(self.dir.join("instances")) else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| {
                let text = std::fs::read_to_string(e.path()).ok()?;
                let v: serde_json::Value = serde_json::from_str(&text).ok()?;
                u32::try_from(v["pid"].as_u64()?).ok()
            })
            .collect()
    }

    /// The agent's resident memory now, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        procs::rss_kib(self.pid()?)
    }

    /// The agent's peak resident memory so far, in KiB.
    pub fn hwm_kib(&self) -> Option<u64> {
        procs::hwm_kib(self.pid()?)
    }

    /// CPU the agent has used (user plus system), in clock ticks.
    pub fn cpu_ticks(&self) -> Option<u64> {
        Some(procs::stat(self.pid()?)?.cpu_ticks)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        procs::kill_all(&self.instance_pids());
    }
}
