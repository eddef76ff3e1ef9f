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

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
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
