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

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::{Notify, OwnedMutexGuard, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    DriverError, ExitInfo, Handle, InstanceSpec, Observed, ObservedStatus, Owner, Runtime,
    RuntimeEvent,
};
use crate::ids::{InstanceKey, RevisionId};
use crate::spec::{DriverKind, PortSpec, Workload};

/// Version of [`InstanceRecord`]'s JSON form; a record of another version is left alone.
const RECORD_VERSION: u32 = 1;
/// How often adopted processes (not our children, so not waitable) are checked for exit.
const ADOPTED_POLL: Duration = Duration::from_millis(500);
/// How often `stop` checks whether the instance is gone.
const STOP_POLL: Duration = Duration::from_millis(50);
/// How long `stop` waits for the instance to vanish after SIGKILL before reporting failure
/// (only a process stuck in uninterruptible sleep survives that long).
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long `shoal lease-run` waits for a lease file that is not there yet (the agent writes it
/// on its first turn, before it starts anything).
const LEASE_GRACE_MS: u64 = 30_000;
/// How often a followed log is checked for appended bytes.
const LOG_FOLLOW_POLL: Duration = Duration::from_millis(200);
/// Capacity of the channel a log is streamed through.
const LOG_CHANNEL: usize = 16;
/// Largest chunk sent through a log channel.
const LOG_CHUNK: usize = 64 * 1024;
/// A live log larger than this is rotated.
const LOG_MAX_BYTES: u64 = 16 * 1024 * 1024;
/// How much of a rotated log's end is kept in `<name>.log.1`.
const LOG_KEPT_BYTES: u64 = 1024 * 1024;
/// How often the watch task checks log sizes.
const LOG_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How many `.log.old` files (logs of stopped instances) are kept; the oldest go first.
const OLD_LOGS_KEPT: usize = 64;

/// What the driver remembers about one instance, in `instances/<name>.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct InstanceRecord {
    version: u32,
    key: InstanceKey,
    revision: RevisionId,
    /// `InstanceSpec::labels()`: the owner's cluster and node decide whose record this is.
    labels: BTreeMap<String, String>,
    pid: u32,
    /// Field 22 of `/proc/<pid>/stat` when the process was started.
    start_ticks: u64,
    /// Published ports by name (`name -> host port`).
    ports: BTreeMap<String, u16>,
    endpoint: Option<String>,
    /// Set once the exit is known; the record stays until the instance is stopped.
    exit: Option<ExitInfo>,
}

impl InstanceRecord {
    fn owned_by(&self, owner: &Owner) -> bool {
        self.labels.get("shoal.cluster") == Some(&owner.cluster)
            && self.labels.get("shoal.node") == Some(&owner.node.0.to_string())
    }

    fn proc(&self) -> Proc {
        Proc {
            pid: self.pid,
            start_ticks: self.start_ticks,
        }
    }

    /// What `list` reports: the recorded exit, else whether the process still runs.
    fn observed(&self) -> Observed {
        let status = match &self.exit {
            Some(exit) => ObservedStatus::Exited(exit.clone()),
            None if self.proc().alive() => ObservedStatus::Running,
            None => ObservedStatus::Exited(unknown_exit()),
        };
        self.observed_as(status)
    }

    fn observed_as(&self, status: ObservedStatus) -> Observed {
        Observed {
            key: self.key.clone(),
            revision: self.revision.clone(),
            handle: Handle::Pid {
                pid: self.pid,
                start_ticks: self.start_ticks,
            },
            endpoint: self.endpoint.clone(),
            ports: self.ports.clone(),
            status,
        }
    }
}

/// The exit of a process whose status could not be collected (not our child).
fn unknown_exit() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
    }
}

fn exit_info(status: ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
        oom_killed: false,
    }
}

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    state: u8,
    session: i32,
    start_ticks: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) is in parentheses and may itself hold
/// spaces and parentheses, so fields are counted from after the last `)`.
fn parse_stat(text: &[u8]) -> Option<ProcStat> {
    let close = text.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&text[close + 1..]).ok()?;
    // `rest` starts at field 3 (state): field n is at index n - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    Some(ProcStat {
        state: *fields.first()?.as_bytes().first()?,
        session: fields.get(3)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

impl ProcStat {
    /// Neither a zombie (`Z`) nor dead (`X`).
    fn running(&self) -> bool {
        self.state != b'Z' && self.state != b'X'
    }
}

fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// One process as the driver identifies it: a pid is only ours while its start time matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Proc {
    pid: u32,
    start_ticks: u64,
}

impl Proc {
    /// Running: the pid exists, is ours, and is neither a zombie nor dead. (In containers PID 1
    /// may never reap orphans, so a killed adopted process can linger as a zombie.)
    fn alive(self) -> bool {
        matches!(read_stat(self.pid), Some(s) if s.start_ticks == self.start_ticks && s.running())
    }

    /// The pid still belongs to this process, alive or a zombie. A zombie keeps its pid, so
    /// while this holds the process group id (== pid, through `setsid`) cannot have been reused.
    fn holds_pid(self) -> bool {
        matches!(read_stat(self.pid), Some(s) if s.start_ticks == self.start_ticks)
    }

    /// Live processes left in this instance's session after its leader is gone (children that
    /// ignored the signal that ended their parent). Empty when the leader's pid now belongs to
    /// another process: its session would carry the same id.
    fn stragglers(self) -> Vec<u32> {
        if let Some(s) = read_stat(self.pid)
            && s.start_ticks != self.start_ticks
        {
            return Vec::new();
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| pid != self.pid)
            .filter(|&pid| {
                matches!(read_stat(pid), Some(s) if s.session == self.pid as i32
                    && s.start_ticks >= self.start_ticks && s.running())
            })
            .collect()
    }

    /// Nothing of the instance runs any more.
    fn gone(self) -> bool {
        !self.alive() && self.stragglers().is_empty()
    }

    /// Sends `sig` to the instance's process group while the leader holds its pid, and to any
    /// straggler of its session. Never to a pid whose start time is not ours.
    fn signal(self, sig: i32) {
        if self.holds_pid() {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-(self.pid as i32), sig) };
        }
        for pid in self.stragglers() {
            // SAFETY: as above.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    /// Polls until the instance is gone or `limit` passes; returns whether it is gone.
    async fn wait_gone(self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.gone() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(STOP_POLL).await;
        }
    }
}

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

    fn record_path(&self, key: &InstanceKey) -> PathBuf {
        self.instances_dir.join(format!("{}.json", key.name()))
    }

    fn log_path(&self, key: &InstanceKey) -> PathBuf {
        self.logs_dir.join(format!("{}.log", key.name()))
    }

    fn endpoint(&self, port: u16) -> String {
        if self.advertise_host.contains(':') && !self.advertise_host.starts_with('[') {
            format!("[{}]:{port}", self.advertise_host)
        } else {
            format!("{}:{port}", self.advertise_host)
        }
    }

    /// Reads one record file. `None` when it does not exist, is corrupt (set aside with a
    /// warning) or has another version.
    fn read_record_file(&self, path: &Path) -> Result<Option<InstanceRecord>, DriverError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error(path, e)),
        };
        match serde_json::from_slice::<InstanceRecord>(&bytes) {
            Ok(r) if r.version == RECORD_VERSION => Ok(Some(r)),
            Ok(r) => {
                let version = r.version;
                let path = path.display();
                warn!(%path, version, "instance record of another version ignored");
                Ok(None)
            }
            Err(e) => {
                let mut aside = path.as_os_str().to_owned();
                aside.push(".corrupt");
                warn!(path = %path.display(), error = %e, "corrupt instance record set aside");
                if let Err(e) = std::fs::rename(path, &aside) {
                    let path = path.display();
                    warn!(%path, error = %e, "corrupt record could not be renamed");
                }
                Ok(None)
            }
        }
    }

    /// This owner's record for `key`, if any.
    fn read_record(&self, key: &InstanceKey) -> Result<Option<InstanceRecord>, DriverError> {
        Ok(self
            .read_record_file(&self.record_path(key))?
            .filter(|r| r.owned_by(&self.owner)))
    }

    /// Replaces the record whole: a crash leaves the old record or the new one, never half.
    fn write_record(&self, record: &InstanceRecord) -> Result<(), DriverError> {
        let path = self.record_path(&record.key);
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(record).expect("an instance record serialises");
        let write = || -> io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.instances_dir)?.sync_all()
        };
        write().map_err(|e| io_error(&path, e))
    }

    /// Every record of this owner, in key order.
    fn scan_records(&self) -> Result<Vec<InstanceRecord>, DriverError> {
        let dir =
            std::fs::read_dir(&self.instances_dir).map_err(|e| io_error(&self.instances_dir, e))?;
        let mut records = BTreeMap::new();
        for entry in dir {
            let path = entry.map_err(|e| io_error(&self.instances_dir, e))?.path();
            if path.extension() != Some(OsStr::new("json")) {
                continue;
            }
            match self.read_record_file(&path)? {
                Some(r) if r.owned_by(&self.owner) => {
                    records.insert(r.key.clone(), r);
                }
                Some(r) => debug!(instance = %r.key.name(), "record of another owner ignored"),
                None => {}
            }
        }
        Ok(records.into_values().collect())
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

/// Rotates every live log in `dir` larger than [`LOG_MAX_BYTES`].
fn rotate_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for path in entries.filter_map(|e| Some(e.ok()?.path())) {
        if path.extension() != Some(OsStr::new("log")) {
            continue;
        }
        match rotate_log(&path, LOG_MAX_BYTES, LOG_KEPT_BYTES) {
            Ok(true) => info!(path = %path.display(), "log rotated"),
            Ok(false) => {}
            Err(e) => warn!(path = %path.display(), error = %e, "log rotation failed"),
        }
    }
}

/// If the log at `path` is larger than `max` bytes, copies its last `kept` bytes (from a line
/// start) to `<path>.1` and truncates it. The writer holds the file in append mode, so it goes on
/// at the new end; bytes written between the copy and the truncation are lost.
fn rotate_log(path: &Path, max: u64, kept: u64) -> io::Result<bool> {
    let len = std::fs::metadata(path)?.len();
    if len <= max {
        return Ok(false);
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let start = len.saturating_sub(kept);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    (&mut file).take(kept).read_to_end(&mut tail)?;
    if start > 0
        && let Some(newline) = tail.iter().position(|&b| b == b'\n')
    {
        tail.drain(..=newline);
    }
    let mut rotated = path.as_os_str().to_owned();
    rotated.push(".1");
    let mut tmp = rotated.clone();
    tmp.push(".tmp");
    std::fs::write(&tmp, &tail)?;
    std::fs::rename(&tmp, &rotated)?;
    file.set_len(0)?;
    Ok(true)
}

/// The offset where the last `lines` lines of a file of length `len` start (a final newline
/// ends the last line; it does not start an empty one).
async fn tail_offset(file: &mut tokio::fs::File, len: u64, lines: usize) -> io::Result<u64> {
    if lines == 0 {
        return Ok(len);
    }
    let mut buf = vec![0u8; LOG_CHUNK];
    let mut end = len;
    let mut newlines = 0;
    while end > 0 {
        let n = (end.min(buf.len() as u64)) as usize;
        let start = end - n as u64;
        file.seek(SeekFrom::Start(start)).await?;
        file.read_exact(&mut buf[..n]).await?;
        for i in (0..n).rev() {
            let at = start + i as u64;
            if buf[i] == b'\n' && at + 1 != len {
                newlines += 1;
                if newlines == lines {
                    return Ok(at + 1);
                }
            }
        }
        end = start;
    }
    Ok(0)
}

/// Streams a log into `tx`: the whole file or its last `tail_lines` lines, then with `follow`
/// what is appended, until the instance's record is gone or the receiver is dropped.
async fn stream_log(
    inner: Arc<Inner>,
    key: InstanceKey,
    follow: bool,
    tail_lines: Option<usize>,
    tx: mpsc::Sender<Vec<u8>>,
) {
    let path = inner.log_path(&key);
    let stream = async {
        let mut file = tokio::fs::File::open(&path).await?;
        let len = file.metadata().await?.len();
        let mut pos = match tail_lines {
            Some(n) => tail_offset(&mut file, len, n).await?,
            None => 0,
        };
        let mut buf = vec![0u8; LOG_CHUNK];
        loop {
            // Checked before draining, so the bytes written before the stop are still sent.
            let gone = !inner.record_path(&key).exists();
            if file.metadata().await?.len() < pos {
                pos = 0; // rotated: the writer went on from the start
            }
            file.seek(SeekFrom::Start(pos)).await?;
            loop {
                let n = file.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                pos += n as u64;
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return Ok(());
                }
            }
            if !follow || gone {
                return Ok(());
            }
            tokio::select! {
                () = tokio::time::sleep(LOG_FOLLOW_POLL) => {}
                () = tx.closed() => return Ok(()),
            }
        }
    };
    let result: io::Result<()> = stream.await;
    if let Err(e) = result {
        warn!(instance = %key.name(), path = %path.display(), error = %e, "log stream ended");
    }
}

/// Finds the executable `command[0]` names, the way `execvp` would, to refuse a bad command
/// with a clear message before spawning anything.
fn resolve_program(program: &str, path_var: &OsStr) -> Option<PathBuf> {
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

    /// Spawns the instance; the caller holds its key lock and checked it is not running.
    fn spawn(&self, spec: &InstanceSpec, command: &[String]) -> Result<Observed, DriverError> {
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

/// Keeps a stopped instance's log as `<name>.log.old` (replacing an older one), drops its
/// rotated tail, and keeps at most [`OLD_LOGS_KEPT`] old logs in `dir`.
fn keep_old_log(log: &Path, dir: &Path) {
    let with_suffix = |suffix: &str| {
        let mut p = log.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    match std::fs::rename(log, with_suffix(".old")) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(path = %log.display(), error = %e, "log of a stopped instance could not be kept")
        }
    }
    let _ = std::fs::remove_file(with_suffix(".1"));
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = entries
        .filter_map(|e| {
            let e = e.ok()?;
            let path = e.path();
            if path.extension() != Some(OsStr::new("old")) {
                return None;
            }
            Some((e.metadata().ok()?.modified().ok()?, path))
        })
        .collect();
    if old.len() > OLD_LOGS_KEPT {
        old.sort();
        for (_, path) in &old[..old.len() - OLD_LOGS_KEPT] {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::NodeId;
    use crate::runtime::conformance::{self, Fixture, HELLO, instance_spec};

    fn owner() -> Owner {
        Owner {
            cluster: "c1".into(),
            node: NodeId("n1".into()),
        }
    }

    fn other_owner() -> Owner {
        Owner {
            cluster: "c1".into(),
            node: NodeId("n2".into()),
        }
    }

    /// `start`'s progress channel: the process driver reports no progress.
    fn progress() -> mpsc::Sender<RuntimeEvent> {
        mpsc::channel(1).0
    }

    /// The variable marking every process a test's instances start.
    const MARKER: &str = "SHOAL_TEST_DATA_DIR";

    /// One test's data dir. Its instances carry [`MARKER`] in their environment, and dropping
    /// the harness kills every process that does, so even a failing test leaks no process (not
    /// even one that escaped its instance).
    struct Harness(tempfile::TempDir);

    impl Harness {
        fn new() -> Harness {
            Harness(tempfile::tempdir().unwrap())
        }

        fn path(&self) -> &Path {
            self.0.path()
        }

        fn driver(&self, owner: Owner) -> ProcessDriver {
            ProcessDriver::new(self.path(), owner, "127.0.0.1".into()).unwrap()
        }

        fn fixture(&self, owner: Owner) -> ShellFixture {
            let marker = self.path().display().to_string();
            ShellFixture { owner, marker }
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let marker = format!("{MARKER}={}", self.path().display());
            let Ok(dir) = std::fs::read_dir("/proc") else {
                return;
            };
            for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
                let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                    continue;
                };
                if environ
                    .split(|&b| b == 0)
                    .any(|var| var == marker.as_bytes())
                {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
    }

    struct ShellFixture {
        owner: Owner,
        marker: String,
    }

    impl ShellFixture {
        fn sh(&self, key: InstanceKey, script: &str, ports: Vec<PortSpec>) -> InstanceSpec {
            let command = vec!["sh".into(), "-c".into(), script.into()];
            let mut spec = instance_spec(&self.owner, key, Workload::Command { command }, ports);
            spec.spec.env.insert(MARKER.into(), self.marker.clone());
            spec
        }
    }

    fn port(name: &str) -> PortSpec {
        PortSpec {
            name: name.into(),
            container: None,
            host: None,
        }
    }

    impl Fixture for ShellFixture {
        fn long_running(&self, key: InstanceKey) -> InstanceSpec {
            self.sh(key, &format!("echo {HELLO}; exec sleep 1000"), Vec::new())
        }
        fn exits_with(&self, key: InstanceKey, code: i32) -> InstanceSpec {
            self.sh(key, &format!("exit {code}"), Vec::new())
        }
        fn ignores_sigterm(&self, key: InstanceKey) -> InstanceSpec {
            let script = format!("trap '' TERM; echo {HELLO}; while true; do sleep 1; done");
            self.sh(key, &script, Vec::new())
        }
        fn serves_http(&self, key: InstanceKey) -> Option<InstanceSpec> {
            let path = std::env::var_os("PATH").unwrap_or_default();
            if resolve_program("python3", &path).is_none() {
                eprintln!("serves_http: python3 is not in PATH, so the HTTP check cannot run");
                return None;
            }
            let script = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
            Some(self.sh(key, script, vec![port("http")]))
        }
    }

    /// Polls the instance's log until it holds `needle`; returns the log.
    async fn log_with(driver: &ProcessDriver, key: &InstanceKey, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut rx = driver.logs(key, false, None).await.unwrap();
            let mut log = Vec::new();
            while let Some(chunk) = rx.recv().await {
                log.extend_from_slice(&chunk);
            }
            let log = String::from_utf8_lossy(&log).into_owned();
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "log of {key} lacks {needle:?}: {log:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn proc_of(observed: &Observed) -> Proc {
        match observed.handle {
            Handle::Pid { pid, start_ticks } => Proc { pid, start_ticks },
            Handle::Container { .. } => panic!("a process instance with a container handle"),
        }
    }

    #[tokio::test]
    async fn process_driver_passes_the_conformance_suite() {
        let h = Harness::new();
        let driver = h.driver(owner());
        conformance::run_all(&driver, &h.fixture(owner())).await;
    }

    #[tokio::test]
    async fn restarted_driver_adopts_a_running_process_with_the_same_pid() {
        let h = Harness::new();
        let key = conformance::key("adopt");
        let first = h.driver(owner());
        let spec = h.fixture(owner()).long_running(key.clone());
        let started = first.start(&spec, &progress()).await.unwrap();
        drop(first);

        let second = h.driver(owner());
        let listed = second.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].handle, started.handle);
        assert_eq!(listed[0].status, ObservedStatus::Running);

        let (tx, mut rx) = mpsc::channel(8);
        second.watch(tx).await.unwrap();
        proc_of(&started).signal(libc::SIGKILL);
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap();
        let Some(RuntimeEvent::Exited { key: exited, exit }) = event else {
            panic!("expected an exit, got {event:?}")
        };
        assert_eq!(exited, key);
        assert_eq!(
            exit.code, None,
            "an adopted process's status cannot be collected"
        );
        let listed = second.list().await.unwrap();
        assert!(matches!(listed[0].status, ObservedStatus::Exited(_)));
        second.stop(&key, 0).await.unwrap();
        assert!(second.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn exit_of_a_child_started_before_watch_is_reported_once_watched() {
        let h = Harness::new();
        let driver = h.driver(owner());
        let key = conformance::key("early");
        let spec = h.fixture(owner()).exits_with(key.clone(), 5);
        driver.start(&spec, &progress()).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while driver.list().await.unwrap()[0].status == ObservedStatus::Running {
            assert!(Instant::now() < deadline, "{key} never exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        let (tx, mut rx) = mpsc::channel(8);
        driver.watch(tx).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
        let exit = ExitInfo {
            code: Some(5),
            signal: None,
            oom_killed: false,
        };
        assert_eq!(
            event.unwrap(),
            Some(RuntimeEvent::Exited {
                key: key.clone(),
                exit
            })
        );
        driver.stop(&key, 0).await.unwrap();
    }

    #[tokio::test]
    async fn records_of_another_node_are_never_listed_or_stopped() {
        let h = Harness::new();
        let key = conformance::key("foreign");
        let theirs = h.driver(other_owner());
        let mine = h.driver(owner());
        let spec = h.fixture(other_owner()).long_running(key.clone());
        let started = theirs.start(&spec, &progress()).await.unwrap();

        assert!(mine.list().await.unwrap().is_empty());
        mine.stop(&key, 0).await.unwrap();
        assert!(
            proc_of(&started).alive(),
            "stop touched another node's instance"
        );
        let err = mine.logs(&key, false, None).await.unwrap_err();
        assert!(matches!(err, DriverError::Rejected { .. }), "{err}");
        let own_spec = h.fixture(owner()).long_running(key.clone());
        let err = mine.start(&own_spec, &progress()).await.unwrap_err();
        assert!(matches!(err, DriverError::Rejected { .. }), "{err}");
        assert_eq!(
            theirs.list().await.unwrap()[0].status,
            ObservedStatus::Running
        );

        theirs.stop(&key, 0).await.unwrap();
        assert!(proc_of(&started).gone());
    }

    #[tokio::test]
    async fn recycled_pid_with_a_different_start_time_is_not_ours() {
        let h = Harness::new();
        let key = conformance::key("recycled");
        let driver = h.driver(owner());
        let spec = h.fixture(owner()).long_running(key.clone());
        let real = proc_of(&driver.start(&spec, &progress()).await.unwrap());

        // The record now names the pid with another start time, as if the pid had been reused.
        let mut record = driver.inner.read_record(&key).unwrap().unwrap();
        record.start_ticks += 1;
        driver.inner.write_record(&record).unwrap();

        let listed = driver.list().await.unwrap();
        assert!(
            matches!(listed[0].status, ObservedStatus::Exited(_)),
            "{listed:?}"
        );
        driver.stop(&key, 0).await.unwrap();
        assert!(
            real.alive(),
            "a process with another start time was signalled"
        );
        assert!(driver.list().await.unwrap().is_empty());

        real.signal(libc::SIGKILL);
        assert!(real.wait_gone(Duration::from_secs(10)).await);
    }

    /// Log lines written while `f` runs on this thread.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            lock(&self.0).extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn corrupt_record_is_skipped_with_a_warning() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);

        let h = Harness::new();
        let driver = h.driver(owner());
        let key = conformance::key("healthy");
        let spec = h.fixture(owner()).long_running(key.clone());
        driver.start(&spec, &progress()).await.unwrap();
        let corrupt = h.path().join("instances/shoal-broken-0-1.json");
        std::fs::write(&corrupt, b"{\"version\": 1, \"key\": ").unwrap();

        let listed = driver.list().await.unwrap();
        assert_eq!(
            listed.iter().map(|o| &o.key).collect::<Vec<_>>(),
            vec![&key]
        );
        assert!(!corrupt.exists());
        assert!(
            h.path()
                .join("instances/shoal-broken-0-1.json.corrupt")
                .exists()
        );
        let logged = String::from_utf8_lossy(&lock(&captured.0)).into_owned();
        assert!(
            logged.contains("WARN") && logged.contains("corrupt instance record"),
            "{logged}"
        );
        driver.stop(&key, 0).await.unwrap();
    }

    #[tokio::test]
    async fn port_env_vars_are_passed() {
        let h = Harness::new();
        let driver = h.driver(owner());
        let key = conformance::key("ports");
        // CARGO_MANIFEST_DIR is in this test's environment (under cargo), not the instance's.
        let script = concat!(
            "echo \"PORT=$PORT HTTP=$SHOAL_PORT_HTTP ADMIN=$SHOAL_PORT_ADMIN_API ",
            "ID=$SHOAL_SERVICE/$SHOAL_SLOT/$SHOAL_EPOCH/$SHOAL_REVISION GREETING=$GREETING ",
            "LEAK=${CARGO_MANIFEST_DIR:-none}\"; exec sleep 1000"
        );
        let mut spec =
            h.fixture(owner())
                .sh(key.clone(), script, vec![port("http"), port("admin-api")]);
        spec.spec.env.insert("GREETING".into(), "hi".into());
        let started = driver.start(&spec, &progress()).await.unwrap();

        let (http, admin) = (started.ports["http"], started.ports["admin-api"]);
        assert_ne!(http, admin);
        assert_eq!(started.endpoint, Some(format!("127.0.0.1:{http}")));
        let log = log_with(&driver, &key, "GREETING=").await;
        let expected = format!(
            "PORT={http} HTTP={http} ADMIN={admin} ID=ports/0/1/{} GREETING=hi LEAK=none\n",
            spec.revision
        );
        assert_eq!(log, expected);
        driver.stop(&key, 0).await.unwrap();
    }

    #[tokio::test]
    async fn fixed_host_port_in_use_is_rejected_naming_the_port() {
        let h = Harness::new();
        let driver = h.driver(owner());
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let fixed = PortSpec {
            name: "http".into(),
            container: None,
            host: Some(port),
        };
        let spec = h
            .fixture(owner())
            .sh(conformance::key("fixed"), "exec sleep 1000", vec![fixed]);
        match driver.start(&spec, &progress()).await {
            Err(DriverError::Rejected { reason }) => {
                assert!(reason.contains(&port.to_string()), "{reason}")
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        assert!(driver.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn missing_command_is_rejected_naming_it() {
        let h = Harness::new();
        let driver = h.driver(owner());
        let command = vec!["shoal-no-such-command".into()];
        let spec = instance_spec(
            &owner(),
            conformance::key("missing"),
            Workload::Command { command },
            Vec::new(),
        );
        let err = driver.start(&spec, &progress()).await.unwrap_err();
        assert_eq!(
            err,
            DriverError::Rejected {
                reason: "command \"shoal-no-such-command\" not found in PATH".into()
            }
        );
    }

    #[tokio::test]
    async fn instance_survives_when_the_driver_is_dropped() {
        let h = Harness::new();
        let key = conformance::key("survivor");
        let first = h.driver(owner());
        let spec = h.fixture(owner()).long_running(key.clone());
        let proc = proc_of(&first.start(&spec, &progress()).await.unwrap());
        drop(first);
        // Let the runtime cancel the dropped driver's tasks.
        tokio::time::sleep(Duration::from_millis(200)).await;

        assert!(proc.alive());
        let stat = read_stat(proc.pid).unwrap();
        assert_eq!(
            stat.session, proc.pid as i32,
            "the instance leads its own session"
        );
        let second = h.driver(owner());
        second.stop(&key, 0).await.unwrap();
        assert!(proc.gone());
    }

    #[tokio::test]
    async fn stop_also_kills_children_that_outlive_their_leader() {
        let h = Harness::new();
        let driver = h.driver(owner());
        let key = conformance::key("leftover");
        let script = "(trap '' TERM; exec sleep 1000) & echo \"child $!\"; wait";
        let spec = h.fixture(owner()).sh(key.clone(), script, Vec::new());
        driver.start(&spec, &progress()).await.unwrap();
        let log = log_with(&driver, &key, "\n").await;
        let pid: u32 = log.trim().strip_prefix("child ").unwrap().parse().unwrap();
        let child = Proc {
            pid,
            start_ticks: read_stat(pid).unwrap().start_ticks,
        };

        driver.stop(&key, 300).await.unwrap();
        assert!(!child.alive(), "a child ignoring SIGTERM survived stop");
    }

    #[test]
    fn stat_is_parsed_after_the_last_parenthesis() {
        let line =
            b"42 (we (ird) ) na)me) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1 2\n";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            ProcStat {
                state: b'S',
                session: 42,
                start_ticks: 987654
            }
        );
        assert_eq!(parse_stat(b"42 (truncated) S 1 42"), None);
        let own = read_stat(std::process::id()).unwrap();
        // SAFETY: getsid has no preconditions.
        assert_eq!(own.session, unsafe { libc::getsid(0) });
    }

    #[tokio::test]
    async fn tail_offset_finds_the_start_of_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let mut text = "x".repeat(LOG_CHUNK + 10);
        text.push_str("\nsecond\nthird\n");
        std::fs::write(&path, &text).unwrap();
        let mut file = tokio::fs::File::open(&path).await.unwrap();
        let len = text.len() as u64;
        let at = |n| {
            text.len()
                - text
                    .split_inclusive('\n')
                    .rev()
                    .take(n)
                    .map(str::len)
                    .sum::<usize>()
        };
        for lines in 0..=3 {
            let offset = tail_offset(&mut file, len, lines).await.unwrap();
            assert_eq!(offset as usize, at(lines), "{lines} lines");
        }
        assert_eq!(tail_offset(&mut file, len, 10).await.unwrap(), 0);
    }

    #[test]
    fn oversized_log_is_rotated_keeping_its_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shoal-web-0-1.log");
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&path, &text).unwrap();
        assert!(!rotate_log(&path, text.len() as u64, 30).unwrap());
        assert!(rotate_log(&path, 100, 30).unwrap());
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        let kept = std::fs::read_to_string(dir.path().join("shoal-web-0-1.log.1")).unwrap();
        assert_eq!(kept, "line 97\nline 98\nline 99\n");
    }
}
