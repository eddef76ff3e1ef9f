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
//! what did not fit is repaired by the next round.
//!
//! `AntiEntropy` is the node's part that runs these exchanges: with whom, when (one random
//! present peer every `sync_interval_ms`, a member that appears), one at a time per peer, and
//! the bookkeeping of each. It never merges: it hands the node what to merge. Sans-IO: no
//! clock, no IO; randomness comes in as a parameter.

use std::collections::{BTreeMap, BTreeSet};

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::ids::{Millis, NodeId};
use crate::state::ClusterState;

use super::Output;

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

/// An exchange that has not finished within this long is forgotten (the peer may be gone).
pub const SYNC_TIMEOUT_MS: u64 = 10_000;

/// At most one sync started because a member appeared for the first time, per this many
/// milliseconds (a member that reappears is always synced with at once).
pub const UP_SYNC_INTERVAL_MS: u64 = 1_000;

/// The anti-entropy exchanges of one node: the per-peer state of each round.
#[derive(Clone, Debug, Default)]
pub struct AntiEntropy {
    interval_ms: u64,
    /// When each peer last finished an exchange with this node (`shoal status`).
    last_sync: BTreeMap<NodeId, Millis>,
    next_sync: Millis,
    /// Exchanges in flight, by peer (one at a time per peer).
    syncing: BTreeMap<NodeId, Millis>,
    /// Peers whose last answer did not fit in one message: synced again at once.
    sync_more: BTreeSet<NodeId>,
    /// When this node last started a sync because a member appeared: at most one per
    /// `UP_SYNC_INTERVAL_MS` (see `member_up`).
    last_up_sync: Option<Millis>,
}

/// What the node does after an answer to one of its requests, once it has merged the entries
/// that came with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Nothing more in this round.
    Done,
    /// Push this node's entries in these buckets to the peer.
    Push(BTreeSet<usize>),
    /// The peer had more than fitted: start another round with it at once.
    Again,
    /// A request sent as an answer: a confused or hostile peer.
    Rejected,
}

impl AntiEntropy {
    pub fn new(interval_ms: u64) -> AntiEntropy {
        AntiEntropy {
            interval_ms,
            ..AntiEntropy::default()
        }
    }

    /// When each peer last finished an exchange with this node.
    pub fn last_sync(&self) -> &BTreeMap<NodeId, Millis> {
        &self.last_sync
    }

    /// Starts an exchange with `to` unless one is already in flight.
    pub fn start(&mut self, now: Millis, to: NodeId, state: &ClusterState, out: &mut Vec<Output>) {
        if self
            .syncing
            .get(&to)
            .is_some_and(|t| now.since(*t) < SYNC_TIMEOUT_MS)
        {
            return;
        }
        self.syncing.insert(to.clone(), now);
        out.push(Output::SyncRequest {
            to,
            msg: SyncMsg::Digest(digest(state)),
        });
    }

    /// A member came up. One that reappears (back from down, or a new life; `known`) gets our
    /// whole state at once: that is how the two sides of a healed partition converge within
    /// seconds. A member seen for the first time (a joiner) gets it only if no such exchange
    /// started in the last `UP_SYNC_INTERVAL_MS`: one brings a newcomer the fleet's state, and
    /// one per joiner would make every node of a fleet that starts together sync with every
    /// other (n² full exchanges). Periodic sync covers the rest.
    pub fn member_up(
        &mut self,
        now: Millis,
        id: &NodeId,
        known: bool,
        state: &ClusterState,
        out: &mut Vec<Output>,
    ) {
        if known
            || self
                .last_up_sync
                .is_none_or(|t| now.since(t) >= UP_SYNC_INTERVAL_MS)
        {
            self.last_up_sync = Some(now);
            self.start(now, id.clone(), state, out);
        }
    }

    /// One exchange with a random present peer every `interval_ms` (jittered so that nodes
    /// started together do not sync in lockstep); forgets exchanges that never finished.
    pub fn periodic<R: Rng>(
        &mut self,
        now: Millis,
        present: &[NodeId],
        state: &ClusterState,
        rng: &mut R,
        out: &mut Vec<Output>,
    ) {
        self.syncing.retain(|_, t| now.since(*t) < SYNC_TIMEOUT_MS);
        let syncing = &self.syncing;
        self.sync_more.retain(|n| syncing.contains_key(n));
        if now < self.next_sync {
            return;
        }
        let interval = self.interval_ms;
        self.next_sync = now.plus(interval / 2 + rng.random_range(0..=interval));
        if present.is_empty() {
            return;
        }
        let pick = present[rng.random_range(0..present.len())].clone();
        self.start(now, pick, state, out);
    }

    /// Answers a peer's request. Returns the answer, and the entries to merge (a push).
    /// `None` as the answer's companion and `Ack` to a response sent as a request, which the
    /// caller counts as rejected (`true`).
    pub fn answer<R: Rng>(
        &mut self,
        now: Millis,
        from: &NodeId,
        msg: SyncMsg,
        state: &ClusterState,
        rng: &mut R,
    ) -> (SyncMsg, Option<ClusterState>, bool) {
        match msg {
            SyncMsg::Digest(theirs) => {
                let d = differing(&digest(state), &theirs);
                let start = rng.random_range(0..usize::MAX);
                let (entries, complete) = entries_in(state, &d, MAX_SYNC_ENTRY_BYTES, start);
                let reply = SyncMsg::Entries {
                    state: entries,
                    differing: d.into_iter().map(|b| b as u16).collect(),
                    complete,
                };
                (reply, None, false)
            }
            SyncMsg::Push(pushed) => {
                self.last_sync.insert(from.clone(), now);
                (SyncMsg::Ack, Some(pushed), false)
            }
            SyncMsg::Entries { .. } | SyncMsg::Ack => (SyncMsg::Ack, None, true),
        }
    }

    /// Takes a peer's answer to our request in: the entries to merge, and what to do next.
    pub fn on_answer(
        &mut self,
        now: Millis,
        from: &NodeId,
        msg: SyncMsg,
    ) -> (Option<ClusterState>, Next) {
        match msg {
            SyncMsg::Entries {
                state,
                differing,
                complete,
            } => {
                if !complete {
                    // More to come: another round right after this one's push is acknowledged.
                    self.sync_more.insert(from.clone());
                }
                let buckets: BTreeSet<usize> = differing
                    .into_iter()
                    .map(usize::from)
                    .filter(|b| *b < BUCKETS)
                    .collect();
                if buckets.is_empty() {
                    self.syncing.remove(from);
                    self.last_sync.insert(from.clone(), now);
                    return (Some(state), Next::Done);
                }
                (Some(state), Next::Push(buckets))
            }
            SyncMsg::Ack => {
                self.syncing.remove(from);
                self.last_sync.insert(from.clone(), now);
                if self.sync_more.remove(from) {
                    (None, Next::Again)
                } else {
                    (None, Next::Done)
                }
            }
            SyncMsg::Digest(_) | SyncMsg::Push(_) => {
                self.syncing.remove(from);
                self.sync_more.remove(from);
                (None, Next::Rejected)
            }
        }
    }
}

/// This node's entries in `buckets`, from a random start (see `entries_in`), as a push.
pub fn push<R: Rng>(state: &ClusterState, buckets: &BTreeSet<usize>, rng: &mut R) -> SyncMsg {
    let start = rng.random_range(0..usize::MAX);
    let (mine, _) = entries_in(state, buckets, MAX_SYNC_ENTRY_BYTES, start);
    SyncMsg::Push(mine)
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

    fn peer(n: &str) -> NodeId {
        NodeId(n.into())
    }

    #[test]
    fn one_exchange_at_a_time_per_peer_until_it_times_out() {
        let mut ae = AntiEntropy::new(5_000);
        let s = with_services(2, "a");
        let mut out = Vec::new();
        ae.start(Millis(0), peer("b"), &s, &mut out);
        ae.start(Millis(9_999), peer("b"), &s, &mut out);
        assert_eq!(out.len(), 1);
        ae.start(Millis(10_000), peer("b"), &s, &mut out);
        assert_eq!(out.len(), 2);
        assert!(
            matches!(&out[0], Output::SyncRequest { to, msg: SyncMsg::Digest(_) } if *to == peer("b"))
        );
    }

    #[test]
    fn a_full_round_pushes_the_differing_buckets_and_records_the_peer() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let a_state = with_services(4, "a");
        let b_state = with_services(3, "b");
        let (mut a, mut b) = (AntiEntropy::new(5_000), AntiEntropy::new(5_000));
        let mut out = Vec::new();
        a.start(Millis(0), peer("b"), &a_state, &mut out);
        let Some(Output::SyncRequest { msg, .. }) = out.pop() else {
            panic!("a digest request")
        };
        let (answer, merge, rejected) = b.answer(Millis(1), &peer("a"), msg, &b_state, &mut rng);
        assert!(merge.is_none() && !rejected);
        let (entries, next) = a.on_answer(Millis(2), &peer("b"), answer);
        assert!(!entries.expect("entries").services.is_empty());
        let Next::Push(buckets) = next else {
            panic!("a push")
        };
        let pushed = push(&a_state, &buckets, &mut rng);
        let (ack, merge, _) = b.answer(Millis(3), &peer("a"), pushed, &b_state, &mut rng);
        assert!(!merge.expect("pushed entries").services.is_empty());
        assert_eq!(b.last_sync().get(&peer("a")), Some(&Millis(3)));
        assert_eq!(a.on_answer(Millis(4), &peer("b"), ack), (None, Next::Done));
        assert_eq!(a.last_sync().get(&peer("b")), Some(&Millis(4)));
    }

    #[test]
    fn requests_sent_as_answers_and_answers_sent_as_requests_are_rejected() {
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
        let s = with_services(1, "a");
        let mut ae = AntiEntropy::new(5_000);
        assert!(
            ae.answer(Millis(0), &peer("b"), SyncMsg::Ack, &s, &mut rng)
                .2
        );
        let (merge, next) = ae.on_answer(Millis(0), &peer("b"), SyncMsg::Push(s.clone()));
        assert!(merge.is_none());
        assert_eq!(next, Next::Rejected);
    }

    #[test]
    fn joiners_trigger_at_most_one_sync_per_interval_but_a_returning_member_always_does() {
        let s = with_services(1, "a");
        let mut ae = AntiEntropy::new(5_000);
        let mut out = Vec::new();
        ae.member_up(Millis(0), &peer("b"), false, &s, &mut out);
        ae.member_up(Millis(10), &peer("c"), false, &s, &mut out);
        assert_eq!(out.len(), 1);
        ae.member_up(Millis(20), &peer("d"), true, &s, &mut out);
        ae.member_up(Millis(1_000), &peer("e"), false, &s, &mut out);
        assert_eq!(out.len(), 2, "the returning member reset the interval");
        ae.member_up(Millis(1_020), &peer("f"), false, &s, &mut out);
        assert_eq!(out.len(), 3);
    }
}
