//! Identifiers and units shared by every part of the core: node ids, slots, time.
//!
//! Plain data only: no parsing of user input (that is `spec/`) and no IO.

use serde::{Deserialize, Serialize};

use crate::spec::ServiceName;

/// A node's id: the base58 text of its libp2p `PeerId` (an Ed25519 key kept in its data dir).
/// Stable across restarts. Ordered by its text, which is the tie-breaker everywhere.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub String);

impl NodeId {
    /// The first characters after the common `12D3KooW` prefix, for tables meant for people.
    pub fn short(&self) -> &str {
        let s = self.0.strip_prefix("12D3KooW").unwrap_or(&self.0);
        &s[..s.len().min(8)]
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milliseconds on the node's clock, given to the core by the shell. The shell derives it from
/// one wall-clock reading at start plus a monotonic clock, so it never goes backwards within a
/// run and is close to Unix time (the hybrid logical clock absorbs the rest).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Millis(pub u64);

impl Millis {
    pub fn plus(self, ms: u64) -> Millis {
        Millis(self.0.saturating_add(ms))
    }
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// `(service, index)`: the unit of placement. A service with `replicas: n` has slots `0..n`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SlotId {
    pub service: ServiceName,
    pub index: u32,
}

impl SlotId {
    pub fn new(service: &ServiceName, index: u32) -> SlotId {
        SlotId {
            service: service.clone(),
            index,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.service, self.index)
    }
}

/// One concrete instance: a slot at an epoch. The runtime names it
/// `shoal-<service>-<slot>-<epoch>` and labels it with these fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct InstanceKey {
    pub slot: SlotId,
    pub epoch: u64,
}

impl InstanceKey {
    /// The runtime name: `shoal-<service>-<slot>-<epoch>`.
    pub fn name(&self) -> String {
        format!(
            "shoal-{}-{}-{}",
            self.slot.service, self.slot.index, self.epoch
        )
    }
}

impl std::fmt::Display for InstanceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.slot, self.epoch)
    }
}

/// A revision's id as people see and type it: `<seq>.<tag>` (for example `4.a1f3`), where `seq`
/// counts the service's revisions and `tag` is four hex digits of the revision's timestamp hash,
/// so that two revisions written concurrently on two nodes never share an id.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RevisionId(pub String);

impl RevisionId {
    /// The sequence number before the dot.
    pub fn seq(&self) -> u64 {
        self.0
            .split('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    }
}

impl std::fmt::Display for RevisionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
