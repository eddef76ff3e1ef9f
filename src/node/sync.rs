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

/// Encodes `tag` and a key (then a value) into one reused buffer, so that the bucket hash and
/// the entry hash of an entry come from a single encoding of its key and no allocation per
/// entry (the digest of a large state walks every entry each round). The bytes hashed are the
/// tag followed by the postcard encodings, as before.
#[derive(Default)]
struct Hasher {
    buf: Vec<u8>,
}

impl Hasher {
    fn append(&mut self, v: &impl Serialize) {
        let buf = std::mem::take(&mut self.buf);
        self.buf = postcard::to_extend(v, buf).expect("in-memory encoding cannot fail");
    }

    fn bucket(&mut self, tag: u8, key: &impl Serialize) -> usize {
        self.buf.clear();
        self.buf.push(tag);
        self.append(key);
        (xxhash_rust::xxh3::xxh3_64(&self.buf) % BUCKETS as u64) as usize
    }

    /// `(bucket, entry hash)` of one entry.
    fn entry(&mut self, tag: u8, key: &impl Serialize, value: &impl Serialize) -> (usize, u64) {
        let b = self.bucket(tag, key);
        self.append(value);
        (b, xxhash_rust::xxh3::xxh3_64(&self.buf))
    }
}

const SERVICES: u8 = 1;
const CLAIMS: u8 = 2;
const REPORTS: u8 = 3;
const GRAVEYARD: u8 = 4;
const DRAINS: u8 = 5;

/// The digest of a state.
pub fn digest(s: &ClusterState) -> Digest {
    let mut buckets = vec![0u64; BUCKETS];
    let mut h = Hasher::default();
    let mut add = |tag: u8, (b, hash): (usize, u64)| {
        buckets[b] = buckets[b].wrapping_add(hash.wrapping_add(tag as u64));
    };
    for (k, v) in &s.services {
        add(SERVICES, h.entry(SERVICES, k, v));
    }
    for (k, v) in &s.claims {
        add(CLAIMS, h.entry(CLAIMS, k, v));
    }
    for (k, v) in &s.reports {
        add(REPORTS, h.entry(REPORTS, k, v));
    }
    for (k, v) in &s.graveyard {
        add(GRAVEYARD, h.entry(GRAVEYARD, k, v));
    }
    for (k, v) in &s.drains {
        add(DRAINS, h.entry(DRAINS, k, v));
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
///
/// Whole buckets are sent, taken in the order of `buckets` rotated by `start`: a receiver that
/// merges a whole bucket (and had nothing newer in it) then agrees on that bucket, so the next
/// round no longer asks for it, and a state far larger than one message is transferred in
/// successive rounds instead of the same first entries again and again. When not even one
/// bucket fits, part of the first is sent, beginning at an entry chosen by `start`; callers
/// pass a fresh random `start` each round so that repeated partial rounds cover the bucket.
pub fn entries_in(
    s: &ClusterState,
    buckets: &BTreeSet<usize>,
    budget: usize,
    start: usize,
) -> (ClusterState, bool) {
    fn size(k: &impl Serialize, v: &impl Serialize) -> usize {
        postcard::experimental::serialized_size(k).unwrap_or(usize::MAX / 4)
            + postcard::experimental::serialized_size(v).unwrap_or(usize::MAX / 4)
    }
    // One pass: each wanted entry's bucket and size, in the state's own order.
    let mut per_bucket = [0usize; BUCKETS];
    let mut count = [0usize; BUCKETS];
    let mut h = Hasher::default();
    macro_rules! measure {
        ($field:ident, $tag:expr) => {
            s.$field
                .iter()
                .map(|(k, v)| {
                    let b = h.bucket($tag, k);
                    if buckets.contains(&b) {
                        per_bucket[b] = per_bucket[b].saturating_add(size(k, v));
                        count[b] += 1;
                        Some(b)
                    } else {
                        None
                    }
                })
                .collect::<Vec<Option<usize>>>()
        };
    }
    let services = measure!(services, SERVICES);
    let claims = measure!(claims, CLAIMS);
    let reports = measure!(reports, REPORTS);
    let graveyard = measure!(graveyard, GRAVEYARD);
    let drains = measure!(drains, DRAINS);

    // Whole buckets, in rotated order, while they fit.
    let order: Vec<usize> = buckets.iter().copied().filter(|b| *b < BUCKETS).collect();
    let mut chosen = [false; BUCKETS];
    let mut used = 0usize;
    let mut complete = true;
    for i in 0..order.len() {
        let b = order[(start + i) % order.len()];
        if used.saturating_add(per_bucket[b]) <= budget {
            used += per_bucket[b];
            chosen[b] = true;
        } else {
            complete = false;
        }
    }
    // Not one whole bucket fits: part of the first, from an entry picked by `start`.
    let partial = if used == 0 && !complete {
        order
            .get(start % order.len().max(1))
            .map(|b| (*b, (start / BUCKETS) % count[*b].max(1)))
    } else {
        None
    };

    let mut out = ClusterState::default();
    let mut seen = 0usize;
    let mut budget_left = budget;
    macro_rules! take {
        ($field:ident, $buckets:expr) => {
            for ((k, v), b) in s.$field.iter().zip($buckets.iter()) {
                let Some(b) = *b else { continue };
                if chosen[b] {
                    out.$field.insert(k.clone(), v.clone());
                } else if let Some((p, skip)) = partial
                    && p == b
                {
                    seen += 1;
                    if seen <= skip {
                        continue;
                    }
                    let n = size(k, v);
                    if n <= budget_left {
                        budget_left -= n;
                        out.$field.insert(k.clone(), v.clone());
                    }
                }
            }
        };
    }
    take!(services, services);
    take!(claims, claims);
    take!(reports, reports);
    take!(graveyard, graveyard);
    take!(drains, drains);
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
            let name = ServiceName(format!("svc-{i}").into());
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
        let (from_b, complete) = entries_in(&b, &d, MAX_SYNC_ENTRY_BYTES, 0);
        assert!(complete);
        a.merge(&from_b);
        let (from_a, _) = entries_in(&a, &d, MAX_SYNC_ENTRY_BYTES, 0);
        b.merge(&from_a);
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
    }

    #[test]
    fn a_small_budget_sends_part_and_says_so() {
        let s = with_services(100, "a");
        let all: BTreeSet<usize> = (0..BUCKETS).collect();
        let (part, complete) = entries_in(&s, &all, 2_000, 0);
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

    /// A state many times larger than one message still transfers completely, round after
    /// round, even when every bucket differs and no bucket fits whole.
    fn rounds_until_equal(source: &ClusterState, budget: usize) -> usize {
        let mut dest = ClusterState::default();
        let mut seed = 0x9e37_79b9usize;
        for round in 1..=2_000 {
            let d = differing(&digest(&dest), &digest(source));
            if d.is_empty() {
                return round - 1;
            }
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let (part, _) = entries_in(source, &d, budget, seed >> 7);
            dest.merge(&part);
        }
        panic!("no convergence within 2,000 rounds at budget {budget}");
    }

    #[test]
    fn a_large_state_transfers_in_successive_rounds() {
        let s = with_services(2_000, "a");
        let one_round = entries_in(&s, &(0..BUCKETS).collect(), usize::MAX, 0).0;
        let total = postcard::to_stdvec(&one_round).unwrap().len();
        // Whole buckets fit: about total / budget rounds.
        let rounds = rounds_until_equal(&s, total / 10);
        assert!(
            rounds <= 15,
            "{rounds} rounds for a tenth of the state per round"
        );
        // Not even one bucket fits whole: partial rounds from random starts still get there.
        let rounds = rounds_until_equal(&s, total / 200);
        assert!(rounds < 2_000);
    }
}
