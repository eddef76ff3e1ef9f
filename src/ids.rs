//! Identifiers and units shared by every part of the core: node ids, slots, time.
//!
//! Plain data only: no parsing of user input (that is `spec/`) and no IO.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::spec::ServiceName;

/// A node's id: the base58 text of its libp2p `PeerId` (an Ed25519 key kept in its data dir).
/// Stable across restarts. Ordered by its text, which is the tie-breaker everywhere.
///
/// The text is shared (`Arc<str>`): a node holds its peers' ids in every claim, bid and report,
/// and the replicated state keeps one allocation per node (see `ClusterState`) so that the
/// many comparisons of a large deploy stay in cache. Equal pointers compare equal at once.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub Arc<str>);

impl NodeId {
    /// The id as people read it in tables, logs and explanations (see [`short_node_id`]).
    pub fn short(&self) -> &str {
        short_node_id(&self.0)
    }
}

/// How many characters of a node id people see, after the common prefix is stripped.
pub const SHORT_NODE_ID_CHARS: usize = 12;

/// A node id as people read it: the common `12D3KooW` prefix of libp2p Ed25519 peer ids
/// stripped, then the first [`SHORT_NODE_ID_CHARS`] characters. The one shortener used by
/// tables, logs and explanations. Cuts on a character boundary, so any UTF-8 text is safe.
pub fn short_node_id(id: &str) -> &str {
    let rest = id.strip_prefix("12D3KooW").unwrap_or(id);
    match rest.char_indices().nth(SHORT_NODE_ID_CHARS) {
        Some((end, _)) => &rest[..end],
        None => rest,
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
/// Ordered by service, then index. Two slots whose names share one allocation (the replicated
/// state keeps one per service) compare by index alone, without reading the name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SlotId {
    pub service: ServiceName,
    pub index: u32,
}

impl Ord for SlotId {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        let same = Arc::ptr_eq(&self.service.0, &other.service.0);
        if same {
            self.index.cmp(&other.index)
        } else {
            (&self.service, self.index).cmp(&(&other.service, other.index))
        }
    }
}

impl PartialOrd for SlotId {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whether two slots share their name's allocation or hold equal copies, they order by
        /// the name's text, then the index, exactly as a `(String, u32)` pair does.
        #[test]
        fn slot_order_is_by_name_then_index_however_the_name_is_held(
            a in (0usize..3, 0u32..4),
            b in (0usize..3, 0u32..4),
            shared in any::<bool>(),
        ) {
            let names = ["a", "ab", "b"];
            let name_a = ServiceName(names[a.0].into());
            let name_b = if shared && a.0 == b.0 {
                name_a.clone()
            } else {
                ServiceName(names[b.0].into())
            };
            let x = SlotId::new(&name_a, a.1);
            let y = SlotId::new(&name_b, b.1);
            let expected = (names[a.0], a.1).cmp(&(names[b.0], b.1));
            prop_assert_eq!(x.cmp(&y), expected);
            prop_assert_eq!(y.cmp(&x), expected.reverse());
            prop_assert_eq!(x == y, expected.is_eq());
        }

        /// The shortener never panics, whatever the text, and keeps a prefix of what follows
        /// the common `12D3KooW` prefix.
        #[test]
        fn a_short_node_id_is_a_prefix_of_any_text_and_never_panics(id in ".{0,40}") {
            let short = short_node_id(&id);
            let rest = id.strip_prefix("12D3KooW").unwrap_or(&id);
            prop_assert!(rest.starts_with(short));
            prop_assert!(short.chars().count() <= SHORT_NODE_ID_CHARS);
        }
    }

    #[test]
    fn a_short_node_id_drops_the_common_prefix_and_keeps_twelve_characters() {
        let id = "12D3KooWQ8vDpwZyK9xWcCdaJ4k7Mp2sL3nR5tV8yB1eF6gH";
        assert_eq!(short_node_id(id), "Q8vDpwZyK9xW");
        assert_eq!(NodeId(id.into()).short(), "Q8vDpwZyK9xW");
        assert_eq!(short_node_id("n3"), "n3");
        assert_eq!(short_node_id("ééééééééééééééé"), "éééééééééééé");
        assert_eq!(short_node_id(""), "");
    }
}
