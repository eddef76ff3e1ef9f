//! The `shoal` CLI run against one agent, as a person or a script would: `shoal ARGS --api …
//! --data-dir …` (the token is read from the data dir), optionally inside a network namespace
//! and bounded in time. `-o json` replies are read into the API's own types
//! ([`crate::node::api`]), so the harness and the agent share one JSON contract.
//!
//! It runs commands and reads replies; what a reply means is the caller's business.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::HarnessError;
use super::launch::{Hook, clear_shoal_env};
use crate::node::api::{HistoryEntry, NodeView, PsEntry, StatusView, WriteResult};

/// How to reach one agent with the CLI.
#[derive(Clone, Debug)]
pub struct AgentCli {
    /// The `shoal` binary.
    pub shoal: PathBuf,
    /// `--api host:port`.
    pub api: String,
    /// `--data-dir` (where the CLI finds the API token).
    pub data_dir: PathBuf,
    /// Entered before exec: a namespace to run in (no new session: a CLI call is short).
    pub hook: Hook,
    /// Drop every inherited `SHOAL_*` variable first.
    pub clear_shoal_env: bool,
    /// Kill a call that has not finished after this long (a paused agent never answers);
    /// `None` waits (the CLI has its own request timeout).
    pub timeout: Option<Duration>,
    /// A name for messages (`n3`); empty for none.
    pub name: String,
}

impl AgentCli {
    /// The CLI of the agent at `api` with data dir `data_dir`, on this host's network.
    pub fn new(shoal: &Path, api: &str, data_dir: &Path) -> AgentCli {
        AgentCli {
            shoal: shoal.to_path_buf(),
            api: api.to_owned(),
            data_dir: data_dir.to_path_buf(),
            hook: Hook::default(),
            clear_shoal_env: false,
            timeout: None,
            name: String::new(),
        }
    }

    fn where_(&self) -> String {
        if self.name.is_empty() {
            String::new()
        } else {
            format!(" on {}", self.name)
        }
    }

    /// Runs `shoal ARGS --api … --data-dir …` and returns what it printed, whatever its exit
    /// status. Errs only when it could not run or did not finish in time.
    pub fn output(&self, args: &[&str]) -> Result<Output, HarnessError> {
        let mut cmd = Command::new(&self.shoal);
        cmd.args(args)
            .arg("--api")
            .arg(&self.api)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.clear_shoal_env {
            clear_shoal_env(&mut cmd);
        }
        self.hook.apply(&mut cmd);
        let spawn_err = |source| HarnessError::Spawn {
            what: format!("{} {}", self.shoal.display(), args.join(" ")),
            source,
        };
        let Some(timeout) = self.timeout else {
            return cmd.output().map_err(spawn_err);
        };
        let child = cmd.spawn().map_err(spawn_err)?;
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(timeout) {
            Ok(r) => r.map_err(|e| HarnessError::io(format!("shoal {}", args.join(" ")), e)),
            Err(_) => {
                // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped
                // child (the waiting thread reaps it once killed).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                let _ = rx.recv();
                Err(HarnessError::Timeout {
                    what: format!("shoal {}{} to answer", args.join(" "), self.where_()),
                    after: timeout,
                })
            }
        }
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn run(&self, args: &[&str]) -> Result<String, HarnessError> {
        let out = self.output(args)?;
        if !out.status.success() {
            return Err(HarnessError::Cli {
                args: args.join(" "),
                where_: self.where_(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs `ARGS -o json` and reads the reply as `T`.
    pub fn json<T: DeserializeOwned>(&self, args: &[&str]) -> Result<T, HarnessError> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        let text = self.run(&a)?;
        serde_json::from_str(&text).map_err(|e| HarnessError::Json {
            args: args.join(" "),
            where_: self.where_(),
            reason: e.to_string(),
            text: text.chars().take(200).collect(),
        })
    }

    /// `shoal status`.
    pub fn status(&self) -> Result<StatusView, HarnessError> {
        self.json(&["status"])
    }

    /// `shoal ps [SERVICE]`.
    pub fn ps(&self, service: Option<&str>) -> Result<Vec<PsEntry>, HarnessError> {
        match service {
            Some(s) => self.json(&["ps", s]),
            None => self.json(&["ps"]),
        }
    }

    /// `shoal nodes`.
    pub fn nodes(&self) -> Result<Vec<NodeView>, HarnessError> {
        self.json(&["nodes"])
    }

    /// `shoal history SERVICE`.
    pub fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, HarnessError> {
        self.json(&["history", service])
    }

    /// `shoal deploy -f FILE`.
    pub fn deploy(&self, file: &Path) -> Result<Vec<WriteResult>, HarnessError> {
        let f = file.display().to_string();
        self.json(&["deploy", "-f", &f])
    }

    /// `shoal rm SERVICE`.
    pub fn rm(&self, service: &str) -> Result<Vec<WriteResult>, HarnessError> {
        self.json(&["rm", service])
    }
}
