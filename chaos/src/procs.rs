//! Instances seen from outside, through the runtime itself: the process table. An instance is a
//! session (the process driver starts each with `setsid`) whose processes carry
//! `SHOAL_SERVICE`, `SHOAL_SLOT` and `SHOAL_EPOCH`, in one of this run's node namespaces.
//! A shell and the command it forked share a session and count once.
//!
//! Only namespaces of this run are looked at, so instances of other runs, tests or engineers
//! on the same machine never count.

use std::collections::BTreeMap;

use crate::model::InstanceProc;
use crate::net::{all_pids, proc_net_inode};

/// The instance-relevant part of one process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawProc {
    pub pid: u32,
    pub session: u32,
    pub net_inode: u64,
    pub env: BTreeMap<String, String>,
}

/// `(pgrp, session)` of a process from `/proc/<pid>/stat` text (fields after the `(comm)`).
pub fn parse_stat(text: &str) -> Option<(u32, u32)> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_whitespace();
    let _state = f.next()?;
    let _ppid = f.next()?;
    let pgrp = f.next()?.parse().ok()?;
    let session = f.next()?.parse().ok()?;
    Some((pgrp, session))
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

/// Reads the processes in the given namespaces (inode → node number).
pub fn scan(namespaces: &BTreeMap<u64, usize>) -> Vec<RawProc> {
    let mut out = Vec::new();
    for pid in all_pids() {
        let Some(inode) = proc_net_inode(pid) else {
            continue;
        };
        if !namespaces.contains_key(&inode) {
            continue;
        }
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let env = parse_environ(&environ);
        if !env.contains_key("SHOAL_SERVICE") {
            continue;
        }
        let Some((_, session)) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| parse_stat(&s))
        else {
            continue;
        };
        out.push(RawProc {
            pid,
            session,
            net_inode: inode,
            env,
        });
    }
    out
}

/// Groups processes into instances: one per (namespace, session), described by the session
/// leader when it is there, else by the lowest pid.
pub fn instances(raw: &[RawProc], namespaces: &BTreeMap<u64, usize>) -> Vec<InstanceProc> {
    let mut by_session: BTreeMap<(u64, u32), &RawProc> = BTreeMap::new();
    for p in raw {
        let key = (p.net_inode, p.session);
        let better = match by_session.get(&key) {
            None => true,
            Some(cur) => p.pid == p.session || (cur.pid != cur.session && p.pid < cur.pid),
        };
        if better {
            by_session.insert(key, p);
        }
    }
    let mut out: Vec<InstanceProc> = by_session
        .values()
        .filter_map(|p| {
            Some(InstanceProc {
                pid: p.pid,
                node: *namespaces.get(&p.net_inode)?,
                service: p.env.get("SHOAL_SERVICE")?.clone(),
                slot: p.env.get("SHOAL_SLOT")?.parse().ok()?,
                epoch: p.env.get("SHOAL_EPOCH")?.parse().ok()?,
                revision: p.env.get("SHOAL_REVISION").cloned(),
            })
        })
        .collect();
    out.sort_by(|a, b| {
        (a.node, &a.service, a.slot, a.pid).cmp(&(b.node, &b.service, b.slot, b.pid))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_after_the_command_name() {
        let s = "4242 (sleep (x) 1) S 1 4240 4240 0 -1 4194560";
        assert_eq!(parse_stat(s), Some((4240, 4240)));
    }

    #[test]
    fn environ_keeps_only_shoal_variables() {
        let env = parse_environ(b"PATH=/bin\0SHOAL_SERVICE=web\0SHOAL_SLOT=2\0junk\0");
        assert_eq!(env.len(), 2);
        assert_eq!(env["SHOAL_SLOT"], "2");
    }

    fn raw(pid: u32, session: u32, inode: u64) -> RawProc {
        RawProc {
            pid,
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
    fn a_shell_and_its_child_are_one_instance() {
        let ns = BTreeMap::from([(7, 1), (8, 2)]);
        let got = instances(&[raw(11, 10, 7), raw(10, 10, 7), raw(20, 20, 8)], &ns);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].pid, 10);
        assert_eq!(got[0].node, 1);
        assert_eq!(got[0].epoch, 3);
        assert_eq!(got[1].node, 2);
    }
}
