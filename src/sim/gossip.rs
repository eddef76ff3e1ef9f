//! How a broadcast travels in the simulator: straight to every live node (`Gossip::Direct`), or
//! hop by hop over a gossipsub-like mesh (`Gossip::Mesh`), the way the agent's libp2p
//! gossipsub carries `Topic::State` and `Topic::Bids`.
//!
//! The mesh follows libp2p-gossipsub's defaults, which the agent uses
//! (`net/transport.rs` builds `gossipsub::ConfigBuilder::default()`):
//!
//! - every node keeps a symmetric mesh of `MESH_N` (6) peers; at each heartbeat (every
//!   `HEARTBEAT_MS`, 1 s) it drops peers whose connection is gone (agent down, or cut off by a
//!   partition in either direction), grafts random reachable peers when it has fewer than
//!   `MESH_N_LOW` (5), up to `MESH_N`, and prunes down to `MESH_N` above `MESH_N_HIGH` (12);
//!   a graft is refused by a peer that already has `MESH_N_HIGH`;
//! - a publisher sends to its mesh peers; a node that receives a message it has not seen in
//!   the last `DUPLICATE_CACHE_MS` (60 s) hands it to its core and forwards it at once to its
//!   mesh peers except the one it came from; a message already seen is dropped;
//! - a node that boots starts with an empty mesh and joins at its first heartbeat, as a real
//!   gossipsub node does (it hears nothing on a topic until a heartbeat has grafted it);
//! - lazy gossip: at each heartbeat a node offers the ids of the messages it saw in the last
//!   `HISTORY_GOSSIP` (3) heartbeats (`IHAVE`) to `GOSSIP_LAZY` (6) random connected peers
//!   outside its mesh; a peer missing some asks for them (`IWANT`) and receives them after
//!   the three one-way trips, then treats them as received (core and mesh forwarding). This
//!   is what carries messages across two meshes that formed apart during a partition, and
//!   repairs a message lost on every mesh path.
//!
//! Not modelled, each making the model slower or costlier than the real thing in one respect:
//! `flood_publish` (on by default: the publisher sends to every connected subscriber, not only
//! its mesh, so real deliveries take fewer hops and the publisher sends more bytes); lazy
//! gossip to more than 6 peers (gossipsub offers to max(6, 25% of the connected non-mesh
//! subscribers)); `GRAFT`/`PRUNE` bytes (heartbeat-rare); peer scoring. "Connected" is taken
//! to be "agent up and reachable both ways". A paused node runs no heartbeat and forwards
//! nothing while paused (its inputs wait, like the rest of its process); its peers keep it in
//! their mesh (its connections stay open).
//!
//! Deterministic: one seeded RNG, ordered containers, no clock.

use std::collections::{BTreeSet, VecDeque};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use crate::ids::Millis;

/// gossipsub `mesh_n`: the mesh size a node aims for.
pub const MESH_N: usize = 6;
/// gossipsub `mesh_n_low`: below this a heartbeat grafts peers.
pub const MESH_N_LOW: usize = 5;
/// gossipsub `mesh_n_high`: above this a heartbeat prunes; a graft beyond it is refused.
pub const MESH_N_HIGH: usize = 12;
/// gossipsub `heartbeat_interval`.
pub const HEARTBEAT_MS: u64 = 1_000;
/// gossipsub `duplicate_cache_time`: a message id is remembered this long.
pub const DUPLICATE_CACHE_MS: u64 = 60_000;
/// gossipsub `history_gossip`: heartbeats of message ids offered in an `IHAVE`.
pub const HISTORY_GOSSIP: u64 = 3;
/// gossipsub `history_length`: heartbeats a message stays in the cache that answers `IWANT`.
pub const HISTORY_LENGTH: u64 = 5;
/// gossipsub `gossip_lazy`: peers outside the mesh offered `IHAVE` at each heartbeat.
pub const GOSSIP_LAZY: usize = 6;
/// gossipsub `max_ihave_length`: ids in one `IHAVE`.
pub const MAX_IHAVE_LENGTH: usize = 5_000;
/// Bytes of one message id on the wire (gossipsub's default id: the author's peer id and a
/// sequence number), and of a control message's framing, for `IHAVE`/`IWANT` accounting.
pub const ID_BYTES: u64 = 46;
pub const CONTROL_BYTES: u64 = 16;
/// Bytes a gossipsub message adds to its payload: protobuf framing, the author's peer id
/// (38 bytes), sequence number, topic and the Ed25519 signature (64 bytes) of
/// `MessageAuthenticity::Signed`. An estimate, counted on every hop on top of
/// `net::HEADER_BYTES`.
pub const ENVELOPE_BYTES: u64 = 128;

/// How broadcasts reach other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gossip {
    /// Every live node receives every broadcast straight from its author, once.
    Direct,
    /// Over the gossipsub-like mesh described in the module docs.
    Mesh,
}

/// What one heartbeat's lazy gossip sends from one node to one peer.
#[derive(Debug)]
pub struct Lazy<T> {
    pub from: usize,
    pub to: usize,
    /// Ids offered in the `IHAVE`.
    pub offered: usize,
    /// The messages the peer did not have, with their ids (asked for in an `IWANT`).
    pub wanted: Vec<(u64, T)>,
}

/// The mesh, the duplicate caches, the message cache and the RNG that grafts; `T` is a
/// message's content (what an `IWANT` returns).
pub struct Mesh<T> {
    peers: Vec<BTreeSet<usize>>,
    /// Per node: message ids seen within `DUPLICATE_CACHE_MS`.
    seen: Vec<BTreeSet<u64>>,
    /// `(seen at, node, id)` in the order they were seen, to expire `seen`.
    expiry: VecDeque<(Millis, usize, u64)>,
    /// Messages published within `HISTORY_LENGTH` heartbeats, by id (ids grow with time).
    cache: VecDeque<(u64, Millis, T)>,
    next_id: u64,
    rng: StdRng,
}

impl<T: Clone> Mesh<T> {
    pub fn new(nodes: usize, seed: u64) -> Mesh<T> {
        Mesh {
            peers: vec![BTreeSet::new(); nodes],
            seen: vec![BTreeSet::new(); nodes],
            expiry: VecDeque::new(),
            cache: VecDeque::new(),
            next_id: 0,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// Node `i`'s mesh peers.
    pub fn peers(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.peers[i].iter().copied()
    }

    /// Node `from` publishes `content`: the new message's id and the peers it is sent to.
    pub fn publish(&mut self, now: Millis, from: usize, content: T) -> (u64, Vec<usize>) {
        self.next_id += 1;
        let id = self.next_id;
        self.cache.push_back((id, now, content));
        self.remember(now, from, id);
        (id, self.peers[from].iter().copied().collect())
    }

    /// Node `at` receives message `id` from `from`: `None` if it saw it already (dropped),
    /// otherwise the peers it forwards it to.
    pub fn receive(&mut self, now: Millis, at: usize, from: usize, id: u64) -> Option<Vec<usize>> {
        if self.seen[at].contains(&id) {
            return None;
        }
        self.remember(now, at, id);
        Some(
            self.peers[at]
                .iter()
                .copied()
                .filter(|p| *p != from)
                .collect(),
        )
    }

    /// Node `i`'s process is gone: its mesh and its duplicate cache go with it. Its peers drop
    /// it at their next heartbeat.
    pub fn forget(&mut self, i: usize) {
        for p in std::mem::take(&mut self.peers[i]) {
            self.peers[p].remove(&i);
        }
        self.seen[i].clear();
    }

    /// One heartbeat on every running node, in node order: mesh upkeep, then the lazy gossip
    /// to send. `runs(i)`: node `i`'s agent is up and not paused; `alive(i)`: it is up (a
    /// paused agent's connections stay open); `link(a, b)`: `a` reaches `b` (a connection
    /// needs both directions).
    pub fn heartbeat(
        &mut self,
        now: Millis,
        runs: impl Fn(usize) -> bool,
        alive: impl Fn(usize) -> bool,
        link: impl Fn(usize, usize) -> bool,
    ) -> Vec<Lazy<T>> {
        let n = self.peers.len();
        let connected = |a: usize, b: usize| alive(b) && link(a, b) && link(b, a);
        for i in 0..n {
            if !runs(i) {
                continue;
            }
            let gone: Vec<usize> = self.peers[i]
                .iter()
                .copied()
                .filter(|p| !connected(i, *p))
                .collect();
            for p in gone {
                self.unlink(i, p);
            }
            if self.peers[i].len() < MESH_N_LOW {
                let mut attempts = 0;
                while self.peers[i].len() < MESH_N && attempts < 16 * MESH_N {
                    attempts += 1;
                    let p = self.rng.random_range(0..n);
                    if p != i
                        && !self.peers[i].contains(&p)
                        && self.peers[p].len() < MESH_N_HIGH
                        && connected(i, p)
                    {
                        self.peers[i].insert(p);
                        self.peers[p].insert(i);
                    }
                }
            }
            while self.peers[i].len() > MESH_N_HIGH {
                let k = self.rng.random_range(0..self.peers[i].len());
                let p = *self.peers[i].iter().nth(k).expect("k < len");
                self.unlink(i, p);
            }
        }
        self.lazy(now, runs, connected)
    }

    /// The `IHAVE`s of this heartbeat and the messages they bring.
    fn lazy(
        &mut self,
        now: Millis,
        runs: impl Fn(usize) -> bool,
        connected: impl Fn(usize, usize) -> bool,
    ) -> Vec<Lazy<T>> {
        let keep = HISTORY_LENGTH * HEARTBEAT_MS;
        while self.cache.front().is_some_and(|c| now.since(c.1) >= keep) {
            self.cache.pop_front();
        }
        // Ids each node saw in the last `HISTORY_GOSSIP` heartbeats, newest first.
        let window = HISTORY_GOSSIP * HEARTBEAT_MS;
        let mut recent: Vec<Vec<u64>> = vec![Vec::new(); self.peers.len()];
        for &(t, node, id) in self.expiry.iter().rev() {
            if now.since(t) >= window {
                break;
            }
            if recent[node].len() < MAX_IHAVE_LENGTH {
                recent[node].push(id);
            }
        }
        let n = self.peers.len();
        let mut out = Vec::new();
        for (i, ids) in recent.iter_mut().enumerate() {
            if ids.is_empty() || !runs(i) {
                continue;
            }
            ids.sort_unstable();
            let mut chosen: Vec<usize> = Vec::new();
            let mut attempts = 0;
            while chosen.len() < GOSSIP_LAZY && attempts < 16 * GOSSIP_LAZY {
                attempts += 1;
                let p = self.rng.random_range(0..n);
                if p != i && !chosen.contains(&p) && !self.peers[i].contains(&p) && connected(i, p)
                {
                    chosen.push(p);
                }
            }
            for to in chosen {
                let wanted = ids
                    .iter()
                    .filter(|id| !self.seen[to].contains(id))
                    .filter_map(|id| {
                        let k = self.cache.partition_point(|c| c.0 < *id);
                        let c = self.cache.get(k).filter(|c| c.0 == *id)?;
                        Some((*id, c.2.clone()))
                    })
                    .collect();
                out.push(Lazy {
                    from: i,
                    to,
                    offered: ids.len(),
                    wanted,
                });
            }
        }
        out
    }

    fn unlink(&mut self, a: usize, b: usize) {
        self.peers[a].remove(&b);
        self.peers[b].remove(&a);
    }

    fn remember(&mut self, now: Millis, at: usize, id: u64) {
        while let Some(&(t, node, old)) = self.expiry.front() {
            if now.since(t) < DUPLICATE_CACHE_MS {
                break;
            }
            self.seen[node].remove(&old);
            self.expiry.pop_front();
        }
        self.seen[at].insert(id);
        self.expiry.push_back((now, at, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floods message `id` from `from` over the mesh; the nodes reached and the hops taken.
    fn flood(mesh: &mut Mesh<()>, from: usize) -> (BTreeSet<usize>, usize) {
        let (id, first) = mesh.publish(Millis(0), from, ());
        let mut reached = BTreeSet::from([from]);
        let mut frontier: Vec<(usize, usize)> = first.into_iter().map(|t| (from, t)).collect();
        let mut hops = 0;
        while !frontier.is_empty() {
            hops += 1;
            let mut next = Vec::new();
            for (src, at) in frontier {
                if let Some(fwd) = mesh.receive(Millis(0), at, src, id) {
                    reached.insert(at);
                    next.extend(fwd.into_iter().map(|t| (at, t)));
                }
            }
            frontier = next;
        }
        (reached, hops)
    }

    #[test]
    fn one_heartbeat_builds_a_mesh_that_reaches_every_node_in_few_hops() {
        let n = 1_000;
        let mut mesh = Mesh::new(n, 7);
        mesh.heartbeat(Millis(0), |_| true, |_| true, |_, _| true);
        for i in 0..n {
            let d = mesh.peers(i).count();
            assert!(
                (MESH_N_LOW..=MESH_N_HIGH).contains(&d),
                "node {i}: {d} peers"
            );
            assert!(mesh.peers(i).all(|p| mesh.peers(p).any(|q| q == i)));
        }
        let (reached, hops) = flood(&mut mesh, 0);
        assert_eq!(reached.len(), n);
        // A random graph of degree ≥ 5 on 1,000 nodes has a diameter near log5(1000) ≈ 4.3.
        assert!(hops <= 8, "{hops} hops");
    }

    #[test]
    fn a_message_is_forwarded_once_per_node() {
        let mut mesh = Mesh::new(50, 1);
        mesh.heartbeat(Millis(0), |_| true, |_| true, |_, _| true);
        let (id, _) = mesh.publish(Millis(0), 3, ());
        let first = mesh.receive(Millis(1), 4, 3, id);
        assert!(first.is_some_and(|f| !f.contains(&3)));
        assert_eq!(mesh.receive(Millis(2), 4, 5, id), None);
        assert_eq!(mesh.receive(Millis(2), 3, 4, id), None, "the author saw it");
        // Forgotten after the duplicate cache time.
        mesh.receive(Millis(DUPLICATE_CACHE_MS + 5), 9, 8, id + 1000);
        assert!(
            mesh.receive(Millis(DUPLICATE_CACHE_MS + 6), 4, 5, id)
                .is_some()
        );
    }

    #[test]
    fn heartbeats_drop_dead_and_cut_off_peers_and_graft_within_each_side() {
        let n = 60;
        let mut mesh = Mesh::new(n, 3);
        mesh.heartbeat(Millis(0), |_| true, |_| true, |_, _| true);
        // Node 0 dies, and the fleet splits into evens and odds.
        mesh.forget(0);
        let alive = |i: usize| i != 0;
        let link = |a: usize, b: usize| a % 2 == b % 2;
        mesh.heartbeat(Millis(1_000), alive, alive, link);
        assert_eq!(mesh.peers(0).count(), 0);
        for i in 1..n {
            assert!(mesh.peers(i).all(|p| p != 0 && p % 2 == i % 2), "node {i}");
            assert!(
                mesh.peers(i).count() >= MESH_N_LOW.min(n / 2 - 2),
                "node {i}"
            );
        }
        let (reached, _) = flood(&mut mesh, 1);
        assert_eq!(reached, (1..n).step_by(2).collect());
    }
}

#[cfg(test)]
mod lazy_tests {
    use super::*;

    #[test]
    fn lazy_gossip_offers_recent_messages_to_peers_outside_the_mesh_and_brings_the_missing() {
        let n = 40;
        let mut mesh: Mesh<&'static str> = Mesh::new(n, 5);
        // Two meshes formed apart (evens, odds), then the cut heals: nothing grafts across,
        // since every node has enough peers on its own side.
        let halves = |a: usize, b: usize| a % 2 == b % 2;
        mesh.heartbeat(Millis(0), |_| true, |_| true, halves);
        let (id, _) = mesh.publish(Millis(10), 0, "hello");
        let lazy = mesh.heartbeat(Millis(1_000), |_| true, |_| true, |_, _| true);
        assert!(
            lazy.iter()
                .all(|l| l.from == 0 && !mesh.peers(0).any(|p| p == l.to))
        );
        assert_eq!(lazy.len(), GOSSIP_LAZY);
        // Odd peers lack it and get it; even ones (never reached here) too: nobody had it.
        for l in &lazy {
            assert_eq!(l.offered, 1);
            assert_eq!(l.wanted, vec![(id, "hello")]);
        }
        // Once a peer has it, it is offered but not wanted.
        let to = lazy[0].to;
        assert!(mesh.receive(Millis(1_005), to, 0, id).is_some());
        let again = mesh.heartbeat(Millis(2_000), |_| true, |_| true, |_, _| true);
        assert!(again.iter().any(|l| l.from == to));
        assert!(
            again
                .iter()
                .filter(|l| l.to == to)
                .all(|l| l.wanted.is_empty())
        );
        // Past `HISTORY_GOSSIP` heartbeats nothing is offered.
        let late = mesh.heartbeat(Millis(10_000), |_| true, |_| true, |_, _| true);
        assert!(late.is_empty());
    }
}
