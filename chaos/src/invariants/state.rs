//! Invariants 4, 5 and 7, about the replicated state: every live node reports one digest, no
//! acknowledged write is lost, and the fleet converges within its timeout. Pure functions of
//! what the runner observed; the waiting and timing are `runner/checks.rs`.

use std::collections::{BTreeMap, BTreeSet};

use super::Violation;
use crate::model::{AckedWrite, HistoryObs, Snapshot};

/// Invariant 4: Every live node reports the same digest.
pub fn digest(snap: &Snapshot) -> Vec<Violation> {
    let mut digests = BTreeMap::new();
    let mut v = Vec::new();
    for n in snap.live() {
        match &n.status {
            Some(st) => {
                digests.insert(n.node, st.digest.clone());
            }
            None => v.push(Violation::NoDigest {
                node: n.node,
                reason: n.error.clone().unwrap_or_else(|| "no answer".into()),
            }),
        }
    }
    let distinct: BTreeSet<&String> = digests.values().collect();
    if distinct.len() > 1 {
        v.push(Violation::DigestMismatch { digests });
    }
    v
}

/// How many revisions a history keeps (DESIGN.md section 4: last N, default 10); an acknowledged
/// revision may have aged out of a history that is full.
pub const HISTORY_KEEP: usize = 10;

/// Invariant 5: Every acknowledged write appears in the final history of some live node, and the current
/// revision of each service is its last acknowledged write (the harness writes one at a time).
/// `histories[node][service]` is that node's `history` (absent: the service is unknown there).
pub fn no_lost_write(
    acked: &[AckedWrite],
    histories: &BTreeMap<usize, BTreeMap<String, Vec<HistoryObs>>>,
) -> Vec<Violation> {
    let mut v = Vec::new();
    for w in acked {
        let found = histories.values().any(|h| {
            h.get(&w.service)
                .is_some_and(|revs| revs.iter().any(|r| r.revision == w.revision))
        });
        let aged_out = histories.values().any(|h| {
            h.get(&w.service)
                .is_some_and(|revs| revs.len() >= HISTORY_KEEP)
        });
        if !found && !aged_out {
            v.push(Violation::LostWrite {
                service: w.service.clone(),
                revision: w.revision.clone(),
            });
        }
    }
    let mut last: BTreeMap<&str, &AckedWrite> = BTreeMap::new();
    for w in acked {
        last.insert(&w.service, w);
    }
    for (service, w) in last {
        for h in histories.values() {
            let current = h
                .get(service)
                .and_then(|revs| revs.iter().find(|r| r.current));
            let ok = match current {
                Some(c) => c.revision == w.revision,
                // A service nobody knows any more: fine only if it was removed.
                None => w.deleted,
            };
            if !ok {
                v.push(Violation::WrongFinalRevision {
                    service: service.to_string(),
                    expected: w.revision.clone(),
                    found: current.map(|c| c.revision.clone()),
                });
                break;
            }
        }
    }
    v
}

/// Invariant 7: Convergence within the timeout; `waited_ms` None means it never converged.
pub fn convergence(waited_ms: Option<u64>, timeout_ms: u64) -> Vec<Violation> {
    match waited_ms {
        Some(w) if w <= timeout_ms => Vec::new(),
        Some(w) => vec![Violation::NotConverged {
            waited_ms: w,
            timeout_ms,
        }],
        None => vec![Violation::NotConverged {
            waited_ms: timeout_ms,
            timeout_ms,
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invariants::Invariant;
    use crate::invariants::fixtures::healthy;
    use crate::model::AgentState;

    #[test]
    fn different_digests_on_live_nodes_break_digest_but_a_paused_node_does_not_count() {
        let (_, mut s) = healthy();
        s.nodes[2].status.as_mut().unwrap().digest = "d2".into();
        assert_eq!(digest(&s).len(), 1);
        s.nodes[2].agent = AgentState::Paused;
        assert_eq!(digest(&s), vec![]);
    }

    fn hist(revs: &[(&str, bool)]) -> Vec<HistoryObs> {
        revs.iter()
            .map(|(r, current)| HistoryObs {
                revision: r.to_string(),
                written_by: String::new(),
                written_at: 0,
                current: *current,
                deleted: false,
            })
            .collect()
    }

    fn ack(service: &str, revision: &str) -> AckedWrite {
        AckedWrite {
            at_ms: 0,
            service: service.into(),
            revision: revision.into(),
            changed: true,
            deleted: false,
        }
    }

    #[test]
    fn an_acknowledged_revision_missing_from_every_history_is_lost() {
        let acked = vec![ack("web", "r1"), ack("web", "r2")];
        let good = BTreeMap::from([(
            1,
            BTreeMap::from([("web".into(), hist(&[("r2", true), ("r1", false)]))]),
        )]);
        assert_eq!(no_lost_write(&acked, &good), vec![]);
        let lost = BTreeMap::from([(1, BTreeMap::from([("web".into(), hist(&[("r1", true)]))]))]);
        let v = no_lost_write(&acked, &lost);
        assert!(v.contains(&Violation::LostWrite {
            service: "web".into(),
            revision: "r2".into()
        }));
        assert!(v.contains(&Violation::WrongFinalRevision {
            service: "web".into(),
            expected: "r2".into(),
            found: Some("r1".into())
        }));
    }

    #[test]
    fn an_old_revision_may_age_out_of_a_full_history() {
        let mut acked = vec![ack("web", "r0")];
        let mut revs = Vec::new();
        for i in 1..=HISTORY_KEEP {
            acked.push(ack("web", &format!("r{i}")));
            revs.push((format!("r{i}"), i == HISTORY_KEEP));
        }
        let revs: Vec<(&str, bool)> = revs.iter().map(|(r, c)| (r.as_str(), *c)).collect();
        let h = BTreeMap::from([(1, BTreeMap::from([("web".into(), hist(&revs))]))]);
        assert_eq!(no_lost_write(&acked, &h), vec![]);
    }

    #[test]
    fn convergence_fails_past_its_timeout() {
        assert_eq!(convergence(Some(900), 1000), vec![]);
        assert_eq!(
            convergence(Some(1100), 1000)[0].invariant(),
            Invariant::Convergence
        );
        assert_eq!(convergence(None, 1000).len(), 1);
    }
}
