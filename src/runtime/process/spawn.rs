//! Starting an instance's process: the command resolved the way `execvp` would, host ports
//! picked, an environment built from the spec (nothing else of the agent's leaks in), stdout and
//! stderr appended to its log, its own session, `shoal lease-run` in front for
//! `partition: majority`, and its record written before the start is reported.
//!
//! Deliberately not here: whether to start (the caller holds the instance's lock and checked it
//! is not running), and isolation or resource limits (a process instance gets none).

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tracing::info;

use super::proc::{Proc, read_stat};
use super::record::{InstanceRecord, RECORD_VERSION};
use super::{Inner, ProcessDriver, io_error, lock, reap};
use crate::runtime::{DriverError, InstanceSpec, Observed, ObservedStatus};
use crate::spec::PortSpec;

/// How long `shoal lease-run` waits for a lease file that is not there yet (the agent writes it
/// on its first turn, before it starts anything).
const LEASE_GRACE_MS: u64 = 30_000;

impl Inner {
    fn endpoint(&self, port: u16) -> String {
        if self.advertise_host.contains(':') && !self.advertise_host.starts_with('[') {
            format!("[{}]:{port}", self.advertise_host)
        } else {
            format!("{}:{port}", self.advertise_host)
        }
    }
}

/// Finds the executable `command[0]` names, the way `execvp` would, to refuse a bad command
/// with a clear message before spawning anything.
pub(super) fn resolve_program(program: &str, path_var: &OsStr) -> Option<PathBuf> {
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let p = PathBuf::from(program);
        return executable(&p).then_some(p);
    }
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

/// Picks the host port of each `PortSpec`: the fixed one if free, otherwise one the kernel
/// offers. The listeners are held until every port is picked, so two picks never collide; a
/// port can still be taken between this check and the instance binding it.
fn pick_ports(ports: &[PortSpec]) -> Result<Vec<(String, u16)>, DriverError> {
    let mut held = Vec::with_capacity(ports.len());
    let mut picked = Vec::with_capacity(ports.len());
    for p in ports {
        let want = p.host.unwrap_or(0);
        let listener =
            std::net::TcpListener::bind(("0.0.0.0", want)).map_err(|e| match e.kind() {
                io::ErrorKind::AddrInUse => DriverError::Rejected {
                    reason: format!("host port {want} (port {}) is already in use", p.name),
                },
                io::ErrorKind::PermissionDenied => DriverError::Rejected {
                    reason: format!("host port {want} (port {}) needs privileges", p.name),
                },
                _ => io_error(Path::new(&format!("0.0.0.0:{want}")), e),
            })?;
        let port = listener
            .local_addr()
            .map_err(|e| io_error(Path::new("0.0.0.0:0"), e))?
            .port();
        held.push(listener);
        picked.push((p.name.clone(), port));
    }
    Ok(picked)
}

/// `SHOAL_PORT_<NAME>`: the port name upper-cased, anything but letters and digits as `_`.
fn port_var(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("SHOAL_PORT_{name}")
}

/// The environment of an instance: the agent's `PATH` and `HOME` (so commands are found as the
/// operator expects), the spec's `env`, then Shoal's variables, which win. Nothing else of the
/// agent's environment leaks into instances.
fn instance_env(spec: &InstanceSpec, ports: &[(String, u16)]) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    for var in ["PATH", "HOME"] {
        if let Some(v) = std::env::var_os(var) {
            env.insert(var.into(), v);
        }
    }
    for (k, v) in &spec.spec.env {
        env.insert(k.into(), v.into());
    }
    let key = &spec.key;
    env.insert(
        "SHOAL_SERVICE".into(),
        key.slot.service.0.to_string().into(),
    );
    env.insert("SHOAL_SLOT".into(), key.slot.index.to_string().into());
    env.insert("SHOAL_EPOCH".into(), key.epoch.to_string().into());
    env.insert("SHOAL_REVISION".into(), spec.revision.0.clone().into());
    if let Some((_, first)) = ports.first() {
        env.insert("PORT".into(), first.to_string().into());
    }
    for (name, port) in ports {
        env.insert(port_var(name).into(), port.to_string().into());
    }
    env.into_iter().collect()
}

impl ProcessDriver {
    /// Spawns the instance; the caller holds its key lock and checked it is not running.
    pub(super) fn spawn(
        &self,
        spec: &InstanceSpec,
        command: &[String],
    ) -> Result<Observed, DriverError> {
        let inner = &self.inner;
        let key = &spec.key;
        let name = key.name();
        let Some(first) = command.first() else {
            return Err(DriverError::Rejected {
                reason: format!("instance {name} has an empty command"),
            });
        };
        let path_var = spec
            .spec
            .env
            .get("PATH")
            .map(OsString::from)
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let Some(program) = resolve_program(first, &path_var) else {
            return Err(DriverError::Rejected {
                reason: format!("command {first:?} not found in PATH"),
            });
        };
        let ports = pick_ports(&spec.spec.ports)?;
        let log_path = inner.log_path(key);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| io_error(&log_path, e))?;
        let log_err = log.try_clone().map_err(|e| io_error(&log_path, e))?;

        let leased = spec.spec.partition == crate::spec::PartitionMode::Majority;
        let mut cmd = match (&inner.lease_runner, leased) {
            (Some((shoal, lease)), true) => {
                let mut c = tokio::process::Command::new(shoal);
                c.arg("lease-run")
                    .arg("--lease")
                    .arg(lease)
                    .arg("--grace-ms")
                    .arg(LEASE_GRACE_MS.to_string())
                    .arg("--arg0")
                    .arg(first)
                    .arg("--")
                    .arg(&program)
                    .args(&command[1..]);
                c
            }
            _ => {
                let mut c = tokio::process::Command::new(&program);
                c.arg0(first).args(&command[1..]);
                c
            }
        };
        cmd.env_clear()
            .envs(instance_env(spec, &ports))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(false);
        // SAFETY: the closure runs between fork and exec and only calls setsid, which is
        // async-signal-safe. Its own session keeps the agent's terminal and signals away from the
        // instance and makes its pid the process group id that `stop` signals.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => DriverError::Rejected {
                reason: format!("command {first:?} cannot be executed: {e}"),
            },
            _ if e.raw_os_error() == Some(libc::ENOEXEC) => DriverError::Rejected {
                reason: format!("command {first:?} cannot be executed: {e}"),
            },
            _ => io_error(&program, e),
        })?;
        let pid = child.id().expect("a child not yet waited for has a pid");
        // The child cannot have been reaped (we hold it), so its stat exists, zombie or not,
        // and its pid (== its process group) is not anybody else's yet.
        let Some(stat) = read_stat(pid) else {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            let stat_path = format!("/proc/{pid}/stat");
            return Err(io_error(Path::new(&stat_path), "unreadable after spawn"));
        };
        let proc = Proc {
            pid,
            start_ticks: stat.start_ticks,
        };

        let record = InstanceRecord {
            version: RECORD_VERSION,
            key: key.clone(),
            revision: spec.revision.clone(),
            labels: spec.labels(),
            pid,
            start_ticks: stat.start_ticks,
            ports: ports.iter().cloned().collect(),
            endpoint: ports.first().map(|(_, port)| inner.endpoint(*port)),
            exit: None,
        };
        if let Err(e) = inner.write_record(&record) {
            // Without a record the process would be nobody's: end it now.
            proc.signal(libc::SIGKILL);
            return Err(e);
        }
        {
            let mut state = lock(&inner.state);
            state.children.insert(key.clone(), proc);
            state.adopted.remove(key);
            state.unreported.remove(key);
        }
        self.spawn_task(reap(inner.clone(), key.clone(), proc, child));
        info!(instance = %name, pid, program = %program.display(), "instance started");
        // Running even if it already exited: it did start; its exit comes through `watch`.
        Ok(record.observed_as(ObservedStatus::Running))
    }
}
