//! What runs, read from `/proc`: instances of Shoal services and the cost of agent processes.
//! This is the truth the harness compares the agents' answers with.
//!
//! An instance is a session (the process driver starts each with `setsid`) whose processes
//! carry `SHOAL_SERVICE`, `SHOAL_SLOT` and `SHOAL_EPOCH`: a shell and the command it forked, or a
//! `shoal lease-run` supervisor and its command, count once. Processes of other users cannot be
//! read and are skipped. Nothing here kills or changes anything except [`kill_all`].

use std::collections::BTreeMap;

/// The fields of `/proc/<pid>/stat` the harness reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `Z`, ...
    pub state: char,
    pub ppid: u32,
    pub pgrp: u32,
    pub session: u32,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads `/proc/<pid>/stat` text (fields after the `(comm)`, which may hold spaces and parens).
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: f.first()?.chars().next()?,
        ppid: f.get(1)?.parse().ok()?,
        pgrp: f.get(2)?.parse().ok()?,
        session: f.get(3)?.parse().ok()?,
        cpu_ticks: f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    })
}

/// The `SHOAL_*` variables of a NUL-separated environ block.
pub fn parse_environ(bytes: &[u8]) -> BTreeMap<String, String> {
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = std::str::from_utf8(kv).ok()?;
            let (k, v) = kv.split_once('=')?;
            k.starts_with("SHOAL_")
                .then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// `/proc/<pid>/stat`, read now.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether a process runs (exists and is not a zombie).
pub fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|s| !matches!(s.state, 'Z' | 'X'))
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// The inode of a process's network namespace (`/proc/<pid>/ns/net` → `net:[4026531840]`).
pub fn net_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Resident memory of a process now, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmRSS")
}

/// Peak resident memory of a process so far, in KiB.
pub fn hwm_kib(pid: u32) -> Option<u64> {
    status_kib(pid, "VmHWM")
}

/// Clock ticks per second (`CPU ticks / this` = seconds).
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// One process that carries `SHOAL_SERVICE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShoalProc {
    pub pid: u32,
    pub ppid: u32,
    pub session: u32,
    /// Its network namespace (0 when it could not be read).
    pub net_inode: u64,
    /// Its `SHOAL_*` variables.
    pub env: BTreeMap<String, String>,
}

/// The live processes that carry `SHOAL_SERVICE` and that `keep(pid, net_inode)` accepts.
pub fn scan(mut keep: impl FnMut(u32, u64) -> bool) -> Vec<ShoalProc> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let inode = net_inode(pid).unwrap_or(0);
        if !keep(pid, inode) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env = parse_environ(&environ);
        if !env.contains_key("SHOAL_SERVICE") {
            continue;
        }
        let Some(st) = stat(pid).filter(|s| !matches!(s.state, 'Z' | 'X')) else {
            continue;
        };
        out.push(ShoalProc {
            pid,
            ppid: st.ppid,
            session: st.session,
            net_inode: inode,
            env,
        });
    }
    out
}

/// One instance: a session of processes of one slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The session leader when it is there, else the session's lowest pid.
    pub pid: u32,
    pub ppid: u32,
    pub session: u32,
    pub net_inode: u64,
    pub service: String,
    pub slot: u32,
    pub epoch: u64,
    pub revision: Option<String>,
}

impl Instance {
    /// Whether `pid` leads its session (the process the driver started).
    pub fn is_leader(&self) -> bool {
        self.pid == self.session
    }
}

/// Groups processes into instances: one per (namespace, session), described by the session
/// leader when it is there, else by the lowest pid. Sorted by (namespace, service, slot, pid).
pub fn instances(procs: &[ShoalProc]) -> Vec<Instance> {
    let mut by_session: BTreeMap<(u64, u32), &ShoalProc> = BTreeMap::new();
    for p in procs {
        let key = (p.net_inode, p.session);
        let better = match by_session.get(&key) {
            None => true,
            Some(cur) => p.pid == p.session || (cur.pid != cur.session && p.pid < cur.pid),
        };
        if better {
            by_session.insert(key, p);
        }
    }
    let mut out: Vec<Instance> = by_session
        .values()
        .filter_map(|p| {
            Some(Instance {
                pid: p.pid,
                ppid: p.ppid,
                session: p.session,
                net_inode: p.net_inode,
                service: p.env.get("SHOAL_SERVICE")?.clone(),
                slot: p.env.get("SHOAL_SLOT")?.parse().ok()?,
                epoch: p.env.get("SHOAL_EPOCH")?.parse().ok()?,
                revision: p.env.get("SHOAL_REVISION").cloned(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.net_inode, &a.service, a.slot, a.pid).cmp(&(b.net_inode, &b.service, b.slot, b.pid))
    });
    out
}

/// The instances of `service` running now, on any network namespace.
pub fn instances_of(service: &str) -> Vec<Instance> {
    let mut v = instances(&scan(|_, _| true));
    v.retain(|i| i.service == service);
    v
}

/// SIGKILLs every pid given (cleanup; a pid already gone is no error).
pub fn kill_all(pids: &[u32]) {
    for p in pids {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*p as i32, libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let s = "4242 (sleep (x) 1) S 1 4240 4240 0 -1 4194560 0 0 0 0 7 3 0 0";
        let st = parse_stat(s).unwrap();
        assert_eq!(
            (st.state, st.ppid, st.pgrp, st.session),
            ('S', 1, 4240, 4240)
        );
        assert_eq!(st.cpu_ticks, 10);
    }

    #[test]
    fn environ_keeps_only_shoal_variables() {
        let env = parse_environ(b"PATH=/bin\0SHOAL_SERVICE=web\0SHOAL_SLOT=2\0junk\0");
        assert_eq!(env.len(), 2);
        assert_eq!(env["SHOAL_SLOT"], "2");
    }

    fn p(pid: u32, session: u32, inode: u64) -> ShoalProc {
        ShoalProc {
            pid,
            ppid: 1,
            session,
            net_inode: inode,
            env: BTreeMap::from([
                ("SHOAL_SERVICE".into(), "web".into()),
                ("SHOAL_SLOT".into(), "0".into()),
                ("SHOAL_EPOCH".into(), "3".into()),
            ]),
        }
    }

    #[test]
    fn a_shell_and_its_child_are_one_instance_named_by_the_leader() {
        let got = instances(&[p(11, 10, 7), p(10, 10, 7), p(20, 20, 8), p(31, 30, 8)]);
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].pid, got[0].epoch), (10, 3));
        assert!(got[0].is_leader());
        assert!(
            !got[2].is_leader(),
            "a session whose leader is gone still counts"
        );
    }

    #[test]
    fn this_process_is_alive_and_has_a_size() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(hwm_kib(me) >= rss_kib(me));
        assert!(net_inode(me).is_some());
    }
}
