//! The node core: one deterministic state machine per node, `Node::handle(now, input, &mut out)`.
//!
//! It owns the replicated `ClusterState`, the view of the fleet, this node's auction and its
//! reconciler, and turns every input (a timer tick, a peer's message, an API request, a runtime
//! event, a membership change) into outputs (messages, runtime commands, writes to persist, API
//! replies). It never reads a clock, a socket, a file or an OS random source: `now` and the RNG
//! come from outside, so the same inputs give the same outputs in the agent and in the simulator.
//!
//! Outputs are ordered: a `Persist` always precedes the `Reply` that acknowledges the write it
//! holds, and the shell executes outputs in order, so nothing is acknowledged before it is on disk.

pub mod api;
pub mod members;
pub mod sync;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::{Rng, RngExt};
use serde::{Deserialize, Serialize};

use crate::ids::{InstanceKey, Millis, NodeId, RevisionId, SlotId};
use crate::membership::{
    MemberEvent, MemberId, MemberOutput, MemberState, Membership, MembershipError, NodeMeta,
    RecordShare, SwimTuning,
};
use crate::placement::{self, Auction, Bid, Ineligible, NodeFacts, OpenSlot, SpreadView};
use crate::reconcile::{self, Desired, Effect, ReconcileTiming, Reconciler};
use crate::runtime::{Handle, RuntimeCommand, RuntimeEvent};
use crate::spec::{DriverKind, PartitionMode, Resources, ServiceName, ServiceSpec};
use crate::state::{
    Claim, ClusterState, Crdt, HlcClock, InstanceReport, InstanceState, NodeReport, Revision,
    RevisionBody,
};

pub use api::{ApiError, ApiReply, ApiRequest};
pub use members::{Members, Peer, PeerMeta, PeerState, PeerUpdate};
pub use sync::SyncMsg;

/// Timing of the core. Units are milliseconds. Presets per profile: `CoreTiming::lan()` and
/// `CoreTiming::wan()`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoreTiming {
    /// How long bids for an open slot are collected before every node picks the winner.
    /// Longer windows tolerate slower links; shorter ones place faster. LAN: a few hundred ms.
    pub bid_window_ms: u64,
    /// How often a node re-examines a slot it could not bid for (capacity or membership may
    /// have changed) and re-bids for a slot whose winner never claimed it.
    pub rebid_ms: u64,
    /// How often every runtime is listed to repair lost events.
    pub relist_ms: u64,
    /// Minimum time between two reports of this node's instances (changes coalesce).
    pub report_min_interval_ms: u64,
    /// How often tombstones are garbage-collected.
    pub compact_ms: u64,
    /// `partition: majority`: an owner that has not seen a strict majority for this long stops
    /// the instance; a majority side waits `lease_ms + drift_margin_ms` after the owner became
    /// unreachable before re-placing it.
    pub lease_ms: u64,
    pub drift_margin_ms: u64,
    /// `partition: majority`: a node that wins a slot's auction waits this long before it
    /// starts the instance, and starts it only if its claim still stands. Two nodes that both
    /// believed they won (a bid lost on the way) see each other's claim in the meantime and
    /// the loser never starts. A few gossip rounds; LAN 2 s.
    pub majority_confirm_ms: u64,
    /// Claims held by nodes this node has never heard of are treated as orphaned only after it
    /// has run this long (membership needs time to converge after a start).
    pub startup_grace_ms: u64,
    /// An instance whose slot moved to another node keeps running until the new owner reports
    /// it running (make-before-break), but no longer than this.
    pub handover_max_ms: u64,
    /// How often a node runs anti-entropy with one random live peer. Each round costs about
    /// 600 bytes each way when nothing differs.
    pub sync_interval_ms: u64,
    pub reconcile: ReconcileTiming,
}

impl CoreTiming {
    pub fn lan() -> CoreTiming {
        CoreTiming {
            bid_window_ms: 300,
            rebid_ms: 2_000,
            relist_ms: 5_000,
            report_min_interval_ms: 200,
            compact_ms: 60_000,
            lease_ms: 10_000,
            drift_margin_ms: 2_000,
            majority_confirm_ms: 2_000,
            startup_grace_ms: 10_000,
            handover_max_ms: 60_000,
            sync_interval_ms: 5_000,
            reconcile: ReconcileTiming::default(),
        }
    }

    pub fn wan() -> CoreTiming {
        CoreTiming {
            bid_window_ms: 1_500,
            rebid_ms: 5_000,
            relist_ms: 10_000,
            report_min_interval_ms: 1_000,
            compact_ms: 60_000,
            lease_ms: 60_000,
            drift_margin_ms: 10_000,
            majority_confirm_ms: 6_000,
            startup_grace_ms: 60_000,
            handover_max_ms: 120_000,
            sync_interval_ms: 15_000,
            reconcile: ReconcileTiming::default(),
        }
    }
}

/// Who this node is and what it offers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    pub id: NodeId,
    /// Grows at every agent start (persisted by the shell).
    pub incarnation: u64,
    /// The cluster's id (a digest of its key), put on every instance as `shoal.cluster`.
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub capacity: Resources,
    pub runtimes: BTreeSet<DriverKind>,
    pub agent_version: String,
    pub timing: CoreTiming,
    /// Multiaddrs peers use to reach this node (advertised through membership).
    pub addrs: Vec<String>,
    /// SWIM timing; `None` runs the node without membership (a fleet of one, and tests).
    pub swim: Option<SwimTuning>,
    /// Bugs switched on deliberately, to show that the chaos harness and the simulator catch
    /// them. Never set in production (`SHOAL_TEST_BUGS`).
    pub bugs: TestBugs,
}

/// Deliberate bugs for checking that invariant checks catch them. All off by default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestBugs {
    /// A node keeps running instances whose claim moved to another node.
    pub skip_reclaim: bool,
    /// A node bids and claims beyond its capacity.
    pub ignore_capacity: bool,
    /// `partition: majority` services are neither fenced nor held back in a minority.
    pub no_fence: bool,
}

impl TestBugs {
    /// Parses `skip-reclaim,ignore-capacity,no-fence`; unknown names are returned as errors.
    pub fn parse(s: &str) -> Result<TestBugs, String> {
        let mut b = TestBugs::default();
        for name in s.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            match name {
                "skip-reclaim" => b.skip_reclaim = true,
                "ignore-capacity" => b.ignore_capacity = true,
                "no-fence" => b.no_fence = true,
                other => {
                    return Err(format!(
                        "unknown test bug {other:?} (known: skip-reclaim, ignore-capacity, no-fence)"
                    ));
                }
            }
        }
        Ok(b)
    }

    pub fn any(&self) -> bool {
        self.skip_reclaim || self.ignore_capacity || self.no_fence
    }
}

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
    /// A membership change injected directly (tests, and nodes without SWIM).
    Peer(PeerUpdate),
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
}

/// One node's core.
pub struct Node<R: Rng> {
    cfg: NodeConfig,
    rng: R,
    clock: HlcClock,
    state: ClusterState,
    members: Members,
    auction: Auction,
    /// The earliest `opened_at` of the slots this node has bid for, as the last auction pass
    /// left them (only a pass places bids; a bid dropped in between leaves it early, which
    /// costs one spurious wake): `next_wake` reads it instead of walking every open slot.
    my_bids_since: Option<Millis>,
    reconciler: Reconciler,
    counters: api::Counters,
    started_at: Option<Millis>,
    last_report: Option<Millis>,
    report_seq: u64,
    last_relist: Option<Millis>,
    last_compact: Millis,
    /// When this node stopped seeing a strict majority (for `partition: majority`).
    minority_since: Option<Millis>,
    /// Since when this node has seen a strict majority without a break (None: it does not).
    majority_since: Option<Millis>,
    /// `partition: majority` claims `(slot, epoch)` this node may run, with the time from which
    /// it may start them: won by this life of the node (after `majority_confirm_ms`), or found
    /// running when it started (at once). Its other majority claims (an earlier life's, whose
    /// instance died with the machine) are released rather than started: the majority side
    /// may have placed the slot again meanwhile, and this node cannot know until it has merged
    /// the fleet's state.
    vouched: BTreeMap<(SlotId, u64), Millis>,
    /// Instances kept running after their slot moved, until the new owner runs it.
    handovers: BTreeMap<InstanceKey, Millis>,
    membership: Option<Membership>,
    /// The metadata last handed to membership.
    published_meta: Option<NodeMeta>,
    last_sync: BTreeMap<NodeId, Millis>,
    next_sync: Millis,
    /// Sync exchanges in flight, by peer (one at a time per peer).
    syncing: BTreeMap<NodeId, Millis>,
    /// Peers whose last sync answer did not fit in one message: synced again at once.
    sync_more: BTreeSet<NodeId>,
    /// When this node last started a sync because a member appeared: at most one per
    /// `UP_SYNC_INTERVAL_MS` (see `apply_member_outputs`).
    last_up_sync: Option<Millis>,
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
        let membership = match &cfg.swim {
            Some(tuning) => {
                let id = MemberId::new(cfg.id.clone(), cfg.incarnation, cfg.addrs.clone())?;
                Some(Membership::new(
                    id,
                    node_meta(&cfg, Resources::default(), false),
                    tuning.clone(),
                    rng.random(),
                )?)
            }
            None => None,
        };
        Ok(Node {
            cfg,
            rng,
            clock,
            state,
            members: Members::default(),
            auction: Auction::default(),
            my_bids_since: None,
            reconciler,
            counters: api::Counters::default(),
            started_at: None,
            last_report: None,
            report_seq: 0,
            last_relist: None,
            last_compact: Millis(0),
            minority_since: None,
            majority_since: None,
            vouched: BTreeMap::new(),
            handovers: BTreeMap::new(),
            membership,
            published_meta: None,
            last_sync: BTreeMap::new(),
            next_sync: Millis(0),
            syncing: BTreeMap::new(),
            sync_more: BTreeSet::new(),
            last_up_sync: None,
            dirty: true,
        })
    }

    /// Membership, when the node runs SWIM.
    pub fn membership(&self) -> Option<&Membership> {
        self.membership.as_ref()
    }

    /// Holds members' metadata records in `share`, one copy for every node given the same
    /// share (the simulator runs thousands of nodes in one process; an agent never calls it).
    pub fn share_member_records(&mut self, share: RecordShare) {
        if let Some(m) = &mut self.membership {
            m.share_records(share);
        }
    }

    /// Announces a graceful departure: peers mark this node `left` at once.
    pub fn leave(&mut self, now: Millis, out: &mut Vec<Output>) {
        if let Some(m) = &mut self.membership {
            let mut mo = Vec::new();
            m.leave(now, &mut mo);
            self.apply_member_outputs(now, mo, out);
        }
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
        for from in self.vouched.values().filter(|f| **f > now) {
            consider(*from);
        }
        if let Some(d) = self.membership.as_ref().and_then(Membership::next_deadline) {
            consider(d);
        }
        if let Some(t) = self.my_bids_since {
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
            Input::Runtime(ev) => {
                let mut effects = Vec::new();
                let desired = desired(
                    &self.state,
                    &self.cfg,
                    &self.members,
                    &self.reconciler,
                    &self.handovers,
                    Fence {
                        fenced: self.fenced(now),
                        vouched: &self.vouched,
                    },
                    now,
                );
                self.reconciler.on_event(now, ev, &desired, &mut effects);
                drop(desired);
                self.apply_effects(now, effects, out);
            }
            Input::Peer(u) => {
                self.members.apply(now, u);
            }
            Input::Datagram { from, bytes } => {
                if let Some(m) = &mut self.membership {
                    let mut mo = Vec::new();
                    m.handle_datagram(now, &from, &bytes, &mut mo);
                    self.apply_member_outputs(now, mo, out);
                }
            }
            Input::Connected { node } => {
                let known = self
                    .membership
                    .as_ref()
                    .is_some_and(|m| m.member(&node).is_some_and(|x| x.state.is_active()));
                if !known && let Some(m) = &mut self.membership {
                    let mut mo = Vec::new();
                    m.announce(now, node, &mut mo);
                    self.apply_member_outputs(now, mo, out);
                }
            }
            Input::SyncRequest { from, id, msg } => {
                let reply = self.on_sync_request(now, &from, msg, out);
                out.push(Output::SyncReply { id, msg: reply });
            }
            Input::SyncResponse { from, msg } => self.on_sync_response(now, from, msg, out),
        }
    }

    /// Re-examines placement and reconcile if an input absorbed since the last flush asks for it.
    pub fn flush(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.dirty {
            self.dirty = false;
            self.drive(now, out);
        }
    }

    /// Folds membership outputs in: datagrams and addresses go out, events update the view.
    fn apply_member_outputs(&mut self, now: Millis, mo: Vec<MemberOutput>, out: &mut Vec<Output>) {
        for o in mo {
            match o {
                MemberOutput::Datagram { to, bytes } => out.push(Output::Datagram { to, bytes }),
                MemberOutput::Addresses { node, addrs } => {
                    out.push(Output::Addresses { node, addrs })
                }
                MemberOutput::Event(ev) => {
                    self.dirty = true;
                    let (MemberEvent::Up(id)
                    | MemberEvent::Suspect(id)
                    | MemberEvent::Down(id)
                    | MemberEvent::Left(id)
                    | MemberEvent::MetaChanged(id)) = &ev;
                    if id == &self.cfg.id {
                        continue;
                    }
                    let Some(m) = self.membership.as_ref().and_then(|m| m.member(id)) else {
                        continue;
                    };
                    let update = PeerUpdate {
                        node: id.clone(),
                        state: match m.state {
                            MemberState::Alive => PeerState::Alive,
                            MemberState::Suspect => PeerState::Suspect,
                            MemberState::Down => PeerState::Down,
                            MemberState::Left => PeerState::Left,
                        },
                        incarnation: m.incarnation,
                        meta: m.meta.clone().map(PeerMeta::from_advertised),
                    };
                    match &ev {
                        MemberEvent::Up(_) => {
                            tracing::info!(peer = %id, incarnation = m.incarnation, "member up")
                        }
                        MemberEvent::Down(_) => tracing::warn!(peer = %id, "member down"),
                        MemberEvent::Left(_) => tracing::info!(peer = %id, "member left"),
                        _ => {}
                    }
                    let up = matches!(ev, MemberEvent::Up(_));
                    let known = self.members.peers().contains_key(id);
                    self.members.apply(now, update);
                    // A member that reappears (back from down, or a new life) gets our whole
                    // state at once: that is how the two sides of a healed partition converge
                    // within seconds. A member seen for the first time (a joiner) gets it only
                    // if no such exchange started in the last `UP_SYNC_INTERVAL_MS`: one brings
                    // a newcomer the fleet's state, and one per joiner made every node of a
                    // fleet that starts together sync with every other (n² full exchanges, the
                    // simulator's whole cost at 1,000 nodes). Periodic sync covers the rest.
                    if up
                        && (known
                            || self
                                .last_up_sync
                                .is_none_or(|t| now.since(t) >= UP_SYNC_INTERVAL_MS))
                    {
                        self.last_up_sync = Some(now);
                        self.start_sync(now, id.clone(), out);
                    }
                }
            }
        }
    }

    fn start_sync(&mut self, now: Millis, to: NodeId, out: &mut Vec<Output>) {
        if self
            .syncing
            .get(&to)
            .is_some_and(|t| now.since(*t) < 10_000)
        {
            return;
        }
        self.syncing.insert(to.clone(), now);
        out.push(Output::SyncRequest {
            to,
            msg: SyncMsg::Digest(sync::digest(&self.state)),
        });
    }

    fn on_sync_request(
        &mut self,
        now: Millis,
        from: &NodeId,
        msg: SyncMsg,
        out: &mut Vec<Output>,
    ) -> SyncMsg {
        match msg {
            SyncMsg::Digest(theirs) => {
                let d = sync::differing(&sync::digest(&self.state), &theirs);
                let start = self.rng.random_range(0..usize::MAX);
                let (state, complete) =
                    sync::entries_in(&self.state, &d, sync::MAX_SYNC_ENTRY_BYTES, start);
                SyncMsg::Entries {
                    state,
                    differing: d.into_iter().map(|b| b as u16).collect(),
                    complete,
                }
            }
            SyncMsg::Push(state) => {
                self.merge_remote(now, state, out);
                self.last_sync.insert(from.clone(), now);
                SyncMsg::Ack
            }
            // Responses sent as requests: a confused or hostile peer; nothing to do.
            SyncMsg::Entries { .. } | SyncMsg::Ack => {
                self.counters.deltas_rejected += 1;
                SyncMsg::Ack
            }
        }
    }

    fn on_sync_response(&mut self, now: Millis, from: NodeId, msg: SyncMsg, out: &mut Vec<Output>) {
        match msg {
            SyncMsg::Entries {
                state,
                differing,
                complete,
            } => {
                self.merge_remote(now, state, out);
                if !complete {
                    // More to come: another round right after this one's push is acknowledged.
                    self.sync_more.insert(from.clone());
                }
                let buckets: BTreeSet<usize> = differing
                    .into_iter()
                    .map(usize::from)
                    .filter(|b| *b < sync::BUCKETS)
                    .collect();
                if buckets.is_empty() {
                    self.syncing.remove(&from);
                    self.last_sync.insert(from, now);
                    return;
                }
                let start = self.rng.random_range(0..usize::MAX);
                let (mine, _) =
                    sync::entries_in(&self.state, &buckets, sync::MAX_SYNC_ENTRY_BYTES, start);
                out.push(Output::SyncRequest {
                    to: from,
                    msg: SyncMsg::Push(mine),
                });
            }
            SyncMsg::Ack => {
                self.syncing.remove(&from);
                self.last_sync.insert(from.clone(), now);
                if self.sync_more.remove(&from) {
                    self.start_sync(now, from, out);
                }
            }
            SyncMsg::Digest(_) | SyncMsg::Push(_) => {
                self.counters.deltas_rejected += 1;
                self.syncing.remove(&from);
                self.sync_more.remove(&from);
            }
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

    /// Anti-entropy with one random present peer every `sync_interval_ms`; forgets exchanges
    /// that never finished.
    fn periodic_sync(&mut self, now: Millis, out: &mut Vec<Output>) {
        self.syncing.retain(|_, t| now.since(*t) < 10_000);
        let syncing = &self.syncing;
        self.sync_more.retain(|n| syncing.contains_key(n));
        if now < self.next_sync {
            return;
        }
        let interval = self.cfg.timing.sync_interval_ms;
        // Jitter so that nodes started together do not sync in lockstep.
        self.next_sync = now.plus(interval / 2 + self.rng.random_range(0..=interval));
        let peers: Vec<NodeId> = self.members.present().map(|(id, _)| id.clone()).collect();
        if peers.is_empty() {
            return;
        }
        let pick = peers[self.rng.random_range(0..peers.len())].clone();
        self.start_sync(now, pick, out);
    }

    /// Hands changed metadata (allocation, draining) to membership, which rate-limits it.
    fn publish_meta(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.membership.is_none() {
            return;
        }
        let meta = node_meta(
            &self.cfg,
            self.allocated(now),
            self.state.draining(&self.cfg.id),
        );
        if self
            .published_meta
            .as_ref()
            .is_some_and(|p| same_meta(p, &meta))
        {
            return;
        }
        let mut mo = Vec::new();
        let m = self.membership.as_mut().expect("checked above");
        match m.set_meta(now, meta.clone(), &mut mo) {
            Ok(()) => self.published_meta = Some(meta),
            Err(e) => tracing::warn!(error = %e, "cannot publish node metadata"),
        }
        self.apply_member_outputs(now, mo, out);
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

    fn new_revision(&mut self, now: Millis, name: &ServiceName, body: RevisionBody) -> Revision {
        let seq = self
            .state
            .services
            .get(name)
            .and_then(|e| e.current())
            .map_or(0, |r| r.id.seq())
            + 1;
        let stamp = self.clock.stamp(now);
        let bytes = postcard::to_stdvec(&stamp).expect("in-memory encoding cannot fail");
        let tag = xxhash_rust::xxh3::xxh3_64(&bytes) & 0xffff;
        Revision {
            id: RevisionId(format!("{seq}.{tag:04x}")),
            stamp,
            body,
        }
    }

    fn write_revision(
        &mut self,
        now: Millis,
        name: &ServiceName,
        body: RevisionBody,
        out: &mut Vec<Output>,
    ) -> api::WriteResult {
        let rev = self.new_revision(now, name, body);
        let id = rev.id.0.clone();
        let delta = self.state.put_revision(name, rev);
        self.write(delta, out);
        api::WriteResult {
            service: name.0.to_string(),
            revision: id,
            changed: true,
        }
    }

    fn on_api(
        &mut self,
        now: Millis,
        req: ApiRequest,
        out: &mut Vec<Output>,
    ) -> Result<ApiReply, ApiError> {
        match req {
            ApiRequest::Deploy { specs } => {
                // The revisions of one deploy go out together, in as few deltas as the gossip
                // limit allows: a node that saw only part of a deploy would plan and bid (and
                // reserve capacity) for that part alone, then find itself without room for the
                // slots the whole deploy's plan gives it.
                let mut results = Vec::new();
                let mut delta = ClusterState::default();
                let mut delta_bytes: usize = 0;
                for spec in specs {
                    let name = spec.name.clone();
                    let current = self.state.services.get(&name).and_then(|e| e.current());
                    if let Some(cur) = current.filter(|c| c.spec() == Some(&spec)) {
                        results.push(api::WriteResult {
                            service: name.0.to_string(),
                            revision: cur.id.0.clone(),
                            changed: false,
                        });
                        continue;
                    }
                    let rev = self.new_revision(now, &name, RevisionBody::Spec(spec));
                    let bytes = postcard::experimental::serialized_size(&rev).unwrap_or(usize::MAX);
                    if delta_bytes > 0 && delta_bytes.saturating_add(bytes) > DEPLOY_DELTA_BYTES {
                        self.write(std::mem::take(&mut delta), out);
                        delta_bytes = 0;
                    }
                    results.push(api::WriteResult {
                        service: name.0.to_string(),
                        revision: rev.id.0.clone(),
                        changed: true,
                    });
                    delta.merge(&self.state.put_revision(&name, rev));
                    delta_bytes = delta_bytes.saturating_add(bytes);
                }
                if delta_bytes > 0 {
                    self.write(delta, out);
                }
                Ok(ApiReply::Written(results))
            }
            ApiRequest::Remove { service } => {
                self.live(&service)?;
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Deleted,
                    out,
                )]))
            }
            ApiRequest::Scale { service, replicas } => {
                let mut spec = self.live(&service)?.clone();
                if replicas > crate::spec::MAX_REPLICAS {
                    return Err(ApiError::invalid(
                        format!(
                            "replicas {replicas} is more than {}",
                            crate::spec::MAX_REPLICAS
                        ),
                        format!("use at most {} replicas", crate::spec::MAX_REPLICAS),
                    ));
                }
                if spec.replicas == replicas {
                    let cur = self.state.services[&service]
                        .current()
                        .expect("live service has a revision");
                    return Ok(ApiReply::Written(vec![api::WriteResult {
                        service: service.0.to_string(),
                        revision: cur.id.0.clone(),
                        changed: false,
                    }]));
                }
                spec.replicas = replicas;
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Spec(spec),
                    out,
                )]))
            }
            ApiRequest::Rollback { service, to } => {
                let entry = self
                    .state
                    .services
                    .get(&service)
                    .ok_or_else(|| unknown_service(&service))?;
                let current = entry.current().expect("entries are never empty");
                let target = match &to {
                    Some(to) => find_revision(entry.history.values(), to)?,
                    None => entry
                        .history
                        .values()
                        .rev()
                        .skip(1)
                        .find(|r| r.spec().is_some() && r.spec() != current.spec())
                        .ok_or_else(|| {
                            ApiError::not_found(
                                format!(
                                    "service {service} has no earlier revision to roll back to"
                                ),
                                format!("see `shoal history {service}`"),
                            )
                        })?,
                };
                let Some(spec) = target.spec().cloned() else {
                    return Err(ApiError::invalid(
                        format!("revision {} of {service} is a removal", target.id),
                        "roll back to a revision that has a spec",
                    ));
                };
                Ok(ApiReply::Written(vec![self.write_revision(
                    now,
                    &service,
                    RevisionBody::Spec(spec),
                    out,
                )]))
            }
            ApiRequest::History { service } => {
                let entry = self
                    .state
                    .services
                    .get(&service)
                    .ok_or_else(|| unknown_service(&service))?;
                let current = entry.current().map(|r| r.stamp.clone());
                Ok(ApiReply::History(
                    entry
                        .history
                        .values()
                        .rev()
                        .map(|r| api::HistoryEntry {
                            revision: r.id.0.clone(),
                            written_by: r.stamp.node.0.to_string(),
                            written_at: r.stamp.wall_ms,
                            current: Some(&r.stamp) == current.as_ref(),
                            deleted: r.spec().is_none(),
                            spec: r.spec().cloned(),
                        })
                        .collect(),
                ))
            }
            ApiRequest::Ps { service } => {
                if let Some(s) = &service {
                    self.state
                        .services
                        .get(s)
                        .ok_or_else(|| unknown_service(s))?;
                }
                Ok(ApiReply::Ps(self.ps(now, service.as_ref())))
            }
            ApiRequest::Status => Ok(ApiReply::Status(Box::new(self.status(now)))),
            ApiRequest::Nodes => Ok(ApiReply::Nodes(self.nodes(now))),
            ApiRequest::TestFaults(_) => Err(ApiError::invalid(
                "fault injection is off on this agent",
                "start the agent with --test-faults (test clusters only)",
            )),
            ApiRequest::Drain { node, on } => {
                let target = match node {
                    None => self.cfg.id.clone(),
                    Some(n) => {
                        let known: Vec<NodeId> = std::iter::once(self.cfg.id.clone())
                            .chain(self.members.peers().keys().cloned())
                            .collect();
                        api::resolve_node(&n, known.iter())?
                    }
                };
                let stamp = self.clock.stamp(now);
                let changed = self.state.draining(&target) != on;
                if changed {
                    let delta = self.state.put_drain(&target, stamp, on);
                    self.write(delta, out);
                }
                Ok(ApiReply::Written(vec![api::WriteResult {
                    service: String::new(),
                    revision: target.0.to_string(),
                    changed,
                }]))
            }
        }
    }

    fn live(&self, service: &ServiceName) -> Result<&ServiceSpec, ApiError> {
        self.state
            .live_spec(service)
            .ok_or_else(|| unknown_service(service))
    }

    /// Everything that is due: compaction, relisting, placement, reconcile, report.
    fn drive(&mut self, now: Millis, out: &mut Vec<Output>) {
        let t = self.cfg.timing.clone();
        if let Some(m) = &mut self.membership {
            let mut mo = Vec::new();
            m.tick(now, &mut mo);
            self.apply_member_outputs(now, mo, out);
        }
        self.periodic_sync(now, out);
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
        // Majority tracking for `partition: majority`.
        if self.members.sees_majority() {
            self.minority_since = None;
            self.majority_since.get_or_insert(now);
        } else {
            self.majority_since = None;
            self.minority_since.get_or_insert(now);
        }
        self.guard_majority(now, out);
        self.release_unfit(now, out);
        self.run_auction(now, out);
        self.track_handovers(now);
        let mut effects = Vec::new();
        let owner = reconcile::Owner {
            cluster: self.cfg.cluster.clone(),
            node: self.cfg.id.clone(),
        };
        let desired = desired(
            &self.state,
            &self.cfg,
            &self.members,
            &self.reconciler,
            &self.handovers,
            Fence {
                fenced: self.fenced(now),
                vouched: &self.vouched,
            },
            now,
        );
        self.reconciler.step(now, &owner, &desired, &mut effects);
        drop(desired);
        self.apply_effects(now, effects, out);
        self.maybe_report(now, out);
        self.publish_meta(now, out);
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

    /// Gives up the `majority` slots this node must not run:
    /// - all of them once fenced (in a minority for longer than the lease). The instance is
    ///   already stopped (see `desired`); the release makes sure it is never started again
    ///   under the old claim: when the partition heals, this node may see a majority again
    ///   before it has merged the claim the majority side made meanwhile;
    /// - claims it cannot vouch for (see `vouched`), once every runtime has been listed so that
    ///   a surviving instance is adopted rather than released.
    ///
    /// A released slot is placed again by an auction among nodes that see a majority.
    fn guard_majority(&mut self, now: Millis, out: &mut Vec<Output>) {
        if self.cfg.bugs.no_fence {
            return;
        }
        let fenced = self.fenced(now);
        let listed = self
            .cfg
            .runtimes
            .iter()
            .all(|d| self.reconciler.has_listed(*d));
        if !fenced && !listed {
            return;
        }
        // Only the claims of `majority` services: walking every claim (comparing each one's
        // owner, a cold heap string) on every pass was a large share of a big deploy's CPU.
        let mine: BTreeSet<(SlotId, u64)> = self
            .state
            .live_services()
            .filter(|(_, _, spec)| spec.partition == PartitionMode::Majority)
            .flat_map(|(name, _, _)| self.state.claims_of(name))
            .filter(|(_, c)| c.node == self.cfg.id && !c.released)
            .map(|(slot, c)| (slot.clone(), c.epoch))
            .collect();
        self.vouched.retain(|v, _| mine.contains(v));
        for (slot, epoch) in mine {
            if fenced {
                tracing::warn!(
                    slot = %slot,
                    "in a minority for longer than the lease: partition: majority slot released"
                );
            } else if self.vouched.contains_key(&(slot.clone(), epoch)) {
                continue;
            } else if self
                .reconciler
                .instances
                .get(&InstanceKey {
                    slot: slot.clone(),
                    epoch,
                })
                .is_some_and(|l| matches!(l.phase, reconcile::Phase::Running { .. }))
            {
                self.vouched.insert((slot, epoch), now);
                continue;
            } else {
                tracing::info!(
                    slot = %slot,
                    epoch,
                    "partition: majority claim from an earlier run with no instance left: released so that the fleet places it again"
                );
            }
            self.vouched.remove(&(slot.clone(), epoch));
            self.release(&slot, out);
        }
    }

    /// In a minority for longer than the lease: `majority` instances must not run here.
    /// How much longer this node may run `partition: majority` instances without seeing a
    /// majority again: `lease_ms` while it sees one, counting down from when it lost it, 0 once
    /// fenced. The agent hands it to the instance-side lease (`runtime::lease`), which enforces
    /// it even while the agent itself is stopped.
    pub fn majority_lease_ms(&self, now: Millis) -> u64 {
        if self.cfg.bugs.no_fence {
            return u64::MAX / 4;
        }
        let lease = self.cfg.timing.lease_ms;
        match self.minority_since {
            Some(s) => lease.saturating_sub(now.since(s)),
            None => lease,
        }
    }

    fn fenced(&self, now: Millis) -> bool {
        !self.cfg.bugs.no_fence
            && self
                .minority_since
                .is_some_and(|s| now.since(s) >= self.cfg.timing.lease_ms)
    }

    /// Releases slots this node owns but can no longer host (a new revision needs a runtime or
    /// labels it lacks).
    fn release_unfit(&mut self, _now: Millis, out: &mut Vec<Output>) {
        // Fitness depends on the spec alone: only the claims of services this node cannot
        // host are walked, not every claim on every pass.
        let mut unfit = Vec::new();
        for (name, _, spec) in self.state.live_services() {
            let driver_ok = self.cfg.runtimes.contains(&spec.workload.driver());
            let labels_ok = spec.constraints.iter().all(|k| k.matches(&self.cfg.labels));
            if driver_ok && labels_ok {
                continue;
            }
            unfit.extend(
                self.state
                    .claims_of(name)
                    .filter(|(_, c)| c.node == self.cfg.id && !c.released)
                    .map(|(slot, _)| slot.clone()),
            );
        }
        for slot in unfit {
            self.release(&slot, out);
        }
    }

    fn bid_window(&self) -> u64 {
        if self.members.present_count() <= 1 {
            0
        } else {
            self.cfg.timing.bid_window_ms
        }
    }

    /// Slots that need an owner, with the epoch the next claim takes.
    fn open_slots(&self, now: Millis) -> Vec<(SlotId, u64)> {
        let mut open = Vec::new();
        let t = &self.cfg.timing;
        let settled = self
            .started_at
            .is_some_and(|s| now.since(s) >= t.startup_grace_ms);
        // How long this node has seen a majority: an owner's absence only counts from then (a
        // node back from a minority saw everyone on the other side as down, owners included).
        let majority_for = self.majority_since.map(|m| now.since(m));
        for (name, _rev, spec) in self.state.live_services() {
            // A `majority` slot is only placed by nodes that see a majority: a minority cannot
            // tell whether the other side runs it.
            if spec.partition == PartitionMode::Majority
                && !self.cfg.bugs.no_fence
                && majority_for.is_none()
            {
                continue;
            }
            // The service's claims, in index order, walked in step with its slots: one pass
            // instead of a map lookup (and a slot id built) per slot.
            let mut claims = self.state.claims_of(name).peekable();
            for index in 0..spec.replicas {
                while claims.next_if(|(slot, _)| slot.index < index).is_some() {}
                let Some((slot, c)) = claims.next_if(|(slot, _)| slot.index == index) else {
                    open.push((SlotId::new(name, index), 1));
                    continue;
                };
                if c.released {
                    open.push((slot.clone(), c.epoch + 1));
                    continue;
                }
                let owner_present = c.node == self.cfg.id
                    || self.members.state(&c.node).is_some_and(PeerState::present);
                if owner_present && self.state.draining(&c.node) {
                    open.push((slot.clone(), c.epoch + 1));
                    continue;
                }
                if owner_present {
                    continue;
                }
                let known = self.members.peers().get(&c.node);
                let gone_for = match known {
                    Some(p) => Some(now.since(p.since)),
                    None if settled => Some(now.since(self.started_at.unwrap_or(now))),
                    None => None,
                };
                let Some(gone_for) = gone_for else { continue };
                // A `majority` slot whose owner this node has never heard of is not re-placed:
                // a node restarted out of reach of everyone sees a "majority" of one, and cannot
                // tell whether the owner still runs the instance.
                if spec.partition == PartitionMode::Majority
                    && !self.cfg.bugs.no_fence
                    && (known.is_none()
                        || gone_for.min(majority_for.unwrap_or(0)) < t.lease_ms + t.drift_margin_ms)
                {
                    continue;
                }
                open.push((slot.clone(), c.epoch + 1));
            }
        }
        open
    }

    /// What this node offers right now, reservations of its outstanding bids included.
    fn my_facts(&self, now: Millis) -> NodeFacts {
        let mut allocated = self.allocated(now);
        let reserved = self.auction.reserved();
        allocated.cpu_millis += reserved.cpu_millis;
        allocated.memory_bytes += reserved.memory_bytes;
        let mut host_ports = BTreeSet::new();
        let mut per_service: BTreeMap<ServiceName, u32> = BTreeMap::new();
        for (slot, c) in &self.state.claims {
            if c.node != self.cfg.id || c.released {
                continue;
            }
            let Some(spec) = self.state.live_spec(&slot.service) else {
                continue;
            };
            if slot.index >= spec.replicas {
                continue;
            }
            host_ports.extend(spec.ports.iter().filter_map(|p| p.host));
            *per_service.entry(slot.service.clone()).or_default() += 1;
        }
        for o in self.auction.open.values() {
            if let Some(b) = &o.my_bid
                && let Some(spec) = self.state.live_spec(&b.slot.service)
            {
                host_ports.extend(spec.ports.iter().filter_map(|p| p.host));
                *per_service.entry(b.slot.service.clone()).or_default() += 1;
            }
        }
        let capacity = if self.cfg.bugs.ignore_capacity {
            Resources {
                cpu_millis: u64::MAX / 4,
                memory_bytes: u64::MAX / 4,
            }
        } else {
            self.cfg.capacity
        };
        NodeFacts {
            labels: self.cfg.labels.clone(),
            capacity,
            allocated,
            runtimes: self.cfg.runtimes.clone(),
            draining: self.state.draining(&self.cfg.id),
            host_ports,
            per_service,
        }
    }

    /// Resources of the slots this node owns plus instances it is still stopping.
    pub fn allocated(&self, _now: Millis) -> Resources {
        let mut r = Resources::default();
        // A claim this node holds counts with its spec's resources; an instance counts on its
        // own unless it is the instance of such a claim (same slot and epoch).
        let counted = |slot: &SlotId| -> Option<(u64, &ServiceSpec)> {
            let c = self.state.claims.get(slot)?;
            if c.node != self.cfg.id || c.released {
                return None;
            }
            let spec = self.state.live_spec(&slot.service)?;
            (slot.index < spec.replicas).then_some((c.epoch, spec))
        };
        for (slot, c) in &self.state.claims {
            if c.node != self.cfg.id {
                continue;
            }
            if let Some((_, spec)) = counted(slot) {
                r.cpu_millis += spec.resources.cpu_millis;
                r.memory_bytes += spec.resources.memory_bytes;
            }
        }
        for l in self.reconciler.instances.values() {
            let claimed = counted(&l.key.slot).is_some_and(|(epoch, _)| epoch == l.key.epoch);
            if !claimed && l.holds_resources() {
                r.cpu_millis += l.resources.cpu_millis;
                r.memory_bytes += l.resources.memory_bytes;
            }
        }
        r
    }

    fn spread_view(&self, spec: &ServiceSpec) -> SpreadView {
        let Some(label) = &spec.spread else {
            return SpreadView::default();
        };
        let mine = self.cfg.labels.get(label);
        let mut same = 0;
        for (slot, c) in self.state.claims_of(&spec.name) {
            if c.released || slot.index >= spec.replicas {
                continue;
            }
            let theirs = if c.node == self.cfg.id {
                mine
            } else {
                self.members
                    .peers()
                    .get(&c.node)
                    .and_then(|p| p.meta.as_ref())
                    .and_then(|m| m.labels().get(label))
            };
            if theirs == mine {
                same += 1;
            }
        }
        SpreadView { same_value: same }
    }

    /// A node's facts from what it advertises, before its claims are counted (see `plan`).
    fn advertised_facts(&self, node: &NodeId, meta: &PeerMeta) -> NodeFacts {
        NodeFacts {
            labels: meta.labels().clone(),
            capacity: meta.capacity(),
            allocated: Resources::default(),
            runtimes: meta.runtimes().iter().copied().collect(),
            draining: meta.draining() || self.state.draining(node),
            host_ports: BTreeSet::new(),
            per_service: BTreeMap::new(),
        }
    }

    /// Who this node expects to win each open slot of `open` (see `placement::plan`).
    ///
    /// Candidates are this node and every present member, with capacity, labels and runtimes
    /// from what each advertises and allocations from the replicated claims, so every node that
    /// holds the same state computes the same facts. One walk over the claims: a claim of a
    /// service being placed is pinned in the plan's own walk instead of counted up front.
    fn plan(
        &self,
        now: Millis,
        open: &BTreeMap<SlotId, u64>,
    ) -> BTreeMap<SlotId, Vec<(NodeId, u64)>> {
        let placing: BTreeSet<&ServiceName> = open.keys().map(|s| &s.service).collect();
        let me = self.meta(now);
        let mut candidates = vec![placement::Candidate {
            node: self.cfg.id.clone(),
            facts: self.advertised_facts(&self.cfg.id, &me),
        }];
        // A member whose metadata has not arrived yet is assumed to look like this node:
        // leaving it out would make this node expect to win its slots, and nodes that have the
        // metadata would plan differently. The plan only ranks; real eligibility is each
        // node's own.
        let assumed = PeerMeta::from_advertised(Arc::new(NodeMeta {
            labels: BTreeMap::new(),
            ..NodeMeta::clone(me.advertised())
        }));
        for (id, p) in self.members.present() {
            let m = p.meta.as_ref().unwrap_or(&assumed);
            candidates.push(placement::Candidate {
                node: id.clone(),
                facts: self.advertised_facts(id, m),
            });
        }
        let index: BTreeMap<NodeId, usize> = candidates
            .iter()
            .enumerate()
            .map(|(i, c)| (c.node.clone(), i))
            .collect();
        let mut labels = placement::LabelCounts::new();
        for (slot, c) in &self.state.claims {
            if c.released || placing.contains(&slot.service) {
                continue;
            }
            let Some(&i) = index.get(&c.node) else {
                continue;
            };
            let Some(spec) = self.state.live_spec(&slot.service) else {
                continue;
            };
            if slot.index >= spec.replicas {
                continue;
            }
            let f = &mut candidates[i].facts;
            f.allocated.cpu_millis += spec.resources.cpu_millis;
            f.allocated.memory_bytes += spec.resources.memory_bytes;
            f.host_ports
                .extend(spec.ports.iter().filter_map(|p| p.host));
            *f.per_service.entry(slot.service.clone()).or_default() += 1;
            if let Some(label) = &spec.spread
                && let Some(value) = f.labels.get(label)
            {
                *labels
                    .entry((slot.service.clone(), label.clone(), value.clone()))
                    .or_default() += 1;
            }
        }
        let mut slots = Vec::new();
        for service in &placing {
            let Some(spec) = self.state.live_spec(service) else {
                continue;
            };
            for index in 0..spec.replicas {
                let slot = SlotId::new(service, index);
                let pinned = if open.contains_key(&slot) {
                    None
                } else {
                    match self.state.claims.get(&slot) {
                        Some(c) if !c.released => Some(c.node.clone()),
                        _ => continue,
                    }
                };
                slots.push(placement::PlanSlot { slot, spec, pinned });
            }
        }
        placement::plan(candidates, &slots, labels, BIDDERS_PER_SLOT)
    }

    fn run_auction(&mut self, now: Millis, out: &mut Vec<Output>) {
        let open: BTreeMap<SlotId, u64> = self.open_slots(now).into_iter().collect();
        // Forget slots that were claimed meanwhile. Both maps are in slot order: walked in step
        // rather than looked up (thousands of open slots, every flush of a large deploy).
        let mut still = open.iter().peekable();
        self.auction.open.retain(|slot, o| {
            while still.next_if(|(s, _)| *s < slot).is_some() {}
            still
                .peek()
                .is_some_and(|(s, e)| *s == slot && **e == o.epoch)
        });
        let window = self.bid_window();
        let rebid = self.cfg.timing.rebid_ms;
        let mut known = self.auction.open.iter().peekable();
        let mut due: Vec<(SlotId, u64)> = Vec::new();
        for (slot, epoch) in &open {
            while known.next_if(|(s, _)| *s < slot).is_some() {}
            let ready = match known.next_if(|(s, _)| *s == slot) {
                None => true,
                // Seen only in others' bids so far: bid now, within their window.
                Some((_, o)) => {
                    o.my_bid.is_none() && o.opened_at.is_none_or(|t| now.since(t) >= rebid)
                }
            };
            if ready && self.reconciler.excluded(slot, now).is_none() {
                due.push((slot.clone(), *epoch));
            }
        }
        let plan = if due.is_empty() {
            BTreeMap::new()
        } else {
            self.plan(now, &open)
        };
        // Bid first where this node expects to win, then where it is a runner-up: reservations
        // stop a node from bidding beyond its free capacity, and spending them on slots others
        // are expected to win would leave its own planned slots without their expected bidder.
        let rank = |slot: &SlotId| {
            plan.get(slot)
                .and_then(|top| top.iter().position(|(n, _)| n == &self.cfg.id))
                .unwrap_or(usize::MAX)
        };
        due.sort_by_cached_key(|(slot, _)| (rank(slot), slot.clone()));
        let mut bids = Vec::new();
        // This node's real facts, computed once for the pass and updated by each bid it makes
        // (a bid reserves the spec's resources, counts for its service and takes its host
        // ports, exactly as `my_facts` would count it), and its spread view per service (the
        // claims do not change during the pass).
        let mut facts: Option<NodeFacts> = None;
        let mut spread: BTreeMap<ServiceName, SpreadView> = BTreeMap::new();
        for (slot, epoch) in due {
            let Some(spec) = self.state.live_spec(&slot.service) else {
                continue;
            };
            let entry = self
                .auction
                .open
                .entry(slot.clone())
                .or_insert_with(|| new_open(epoch, now));
            let first_seen = entry.first_seen;
            entry.opened_at = Some(now);
            // Bid when ranked among the best few, or when the slot has waited long enough that
            // the expected winners are evidently not bidding.
            let ranked = plan
                .get(&slot)
                .and_then(|top| top.iter().find(|(n, _)| n == &self.cfg.id))
                .map(|(_, s)| *s);
            let escalate = now.since(first_seen) >= 2 * rebid;
            if ranked.is_none() && !escalate {
                continue;
            }
            // Safety: this node's real facts (instances still stopping, outstanding bids) decide
            // whether it may bid at all.
            let facts = facts.get_or_insert_with(|| self.my_facts(now));
            let view = *spread
                .entry(spec.name.clone())
                .or_insert_with(|| self.spread_view(spec));
            let Some(real) = placement::score(facts, spec, view) else {
                continue;
            };
            facts.allocated.cpu_millis += spec.resources.cpu_millis;
            facts.allocated.memory_bytes += spec.resources.memory_bytes;
            facts
                .host_ports
                .extend(spec.ports.iter().filter_map(|p| p.host));
            *facts.per_service.entry(spec.name.clone()).or_default() += 1;
            let score = ranked.unwrap_or(real);
            let bid = Bid {
                slot: slot.clone(),
                epoch,
                score,
                node: self.cfg.id.clone(),
            };
            tracing::debug!(slot = %slot, epoch, score, planned = ranked.is_some(), "bid");
            let entry = self.auction.open.get_mut(&slot).expect("inserted above");
            entry.my_bid = Some(bid.clone());
            entry.my_reservation = spec.resources;
            entry.bids.insert(bid.clone());
            bids.push(bid);
        }
        self.counters.bids_sent += bids.len() as u64;
        for chunk in bids.chunks(MAX_BIDS_PER_MESSAGE) {
            out.push(Output::Broadcast {
                topic: Topic::Bids,
                msg: Message::Bids(chunk.to_vec()),
            });
        }
        // Close the windows of our own bids.
        let due: Vec<SlotId> = self
            .auction
            .open
            .iter()
            .filter(|(_, o)| {
                o.my_bid.is_some() && o.opened_at.is_some_and(|t| now.since(t) >= window)
            })
            .map(|(s, _)| s.clone())
            .collect();
        // The claims won in this pass go out together, a bounded number per delta.
        let mut won = ClusterState::default();
        let mut won_count = 0;
        for slot in due {
            let o = self.auction.open.get_mut(&slot).expect("due slot is open");
            let win = placement::winner(o.bids.values()).cloned();
            tracing::debug!(
                slot = %slot,
                bids = ?o.bids.values().map(|b| (b.node.short(), b.score)).collect::<Vec<_>>(),
                "bid window closed"
            );
            o.my_bid = None;
            o.my_reservation = Resources::default();
            let Some(win) = win else { continue };
            if win.node != self.cfg.id {
                continue; // the winner claims; if it never does, we re-bid after `rebid_ms`
            }
            self.auction.open.remove(&slot);
            let Some(rev) = self
                .state
                .services
                .get(&slot.service)
                .and_then(|e| e.current())
            else {
                continue;
            };
            let claim = Claim {
                epoch: win.epoch,
                score: win.score,
                node: self.cfg.id.clone(),
                released: false,
                revision: rev.stamp.clone(),
            };
            self.counters.claims_won += 1;
            tracing::info!(slot = %slot, epoch = win.epoch, "slot placed");
            self.vouched.insert(
                (slot.clone(), win.epoch),
                now.plus(self.cfg.timing.majority_confirm_ms),
            );
            let delta = self.state.put_claim(&slot, claim);
            won.merge(&delta);
            won_count += 1;
            if won_count == MAX_CLAIMS_PER_DELTA {
                self.write(std::mem::take(&mut won), out);
                won_count = 0;
            }
        }
        if won_count > 0 {
            self.write(won, out);
        }
        self.my_bids_since = self
            .auction
            .open
            .values()
            .filter(|o| o.my_bid.is_some())
            .filter_map(|o| o.opened_at)
            .min();
    }

    /// Make-before-break: remember when each instance's slot moved to another node.
    fn track_handovers(&mut self, now: Millis) {
        let mut keep = BTreeMap::new();
        for key in self.reconciler.instances.keys() {
            let Some(c) = self.state.claims.get(&key.slot) else {
                continue;
            };
            if c.node != self.cfg.id && c.epoch > key.epoch {
                keep.insert(key.clone(), self.handovers.get(key).copied().unwrap_or(now));
            }
        }
        self.handovers = keep;
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

    /// Why a slot of `spec` cannot be placed, judged from this node's view of every present
    /// node's advertised facts.
    pub fn explain(&self, now: Millis, slot: &SlotId, spec: &ServiceSpec) -> String {
        let mut candidates: Vec<(NodeId, NodeFacts)> =
            vec![(self.cfg.id.clone(), self.my_facts(now))];
        for (id, p) in self.members.present() {
            if let Some(m) = &p.meta {
                candidates.push((
                    id.clone(),
                    NodeFacts {
                        labels: m.labels().clone(),
                        capacity: m.capacity(),
                        allocated: m.allocated(),
                        runtimes: m.runtimes().iter().copied().collect(),
                        draining: m.draining() || self.state.draining(id),
                        host_ports: BTreeSet::new(),
                        per_service: BTreeMap::new(),
                    },
                ));
            }
        }
        if let Some(until) = self.reconciler.excluded(slot, now)
            && candidates.len() == 1
        {
            return format!(
                "released after a crash loop; this node stays out of it for {}s more and no other node can take it",
                until.since(now) / 1000
            );
        }
        let reasons: Vec<(NodeId, Ineligible)> = candidates
            .iter()
            .filter_map(|(id, f)| placement::eligible(f, spec).err().map(|e| (id.clone(), e)))
            .collect();
        if reasons.len() < candidates.len() {
            return "waiting for the bid window to close".into();
        }
        if let Some((_, Ineligible::Constraint(c))) = reasons
            .iter()
            .find(|(_, r)| matches!(r, Ineligible::Constraint(_)))
            && reasons
                .iter()
                .all(|(_, r)| matches!(r, Ineligible::Constraint(_)))
        {
            return format!("constraint {c} matches no alive node");
        }
        if reasons
            .iter()
            .all(|(_, r)| matches!(r, Ineligible::NoDriver(_)))
        {
            return format!(
                "no alive node offers the {} runtime",
                placement::driver_name(spec.workload.driver())
            );
        }
        if reasons
            .iter()
            .all(|(_, r)| matches!(r, Ineligible::Draining))
        {
            return "every eligible node is draining".into();
        }
        let best_cpu = candidates
            .iter()
            .max_by_key(|(id, f)| (f.free().cpu_millis, id.clone()));
        if let Some((id, f)) = best_cpu
            && f.free().cpu_millis < spec.resources.cpu_millis
        {
            return format!(
                "needs cpu {}, largest free {} on {}",
                placement::fmt_cpu(spec.resources.cpu_millis),
                placement::fmt_cpu(f.free().cpu_millis),
                id.short()
            );
        }
        let best_mem = candidates
            .iter()
            .max_by_key(|(id, f)| (f.free().memory_bytes, id.clone()));
        if let Some((id, f)) = best_mem
            && f.free().memory_bytes < spec.resources.memory_bytes
        {
            return format!(
                "needs memory {}, largest free {} on {}",
                placement::fmt_bytes(spec.resources.memory_bytes),
                placement::fmt_bytes(f.free().memory_bytes),
                id.short()
            );
        }
        let summary: Vec<String> = reasons
            .iter()
            .map(|(id, r)| format!("{}: {r}", id.short()))
            .collect();
        format!("no node can host it ({})", summary.join("; "))
    }

    /// Slots that have been open longer than the bid window, with the reason.
    pub fn unplaceable(&self, now: Millis) -> Vec<(SlotId, String)> {
        let window = self.bid_window();
        self.open_slots(now)
            .into_iter()
            .filter(|(slot, _)| {
                self.auction.open.get(slot).is_none_or(|o| {
                    now.since(o.opened_at.unwrap_or(o.first_seen)) >= window && o.my_bid.is_none()
                })
            })
            .filter_map(|(slot, _)| {
                let spec = self.state.live_spec(&slot.service)?;
                let reason = self.explain(now, &slot, spec);
                Some((slot, reason))
            })
            .collect()
    }

    fn ps(&self, now: Millis, only: Option<&ServiceName>) -> Vec<api::PsEntry> {
        let pending: BTreeMap<SlotId, String> = self.unplaceable(now).into_iter().collect();
        let mine = self.reconciler.report(|m| m.0);
        let mut rows = Vec::new();
        for (name, _rev, spec) in self.state.live_services() {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            for index in 0..spec.replicas {
                let slot = SlotId::new(name, index);
                let claim = self.state.claims.get(&slot).filter(|c| !c.released);
                let report: Option<&InstanceReport> = claim.and_then(|c| {
                    if c.node == self.cfg.id {
                        mine.get(&slot)
                    } else {
                        self.state
                            .report(&c.node)
                            .and_then(|r| r.instances.get(&slot))
                    }
                });
                let report = report.filter(|r| claim.is_some_and(|c| r.epoch == c.epoch));
                let (pid, container) = match report.and_then(|r| r.handle.as_ref()) {
                    Some(Handle::Pid { pid, .. }) => (Some(*pid), None),
                    Some(Handle::Container { id }) => (None, Some(id.chars().take(12).collect())),
                    None => (None, None),
                };
                let state = match (claim, report) {
                    (None, _) => "pending".to_string(),
                    (Some(_), Some(r)) => r.state.as_str().to_string(),
                    (Some(_), None) => "unknown".to_string(),
                };
                let detail = report
                    .and_then(|r| r.detail.clone())
                    .or_else(|| pending.get(&slot).cloned());
                rows.push(api::PsEntry {
                    service: name.0.to_string(),
                    slot: index,
                    node: claim.map(|c| c.node.0.to_string()),
                    epoch: claim.map_or(0, |c| c.epoch),
                    revision: report.map(|r| r.revision.0.clone()),
                    state,
                    pid,
                    container,
                    endpoint: report.and_then(|r| r.endpoint.clone()),
                    restarts: report.map_or(0, |r| r.restarts),
                    detail,
                });
            }
        }
        rows
    }

    fn status(&self, now: Millis) -> api::StatusView {
        let mut members = api::MemberCounts {
            alive: 1,
            ..Default::default()
        };
        for p in self.members.peers().values() {
            match p.state {
                PeerState::Alive => members.alive += 1,
                PeerState::Suspect => members.suspect += 1,
                PeerState::Down => members.down += 1,
                PeerState::Left => members.left += 1,
            }
        }
        let running = self
            .reconciler
            .instances
            .values()
            .filter(|l| matches!(l.phase, reconcile::Phase::Running { .. }))
            .count();
        api::StatusView {
            node: self.cfg.id.0.to_string(),
            incarnation: self.cfg.incarnation,
            agent_version: self.cfg.agent_version.clone(),
            digest: format!("{:016x}", self.state.digest()),
            services: self.state.live_services().count(),
            slots: self
                .state
                .live_services()
                .map(|(_, _, s)| s.replicas as usize)
                .sum(),
            running,
            members,
            capacity: self.cfg.capacity.into(),
            allocated: self.allocated(now).into(),
            runtimes: self
                .cfg
                .runtimes
                .iter()
                .map(|d| placement::driver_name(*d).to_string())
                .collect(),
            draining: self.state.draining(&self.cfg.id),
            unplaceable: self
                .unplaceable(now)
                .into_iter()
                .map(|(slot, reason)| api::Unplaceable {
                    service: slot.service.0.to_string(),
                    slot: slot.index,
                    reason,
                })
                .collect(),
            counters: self.counters(),
            last_sync: self
                .last_sync
                .iter()
                .map(|(n, t)| (n.0.to_string(), t.0))
                .collect(),
            faults: Vec::new(),
        }
    }

    fn nodes(&self, now: Millis) -> Vec<api::NodeView> {
        let me = self.meta(now);
        let mut rows = vec![api::NodeView {
            id: self.cfg.id.0.to_string(),
            addresses: self.cfg.addrs.clone(),
            labels: me.labels().clone(),
            state: "alive".into(),
            incarnation: self.cfg.incarnation,
            capacity: me.capacity().into(),
            allocated: me.allocated().into(),
            runtimes: me
                .runtimes()
                .iter()
                .map(|d| placement::driver_name(*d).to_string())
                .collect(),
            draining: me.draining(),
            last_heard: now.0,
            agent_version: Some(me.agent_version().to_string()),
        }];
        for (id, p) in self.members.peers() {
            let m = p.meta.clone().unwrap_or_default();
            rows.push(api::NodeView {
                id: id.0.to_string(),
                addresses: m.addrs().to_vec(),
                labels: m.labels().clone(),
                state: p.state.as_str().into(),
                incarnation: p.incarnation,
                capacity: m.capacity().into(),
                allocated: m.allocated().into(),
                runtimes: m
                    .runtimes()
                    .iter()
                    .map(|d| placement::driver_name(*d).to_string())
                    .collect(),
                draining: m.draining() || self.state.draining(id),
                last_heard: p.last_heard.0,
                agent_version: p.meta.as_ref().map(|m| m.agent_version().to_string()),
            });
        }
        rows.sort_by(|a, b| a.id.cmp(&b.id));
        rows
    }
}

/// The metadata record this node advertises through membership.
fn node_meta(cfg: &NodeConfig, allocated: Resources, draining: bool) -> NodeMeta {
    NodeMeta {
        version: 0,
        labels: cfg.labels.clone(),
        cpu_millis: cfg.capacity.cpu_millis,
        memory_bytes: cfg.capacity.memory_bytes,
        allocated_cpu_millis: allocated.cpu_millis,
        allocated_memory_bytes: allocated.memory_bytes,
        draining,
        runtimes: cfg.runtimes.iter().copied().collect(),
        agent_version: cfg.agent_version.clone(),
        addrs: cfg.addrs.clone(),
    }
}

fn same_meta(a: &NodeMeta, b: &NodeMeta) -> bool {
    NodeMeta {
        version: 0,
        ..a.clone()
    } == NodeMeta {
        version: 0,
        ..b.clone()
    }
}

/// How many of the best-ranked nodes bid for each slot (the expected winner and backups).
pub const BIDDERS_PER_SLOT: usize = 3;
/// Bids per `Bids` message: a bid is at most ~150 bytes encoded (63-character names, a 52-character
/// node id), so a message stays well under the 64 KiB gossip limit, over which it would be
/// dropped (bids are not in the state, so anti-entropy cannot carry them).
pub const MAX_BIDS_PER_MESSAGE: usize = 256;
/// A deploy's revisions share a delta up to this many encoded bytes (a spec is a few hundred
/// bytes to a few KiB), well under the 64 KiB gossip limit.
pub const DEPLOY_DELTA_BYTES: usize = 32 * 1024;
/// Claims per delta written in one auction pass (~250 bytes each), under the gossip limit too.
pub const MAX_CLAIMS_PER_DELTA: usize = 128;

/// At most one sync started because a member appeared for the first time, per this many
/// milliseconds (a member that reappears is always synced with at once).
pub const UP_SYNC_INTERVAL_MS: u64 = 1_000;

fn new_open(epoch: u64, now: Millis) -> OpenSlot {
    OpenSlot {
        epoch,
        opened_at: Some(now),
        bids: placement::Bids::default(),
        my_bid: None,
        my_reservation: Resources::default(),
        first_seen: now,
    }
}

fn unknown_service(s: &ServiceName) -> ApiError {
    ApiError::not_found(
        format!("no service {s}"),
        "see `shoal ps` for the services deployed",
    )
}

fn find_revision<'a>(
    revs: impl Iterator<Item = &'a Revision>,
    to: &str,
) -> Result<&'a Revision, ApiError> {
    let revs: Vec<&Revision> = revs.collect();
    if let Some(r) = revs.iter().find(|r| r.id.0 == to) {
        return Ok(r);
    }
    let by_seq: Vec<&&Revision> = revs
        .iter()
        .filter(|r| r.id.0.split('.').next() == Some(to))
        .collect();
    match by_seq.as_slice() {
        [one] => Ok(one),
        [] => Err(ApiError::not_found(
            format!("no revision {to} in the last {} revisions", revs.len()),
            "see `shoal history SERVICE` for revision ids",
        )),
        many => Err(ApiError::invalid(
            format!(
                "revision {to} is ambiguous: {}",
                many.iter()
                    .map(|r| r.id.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "give the full revision id",
        )),
    }
}

/// What `desired` needs to keep `partition: majority` instances fenced.
#[derive(Clone, Copy)]
struct Fence<'a> {
    /// `Node::fenced`: in a minority for longer than the lease.
    fenced: bool,
    vouched: &'a BTreeMap<(SlotId, u64), Millis>,
}

/// The slots this node should run right now: the claims it owns for live services within their
/// replica count, plus instances handed over to another node that does not run them yet
/// (make-before-break), minus `majority` services while this node has been in a minority for
/// longer than the lease.
fn desired<'a>(
    state: &'a ClusterState,
    cfg: &NodeConfig,
    members: &Members,
    reconciler: &Reconciler,
    handovers: &BTreeMap<InstanceKey, Millis>,
    fence: Fence<'_>,
    now: Millis,
) -> BTreeMap<SlotId, Desired<'a>> {
    let Fence { fenced, vouched } = fence;
    let mut d = BTreeMap::new();
    for (slot, c) in &state.claims {
        if c.node != cfg.id || c.released {
            continue;
        }
        let Some(entry) = state.services.get(&slot.service) else {
            continue;
        };
        let Some(rev) = entry.current() else { continue };
        let Some(spec) = rev.spec() else { continue };
        if slot.index >= spec.replicas {
            continue;
        }
        // A majority claim runs once vouched for and confirmed (see `Node::vouched`). Before
        // its runtime has been listed it stays desired, so that a surviving instance is
        // adopted rather than stopped; nothing is started on a runtime not yet listed.
        if spec.partition == PartitionMode::Majority
            && !cfg.bugs.no_fence
            && (fenced
                || (reconciler.has_listed(spec.workload.driver())
                    && vouched
                        .get(&(slot.clone(), c.epoch))
                        .is_none_or(|from| *from > now)))
        {
            continue;
        }
        d.insert(
            slot.clone(),
            Desired {
                key: InstanceKey {
                    slot: slot.clone(),
                    epoch: c.epoch,
                },
                revision: rev,
                spec,
            },
        );
    }
    if cfg.bugs.skip_reclaim {
        // Deliberate bug: whatever runs here keeps running, whoever owns its slot now.
        for (key, l) in &reconciler.instances {
            if d.contains_key(&key.slot) || !matches!(l.phase, reconcile::Phase::Running { .. }) {
                continue;
            }
            let Some(entry) = state.services.get(&key.slot.service) else {
                continue;
            };
            let Some(rev) = l
                .rev_stamp
                .as_ref()
                .and_then(|s| entry.history.get(s))
                .or(entry.current())
            else {
                continue;
            };
            let Some(spec) = rev.spec() else { continue };
            d.insert(
                key.slot.clone(),
                Desired {
                    key: key.clone(),
                    revision: rev,
                    spec,
                },
            );
        }
    }
    for (key, since) in handovers {
        if d.contains_key(&key.slot) || now.since(*since) >= cfg.timing.handover_max_ms {
            continue;
        }
        let Some(l) = reconciler.instances.get(key) else {
            continue;
        };
        if !matches!(l.phase, reconcile::Phase::Running { .. }) {
            continue;
        }
        let Some(c) = state.claims.get(&key.slot) else {
            continue;
        };
        let Some(entry) = state.services.get(&key.slot.service) else {
            continue;
        };
        let Some(rev) = entry.current() else { continue };
        let Some(spec) = rev.spec() else { continue };
        if spec.partition == PartitionMode::Majority || key.slot.index >= spec.replicas {
            continue;
        }
        let new_owner_present = members.state(&c.node).is_some_and(PeerState::present);
        let new_owner_runs = state
            .report(&c.node)
            .and_then(|r| r.instances.get(&key.slot))
            .is_some_and(|r| r.epoch >= c.epoch && r.state == InstanceState::Running);
        if new_owner_present && !new_owner_runs {
            // Keep the old instance at its own revision: do not replace what is being handed over.
            let rev = l
                .rev_stamp
                .as_ref()
                .and_then(|s| entry.history.get(s))
                .unwrap_or(rev);
            let spec = rev.spec().unwrap_or(spec);
            d.insert(
                key.slot.clone(),
                Desired {
                    key: key.clone(),
                    revision: rev,
                    spec,
                },
            );
        }
    }
    d
}

#[cfg(test)]
mod tests;
