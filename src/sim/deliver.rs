//! Carrying out a node's outputs in the simulator: broadcasts over the gossipsub mesh (or
//! straight to every live node), datagrams and sync messages through the simulated network,
//! persists to the node's disk, API replies, dials, and runtime commands to the simulated
//! runtime, whose results come back later as runtime events. Every delay and loss is drawn from
//! the network's seeded RNG, in output order, so a seed replays exactly.
//!
//! It does not decide when a node runs (the event queue in `sim/mod.rs`) nor inject faults
//! (`sim/faults.rs`).

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::net::Kind;
use super::{Event, Sim, gossip, index_of, nid};
use crate::ids::InstanceKey;
use crate::node::{ApiReply, Input, Message, Output, SyncMsg, Topic};
use crate::runtime::{ExitInfo, RuntimeCommand, RuntimeEvent};
use crate::spec::{DriverKind, ServiceName};
use crate::state::Crdt;

/// A mesh message as the message cache keeps it for `IWANT`s.
#[derive(Clone, Debug)]
pub(super) struct Carried {
    msg: Arc<Message>,
    author: usize,
    /// Encoded size (envelope not included) and hash, measured once at the author.
    size: u64,
    hash: u64,
}

impl Carried {
    pub(super) fn new(msg: &Arc<Message>, author: usize, size: u64, hash: u64) -> Carried {
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
pub(super) enum Payload {
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
pub(super) enum RtOp {
    Start(InstanceKey),
    Stop(InstanceKey),
    List(DriverKind),
    Exit(InstanceKey),
}

impl Sim {
    /// Carries out node `i`'s outputs, in order.
    pub(super) fn apply(&mut self, i: usize, out: Vec<Output>) {
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
    pub(super) fn lazy_gossip(&mut self, l: gossip::Lazy<Carried>) {
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
    pub(super) fn forward(&mut self, at: usize, from: usize, id: u64, c: &Carried) -> bool {
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

    pub(super) fn runtime_done(&mut self, i: usize, boot: u64, op: RtOp) {
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
