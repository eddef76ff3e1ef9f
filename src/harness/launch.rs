//! How one `shoal agent` process is started: the command line (data dir, API address, listen
//! address, cluster key, seeds, runtime, anything else), its environment, its log file, and a
//! launch [`Hook`] run between fork and exec (enter a network namespace, start a session).
//!
//! It starts a process and hands back its `Child`; waiting for the API, stopping and counting
//! are the caller's (see [`super::agent`] for agents on 127.0.0.1, `chaos/src/fleet.rs` for
//! agents in namespaces).

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::HarnessError;

/// What runs between fork and exec of a process the harness starts.
#[derive(Clone, Debug, Default)]
pub struct Hook {
    /// A network namespace (an open `/run/netns/…` or `/proc/<pid>/ns/net`) to enter with
    /// `setns`, what `ip netns exec` does without its extra process. It must stay open until
    /// the process has started; the `Arc` keeps it so.
    pub namespace: Option<Arc<File>>,
    /// Start a session of its own (`setsid`), so a Ctrl-C on the terminal reaches only the
    /// harness, which then tears everything down.
    pub new_session: bool,
}

impl Hook {
    /// Installs the hook on `cmd` (nothing when the hook is empty).
    pub fn apply(&self, cmd: &mut Command) {
        if self.namespace.is_none() && !self.new_session {
            return;
        }
        let ns = self.namespace.clone();
        let new_session = self.new_session;
        // SAFETY: the closure runs between fork and exec and makes only async-signal-safe
        // syscalls (setns, setsid) on an fd the `Arc` moved into it keeps open.
        unsafe {
            cmd.pre_exec(move || {
                if let Some(ns) = &ns
                    && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) == -1
                {
                    return Err(std::io::Error::last_os_error());
                }
                if new_session && libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

/// Everything needed to start one agent. Fields are public: callers fill what they need and
/// leave the rest at [`AgentLaunch::new`]'s defaults.
#[derive(Clone, Debug)]
pub struct AgentLaunch {
    /// The `shoal` binary.
    pub shoal: PathBuf,
    pub data_dir: PathBuf,
    /// `host:port` of the HTTP API.
    pub api: String,
    /// The peer-to-peer listen multiaddr.
    pub listen: String,
    /// `--runtime` (`process`, `docker`); the agent's default when `None`.
    pub runtime: Option<String>,
    pub cluster_key: Option<PathBuf>,
    /// `--seed` multiaddrs, in order.
    pub seeds: Vec<String>,
    /// Any further arguments, after the ones above.
    pub args: Vec<String>,
    /// Variables set for the agent, over the inherited environment.
    pub env: BTreeMap<String, String>,
    /// Drop every inherited `SHOAL_*` variable first (an engineer's `SHOAL_LOG` or `SHOAL_API`
    /// must not leak into a fleet).
    pub clear_shoal_env: bool,
    /// Where stdout and stderr go (appended: a restart keeps the earlier run's lines).
    pub log: PathBuf,
    pub hook: Hook,
}

impl AgentLaunch {
    /// An agent with its data dir, API address, listen address and log file, and nothing else.
    pub fn new(shoal: &Path, data_dir: &Path, api: &str, listen: &str, log: &Path) -> Self {
        AgentLaunch {
            shoal: shoal.to_path_buf(),
            data_dir: data_dir.to_path_buf(),
            api: api.to_owned(),
            listen: listen.to_owned(),
            runtime: None,
            cluster_key: None,
            seeds: Vec::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            clear_shoal_env: false,
            log: log.to_path_buf(),
            hook: Hook::default(),
        }
    }

    /// The arguments after the binary: `agent --data-dir … --api … --listen … [--runtime …]
    /// [--cluster-key …] [--seed …]… ARGS…`.
    pub fn argv(&self) -> Vec<String> {
        let mut a = vec![
            "agent".to_owned(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
            "--api".to_owned(),
            self.api.clone(),
            "--listen".to_owned(),
            self.listen.clone(),
        ];
        if let Some(r) = &self.runtime {
            a.extend(["--runtime".to_owned(), r.clone()]);
        }
        if let Some(k) = &self.cluster_key {
            a.extend(["--cluster-key".to_owned(), k.display().to_string()]);
        }
        for s in &self.seeds {
            a.extend(["--seed".to_owned(), s.clone()]);
        }
        a.extend(self.args.iter().cloned());
        a
    }

    /// Makes the data dir, opens the log and starts the process.
    pub fn spawn(&self) -> Result<Child, HarnessError> {
        std::fs::create_dir_all(&self.data_dir).map_err(|e| {
            HarnessError::io(format!("cannot create {}", self.data_dir.display()), e)
        })?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| HarnessError::io(format!("cannot open {}", self.log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| HarnessError::io("cannot share the log file", e))?;
        let mut cmd = Command::new(&self.shoal);
        cmd.args(self.argv());
        if self.clear_shoal_env {
            clear_shoal_env(&mut cmd);
        }
        cmd.envs(&self.env)
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        self.hook.apply(&mut cmd);
        cmd.spawn().map_err(|source| HarnessError::Spawn {
            what: format!("{} agent", self.shoal.display()),
            source,
        })
    }
}

/// Removes every inherited `SHOAL_*` variable from `cmd`'s environment.
pub fn clear_shoal_env(cmd: &mut Command) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SHOAL_") {
            cmd.env_remove(&k);
        }
    }
}

/// `shoal keygen --out PATH`: a new cluster key.
pub fn keygen(shoal: &Path, out: &Path) -> Result<(), HarnessError> {
    let o = Command::new(shoal)
        .args(["keygen", "--out"])
        .arg(out)
        .output()
        .map_err(|source| HarnessError::Spawn {
            what: format!("{} keygen", shoal.display()),
            source,
        })?;
    if !o.status.success() {
        return Err(HarnessError::Cli {
            args: "keygen".into(),
            where_: String::new(),
            stderr: String::from_utf8_lossy(&o.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_names_what_was_set_and_then_the_rest() {
        let mut l = AgentLaunch::new(
            Path::new("/bin/shoal"),
            Path::new("/d"),
            "127.0.0.1:1",
            "/ip4/127.0.0.1/tcp/2",
            Path::new("/d.log"),
        );
        assert_eq!(
            l.argv().join(" "),
            "agent --data-dir /d --api 127.0.0.1:1 --listen /ip4/127.0.0.1/tcp/2"
        );
        l.runtime = Some("process".into());
        l.cluster_key = Some("/k".into());
        l.seeds = vec!["/ip4/127.0.0.1/tcp/3".into()];
        l.args = vec!["--profile".into(), "lan".into()];
        assert_eq!(
            l.argv()[7..].join(" "),
            "--runtime process --cluster-key /k --seed /ip4/127.0.0.1/tcp/3 --profile lan"
        );
    }
}
