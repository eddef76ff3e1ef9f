//! The node core: one deterministic state machine per node, `Node::handle(now, input, &mut out)`.
//!
//! `Node` is a router. It owns the replicated `ClusterState`, the view of the fleet and the
//! node's parts, and hands every input (a timer tick, a peer's message, an API request, a
//! runtime event, a membership change) to the part it concerns: anti-entropy (`sync.rs`),
//! majority fencing (`fence.rs`), what this node should run (`desired.rs`), its side of the
//! auction (`place.rs`, over the rules in `placement/`), API requests (`api.rs`) and read views
//! (`views.rs`). It never reads a clock, a socket, a file or an OS random source: `now` and the
//! RNG come from outside, so the same inputs give the same outputs in the agent and in the
//! simulator.
//!
//! Outputs are ordered: a `Persist` always precedes the `Reply` that acknowledges the write it
//! holds, and the shell executes outputs in order, so nothing is acknowledged before it is on disk.

pub mod api;
mod config;
mod desired;
mod dial;
mod fence;
mod fleet;
pub mod members;
mod place;
pub mod sync;
mod views;

use std::sync::Arc;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceKey, Millis, NodeId, SlotId};
use crate::membership::{
    MemberId, MemberState, Membership, MembershipError, NodeMeta, RecordShare,
};
use crate::placement::{Auction, Bid};
use crate::reconcile::{self, Effect, Reconciler};
use crate::runtime::{RuntimeCommand, RuntimeEvent};
use crate::spec::Resources;
use crate::state::{Claim, ClusterState, Crdt, HlcClock, NodeReport};

pub use api::{ApiError, ApiReply, ApiRequest, DEPLOY_DELTA_BYTES};
pub use config::{CoreTiming, NodeConfig, TestBugs};
pub use members::{Members, Peer, PeerMeta};
pub use place::{BIDDERS_PER_SLOT, MAX_BIDS_PER_MESSAGE, MAX_CLAIMS_PER_DELTA};
pub use sync::{SyncMsg, UP_SYNC_INTERVAL_MS};

use desired::{Handovers, Local};
use dial::Dialer;
use fence::Fence;
use fleet::node_meta;
use sync::{AntiEntropy, Next};

/// Gossip topics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// `shoal/state/1`: state deltas.
    State,
    /// `shoal/bids/1`: batched bids.
    Bids,
}

impl Topic {
    pub fn name(self) -> &'static str {
        match self {
            Topic::State => "shoal/state/1",
            Topic::Bids => "shoal/bids/1",
        }
    }
}

/// What nodes say to each other (through `wire`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// The entries a change touched (or a full state): merged, never applied as an operation.
    Delta(ClusterState),
    /// Bids for open slots, batched.
    Bids(Vec<Bid>),
}

/// Everything that can happen to a node.
#[derive(Clone, Debug)]
pub enum Input {
    /// Time passed: run whatever is due.
    Tick,
    Message {
        from: NodeId,
        msg: Message,
    },
    Api {
        id: u64,
        req: ApiRequest,
    },
    Runtime(RuntimeEvent),
    /// A SWIM datagram from `/shoal/swim/1`.
    Datagram {
        from: NodeId,
        bytes: Vec<u8>,
    },
    /// The transport connected to a node (a seed, or a peer that dialled us).
    Connected {
        node: NodeId,
    },
    /// An anti-entropy request from a peer; answer with `Output::SyncReply { id }`.
    SyncRequest {
        from: NodeId,
        id: u64,
        msg: SyncMsg,
    },
    /// The answer to one of our `Output::SyncRequest`s.
    SyncResponse {
        from: NodeId,
        msg: SyncMsg,
    },
}

/// Everything a node can ask of the outside world.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    Broadcast {
        topic: Topic,
        msg: Message,
    },
    Runtime(RuntimeCommand),
    /// Persist these entries (the shell writes the node's current value of every key the delta
    /// touches) before executing any later output.
    Persist(ClusterState),
    Reply {
        id: u64,
        result: Result<ApiReply, ApiError>,
    },
    /// A SWIM datagram for `/shoal/swim/1` (fire and forget).
    Datagram {
        to: NodeId,
        bytes: Vec<u8>,
    },
    /// Where `node` can be dialled.
    Addresses {
        node: NodeId,
        addrs: Vec<String>,
    },
    /// An anti-entropy request for `/shoal/sync/1`; its answer comes back as
    /// `Input::SyncResponse`.
    SyncRequest {
        to: NodeId,
        msg: SyncMsg,
    },
    /// The answer to `Input::SyncRequest { id }`.
    SyncReply {
        id: u64,
        msg: SyncMsg,
    },
    /// Dial this seed (a multiaddr from `NodeConfig::seeds`); a connection comes back as
    /// `Input::Connected`.
    Dial {
        addr: String,
    },
}

/// One node's core.
pub struct Node<R: Rng> {
    cfg: NodeConfig,
    rng: R,
    clock: HlcClock,
    state: ClusterState,
    members: Members,
    auction: Auction,
    reconciler: Reconciler,
    counters: api::Counters,
    started_at: Option<Millis>,
    last_report: Option<Millis>,
    report_seq: u64,
    last_relist: Option<Millis>,
    last_compact: Millis,
    fence: Fence,
    handovers: Handovers,
    sync: AntiEntropy,
    dialer: Dialer,
    membership: Membership,
    /// The metadata last handed to membership.
    published_meta: Option<NodeMeta>,
    /// Something changed since the last `drive` (placement and reconcile must look again).
    dirty: bool,
}

impl<R: Rng> Node<R> {
    /// A node starting from `state` (what it had persisted, or empty).
    pub fn new(
        cfg: NodeConfig,
        state: ClusterState,
        mut rng: R,
    ) -> Result<Node<R>, MembershipError> {
        let mut clock = HlcClock::new(cfg.id.clone());
        for entry in state.services.values() {
            if let Some(rev) = entry.current() {
                clock.observe(Millis(0), &rev.stamp);
            }
        }
        let reconciler = Reconciler::new(cfg.timing.reconcile.clone());
        let id = MemberId::new(cfg.id.clone(), cfg.incarnation, cfg.addrs.clone())?;
        let membership = Membership::new(
            id,
            node_meta(&cfg, Resources::default(), false),
            cfg.swim.clone(),
            rng.random(),
        )?;
        Ok(Node {
            fence: Fence::new(&cfg.timing, cfg.bugs.no_fence),
            handovers: Handovers::new(cfg.timing.handover_max_ms),
            sync: AntiEntropy::new(cfg.timing.sync_interval_ms),
            dialer: Dialer::new(cfg.seeds.clone()),
            cfg,
            rng,
            clock,
            state,
            members: Members::default(),
            auction: Auction::default(),
            reconciler,
            counters: api::Counters::default(),
            started_at: None,
            last_report: None,
            report_seq: 0,
            last_relist: None,
            last_compact: Millis(0),
            membership,
            published_meta: None,
            dirty: true,
        })
    }

    /// This node's SWIM membership.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Holds members' metadata records in `share`, one copy for every node given the same
    /// share (the simulator runs thousands of nodes in one process; an agent never calls it).
    pub fn share_member_records(&mut self, share: RecordShare) {
        self.membership.share_records(share);
    }

    pub fn id(&self) -> &NodeId {
        &self.cfg.id
    }

    pub fn config(&self) -> &NodeConfig {
        &self.cfg
    }

    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    pub fn reconciler(&self) -> &Reconciler {
        &self.reconciler
    }

    pub fn counters(&self) -> api::Counters {
        let mut c = self.counters;
        c.clock_skew_stamps = self.clock.skewed_stamps_seen;
        c
    }

    /// The metadata this node advertises to its peers.
    pub fn meta(&self, now: Millis) -> PeerMeta {
        let draining = self.state.draining(&self.cfg.id);
        PeerMeta::from_advertised(Arc::new(node_meta(
            &self.cfg,
            self.allocated(now),
            draining,
        )))
    }

    /// How much longer this node may run `partition: majority` instances without seeing a
    /// majority again (see `Fence::lease_left_ms`).
    pub fn majority_lease_ms(&self, now: Millis) -> u64 {
        self.fence.lease_left_ms(now)
    }

    /// Whether this node sees no other present member (it dials its seeds then).
    fn alone(&self) -> bool {
        self.members.present_count() <= 1
    }

    /// When the node next needs a `Tick`, at the latest.
    pub fn next_wake(&self, now: Millis) -> Millis {
        let t = &self.cfg.timing;
        let mut wake = now.plus(t.rebid_ms.min(t.relist_ms).min(1_000));
        let mut consider = |m: Millis| {
            if m < wake {
                wake = m;
            }
        };
        if let Some(d) = self.reconciler.next_deadline() {
            consider(d);
        }
        if let Some(d) = self.fence.next_start(now) {
            consider(d);
        }
        if let Some(d) = self.membership.next_deadline() {
            consider(d);
        }
        if let Some(d) = self.dialer.next_dial(self.alone()) {
            consider(d);
        }
        if let Some(t) = self.auction.my_bids_since() {
            consider(t.plus(self.bid_window()));
        }
        if self.reconciler.dirty {
            consider(
                self.last_report
                    .map_or(now, |l| l.plus(t.report_min_interval_ms)),
            );
        }
        wake.max(now)
    }

    /// Handles one input and appends the resulting outputs.
    pub fn handle(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        self.absorb(now, input, out);
        self.flush(now, out);
    }

    /// Takes one input in without re-examining placement and reconcile; [`Node::flush`] does
    /// that once for a batch. A shell that has many inputs ready (a burst of runtime events or
    /// gossip) absorbs them all and flushes once, so a burst costs one placement pass instead
    /// of one per input. `handle` is `absorb` then `flush`.
    pub fn absorb(&mut self, now: Millis, input: Input, out: &mut Vec<Output>) {
        if self.started_at.is_none() {
            self.started_at = Some(now);
        }
        // Datagrams arrive many times a second; only those that change membership (and every
        // other input) make the node re-examine placement and reconcile.
        self.dirty |= !matches!(input, Input::Datagram { .. } | Input::Connected { .. });
        match input {
            Input::Tick => {}
            Input::Message { from, msg } => self.on_message(now, from, msg, out),
            Input::Api { id, req } => {
                let result = self.on_api(now, req, out);
                out.push(Output::Reply { id, result });
            }
            Input::Runtime(ev) => self.reconcile(now, Some(ev), out),
            Input::Datagram { from, bytes } => self.on_datagram(now, &from, &bytes, out),
            Input::Connected { node } => self.on_connected(now, node, out),
            Input::SyncRequest { from, id, msg } => {
                let (reply, merge, rejected) =
                    self.sync
                        .answer(now, &from, msg, &self.state, &mut self.rng);
                if let Some(delta) = merge {
                    self.merge_remote(now, delta, out);
                }
                if rejected {
                    self.counters.deltas_rejected += 1;
                }
                out.push(Output::SyncReply { id, msg: reply });
            }
            Input::SyncResponse { from, msg } => {
                let (merge, next) = self.sync.on_answer(now, &from, msg);
                if let Some(delta) = merge {
                    self.merge_remote(now, delta, out);
                }
                match next {
                    Next::Done => {}
                    Next::Push(buckets) => out.push(Output::SyncRequest {
                        msg: sync::push(&self.state, &buckets, &mut self.rng),
                        to: from,
                    }),
                    Next::Again => self.sync.start(now, from, &self.state, out),
                    Next::Rejected => self.counters.deltas_rejected += 1,
                }
            }
        }
    }

    /// Re-examines placement and reconcile if an input absorbed since the last flush asks for it.
    pub fn flush(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.dirty {
            self.dirty = false;
            self.drive(now, out);
        }
    }

    /// Merges state that came from a peer (gossip or sync) and persists what changed.
    fn merge_remote(&mut self, now: Millis, delta: ClusterState, out: &mut Vec<Output>) {
        for entry in delta.services.values() {
            for stamp in entry.history.keys() {
                self.clock.observe(now, stamp);
            }
        }
        if self.state.merge(&delta) {
            out.push(Output::Persist(delta));
        }
    }

    fn on_message(&mut self, now: Millis, from: NodeId, msg: Message, out: &mut Vec<Output>) {
        match msg {
            Message::Delta(delta) => {
                self.counters.deltas_received += 1;
                // A node's report is written only by that node: a delta from another node that
                // carries our own report is stale gossip and cannot change it (markers decide).
                self.merge_remote(now, delta, out);
            }
            Message::Bids(bids) => {
                self.counters.bids_received += bids.len() as u64;
                for mut bid in bids {
                    // A bid is only taken from the node it names.
                    if bid.node == from {
                        bid.slot.service = self.state.canonical_service(&bid.slot.service);
                        self.auction.record(now, bid);
                    }
                }
            }
        }
    }

    /// Writes a local change: persist, then gossip.
    fn write(&mut self, delta: ClusterState, out: &mut Vec<Output>) {
        out.push(Output::Persist(delta.clone()));
        out.push(Output::Broadcast {
            topic: Topic::State,
            msg: Message::Delta(delta),
        });
        self.counters.deltas_sent += 1;
    }

    /// Everything that is due: membership, anti-entropy, compaction, relisting, fencing,
    /// placement, reconcile, report.
    fn drive(&mut self, now: Millis, out: &mut Vec<Output>) {
        let t = self.cfg.timing.clone();
        let mut mo = Vec::new();
        self.membership.tick(now, &mut mo);
        self.apply_member_outputs(now, mo, out);
        self.dialer.drive(now, self.alone(), &mut self.rng, out);
        let present: Vec<NodeId> = self.members.present().map(|(id, _)| id.clone()).collect();
        self.sync
            .periodic(now, &present, &self.state, &mut self.rng, out);
        if now.since(self.last_compact) >= t.compact_ms {
            self.last_compact = now;
            self.state.compact(now);
        }
        if self.last_relist.is_none_or(|l| now.since(l) >= t.relist_ms) {
            self.last_relist = Some(now);
            for d in &self.cfg.runtimes {
                out.push(Output::Runtime(RuntimeCommand::List { driver: *d }));
            }
        }
        self.fence.observe(now, self.members.sees_majority());
        let listed = self
            .cfg
            .runtimes
            .iter()
            .all(|d| self.reconciler.has_listed(*d));
        let instances = &self.reconciler.instances;
        let running = |key: &InstanceKey| {
            instances
                .get(key)
                .is_some_and(|l| matches!(l.phase, reconcile::Phase::Running { .. }))
        };
        for slot in self
            .fence
            .guard(now, &self.state, &self.cfg.id, listed, running)
        {
            self.release(&slot, out);
        }
        self.release_unfit(out);
        self.run_auction(now, out);
        self.handovers.track(
            now,
            &self.state,
            &self.cfg.id,
            self.reconciler.instances.keys(),
        );
        self.reconcile(now, None, out);
        self.maybe_report(now, out);
        self.publish_meta(now, out);
    }

    /// Hands the reconciler what this node should run (computed here, once): with a runtime
    /// event to fold in, or for a pass over every instance.
    fn reconcile(&mut self, now: Millis, ev: Option<RuntimeEvent>, out: &mut Vec<Output>) {
        let members = &self.members;
        let local = Local {
            me: &self.cfg.id,
            reconciler: &self.reconciler,
            fence: &self.fence,
            present: |id: &NodeId| members.state(id).is_some_and(MemberState::is_active),
            skip_reclaim: self.cfg.bugs.skip_reclaim,
        };
        let desired = self.handovers.desired(now, &self.state, local);
        let mut effects = Vec::new();
        match ev {
            Some(ev) => self.reconciler.on_event(now, ev, &desired, &mut effects),
            None => {
                let owner = reconcile::Owner {
                    cluster: self.cfg.cluster.clone(),
                    node: self.cfg.id.clone(),
                };
                self.reconciler.step(now, &owner, &desired, &mut effects);
            }
        }
        drop(desired);
        self.apply_effects(now, effects, out);
    }

    fn apply_effects(&mut self, _now: Millis, effects: Vec<Effect>, out: &mut Vec<Output>) {
        for e in effects {
            match e {
                Effect::Runtime(cmd) => out.push(Output::Runtime(cmd)),
                Effect::Release(slot) => self.release(&slot, out),
            }
        }
    }

    /// Gives a slot up: a released claim at the same epoch, so another node claims `epoch + 1`.
    fn release(&mut self, slot: &SlotId, out: &mut Vec<Output>) {
        if let Some(c) = self
            .state
            .claims
            .get(slot)
            .filter(|c| c.node == self.cfg.id && !c.released)
        {
            let released = Claim {
                released: true,
                ..c.clone()
            };
            let delta = self.state.put_claim(slot, released);
            self.write(delta, out);
        }
    }

    fn maybe_report(&mut self, now: Millis, out: &mut Vec<Output>) {
        if !self.reconciler.dirty {
            return;
        }
        if self
            .last_report
            .is_some_and(|l| now.since(l) < self.cfg.timing.report_min_interval_ms)
        {
            return;
        }
        self.reconciler.dirty = false;
        self.last_report = Some(now);
        self.report_seq += 1;
        let report = NodeReport {
            instances: self.reconciler.report(|m| m.0),
            allocated: self.allocated(now),
        };
        if self.state.report(&self.cfg.id) == Some(&report) {
            return;
        }
        let delta = self.state.put_report(
            &self.cfg.id,
            report,
            (self.cfg.incarnation, self.report_seq),
        );
        self.write(delta, out);
    }
}

#[cfg(test)]
mod tests;
