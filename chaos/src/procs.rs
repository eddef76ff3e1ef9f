//! Instances seen from outside, through the runtime itself: the process table, read by the one
//! fleet harness (`shoal::harness::procs`). An instance is a session (the process driver starts
//! each with `setsid`) whose processes carry `SHOAL_SERVICE`, `SHOAL_SLOT` and `SHOAL_EPOCH`, in
//! one of this run's node namespaces. A shell and the command it forked share a session and
//! count once.
//!
//! Only namespaces of this run are looked at, so instances of other runs, tests or engineers
//! on the same machine never count. This file maps namespaces to node numbers; the reading and
//! the grouping are the harness's.

use std::collections::BTreeMap;

use shoal::harness::procs::{self as hp, ShoalProc};

use crate::model::InstanceProc;

/// The instance-relevant part of one process.
pub type RawProc = ShoalProc;

/// Reads the processes in the given namespaces (inode → node number).
pub fn scan(namespaces: &BTreeMap<u64, usize>) -> Vec<RawProc> {
    hp::scan(|_, inode| namespaces.contains_key(&inode))
}

/// Groups processes into instances: one per (namespace, session), described by the session
/// leader when it is there, else by the lowest pid.
pub fn instances(raw: &[RawProc], namespaces: &BTreeMap<u64, usize>) -> Vec<InstanceProc> {
    let mut out: Vec<InstanceProc> = hp::instances(raw)
        .into_iter()
        .filter_map(|i| {
            Some(InstanceProc {
                pid: i.pid,
                node: *namespaces.get(&i.net_inode)?,
                service: i.service,
                slot: i.slot,
                epoch: i.epoch,
                revision: i.revision,
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

    fn raw(pid: u32, session: u32, inode: u64) -> RawProc {
        RawProc {
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
