//! The process driver: runs each instance as a plain process in its own session, its stdout and
//! stderr appended to a log file, its identity kept in a JSON instance record, so that instances
//! outlive the agent and a restarted agent adopts them.
//!
//! On disk, under the data dir:
//! - `instances/<name>.json`: one record per instance (see [`InstanceRecord`]), always replaced
//!   whole (temp file + rename); `*.corrupt` is a record that could not be parsed, set aside.
//! - `logs/<name>.log`: the live log; `<name>.log.1` the tail kept by the last rotation;
//!   `<name>.log.old` the log of a stopped instance, for post-mortem.
//!
//! A process is ours iff its pid's start time (field 22 of `/proc/<pid>/stat`) matches the
//! record, so a recycled pid is never reported as running and never signalled.
//!
//! Deliberately not here: restart policy and backoff (`reconcile/` decides), isolation and
//! resource limits (a process instance gets no namespaces or cgroups, and `resources` is not
//! enforced), and Linux-only: it reads `/proc`. Record and `/proc` reads are small local-file
//! operations done inline; only log streaming and rotation, which can be large, leave the task.
//!
//! This file holds the driver: its in-memory state, the per-instance locks, exit bookkeeping
//! (reaping children, polling adopted processes, the watch task) and the `Runtime` impl. The
//! parts:
//! - `record`: the instance records on disk;
//! - `proc`: `/proc/<pid>/stat` parsing, what makes a pid ours, and signalling;
//! - `spawn`: starting an instance's process (command, environment, ports, session);
//! - `logs`: log files, rotation, tails and streaming.

mod logs;
mod proc;
mod record;
mod spawn;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{Notify, OwnedMutexGuard, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{info, warn};

use self::logs::{LOG_CHANNEL, LOG_CHECK_EVERY, keep_old_log, rotate_logs, stream_log};
use self::proc::{Proc, exit_info, unknown_exit};
use self::record::InstanceRecord;
use super::{DriverError, ExitInfo, InstanceSpec, Observed, Owner, Runtime, RuntimeEvent};
use crate::ids::InstanceKey;
use crate::spec::{DriverKind, Workload};

/// How often adopted processes (not our children, so not waitable) are checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// How long `stop` waits for the instance to vanish after SIGKILL before reporting failure
/// (only a process stuck in uninterruptible sleep survives that long).
const KILL_WAIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> DriverError {
    DriverError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Runs instances as processes on this machine. See the module docs.
pub struct ProcessDriver {
    inner: Arc<Inner>,
    /// Every task the driver started (reapers, the watch task, log streams): dropping the driver
    /// aborts them all; the instances themselves keep running.
    tasks: Mutex<JoinSet<()>>,
    watch_task: Mutex<Option<AbortHandle>>,
}

struct Inner {
    instances_dir: PathBuf,
    logs_dir: PathBuf,
    owner: Owner,
    advertise_host: String,
    state: Mutex<State>,
    /// Serialises start, stop and exit recording per instance.
    key_locks: Mutex<BTreeMap<InstanceKey, Arc<tokio::sync::Mutex<()>>>>,
    /// Wakes the watch task when an exit was added to `State::unreported`.
    exited: Notify,
    /// `(shoal binary, lease file)`: `partition: majority` instances run under
    /// `shoal lease-run` (see `runtime::lease`). `None` runs them directly (tests).
    lease_runner: Option<(PathBuf, PathBuf)>,
}

/// In-memory state. Each map holds at most one entry per instance record.
#[derive(Default)]
struct State {
    /// Processes this driver spawned and has not reaped yet (a reaper task waits on each).
    children: BTreeMap<InstanceKey, Proc>,
    /// Processes found running at `watch` that are not our children: polled for exit.
    adopted: BTreeMap<InstanceKey, Proc>,
    /// Exits recorded but not yet sent by the watch task (kept until a watch sends them).
    unreported: BTreeMap<InstanceKey, ExitInfo>,
}

/// Holds one instance's lock; removes the lock from the table when nobody else wants it.
struct KeyGuard<'a> {
    inner: &'a Inner,
    key: InstanceKey,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = lock(&self.inner.key_locks);
        if locks
            .get(&self.key)
            .is_some_and(|m| Arc::strong_count(m) == 1)
        {
            locks.remove(&self.key);
        }
    }
}

impl Inner {
    async fn lock_key(&self, key: &InstanceKey) -> KeyGuard<'_> {
        let m = lock(&self.key_locks)
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = m.lock_owned().await;
        KeyGuard {
            inner: self,
            key: key.clone(),
            guard: Some(guard),
        }
    }

    fn try_lock_key(&self, key: &InstanceKey) -> Option<KeyGuard<'_>> {
        let m = lock(&self.key_locks)
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = m.try_lock_owned().ok();
        // On failure this guard (holding nothing) still tidies the table on drop.
        let g = KeyGuard {
            inner: self,
            key: key.clone(),
            guard,
        };
        g.guard.is_some().then_some(g)
    }

    /// Records the exit of `proc` as the end of instance `key`, unless the instance was stopped
    /// or replaced meanwhile, and queues it for the watch task. The caller holds the key lock.
    fn record_exit(&self, key: &InstanceKey, proc: Proc, exit: ExitInfo) {
        let mut record = match self.read_record(key) {
            Ok(Some(r)) if r.proc() == proc => r,
            // Stopped (record removed) or restarted (another process): not a current exit.
            Ok(_) => return,
            Err(e) => {
                warn!(instance = %key.name(), error = %e, "instance record unreadable at exit");
                return;
            }
        };
        if record.exit.is_none() {
            record.exit = Some(exit);
            if let Err(e) = self.write_record(&record) {
                warn!(instance = %key.name(), error = %e, "exit could not be recorded");
            }
        }
        let exit = record.exit.expect("set above");
        let (code, signal) = (exit.code, exit.signal);
        info!(instance = %key.name(), pid = proc.pid, ?code, ?signal, "instance exited");
        lock(&self.state).unreported.insert(key.clone(), exit);
        self.exited.notify_one();
    }

    /// Records the exit of every adopted process that is no longer alive.
    fn poll_adopted(&self) {
        let adopted: Vec<(InstanceKey, Proc)> = lock(&self.state)
            .adopted
            .iter()
            .map(|(k, p)| (k.clone(), *p))
            .collect();
        for (key, proc) in adopted {
            if proc.alive() {
                continue;
            }
            // A start or stop busy with this instance settles it; look again next time.
            let Some(_guard) = self.try_lock_key(&key) else {
                continue;
            };
            lock(&self.state).adopted.remove(&key);
            self.record_exit(&key, proc, unknown_exit());
        }
    }
}

/// Waits for a child this driver spawned and records its exit.
async fn reap(inner: Arc<Inner>, key: InstanceKey, proc: Proc, mut child: tokio::process::Child) {
    let exit = match child.wait().await {
        Ok(status) => exit_info(status),
        Err(e) => {
            warn!(instance = %key.name(), error = %e, "child status could not be collected");
            unknown_exit()
        }
    };
    let _guard = inner.lock_key(&key).await;
    {
        let mut state = lock(&inner.state);
        if state.children.get(&key) == Some(&proc) {
            state.children.remove(&key);
        }
    }
    inner.record_exit(&key, proc, exit);
}

/// Sends recorded exits, polls adopted processes and bounds log sizes until `events` closes.
async fn watch_loop(inner: Arc<Inner>, events: mpsc::Sender<RuntimeEvent>) {
    let mut poll = tokio::time::interval(ADOPTED_POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_log_check = Instant::now();
    loop {
        loop {
            let next = lock(&inner.state)
                .unreported
                .first_key_value()
                .map(|(k, e)| (k.clone(), e.clone()));
            let Some((key, exit)) = next else { break };
            if events
                .send(RuntimeEvent::Exited {
                    key: key.clone(),
                    exit: exit.clone(),
                })
                .await
                .is_err()
            {
                return;
            }
            // Removed only once sent, so an aborted send loses nothing.
            let mut state = lock(&inner.state);
            if state.unreported.get(&key) == Some(&exit) {
                state.unreported.remove(&key);
            }
        }
        tokio::select! {
            () = inner.exited.notified() => {}
            _ = poll.tick() => {
                inner.poll_adopted();
                if Instant::now() >= next_log_check {
                    next_log_check = Instant::now() + LOG_CHECK_EVERY;
                    let dir = inner.logs_dir.clone();
                    let _ = tokio::task::spawn_blocking(move || rotate_logs(&dir)).await;
                }
            }
            () = events.closed() => return,
        }
    }
}

impl ProcessDriver {
    /// A driver keeping its records and logs under `data_dir`, touching only instances of
    /// `owner`, and reporting endpoints as `<advertise_host>:<port>`.
    pub fn new(
        data_dir: &Path,
        owner: Owner,
        advertise_host: String,
    ) -> Result<ProcessDriver, DriverError> {
        let instances_dir = data_dir.join("instances");
        let logs_dir = data_dir.join("logs");
        for dir in [&instances_dir, &logs_dir] {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;
        }
        Ok(ProcessDriver {
            inner: Arc::new(Inner {
                instances_dir,
                logs_dir,
                owner,
                advertise_host,
                state: Mutex::default(),
                key_locks: Mutex::default(),
                exited: Notify::new(),
                lease_runner: None,
            }),
            tasks: Mutex::new(JoinSet::new()),
            watch_task: Mutex::new(None),
        })
    }

    /// Runs `partition: majority` instances under `shoal lease-run` (the binary at `shoal`),
    /// which kills them when the lease in `lease_file` expires without renewal.
    pub fn with_lease_runner(self, shoal: PathBuf, lease_file: PathBuf) -> ProcessDriver {
        let mut inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| unreachable!("set before the driver is shared"));
        inner.lease_runner = Some((shoal, lease_file));
        ProcessDriver {
            inner: Arc::new(inner),
            ..self
        }
    }

    fn spawn_task(&self, task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
        let mut tasks = lock(&self.tasks);
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        tasks.spawn(task)
    }
}

impl Runtime for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    async fn start(
        &self,
        spec: &InstanceSpec,
        _events: &mpsc::Sender<RuntimeEvent>,
    ) -> Result<Observed, DriverError> {
        let inner = &self.inner;
        let command = match &spec.spec.workload {
            Workload::Command { command } => command,
            Workload::Image { image, .. } => {
                return Err(DriverError::Rejected {
                    reason: format!("the process driver cannot run image {image}"),
                });
            }
        };
        if spec.cluster != inner.owner.cluster || spec.node != inner.owner.node {
            return Err(DriverError::Rejected {
                reason: format!(
                    "instance {} belongs to node {} of cluster {}, not to this driver's owner",
                    spec.key.name(),
                    spec.node,
                    spec.cluster
                ),
            });
        }
        let _guard = inner.lock_key(&spec.key).await;
        let path = inner.record_path(&spec.key);
        if let Some(record) = inner.read_record_file(&path)? {
            if !record.owned_by(&inner.owner) {
                return Err(DriverError::Rejected {
                    reason: format!("instance {} has a record of another owner", spec.key.name()),
                });
            }
            if record.exit.is_none() && record.proc().alive() {
                return Ok(record.observed());
            }
        }
        self.spawn(spec, command)
    }

    async fn stop(&self, key: &InstanceKey, grace_ms: u64) -> Result<(), DriverError> {
        let inner = &self.inner;
        let name = key.name();
        let _guard = inner.lock_key(key).await;
        let Some(record) = inner.read_record(key)? else {
            return Ok(());
        };
        {
            let mut state = lock(&inner.state);
            state.adopted.remove(key);
            state.unreported.remove(key);
        }
        let proc = record.proc();
        if !proc.gone() {
            proc.signal(libc::SIGTERM);
            if !proc.wait_gone(Duration::from_millis(grace_ms)).await {
                let pid = proc.pid;
                info!(instance = %name, pid, grace_ms, "instance outlived its grace period");
                proc.signal(libc::SIGKILL);
                if !proc.wait_gone(KILL_WAIT).await {
                    return Err(DriverError::Unavailable {
                        reason: format!(
                            "instance {name} (pid {}) still runs after SIGKILL",
                            proc.pid
                        ),
                    });
                }
            }
        }
        let path = inner.record_path(key);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&path, e)),
        }
        keep_old_log(&inner.log_path(key), &inner.logs_dir);
        lock(&inner.state).unreported.remove(key);
        info!(instance = %name, pid = proc.pid, "instance stopped");
        Ok(())
    }

    async fn list(&self) -> Result<Vec<Observed>, DriverError> {
        Ok(self
            .inner
            .scan_records()?
            .iter()
            .map(InstanceRecord::observed)
            .collect())
    }

    async fn watch(&self, events: mpsc::Sender<RuntimeEvent>) -> Result<(), DriverError> {
        let inner = &self.inner;
        let records = inner.scan_records()?;
        {
            let mut state = lock(&inner.state);
            for r in records.iter().filter(|r| r.exit.is_none()) {
                if state.children.get(&r.key) != Some(&r.proc()) {
                    state.adopted.insert(r.key.clone(), r.proc());
                }
            }
        }
        let task = self.spawn_task(watch_loop(inner.clone(), events));
        if let Some(previous) = lock(&self.watch_task).replace(task) {
            previous.abort();
        }
        Ok(())
    }

    async fn logs(
        &self,
        key: &InstanceKey,
        follow: bool,
        tail_lines: Option<usize>,
    ) -> Result<mpsc::Receiver<Vec<u8>>, DriverError> {
        if self.inner.read_record(key)?.is_none() {
            return Err(DriverError::Rejected {
                reason: format!("no instance {} on this node", key.name()),
            });
        }
        let (tx, rx) = mpsc::channel(LOG_CHANNEL);
        self.spawn_task(stream_log(
            self.inner.clone(),
            key.clone(),
            follow,
            tail_lines,
            tx,
        ));
        Ok(rx)
    }
}
