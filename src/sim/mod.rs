//! The deterministic simulator: many real `Node` cores in one thread, a virtual clock, a
//! `BTreeMap<(Millis, seq), Event>` queue, a simulated network (`net`) and runtime (`runtime`),
//! faults (crash, pause, restart, partitions, loss) and the invariants (`invariants`).
//!
//! Randomness comes only from the scenario seed: one `StdRng` per node incarnation and one for
//! the network (which also draws the runtime's delays). No threads, no clock, no tokio: the same
//! seed gives the same trace hash, and a failing seed replays exactly.
//!
//! Broadcasts travel over a simulated gossipsub mesh (`gossip`, the default) or straight to
//! every live node (`Gossip::Direct`). It does not model the agent shell's queues, the store's
//! group commits or libp2p's connection setup.
//!
//! This file holds the configuration, the simulated machines, the event queue and the loop that
//! hands inputs to the cores. Carrying out outputs is `deliver`, faults and node lifecycle are
//! `faults`, the invariant checks and measurement hooks are `observe`.

pub mod baseline;
pub mod bench;
mod deliver;
mod faults;
pub mod gossip;
pub mod invariants;
pub mod net;
mod observe;
pub mod plot;
pub mod runtime;
pub mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::ids::{Millis, NodeId};
use crate::membership::{Profile, RecordShare, SwimTuning};
use crate::node::{ApiReply, ApiRequest, CoreTiming, Input, Node, NodeConfig, TestBugs};
use crate::spec::{DriverKind, Resources, ServiceName};
use crate::state::ClusterState;

use deliver::{Carried, Payload, RtOp};
pub use faults::Crash;
pub use gossip::Gossip;
use invariants::Violation;
use net::{Net, NetProfile};
use observe::thread_cpu;
use runtime::SimRuntime;

/// How a simulated fleet is built.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub nodes: usize,
    pub net: NetProfile,
    /// How broadcasts travel (`Gossip::Mesh` unless a test needs the direct model).
    pub gossip: Gossip,
    pub swim: Profile,
    /// Replaces `swim.tuning(nodes)` when set (the memberlist baseline, overrides).
    pub swim_tuning: Option<SwimTuning>,
    pub timing: CoreTiming,
    pub capacity: Resources,
    pub bugs: TestBugs,
    /// Delay of a start in the simulated runtime: `base + uniform(0..jitter)` ms.
    pub start_ms: (u64, u64),
    pub stop_ms: u64,
    /// Per mille of starts that fail (retryably).
    pub start_fail_permille: u32,
    /// Services whose instances exit with code 1 this long after they start.
    pub crash_loop: BTreeMap<ServiceName, u64>,
    /// Check safety invariants after every runtime change (cheap; off for large benchmarks).
    pub check_safety: bool,
}

impl SimConfig {
    pub fn lan(seed: u64, nodes: usize) -> SimConfig {
        SimConfig {
            seed,
            nodes,
            net: NetProfile::Lan,
            gossip: Gossip::Mesh,
            swim: Profile::Lan,
            swim_tuning: None,
            timing: CoreTiming::lan(),
            capacity: Resources {
                cpu_millis: 4_000,
                memory_bytes: 8 << 30,
            },
            bugs: TestBugs::default(),
            start_ms: (50, 100),
            stop_ms: 20,
            start_fail_permille: 0,
            crash_loop: BTreeMap::new(),
            check_safety: true,
        }
    }
}

#[derive(Clone, Debug)]
enum Event {
    Deliver {
        to: usize,
        from: usize,
        payload: Payload,
        hash: u64,
    },
    Tick(usize),
    /// Every node's gossipsub heartbeat (`Gossip::Mesh` only).
    MeshHeartbeat,
    Runtime {
        node: usize,
        boot: u64,
        op: RtOp,
    },
}

/// One simulated machine: its agent (when up), its disk and its runtime.
pub struct SimNode {
    pub node: Option<Node<StdRng>>,
    pub cfg: NodeConfig,
    /// The persisted state (what a restarted agent starts from).
    pub disk: ClusterState,
    pub runtime: SimRuntime,
    pub paused: bool,
    inbox: Vec<Input>,
    tick_at: Option<Millis>,
    /// CPU time (this thread's, so time the OS gave to other processes is not counted) this
    /// node's core has spent handling inputs and flushing: what the same work would cost a
    /// real agent's CPU (the simulator does not charge it to virtual time). A measurement only;
    /// never read by the simulation.
    pub core_cpu: std::time::Duration,
    /// When this node last went down, and when the first SWIM datagram was sent to it after
    /// that (someone probing or gossiping to it: where failure detection starts). Measurements
    /// only; never read by the simulation.
    pub down_at: Option<Millis>,
    pub first_swim_after_down: Option<Millis>,
    /// When it was first checked after that: a probe (`ping` or a relay's `indirect-ping`), or
    /// the `suspected` notice of a ring watcher that found it silent.
    pub first_check_after_down: Option<Millis>,
}

impl SimNode {
    pub fn up(&self) -> bool {
        self.node.is_some()
    }
}

/// Node `i`'s id.
pub fn nid(i: usize) -> NodeId {
    NodeId(format!("12D3KooWsim{i:05}").into())
}

pub fn index_of(id: &NodeId) -> Option<usize> {
    id.0.strip_prefix("12D3KooWsim")?.parse().ok()
}

pub struct Sim {
    pub cfg: SimConfig,
    pub now: Millis,
    pub nodes: Vec<SimNode>,
    pub net: Net,
    queue: BTreeMap<(Millis, u64), Event>,
    seq: u64,
    trace: u64,
    /// Events delivered to nodes (inputs handled).
    pub delivered: u64,
    /// Nodes that absorbed inputs at the current virtual millisecond and have not flushed yet.
    unflushed: BTreeSet<usize>,
    next_sync_id: u64,
    /// Sync requests awaiting their reply: id → (requester, responder).
    syncs: BTreeMap<u64, (usize, usize)>,
    next_api_id: u64,
    /// API requests awaiting a reply: id → node.
    api_pending: BTreeMap<u64, usize>,
    /// Replies received, by request id.
    pub replies: BTreeMap<u64, Result<ApiReply, crate::node::ApiError>>,
    /// Writes the API acknowledged: `(service, revision id)`.
    pub acked: Vec<(ServiceName, String)>,
    /// Safety violations seen so far (checked after every runtime change).
    pub violations: Vec<Violation>,
    /// Bid batches and bids broadcast, claims written.
    pub bid_batches: u64,
    pub bids: u64,
    /// The gossipsub mesh, under `Gossip::Mesh`; its message cache holds what it forwards.
    mesh: Option<gossip::Mesh<Carried>>,
    /// Members' metadata records, held once for every simulated node (see `RecordShare`).
    records: RecordShare,
}

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    let mut x =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^ (x >> 29)
}

impl Sim {
    /// A fleet of `cfg.nodes` machines, none of them started.
    pub fn new(cfg: SimConfig) -> Sim {
        let nodes = (0..cfg.nodes)
            .map(|i| SimNode {
                node: None,
                cfg: node_config(&cfg, i, 0, &[]),
                disk: ClusterState::default(),
                runtime: SimRuntime::default(),
                paused: false,
                inbox: Vec::new(),
                tick_at: None,
                core_cpu: std::time::Duration::ZERO,
                down_at: None,
                first_swim_after_down: None,
                first_check_after_down: None,
            })
            .collect();
        let mesh = (cfg.gossip == Gossip::Mesh)
            .then(|| gossip::Mesh::new(cfg.nodes, mix(cfg.seed, u64::MAX, 1)));
        let mut sim = Sim {
            net: Net::new(cfg.net, cfg.nodes, mix(cfg.seed, u64::MAX, 0)),
            cfg,
            now: Millis(0),
            nodes,
            queue: BTreeMap::new(),
            seq: 0,
            trace: 0,
            delivered: 0,
            unflushed: BTreeSet::new(),
            next_sync_id: 0,
            syncs: BTreeMap::new(),
            next_api_id: 0,
            api_pending: BTreeMap::new(),
            replies: BTreeMap::new(),
            acked: Vec::new(),
            violations: Vec::new(),
            bid_batches: 0,
            bids: 0,
            mesh,
            records: RecordShare::default(),
        };
        if sim.mesh.is_some() {
            sim.push(Millis(gossip::HEARTBEAT_MS), Event::MeshHeartbeat);
        }
        sim
    }

    /// Sends an API request to node `i`; the reply lands in `replies[id]`.
    pub fn api(&mut self, i: usize, req: ApiRequest) -> u64 {
        self.next_api_id += 1;
        let id = self.next_api_id;
        self.api_pending.insert(id, i);
        self.input(i, Input::Api { id, req });
        id
    }

    /// The hash of every input delivered so far: equal for two runs of one seed.
    pub fn trace_hash(&self) -> u64 {
        self.trace
    }

    pub fn up(&self) -> impl Iterator<Item = (usize, &Node<StdRng>)> {
        self.nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| n.node.as_ref().map(|node| (i, node)))
    }

    fn push(&mut self, at: Millis, ev: Event) {
        self.queue.insert((at, self.seq), ev);
        self.seq += 1;
    }

    pub fn run_for(&mut self, ms: u64) {
        self.run_until(self.now.plus(ms));
    }

    pub fn run_until(&mut self, until: Millis) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), ev) = entry.remove_entry();
            if at > self.now {
                self.flush_all();
            }
            self.now = at;
            self.event(ev);
        }
        self.flush_all();
        self.now = self.now.max(until);
    }

    /// Like the agent, which absorbs every input it has ready (up to 256) and then re-examines
    /// placement and reconcile once (`Node::flush`), a node absorbs all the inputs that reach
    /// it within one virtual millisecond and flushes once, in node order, before time moves on.
    fn flush_all(&mut self) {
        while let Some(i) = self.unflushed.pop_first() {
            let now = self.now;
            let Some(node) = self.nodes[i].node.as_mut() else {
                continue;
            };
            let mut out = Vec::new();
            let t0 = thread_cpu();
            node.flush(now, &mut out);
            let wake = node.next_wake(now).max(now.plus(1));
            self.nodes[i].core_cpu += thread_cpu().saturating_sub(t0);
            self.apply(i, out);
            self.schedule_wake(i, wake);
        }
    }

    fn schedule_wake(&mut self, i: usize, wake: Millis) {
        let now = self.now;
        let n = &mut self.nodes[i];
        if n.up() && n.tick_at.is_none_or(|t| wake < t || t < now) {
            n.tick_at = Some(wake);
            self.push(wake, Event::Tick(i));
        }
    }

    /// Runs until `done` holds (checked every `step_ms`) or `limit_ms` passes; returns how
    /// long it took.
    pub fn run_until_true(
        &mut self,
        limit_ms: u64,
        step_ms: u64,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<u64> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now.since(start));
            }
            if self.now.since(start) >= limit_ms {
                return None;
            }
            self.run_for(step_ms);
        }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Deliver {
                to,
                from,
                payload,
                hash,
            } => {
                let from_id = nid(from);
                let input = match payload {
                    Payload::Datagram(bytes) => Input::Datagram {
                        from: from_id,
                        bytes,
                    },
                    Payload::Message {
                        msg,
                        gossip,
                        author,
                        size,
                    } => {
                        if let Some(id) = gossip
                            && !self.forward(to, from, id, &Carried::new(&msg, author, size, hash))
                        {
                            return;
                        }
                        let msg = Arc::try_unwrap(msg).unwrap_or_else(|m| (*m).clone());
                        Input::Message {
                            from: nid(author),
                            msg,
                        }
                    }
                    Payload::SyncRequest { id, msg } => {
                        if !self.nodes[to].up() {
                            self.syncs.remove(&id);
                        }
                        Input::SyncRequest {
                            from: from_id,
                            id,
                            msg: *msg,
                        }
                    }
                    Payload::SyncResponse(msg) => Input::SyncResponse {
                        from: from_id,
                        msg: *msg,
                    },
                };
                self.trace = xxh3_64_with_seed(&hash.to_le_bytes(), self.trace ^ to as u64);
                self.input(to, input);
            }
            Event::Tick(i) => {
                let n = &mut self.nodes[i];
                if n.tick_at != Some(self.now) || n.paused {
                    return;
                }
                n.tick_at = None;
                self.input(i, Input::Tick);
            }
            Event::MeshHeartbeat => {
                let (now, nodes, net) = (self.now, &self.nodes, &self.net);
                let lazy = match &mut self.mesh {
                    Some(mesh) => mesh.heartbeat(
                        now,
                        |i| nodes[i].up() && !nodes[i].paused,
                        |i| nodes[i].up(),
                        |a, b| net.reachable(a, b),
                    ),
                    None => Vec::new(),
                };
                for l in lazy {
                    self.lazy_gossip(l);
                }
                self.push(self.now.plus(gossip::HEARTBEAT_MS), Event::MeshHeartbeat);
            }
            Event::Runtime { node, boot, op } => self.runtime_done(node, boot, op),
        }
    }

    /// Delivers one input to node `i` (dropped when its agent is down, queued when paused).
    fn input(&mut self, i: usize, input: Input) {
        let now = self.now;
        let n = &mut self.nodes[i];
        let Some(node) = n.node.as_mut() else {
            return;
        };
        if n.paused {
            if !matches!(input, Input::Tick) {
                n.inbox.push(input);
            }
            return;
        }
        self.delivered += 1;
        let kind: u64 = match &input {
            Input::Tick => 1,
            Input::Message { .. } => 2,
            Input::Api { .. } => 3,
            Input::Runtime(_) => 4,
            Input::Datagram { .. } => 6,
            Input::Connected { .. } => 7,
            Input::SyncRequest { .. } => 8,
            Input::SyncResponse { .. } => 9,
        };
        self.trace = xxh3_64_with_seed(
            &[now.0, i as u64, kind].map(u64::to_le_bytes).concat(),
            self.trace,
        );
        let mut out = Vec::new();
        let t0 = thread_cpu();
        node.absorb(now, input, &mut out);
        let wake = node.next_wake(now).max(now.plus(1));
        self.nodes[i].core_cpu += thread_cpu().saturating_sub(t0);
        self.unflushed.insert(i);
        self.apply(i, out);
        self.schedule_wake(i, wake);
    }
}

fn node_config(cfg: &SimConfig, i: usize, incarnation: u64, seeds: &[usize]) -> NodeConfig {
    NodeConfig {
        id: nid(i),
        incarnation,
        cluster: "sim".into(),
        labels: [("zone".to_string(), format!("z{}", i % 3))].into(),
        capacity: cfg.capacity,
        runtimes: [DriverKind::Process].into(),
        agent_version: "sim".into(),
        timing: cfg.timing.clone(),
        addrs: vec![format!("/sim/{i}")],
        seeds: seeds.iter().map(|s| format!("/sim/{s}")).collect(),
        swim: cfg
            .swim_tuning
            .clone()
            .unwrap_or_else(|| cfg.swim.tuning(cfg.nodes as u32)),
        bugs: cfg.bugs,
    }
}

/// The line that replays a sweep case.
pub fn reproduce(seed: u64, nodes: usize) -> String {
    format!("reproduce: SIM_SEED={seed} SIM_NODES={nodes} cargo test --release --test sim_sweep")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The queue holds millions of events while a large fleet joins (every mesh copy of every
    /// broadcast): an event must stay a few words, with large payloads behind a pointer.
    #[test]
    fn a_queued_event_stays_small() {
        let size = std::mem::size_of::<Event>();
        assert!(size <= 64, "an Event is {size} bytes");
    }
}
