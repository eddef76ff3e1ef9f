//! The invariants, each a plain function from observations to typed violations. They read only
//! what `model.rs` holds (snapshots taken from outside: the process table and the CLI's JSON)
//! and the harness's model of acknowledged writes, so unit tests feed them synthetic
//! observations.
//!
//! Which nodes count: an instance on a node whose agent was killed is out of everyone's reach
//! until that node returns (availability first, DESIGN.md section 5), so the "after
//! convergence" invariants (exactly N, no orphan) look at nodes whose agent runs. The safety
//! invariants sampled all along look wider: capacity at every node, and "majority never twice"
//! at every node that has an agent process (running or paused).
//!
//! This file holds the vocabulary (`Invariant`, `Violation`) and `converged`; the checks are
//! in `instances.rs` (exactly N, no orphan), `safety.rs` (capacity, majority once) and
//! `state.rs` (digest, no lost write, convergence). Nothing here takes a snapshot or runs a
//! step (`runner/`).

#[cfg(test)]
mod fixtures;
mod instances;
mod safety;
mod state;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::model::{Expected, Res, Snapshot};

pub use instances::{exactly_n, no_orphan};
pub use safety::{capacity, majority_once};
pub use state::{convergence, digest, no_lost_write};

/// The invariants, by the names scenarios and `--expect` use.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    /// 1. exactly N running instances per service after convergence, each slot once.
    ExactlyN,
    /// 2. no instance whose (service, slot, epoch) is not the live claim.
    NoOrphan,
    /// 3. no node above its capacity, at any sampled instant.
    Capacity,
    /// 4. one digest on every live node after quiescence.
    Digest,
    /// 5. every acknowledged write is in the final history.
    NoLostWrite,
    /// 6. a `partition: majority` service never runs twice at any sampled instant.
    Majority,
    /// 7. convergence within the scenario's timeout.
    Convergence,
}

impl Invariant {
    pub const ALL: [Invariant; 7] = [
        Invariant::ExactlyN,
        Invariant::NoOrphan,
        Invariant::Capacity,
        Invariant::Digest,
        Invariant::NoLostWrite,
        Invariant::Majority,
        Invariant::Convergence,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Invariant::ExactlyN => "exactly-n",
            Invariant::NoOrphan => "no-orphan",
            Invariant::Capacity => "capacity",
            Invariant::Digest => "digest",
            Invariant::NoLostWrite => "no-lost-write",
            Invariant::Majority => "majority",
            Invariant::Convergence => "convergence",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a count came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The process table, read from outside.
    Processes,
    /// `shoal ps` on this node (1-based).
    Ps(usize),
    /// `shoal status` on this node.
    Status(usize),
}

/// One broken invariant, with what is needed to understand it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "violation", rename_all = "kebab-case")]
pub enum Violation {
    SlotCount {
        service: String,
        slot: u32,
        found: usize,
        source: Source,
    },
    /// A slot at or past `replicas` still runs (scale down or rm not applied).
    SurplusSlot {
        service: String,
        slot: u32,
        source: Source,
    },
    Orphan {
        pid: u32,
        node: usize,
        service: String,
        slot: u32,
        epoch: u64,
        /// The live claim `(node, epoch)`, if any.
        claim: Option<(usize, u64)>,
    },
    OverCapacity {
        node: usize,
        used: Res,
        capacity: Res,
        source: Source,
    },
    DigestMismatch {
        digests: BTreeMap<usize, String>,
    },
    NoDigest {
        node: usize,
        reason: String,
    },
    LostWrite {
        service: String,
        revision: String,
    },
    WrongFinalRevision {
        service: String,
        expected: String,
        found: Option<String>,
    },
    MajorityTwice {
        service: String,
        slot: u32,
        nodes: Vec<usize>,
    },
    NotConverged {
        waited_ms: u64,
        timeout_ms: u64,
    },
}

impl Violation {
    pub fn invariant(&self) -> Invariant {
        match self {
            Violation::SlotCount { .. } | Violation::SurplusSlot { .. } => Invariant::ExactlyN,
            Violation::Orphan { .. } => Invariant::NoOrphan,
            Violation::OverCapacity { .. } => Invariant::Capacity,
            Violation::DigestMismatch { .. } | Violation::NoDigest { .. } => Invariant::Digest,
            Violation::LostWrite { .. } | Violation::WrongFinalRevision { .. } => {
                Invariant::NoLostWrite
            }
            Violation::MajorityTwice { .. } => Invariant::Majority,
            Violation::NotConverged { .. } => Invariant::Convergence,
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Processes => write!(f, "process table"),
            Source::Ps(n) => write!(f, "ps on n{n}"),
            Source::Status(n) => write!(f, "status on n{n}"),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::SlotCount {
                service,
                slot,
                found,
                source,
            } => write!(
                f,
                "{service}/{slot} runs {found} times, not once ({source})"
            ),
            Violation::SurplusSlot {
                service,
                slot,
                source,
            } => write!(
                f,
                "{service}/{slot} is past the replica count and still runs ({source})"
            ),
            Violation::Orphan {
                pid,
                node,
                service,
                slot,
                epoch,
                claim,
            } => match claim {
                Some((cn, ce)) => write!(
                    f,
                    "pid {pid} on n{node} runs {service}/{slot} epoch {epoch}, but the claim is n{cn} epoch {ce}"
                ),
                None => write!(
                    f,
                    "pid {pid} on n{node} runs {service}/{slot} epoch {epoch}, which no live node claims"
                ),
            },
            Violation::OverCapacity {
                node,
                used,
                capacity,
                source,
            } => write!(
                f,
                "n{node} uses {}m cpu / {} bytes, above its capacity {}m / {} ({source})",
                used.cpu_millis, used.memory_bytes, capacity.cpu_millis, capacity.memory_bytes
            ),
            Violation::DigestMismatch { digests } => {
                write!(f, "digests differ:")?;
                for (n, d) in digests {
                    write!(f, " n{n}={}", d.get(..12).unwrap_or(d))?;
                }
                Ok(())
            }
            Violation::NoDigest { node, reason } => {
                write!(f, "n{node} did not report a digest: {reason}")
            }
            Violation::LostWrite { service, revision } => {
                write!(
                    f,
                    "acknowledged write {service}@{revision} is in no live node's history"
                )
            }
            Violation::WrongFinalRevision {
                service,
                expected,
                found,
            } => write!(
                f,
                "{service}: the current revision is {}, the last acknowledged write was {expected}",
                found.as_deref().unwrap_or("none")
            ),
            Violation::MajorityTwice {
                service,
                slot,
                nodes,
            } => write!(
                f,
                "majority service {service}/{slot} runs on {nodes:?} at once"
            ),
            Violation::NotConverged {
                waited_ms,
                timeout_ms,
            } => write!(
                f,
                "not converged after {waited_ms} ms (timeout {timeout_ms} ms)"
            ),
        }
    }
}

/// Whether the fleet looks converged in this snapshot: every live node answered, one digest,
/// exactly N and no orphan.
pub fn converged(expected: &Expected, snap: &Snapshot) -> bool {
    let live: Vec<_> = snap.live().collect();
    !live.is_empty()
        && live.iter().all(|n| n.status.is_some() && n.ps.is_some())
        && digest(snap).is_empty()
        && exactly_n(expected, snap).is_empty()
        && no_orphan(snap).is_empty()
}

#[cfg(test)]
mod tests {
    use super::fixtures::healthy;
    use super::*;

    #[test]
    fn a_healthy_fleet_breaks_nothing() {
        let (e, s) = healthy();
        assert_eq!(exactly_n(&e, &s), vec![]);
        assert_eq!(no_orphan(&s), vec![]);
        assert_eq!(capacity(&e, &s), vec![]);
        assert_eq!(digest(&s), vec![]);
        assert_eq!(majority_once(&e, &s), vec![]);
        assert!(converged(&e, &s));
    }
}
