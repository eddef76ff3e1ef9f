//! Anti-entropy: compact digests of `ClusterState` and the exchange that repairs what gossip
//! missed.
//!
//! Every entry of the state (a service, a claim, a report, a graveyard record, a drain flag)
//! falls into one of `BUCKETS` buckets by the hash of its key; a bucket's digest is the wrapping
//! sum of its entries' hashes, so it does not depend on iteration order. Two nodes exchange
//! digests, then only the entries of the buckets that differ, in both directions:
//!
//! ```text
//! A ── Digest(A's buckets) ─────────▶ B     B finds the differing buckets D
//! A ◀── Entries(B's entries in D, D) ─ B     A merges them
//! A ── Push(A's entries in D) ───────▶ B     B merges them
//! A ◀── Ack ────────────────────────── B
//! ```
//!
//! Transfers are bounded: `entries_in` stops at a byte budget and says whether it was complete;
//! what did not fit is repaired by the next round. Sans-IO: no clock, no IO.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::state::ClusterState;

/// Buckets per digest: 64 × 8 bytes = 512 bytes per digest.
pub const BUCKETS: usize = 64;

/// Byte budget for the entries of one sync message (well under the transport's frame limit).
pub const MAX_SYNC_ENTRY_BYTES: usize = 512 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    pub buckets: Vec<u64>,
}

/// Messages of `/shoal/sync/1`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncMsg {
    /// Request: the sender's digest.
    Digest(Digest),
    /// Response: the responder's entries in the buckets that differ, which buckets those are,
    /// and whether every entry fitted.
    Entries {
        state: ClusterState,
        differing: Vec<u16>,
        complete: bool,
    },
    /// Request: the entries the responder may lack.
    Push(ClusterState),
    /// Response to `Push`.
    Ack,
}

fn hash(tag: u8, key: &impl Serialize) -> u64 {
    let mut bytes = vec![tag];
    bytes.extend(postcard::to_stdvec(key).expect("in-memory encoding cannot fail"));
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

fn bucket(tag: u8, key: &impl Serialize) -> usize {
    (hash(tag, key) % BUCKETS as u64) as usize
}

fn entry_hash(tag: u8, key: &impl Serialize, value: &impl Serialize) -> u64 {
    let mut bytes = vec![tag];
    bytes.extend(postcard::to_stdvec(key).expect("in-memory encoding cannot fail"));
    bytes.extend(postcard::to_stdvec(value).expect("in-memory encoding cannot fail"));
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

const SERVICES: u8 = 1;
const CLAIMS: u8 = 2;
const REPORTS: u8 = 3;
const GRAVEYARD: u8 = 4;
const DRAINS: u8 = 5;

/// The digest of a state.
pub fn digest(s: &ClusterState) -> Digest {
    let mut buckets = vec![0u64; BUCKETS];
    let mut add = |tag: u8, key: &dyn Fn() -> (usize, u64)| {
        let (b, h) = key();
        buckets[b] = buckets[b].wrapping_add(h.wrapping_add(tag as u64));
    };
    for (k, v) in &s.services {
        add(SERVICES, &|| {
            (bucket(SERVICES, k), entry_hash(SERVICES, k, v))
        });
    }
    for (k, v) in &s.claims {
        add(CLAIMS, &|| (bucket(CLAIMS, k), entry_hash(CLAIMS, k, v)));
    }
    for (k, v) in &s.reports {
        add(REPORTS, &|| (bucket(REPORTS, k), entry_hash(REPORTS, k, v)));
    }
    for (k, v) in &s.graveyard {
        add(GRAVEYARD, &|| {
            (bucket(GRAVEYARD, k), entry_hash(GRAVEYARD, k, v))
        });
    }
    for (k, v) in &s.drains {
        add(DRAINS, &|| (bucket(DRAINS, k), entry_hash(DRAINS, k, v)));
    }
    Digest { buckets }
}

/// The buckets whose digests differ (a malformed digest differs everywhere).
pub fn differing(mine: &Digest, theirs: &Digest) -> BTreeSet<usize> {
    if theirs.buckets.len() != BUCKETS {
        return (0..BUCKETS).collect();
    }
    (0..BUCKETS)
        .filter(|b| mine.buckets[*b] != theirs.buckets[*b])
        .collect()
}

/// The entries of `s` in `buckets`, up to `budget` encoded bytes; true if all fitted.
pub fn entries_in(
    s: &ClusterState,
    buckets: &BTreeSet<usize>,
    budget: usize,
) -> (ClusterState, bool) {
    let mut out = ClusterState::default();
    let mut used = 0usize;
    let mut complete = true;
    macro_rules! take {
        ($field:ident, $tag:expr) => {
            for (k, v) in &s.$field {
                if !buckets.contains(&bucket($tag, k)) {
                    continue;
                }
                let size = postcard::experimental::serialized_size(v).unwrap_or(usize::MAX / 2)
                    + postcard::experimental::serialized_size(k).unwrap_or(usize::MAX / 2);
                if used + size > budget {
                    complete = false;
                    continue;
                }
                used += size;
                out.$field.insert(k.clone(), v.clone());
            }
        };
    }
    take!(services, SERVICES);
    take!(claims, CLAIMS);
    take!(reports, REPORTS);
    take!(graveyard, GRAVEYARD);
    take!(drains, DRAINS);
    (out, complete)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{NodeId, RevisionId};
    use crate::spec::ServiceName;
    use crate::state::{Crdt, Hlc, Revision, RevisionBody};

    fn with_services(n: usize, node: &str) -> ClusterState {
        let mut s = ClusterState::default();
        for i in 0..n {
            let name = ServiceName(format!("svc-{i}"));
            s.put_revision(
                &name,
                Revision {
                    id: RevisionId(format!("1.{i:04x}")),
                    stamp: Hlc {
                        wall_ms: i as u64 + 1,
                        logical: 0,
                        node: NodeId(node.into()),
                    },
                    body: RevisionBody::Spec(crate::state::cluster::tests::spec(&name.0, 1)),
                },
            );
        }
        s
    }

    #[test]
    fn equal_states_have_equal_digests_and_nothing_to_exchange() {
        let a = with_services(50, "a");
        let b = a.clone();
        assert!(differing(&digest(&a), &digest(&b)).is_empty());
    }

    #[test]
    fn one_round_in_both_directions_makes_two_states_equal() {
        let mut a = with_services(40, "a");
        let mut b = with_services(30, "b");
        // Request from a, response from b, push from a.
        let d = differing(&digest(&b), &digest(&a));
        let (from_b, complete) = entries_in(&b, &d, MAX_SYNC_ENTRY_BYTES);
        assert!(complete);
        a.merge(&from_b);
        let (from_a, _) = entries_in(&a, &d, MAX_SYNC_ENTRY_BYTES);
        b.merge(&from_a);
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn a_small_budget_sends_part_and_says_so() {
        let s = with_services(100, "a");
        let all: BTreeSet<usize> = (0..BUCKETS).collect();
        let (part, complete) = entries_in(&s, &all, 2_000);
        assert!(!complete);
        assert!(!part.services.is_empty() && part.services.len() < 100);
    }

    #[test]
    fn a_malformed_digest_differs_everywhere() {
        let s = with_services(3, "a");
        assert_eq!(
            differing(
                &digest(&s),
                &Digest {
                    buckets: vec![1, 2]
                }
            )
            .len(),
            BUCKETS
        );
    }
}
