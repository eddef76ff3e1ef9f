//! Processes as the driver sees them through `/proc`: the fields of `/proc/<pid>/stat` it reads,
//! and [`Proc`], a pid that is ours only while its start time matches, with the checks and
//! signals `stop` needs (the instance's process group and any straggler of its session).
//!
//! Deliberately not here: spawning (`spawn`) and waiting for our own children (the driver's
//! reapers); nothing here signals a pid whose start time is not the recorded one.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::time::Duration;

use tokio::time::Instant;

use crate::runtime::ExitInfo;

/// How often `stop` checks whether the instance is gone.
const STOP_POLL: Duration = Duration::from_millis(50);

/// The exit of a process whose status could not be collected (not our child).
pub(super) fn unknown_exit() -> ExitInfo {
    ExitInfo {
        code: None,
        signal: None,
        oom_killed: false,
    }
}

pub(super) fn exit_info(status: ExitStatus) -> ExitInfo {
    ExitInfo {
        code: status.code(),
        signal: status.signal(),
        oom_killed: false,
    }
}

/// The fields of `/proc/<pid>/stat` the driver uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ProcStat {
    /// `R`, `S`, `D`, `Z` (zombie), `X` (dead), ...
    pub(super) state: u8,
    pub(super) session: i32,
    pub(super) start_ticks: u64,
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

pub(super) fn read_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// One process as the driver identifies it: a pid is only ours while its start time matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Proc {
    pub(super) pid: u32,
    pub(super) start_ticks: u64,
}

impl Proc {
    /// Running: the pid exists, is ours, and is neither a zombie nor dead. (In containers PID 1
    /// may never reap orphans, so a killed adopted process can linger as a zombie.)
    pub(super) fn alive(self) -> bool {
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
    pub(super) fn gone(self) -> bool {
        !self.alive() && self.stragglers().is_empty()
    }

    /// Sends `sig` to the instance's process group while the leader holds its pid, and to any
    /// straggler of its session. Never to a pid whose start time is not ours.
    pub(super) fn signal(self, sig: i32) {
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
    pub(super) async fn wait_gone(self, limit: Duration) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
