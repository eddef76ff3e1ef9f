//! `MemberId`: who a member is on the SWIM wire (node id, incarnation, addresses) and the
//! `foca::Identity` rules that decide which of two identities of one node wins.
//!
//! Holds no state and does no IO. The incarnation is persisted by the caller; this file only
//! orders identities.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use crate::ids::NodeId;

/// At most this many addresses travel in an identity.
pub const MAX_ADDRS: usize = 8;
/// Each address (a multiaddr in text form) is at most this many bytes.
pub const MAX_ADDR_BYTES: usize = 128;
/// A node id (base58 `PeerId`, 52 characters for Ed25519) is at most this many bytes.
pub const MAX_NODE_ID_BYTES: usize = 128;

/// A member's identity as SWIM sees it. Two identities with the same `node` are the same node
/// at different lives: the one with the higher `(incarnation, renewal)` wins and replaces the
/// other everywhere.
///
/// The identity travels in every SWIM header, so it stays small: the node id, two counters and
/// the few addresses a peer needs to dial this node before its metadata arrives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "RawMemberId")]
pub struct MemberId {
    /// The node's stable id (its libp2p `PeerId` in base58).
    pub node: NodeId,
    /// Grows at every agent start; persisted by the caller. A restarted node comes back with a
    /// higher incarnation and replaces its previous identity at once.
    pub incarnation: u64,
    /// Grows when SWIM auto-rejoins within one run (after this node was declared down, for
    /// example after a long pause). Starts at 0 at every agent start; because `incarnation`
    /// ranks first, the caller only has to persist `incarnation`.
    pub renewal: u32,
    /// Multiaddrs (text) where this node listens: at most [`MAX_ADDRS`], each at most
    /// [`MAX_ADDR_BYTES`] bytes. Shared: the identity is copied into foca's member list, the
    /// member view and every identity rebuilt from it (a suspicion, a verdict), one list for all.
    pub addrs: Arc<[String]>,
    /// `NodeKey::of(&node)`, computed once: foca asks for it for every member it compares
    /// with every update it applies. Not on the wire; set by every constructor (the field is
    /// private so that no identity is built without it), and a function of `node`, so the
    /// derived order and equality are those of the other fields.
    #[serde(skip_serializing)]
    key: NodeKey,
}

/// Why a `MemberId` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("node id is empty or longer than {MAX_NODE_ID_BYTES} bytes")]
    BadNodeId,
    #[error("{count} addresses, at most {MAX_ADDRS} are allowed")]
    TooManyAddrs { count: usize },
    #[error("address of {len} bytes, at most {MAX_ADDR_BYTES} are allowed")]
    AddrTooLong { len: usize },
}

impl MemberId {
    /// A first-life identity (`renewal` 0). Fails if the bounds above are not met.
    pub fn new(node: NodeId, incarnation: u64, addrs: Vec<String>) -> Result<Self, IdentityError> {
        let id = MemberId::life(node, incarnation, 0, addrs);
        id.validate()?;
        Ok(id)
    }

    /// Any life of `node`, unchecked (callers validate or build from checked parts).
    pub(crate) fn life(
        node: NodeId,
        incarnation: u64,
        renewal: u32,
        addrs: impl Into<Arc<[String]>>,
    ) -> Self {
        let key = NodeKey::of(&node);
        MemberId {
            node,
            incarnation,
            renewal,
            addrs: addrs.into(),
            key,
        }
    }

    /// Checks the size bounds; every identity decoded from the wire passes through here.
    pub fn validate(&self) -> Result<(), IdentityError> {
        if self.node.0.is_empty() || self.node.0.len() > MAX_NODE_ID_BYTES {
            return Err(IdentityError::BadNodeId);
        }
        if self.addrs.len() > MAX_ADDRS {
            return Err(IdentityError::TooManyAddrs {
                count: self.addrs.len(),
            });
        }
        if let Some(a) = self.addrs.iter().find(|a| a.len() > MAX_ADDR_BYTES) {
            return Err(IdentityError::AddrTooLong { len: a.len() });
        }
        Ok(())
    }

    /// An identity that only names a node, used as the destination of an announce: foca
    /// accepts an announce addressed to any identity with the receiver's node id.
    pub(crate) fn placeholder(node: NodeId) -> Self {
        MemberId::life(node, 0, 0, Vec::new())
    }

    /// The order in which lives of one node replace each other.
    fn rank(&self) -> (u64, u32, &[String]) {
        (self.incarnation, self.renewal, &self.addrs)
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}.{}", self.node, self.incarnation, self.renewal)
    }
}

/// What foca tells lives of one node apart by: a 128-bit digest of the node id. Foca compares
/// addresses of every member for each update it applies; a `NodeId` would be cloned twice per
/// comparison (thousands of allocations per update at 1,000 members), this is copied. Two node
/// ids colliding is a 2⁻¹²⁸ event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeKey(u128);

impl NodeKey {
    pub fn of(node: &NodeId) -> NodeKey {
        NodeKey(xxhash_rust::xxh3::xxh3_128(node.0.as_bytes()))
    }
}

impl foca::Identity for MemberId {
    type Addr = NodeKey;

    /// Auto-rejoin after being declared down: same node and incarnation, next renewal.
    fn renew(&self) -> Option<Self> {
        Some(MemberId {
            renewal: self.renewal.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> NodeKey {
        self.key
    }

    /// The higher `(incarnation, renewal)` wins. Two different identities with equal counters
    /// (a node restarted without persisting its incarnation, with new addresses) are ordered by
    /// their addresses, so every member picks the same winner.
    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.rank() > adversary.rank()
    }
}

/// The wire form, checked by `TryFrom` before a `MemberId` exists.
#[derive(Deserialize)]
struct RawMemberId {
    node: NodeId,
    incarnation: u64,
    renewal: u32,
    #[serde(deserialize_with = "bounded_addrs")]
    addrs: Vec<String>,
}

impl TryFrom<RawMemberId> for MemberId {
    type Error = IdentityError;
    fn try_from(raw: RawMemberId) -> Result<Self, IdentityError> {
        let id = MemberId::life(raw.node, raw.incarnation, raw.renewal, raw.addrs);
        id.validate()?;
        Ok(id)
    }
}

/// Deserializes at most [`MAX_ADDRS`] strings, refusing a longer list before allocating for it.
pub(crate) fn bounded_addrs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(BoundedStrings {
        max_items: MAX_ADDRS,
        max_len: MAX_ADDR_BYTES,
    })
}

/// A sequence visitor that refuses more than `max_items` strings or any longer than `max_len`.
pub(crate) struct BoundedStrings {
    pub max_items: usize,
    pub max_len: usize,
}

impl<'de> serde::de::Visitor<'de> for BoundedStrings {
    type Value = Vec<String>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "at most {} strings of at most {} bytes",
            self.max_items, self.max_len
        )
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
        use serde::de::Error;
        if seq.size_hint().is_some_and(|n| n > self.max_items) {
            return Err(A::Error::invalid_length(
                seq.size_hint().unwrap_or(0),
                &self,
            ));
        }
        let mut out = Vec::new();
        while let Some(s) = seq.next_element::<String>()? {
            if out.len() == self.max_items || s.len() > self.max_len {
                return Err(A::Error::invalid_length(out.len() + 1, &self));
            }
            out.push(s);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(inc: u64, renewal: u32, addr: &str) -> MemberId {
        MemberId::life(NodeId("n1".into()), inc, renewal, vec![addr.to_string()])
    }

    #[test]
    fn the_cached_key_survives_the_wire_and_a_renewal() {
        let a = id(3, 1, "a");
        let bytes = postcard::to_allocvec(&a).unwrap();
        let back: MemberId = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, a);
        assert_eq!(back.addr(), NodeKey::of(&a.node));
        assert_eq!(a.renew().unwrap().addr(), a.addr());
    }

    #[test]
    fn higher_incarnation_wins_over_any_renewal() {
        assert!(id(2, 0, "a").win_addr_conflict(&id(1, 9, "a")));
        assert!(!id(1, 9, "a").win_addr_conflict(&id(2, 0, "a")));
        assert!(id(1, 1, "a").win_addr_conflict(&id(1, 0, "a")));
    }

    #[test]
    fn equal_counters_are_ordered_by_addresses_the_same_way_on_both_sides() {
        let (a, b) = (id(1, 0, "a"), id(1, 0, "b"));
        assert!(a.win_addr_conflict(&b) != b.win_addr_conflict(&a));
    }

    #[test]
    fn lives_of_one_node_share_an_address_and_other_nodes_do_not() {
        assert_eq!(id(1, 0, "a").addr(), id(7, 3, "b").addr());
        let other = MemberId::life(NodeId("n2".into()), 1, 0, vec!["a".into()]);
        assert_ne!(id(1, 0, "a").addr(), other.addr());
    }

    #[test]
    fn renew_keeps_node_and_incarnation_and_wins() {
        let old = id(3, 0, "a");
        let new = old.renew().unwrap();
        assert_eq!((new.incarnation, new.renewal), (3, 1));
        assert!(new.win_addr_conflict(&old));
    }

    #[test]
    fn decoding_refuses_too_many_or_too_long_addresses() {
        let mut many = id(1, 0, "a");
        many.addrs = vec!["x".to_string(); MAX_ADDRS + 1].into();
        let bytes = postcard::to_allocvec(&many).unwrap();
        assert!(postcard::from_bytes::<MemberId>(&bytes).is_err());

        let mut long = id(1, 0, "a");
        long.addrs = vec!["x".repeat(MAX_ADDR_BYTES + 1)].into();
        let bytes = postcard::to_allocvec(&long).unwrap();
        assert!(postcard::from_bytes::<MemberId>(&bytes).is_err());

        let ok = id(1, 0, "/ip4/127.0.0.1/tcp/1");
        let bytes = postcard::to_allocvec(&ok).unwrap();
        assert_eq!(postcard::from_bytes::<MemberId>(&bytes).unwrap(), ok);
    }

    #[test]
    fn a_huge_length_prefix_is_refused_without_allocating() {
        // node "n", incarnation 0, renewal 0, then an address count of u32::MAX.
        let bytes = [1, b'n', 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(postcard::from_bytes::<MemberId>(&bytes).is_err());
    }
}
