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

pub mod baseline;
pub mod bench;
pub mod gossip;
pub mod invariants;
pub mod net;
pub mod plot;
pub mod runtime;
pub mod scenario;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::ids::{InstanceKey, Millis, NodeId};
use crate::membership::{Profile, RecordShare, SwimTuning};
use crate::node::{
    ApiReply, ApiRequest, CoreTiming, Input, Message, Node, NodeConfig, Output, SyncMsg, TestBugs,
    Topic,
};
use crate::runtime::{ExitInfo, RuntimeCommand, RuntimeEvent};
use crate::spec::{DriverKind, Resources, ServiceName};
use crate::state::{ClusterState, Crdt};

pub use gossip::Gossip;
use invariants::Violation;
use net::{Kind, Net, NetProfile};
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

/// A mesh message as the message cache keeps it for `IWANT`s.
#[derive(Clone, Debug)]
struct Carried {
    msg: Arc<Message>,
    author: usize,
    /// Encoded size (envelope not included) and hash, measured once at the author.
    size: u64,
    hash: u64,
}

impl Carried {
    fn new(msg: &Arc<Message>, author: usize, size: u64, hash: u64) -> Carried {
        Carried {
            msg: msg.clone(),
            author,
            size,
            hash,
        }
    }
}

/// What a message in flight carries.
#[derive(Clone, Debug)]
enum Payload {
    Datagram(Vec<u8>),
    /// A message, shared by its copies in flight; `gossip` is its mesh message id when it
    /// travels over the mesh (`None`: a direct send, or a broadcast under `Gossip::Direct`).
    Message {
        msg: Arc<Message>,
        gossip: Option<u64>,
        /// The node that wrote it: the core's `from`, as the agent hands it gossipsub's
        /// message source; a mesh relay is not the author.
        author: usize,
        /// Encoded size (envelope not included), measured once at the author.
        size: u64,
    },
    /// Boxed, as is the response: a sync message is several times the size of the other
    /// payloads, and every event in the queue would otherwise be as large (at 1,000 nodes the
    /// queue holds millions of mesh deliveries while the fleet joins).
    SyncRequest {
        id: u64,
        msg: Box<SyncMsg>,
    },
    SyncResponse(Box<SyncMsg>),
}

/// Work the simulated runtime finishes later.
#[derive(Clone, Debug)]
enum RtOp {
    Start(InstanceKey),
    Stop(InstanceKey),
    List(DriverKind),
    Exit(InstanceKey),
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

/// How a node goes down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Crash {
    /// The agent process dies; its instances keep running.
    Agent,
    /// The machine dies: the agent and every instance (their records stay, exited).
    Machine,
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

    /// Starts every node, `stagger_ms` apart, each joining through the seeds (nodes 0, 1, 2).
    pub fn start_all(&mut self, stagger_ms: u64) {
        let seeds: Vec<usize> = (0..self.nodes.len().min(3)).collect();
        for i in 0..self.nodes.len() {
            self.run_until(self.now.plus(if i == 0 { 0 } else { stagger_ms }));
            self.boot(i, seeds.clone());
        }
    }

    /// Starts (or restarts) node `i`'s agent from its disk with the next incarnation, joining
    /// through `seeds`: the core dials them (`Output::Dial`) while it knows no peer, and a
    /// reachable seed makes it announce.
    pub fn boot(&mut self, i: usize, seeds: Vec<usize>) {
        assert!(!self.nodes[i].up(), "node {i} is already up");
        let incarnation = self.nodes[i].cfg.incarnation + 1;
        let seeds: Vec<usize> = seeds.into_iter().filter(|s| *s != i).collect();
        let cfg = node_config(&self.cfg, i, incarnation, &seeds);
        let rng = StdRng::seed_from_u64(mix(self.cfg.seed, i as u64, incarnation));
        let mut node = Node::new(cfg.clone(), self.nodes[i].disk.clone(), rng)
            .expect("simulated node config is valid");
        node.share_member_records(self.records.clone());
        let n = &mut self.nodes[i];
        n.cfg = cfg;
        n.node = Some(node);
        n.paused = false;
        n.inbox.clear();
        n.tick_at = None;
        n.down_at = None;
        n.first_swim_after_down = None;
        n.first_check_after_down = None;
        self.input(i, Input::Tick);
    }

    /// Node `i`'s transport dials `addr` (`/sim/<index>`): a connection needs both directions,
    /// and a live agent on the other side.
    fn dial(&mut self, i: usize, addr: &str) {
        let Some(s) = addr
            .strip_prefix("/sim/")
            .and_then(|s| s.parse::<usize>().ok())
        else {
            return;
        };
        if s < self.nodes.len()
            && self.nodes[s].up()
            && self.net.reachable(i, s)
            && self.net.reachable(s, i)
        {
            self.input(i, Input::Connected { node: nid(s) });
        }
    }

    /// Node `i` goes down (see `Crash`).
    pub fn crash(&mut self, i: usize, how: Crash) {
        let n = &mut self.nodes[i];
        n.node = None;
        n.paused = false;
        n.inbox.clear();
        n.tick_at = None;
        n.down_at = Some(self.now);
        n.first_swim_after_down = None;
        n.first_check_after_down = None;
        if how == Crash::Machine {
            n.runtime.power_off();
        }
        if let Some(mesh) = &mut self.mesh {
            mesh.forget(i);
        }
    }

    /// Restarts a crashed node with the fleet's seeds (nodes 0, 1, 2).
    pub fn restart(&mut self, i: usize) {
        let seeds: Vec<usize> = (0..self.nodes.len().min(3)).collect();
        self.boot(i, seeds);
    }

    /// Node `i` stops (SIGSTOP): its inputs wait until `resume`.
    pub fn pause(&mut self, i: usize) {
        if self.nodes[i].up() {
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if !self.nodes[i].paused {
            return;
        }
        self.nodes[i].paused = false;
        let inbox = std::mem::take(&mut self.nodes[i].inbox);
        for input in inbox {
            self.input(i, input);
        }
        self.input(i, Input::Tick);
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

    /// Carries out node `i`'s outputs, in order.
    fn apply(&mut self, i: usize, out: Vec<Output>) {
        // Dials connect after the rest of this batch is carried out, as a transport's would.
        let mut dials = Vec::new();
        for o in out {
            match o {
                Output::Broadcast { topic, msg } => {
                    if topic == Topic::Bids
                        && let Message::Bids(b) = &msg
                    {
                        self.bid_batches += 1;
                        self.bids += b.len() as u64;
                    }
                    let now = self.now;
                    let msg = Arc::new(msg);
                    let (size, hash) = measure(&*msg);
                    let carried = Carried::new(&msg, i, size, hash);
                    let (to, id) = match &mut self.mesh {
                        Some(mesh) => {
                            let (id, to) = mesh.publish(now, i, carried.clone());
                            (to, Some(id))
                        }
                        None => {
                            let to: Vec<usize> = (0..self.nodes.len())
                                .filter(|j| *j != i && self.nodes[*j].up())
                                .collect();
                            (to, None)
                        }
                    };
                    self.send_measured(i, &to, &carried, id);
                }
                Output::Runtime(cmd) => self.runtime_command(i, cmd),
                Output::Persist(delta) => {
                    let node = self.nodes[i]
                        .node
                        .as_ref()
                        .expect("outputs come from a live node");
                    let entries = node.state().entries_for(&delta);
                    self.nodes[i].disk.merge(&entries);
                }
                Output::Reply { id, result } => {
                    if self.api_pending.remove(&id).is_some() {
                        if let Ok(ApiReply::Written(w)) = &result {
                            for r in w.iter().filter(|r| r.changed && !r.service.is_empty()) {
                                self.acked.push((
                                    ServiceName(r.service.as_str().into()),
                                    r.revision.clone(),
                                ));
                            }
                        }
                        self.replies.insert(id, result);
                    }
                }
                Output::Datagram { to, bytes } => {
                    if let Some(to) = index_of(&to) {
                        if let Some(t) = self.nodes.get_mut(to)
                            && t.down_at.is_some()
                            && t.first_check_after_down.is_none()
                        {
                            t.first_swim_after_down.get_or_insert(self.now);
                            let check = crate::membership::classify_datagram(&bytes).is_some_and(
                                |(l, _)| matches!(l, "ping" | "indirect-ping" | "suspected"),
                            );
                            if check {
                                t.first_check_after_down = Some(self.now);
                            }
                        }
                        let hash = xxh3_64_with_seed(&bytes, 6);
                        let size = bytes.len() as u64;
                        self.net.classify_swim(&bytes);
                        for d in self.net.route(i, to, Kind::Swim, size) {
                            self.deliver_after(d, i, to, Payload::Datagram(bytes.clone()), hash);
                        }
                    }
                }
                Output::Addresses { .. } => {}
                Output::SyncRequest { to, msg } => {
                    if let Some(to) = index_of(&to) {
                        self.next_sync_id += 1;
                        let id = self.next_sync_id;
                        let (size, hash) = measure(&msg);
                        let delays = self.net.route(i, to, Kind::Sync, size);
                        if let Some(d) = delays.first() {
                            self.syncs.insert(id, (i, to));
                            self.deliver_after(
                                *d,
                                i,
                                to,
                                Payload::SyncRequest {
                                    id,
                                    msg: Box::new(msg),
                                },
                                hash,
                            );
                        }
                    }
                }
                Output::SyncReply { id, msg } => {
                    if let Some((requester, _)) = self.syncs.remove(&id) {
                        let (size, hash) = measure(&msg);
                        let delays = self.net.route(i, requester, Kind::Sync, size);
                        if let Some(d) = delays.first() {
                            self.deliver_after(
                                *d,
                                i,
                                requester,
                                Payload::SyncResponse(Box::new(msg)),
                                hash,
                            );
                        }
                    }
                }
                Output::Dial { addr } => dials.push(addr),
            }
        }
        for addr in dials {
            self.dial(i, &addr);
        }
    }

    fn send_measured(&mut self, from: usize, to: &[usize], c: &Carried, gossip: Option<u64>) {
        let kind = kind_of(&c.msg);
        let wire = c.size
            + if gossip.is_some() {
                gossip::ENVELOPE_BYTES
            } else {
                0
            };
        for &t in to {
            for d in self.net.route(from, t, kind, wire) {
                let payload = Payload::Message {
                    msg: c.msg.clone(),
                    gossip,
                    author: c.author,
                    size: c.size,
                };
                self.deliver_after(d, from, t, payload, c.hash);
            }
        }
    }

    /// One `IHAVE` from `l.from` to `l.to`, the `IWANT` back for what `l.to` lacks, and those
    /// messages, each leg subject to loss and partitions; the messages arrive after the three
    /// one-way delays and are then handled like any mesh message.
    fn lazy_gossip(&mut self, l: gossip::Lazy<Carried>) {
        let ids = |k: usize| gossip::CONTROL_BYTES + gossip::ID_BYTES * k as u64;
        let Some(&ihave) = self
            .net
            .route(l.from, l.to, Kind::Gossip, ids(l.offered))
            .first()
        else {
            return;
        };
        if l.wanted.is_empty() {
            return;
        }
        let iwant = ids(l.wanted.len());
        let Some(&iwant) = self.net.route(l.to, l.from, Kind::Gossip, iwant).first() else {
            return;
        };
        for (id, c) in l.wanted {
            let kind = kind_of(&c.msg);
            for d in self
                .net
                .route(l.from, l.to, kind, c.size + gossip::ENVELOPE_BYTES)
            {
                let payload = Payload::Message {
                    msg: c.msg.clone(),
                    gossip: Some(id),
                    author: c.author,
                    size: c.size,
                };
                self.deliver_after(ihave + iwant + d, l.from, l.to, payload, c.hash);
            }
        }
    }

    /// Mesh message `id` reaches node `at` from `from`: whether its core gets it (the first
    /// copy to reach a live agent); that copy is forwarded at once to `at`'s other mesh peers,
    /// unless `at` is paused.
    fn forward(&mut self, at: usize, from: usize, id: u64, c: &Carried) -> bool {
        let now = self.now;
        let n = &self.nodes[at];
        let (up, paused) = (n.up(), n.paused);
        let Some(mesh) = self.mesh.as_mut().filter(|_| up) else {
            return false;
        };
        let Some(to) = mesh.receive(now, at, from, id) else {
            return false;
        };
        if !paused && !to.is_empty() {
            self.send_measured(at, &to, c, Some(id));
        }
        true
    }

    fn deliver_after(&mut self, delay: u64, from: usize, to: usize, payload: Payload, hash: u64) {
        self.push(
            self.now.plus(delay),
            Event::Deliver {
                to,
                from,
                payload,
                hash,
            },
        );
    }

    fn runtime_command(&mut self, i: usize, cmd: RuntimeCommand) {
        let boot = self.nodes[i].runtime.boot;
        match cmd {
            RuntimeCommand::Start(spec) => {
                let key = spec.key.clone();
                // `SIM_TRACE_SLOT=web/3` prints every start of that slot with the claim seen.
                if std::env::var_os("SIM_TRACE_SLOT")
                    .is_some_and(|v| v.to_string_lossy() == key.slot.to_string())
                    && let Some(n) = self.nodes[i].node.as_ref()
                {
                    eprintln!(
                        "{} ms: node {i} starts {} epoch {}; its claim: {:?}; sees a majority: {}",
                        self.now.0,
                        key.slot,
                        key.epoch,
                        n.state().claims.get(&key.slot),
                        n.members().sees_majority()
                    );
                }
                let fresh = self.nodes[i].runtime.begin_start(spec);
                let delay = if fresh {
                    let (base, jitter) = self.cfg.start_ms;
                    base + self.net.roll(jitter)
                } else {
                    1
                };
                self.check_safety(i);
                self.push(
                    self.now.plus(delay),
                    Event::Runtime {
                        node: i,
                        boot,
                        op: RtOp::Start(key),
                    },
                );
            }
            RuntimeCommand::Stop { key, .. } => {
                let at = self.now.plus(self.cfg.stop_ms);
                self.push(
                    at,
                    Event::Runtime {
                        node: i,
                        boot,
                        op: RtOp::Stop(key),
                    },
                );
            }
            RuntimeCommand::List { driver } => {
                let at = self.now.plus(1);
                self.push(
                    at,
                    Event::Runtime {
                        node: i,
                        boot,
                        op: RtOp::List(driver),
                    },
                );
            }
        }
    }

    fn runtime_done(&mut self, i: usize, boot: u64, op: RtOp) {
        if self.nodes[i].runtime.boot != boot {
            return; // the machine rebooted since: the command died with it
        }
        let ev = match op {
            RtOp::Start(key) => {
                let fail = self.cfg.start_fail_permille > 0
                    && self.net.roll(1000) < u64::from(self.cfg.start_fail_permille);
                let rt = &mut self.nodes[i].runtime;
                if fail {
                    rt.fail_start(&key);
                    self.check_safety(i);
                    RuntimeEvent::StartFailed {
                        key,
                        error: "simulated failure".into(),
                        retryable: true,
                    }
                } else {
                    let Some(inst) = rt.finish_start(&key) else {
                        return;
                    };
                    let ev = RuntimeEvent::Started {
                        key: key.clone(),
                        revision: inst.spec.revision.clone(),
                        handle: inst.handle.clone(),
                        endpoint: None,
                    };
                    if let Some(after) = self.cfg.crash_loop.get(&key.slot.service) {
                        let at = self.now.plus(*after);
                        self.push(
                            at,
                            Event::Runtime {
                                node: i,
                                boot,
                                op: RtOp::Exit(key),
                            },
                        );
                    }
                    ev
                }
            }
            RtOp::Stop(key) => {
                self.nodes[i].runtime.stop(&key);
                RuntimeEvent::Stopped { key }
            }
            RtOp::List(driver) => RuntimeEvent::Listed {
                driver,
                instances: self.nodes[i].runtime.list(driver),
            },
            RtOp::Exit(key) => {
                if !self.nodes[i].runtime.exit(&key, 1) {
                    return;
                }
                RuntimeEvent::Exited {
                    key,
                    exit: ExitInfo {
                        code: Some(1),
                        signal: None,
                        oom_killed: false,
                    },
                }
            }
        };
        if let Ok(bytes) = postcard::to_stdvec(&ev) {
            self.trace = xxh3_64_with_seed(&bytes, self.trace);
        }
        self.input(i, Input::Runtime(ev));
    }

    /// Safety invariants that a change on machine `i` could break.
    fn check_safety(&mut self, i: usize) {
        if !self.cfg.check_safety {
            return;
        }
        let n = &self.nodes[i];
        if let Some(v) = invariants::capacity(self.now, i, &n.runtime, n.cfg.capacity) {
            self.violations.push(v);
        }
        if n.runtime.live().any(|x| x.majority()) {
            let v = invariants::majority_once(self.now, self.nodes.iter().map(|n| &n.runtime));
            self.violations.extend(v);
        }
    }

    /// Liveness invariants (call after faults healed and a quiet period): exactly N per
    /// service, identical digests on live nodes, no acknowledged write lost.
    pub fn liveness(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        if let Some(d) = invariants::same_digest(self.up().map(|(_, n)| n.state())) {
            v.push(d);
        }
        if let Some((_, first)) = self.up().next() {
            v.extend(invariants::exactly_n(
                first.state(),
                self.nodes.iter().map(|n| &n.runtime),
            ));
        }
        for (i, n) in self.up() {
            v.extend(invariants::no_write_lost(i, n.state(), &self.acked));
        }
        v
    }

    /// Live nodes that hold revision `revision` of `service`.
    pub fn holding(&self, service: &ServiceName, revision: &str) -> usize {
        self.up()
            .filter(|(_, n)| {
                n.state()
                    .services
                    .get(service)
                    .is_some_and(|e| e.history.values().any(|r| r.id.0 == revision))
            })
            .count()
    }

    /// Node ids that are up, as a set.
    pub fn up_set(&self) -> BTreeSet<usize> {
        self.up().map(|(i, _)| i).collect()
    }
}

/// The traffic class of a message.
fn kind_of(msg: &Message) -> Kind {
    match msg {
        Message::Delta(_) => Kind::State,
        Message::Bids(_) => Kind::Bids,
    }
}

/// Encoded size and content hash of a wire value.
fn measure<T: serde::Serialize>(v: &T) -> (u64, u64) {
    let bytes = postcard::to_stdvec(v).expect("in-memory encoding cannot fail");
    (bytes.len() as u64, xxh3_64_with_seed(&bytes, 1))
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

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`): unlike wall time it does not
/// count the moments the OS ran something else, which on a shared 2-core machine made the
/// busiest node's figure swing by half from run to run.
fn thread_cpu() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clock exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
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
