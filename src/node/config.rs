//! How a node core is configured: its timing (`CoreTiming`, presets `lan` and `wan`), who it
//! is and what it offers (`NodeConfig`), and the deliberate bugs the simulator and the chaos
//! harness switch on to show that their checks catch them (`TestBugs`).

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::NodeId;
use crate::membership::SwimTuning;
use crate::reconcile::ReconcileTiming;
use crate::spec::{DriverKind, Resources};

/// Timing of the core. Units are milliseconds. Presets per profile: `CoreTiming::lan()` and
/// `CoreTiming::wan()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreTiming {
    /// How long bids for an open slot are collected before every node picks the winner.
    /// Longer windows tolerate slower links; shorter ones place faster. LAN: a few hundred ms.
    pub bid_window_ms: u64,
    /// How often a node re-examines a slot it could not bid for (capacity or membership may
    /// have changed) and re-bids for a slot whose winner never claimed it.
    pub rebid_ms: u64,
    /// How often every runtime is listed to repair lost events.
    pub relist_ms: u64,
    /// Minimum time between two reports of this node's instances (changes coalesce).
    pub report_min_interval_ms: u64,
    /// How often tombstones are garbage-collected.
    pub compact_ms: u64,
    /// `partition: majority`: an owner that has not seen a strict majority for this long stops
    /// the instance; a majority side waits `lease_ms + drift_margin_ms` after the owner became
    /// unreachable before re-placing it.
    pub lease_ms: u64,
    pub drift_margin_ms: u64,
    /// `partition: majority`: a node that wins a slot's auction waits this long before it
    /// starts the instance, and starts it only if its claim still stands. Two nodes that both
    /// believed they won (a bid lost on the way) see each other's claim in the meantime and
    /// the loser never starts. A few gossip rounds; LAN 2 s.
    pub majority_confirm_ms: u64,
    /// Claims held by nodes this node has never heard of are treated as orphaned only after it
    /// has run this long (membership needs time to converge after a start).
    pub startup_grace_ms: u64,
    /// An instance whose slot moved to another node keeps running until the new owner reports
    /// it running (make-before-break), but no longer than this.
    pub handover_max_ms: u64,
    /// How often a node runs anti-entropy with one random live peer. Each round costs about
    /// 600 bytes each way when nothing differs.
    pub sync_interval_ms: u64,
    pub reconcile: ReconcileTiming,
}

impl CoreTiming {
    pub fn lan() -> CoreTiming {
        CoreTiming {
            bid_window_ms: 300,
            rebid_ms: 2_000,
            relist_ms: 5_000,
            report_min_interval_ms: 200,
            compact_ms: 60_000,
            lease_ms: 10_000,
            drift_margin_ms: 2_000,
            majority_confirm_ms: 2_000,
            startup_grace_ms: 10_000,
            handover_max_ms: 60_000,
            sync_interval_ms: 5_000,
            reconcile: ReconcileTiming::default(),
        }
    }

    pub fn wan() -> CoreTiming {
        CoreTiming {
            bid_window_ms: 1_500,
            rebid_ms: 5_000,
            relist_ms: 10_000,
            report_min_interval_ms: 1_000,
            compact_ms: 60_000,
            lease_ms: 60_000,
            drift_margin_ms: 10_000,
            majority_confirm_ms: 6_000,
            startup_grace_ms: 60_000,
            handover_max_ms: 120_000,
            sync_interval_ms: 15_000,
            reconcile: ReconcileTiming::default(),
        }
    }
}

/// Who this node is and what it offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Grows at every agent start (persisted by the shell).
    pub incarnation: u64,
    /// The cluster's id (a digest of its key), put on every instance as `shoal.cluster`.
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub runtimes: BTreeSet<DriverKind>,
    pub agent_version: String,
    pub timing: CoreTiming,
    /// Multiaddrs peers use to reach this node (advertised through membership).
    pub addrs: Vec<String>,
    /// Multiaddrs of nodes to join through: dialled while this node sees no other member (see
    /// `node/dial.rs`). Empty for the first node of a new cluster.
    pub seeds: Vec<String>,
    /// SWIM timing (a fleet of one runs it too, with nobody to probe).
    pub swim: SwimTuning,
    /// Bugs switched on deliberately, to show that the chaos harness and the simulator catch
    /// them. Never set in production (`SHOAL_TEST_BUGS`).
    pub bugs: TestBugs,
}

/// Deliberate bugs for checking that invariant checks catch them. All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestBugs {
    /// A node keeps running instances whose claim moved to another node.
    pub skip_reclaim: bool,
    /// A node bids and claims beyond its capacity.
    pub ignore_capacity: bool,
    /// `partition: majority` services are neither fenced nor held back in a minority.
    pub no_fence: bool,
}

impl TestBugs {
    /// Parses `skip-reclaim,ignore-capacity,no-fence`; unknown names are returned as errors.
    pub fn parse(s: &str) -> Result<TestBugs, String> {
        let mut b = TestBugs::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "skip-reclaim" => b.skip_reclaim = true,
                "ignore-capacity" => b.ignore_capacity = true,
                "no-fence" => b.no_fence = true,
                other => {
                    return Err(format!(
                        "unknown test bug {other:?} (known: skip-reclaim, ignore-capacity, no-fence)"
                    ));
                }
            }
        }
        Ok(b)
    }

    pub fn any(&self) -> bool {
        self.skip_reclaim || self.ignore_capacity || self.no_fence
    }
}
