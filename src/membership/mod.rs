//! Membership: who is in the cluster, who is alive, and what each node says about itself.
//! SWIM with suspicion (through `foca`), node metadata carried as custom broadcasts, and a
//! "leaving" notice so that a graceful exit (`Left`) is told apart from a crash (`Down`).
//!
//! Sans-IO and deterministic: time comes in as `Millis`, randomness from a caller seed,
//! datagrams go out as `MemberOutput::Datagram` and come in through `handle_datagram`. Nothing
//! here reads a clock, a socket, a file or an OS random source; the transport is `net/`.
//!
//! What we add around foca, file by file:
//! - `wire.rs`: the datagram envelope; foca's header is compacted (the transport names the
//!   sender, the receiver knows itself) and every SWIM datagram carries the sender's metadata
//!   stamp and, if the sender suspects the receiver, a flag so it can refute at once.
//! - `suspicion.rs`: the prober that starts a suspicion tells the suspect directly (8 notices
//!   over the timeout) and the suspect answers with its incarnation; a suspicion heard from
//!   others that lingers here is checked by us and concluded.
//! - `meta.rs`, `meta_sync.rs`: metadata as versioned custom broadcasts (rate-limited), pulled
//!   directly from a member whose datagrams show a newer stamp or whose record never came.
//! - `snapshot.rs`: a joiner pulls all active members from its seed, then from two random
//!   members, instead of learning most of a large cluster from probes over minutes.
//! - `view.rs`: mirrors foca's member states into `Member` records and events.
//! - `watch.rs`: the ring watch. Each member sends its predecessor on the ring of node ids a
//!   heartbeat every probe period and suspects its successor when those stop, so a crash is
//!   suspected within a bounded time instead of whenever a random probe happens to pick it.
//! - A workaround for foca 2.0.0, which sends "you are down" (`TurnUndead`) when a suspicion
//!   was refuted in time, making healthy members rejoin: we drop it for members our view holds
//!   active (`after_foca`).
//!
//! Invariants:
//! - `members()` holds every node foca knows (alive, suspect, down or left, until the
//!   tombstone is collected after `remove_down_after_ms`) plus this node, sorted by id.
//! - At most one life per node: a higher `(incarnation, renewal)` replaces the older life and
//!   yields `Up` again. This node's own record changes only through its own calls.
//! - A down verdict originates only where a probe (foca's timer) or our own check went
//!   unanswered for a whole suspicion timeout while the member was being told it is suspected;
//!   everyone else learns it as an update.
//! - Every input is bounded: oversized or undecodable datagrams are counted and dropped; every
//!   map is bounded by the member count or a constant.

mod foca_io;
mod identity;
mod meta;
mod meta_sync;
mod snapshot;
mod suspicion;
mod tuning;
mod view;
mod watch;
mod wire;

#[cfg(test)]
mod sim_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use foca::{Codec, Identity, OwnedNotification, PostcardCodec, Timer};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::ids::{Millis, NodeId};

pub use identity::{IdentityError, MAX_ADDR_BYTES, MAX_ADDRS, MemberId, NodeKey};
pub use meta::{
    MAX_AGENT_VERSION_BYTES, MAX_LABEL_KEY_BYTES, MAX_LABEL_VALUE_BYTES, MAX_LABELS,
    MAX_META_RECORD_BYTES, MAX_RUNTIMES, MetaError, NodeMeta, RecordShare,
};
pub use tuning::{Profile, SwimTuning, TuningError};
pub use wire::classify as classify_datagram;

use foca_io::{Collect, Scan, touched};
use meta::{Handler, Item, MetaRecord, SharedStore, Stamp, SwimCodec};
use suspicion::{NOTICES_PER_SUSPICION, Notice};
use view::Tracked;
use wire::Kind;

type Foca = foca::Foca<MemberId, SwimCodec, Xoshiro256PlusPlus, Handler>;

/// How this node sees a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; declared `Down` unless it refutes within `suspect_to_down_ms`. Still
    /// counted as alive.
    Suspect,
    /// Declared dead by the cluster (crash, kill, partition, pause longer than the suspicion).
    Down,
    /// Left on purpose (`Membership::leave`).
    Left,
}

impl MemberState {
    /// Alive or suspect: a member SWIM still probes, and one that still owns its slots.
    pub fn is_active(self) -> bool {
        matches!(self, MemberState::Alive | MemberState::Suspect)
    }

    /// As `shoal nodes` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
            MemberState::Left => "left",
        }
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: NodeId,
    /// The incarnation of the life we know (grows at every agent start).
    pub incarnation: u64,
    pub state: MemberState,
    /// Its newest metadata we have, if any has arrived yet. May belong to the previous life
    /// for a moment after a restart.
    pub meta: Option<Arc<NodeMeta>>,
    /// Where it listens (from its identity, whose list it shares).
    pub addrs: Arc<[String]>,
    /// When a datagram from it last arrived here (`Millis(0)`: never directly).
    pub last_heard: Millis,
    /// When `state` last changed here.
    pub state_since: Millis,
}

/// A change worth telling the rest of the node about.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberEvent {
    /// The member is (again) alive: newly seen, back from suspicion, or a new life after a
    /// restart or rejoin (even if the old life was never seen down).
    Up(NodeId),
    /// The member missed a probe and may be declared down soon.
    Suspect(NodeId),
    /// The member was declared down.
    Down(NodeId),
    /// The member left on purpose. May follow a `Down` for the same life when the leaving
    /// notice arrives after the down update.
    Left(NodeId),
    /// The member's metadata changed.
    MetaChanged(NodeId),
}

/// What `Membership` asks of its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MemberOutput {
    /// Send these bytes to `to` over `/shoal/swim/1`. Fire and forget: a failed send is a
    /// missed ack and SWIM deals with it.
    Datagram { to: NodeId, bytes: Vec<u8> },
    /// A change, with the member as it stands after it (so the caller need not look it up).
    Event(MemberEvent, Member),
    /// Where `node` can be dialled (put it in the transport's address book).
    Addresses { node: NodeId, addrs: Vec<String> },
}

/// Counters, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Datagrams dropped because they could not be decoded (envelope, SWIM packet or record).
    pub decode_errors: u64,
    /// Datagrams dropped because they were larger than `max_packet_size`.
    pub oversize: u64,
    /// Datagrams whose SWIM sender or record owner was not the transport-level sender.
    pub spoofed: u64,
    /// Broadcast items (metadata, leaving) refused: undecodable, out of bounds, store full.
    pub broadcast_rejected: u64,
    pub meta_pulls_sent: u64,
    /// Errors foca reported while handling a timer (never expected; logged at debug).
    pub timer_errors: u64,
    /// Inputs ignored because this node has left.
    pub ignored_after_leave: u64,
    /// "You are down" messages foca wanted to send to members still alive in our view (a
    /// refuted suspicion); dropped, see `after_foca`.
    pub turn_undead_suppressed: u64,
    /// Members we declared down ourselves after our own check went unanswered: a suspicion
    /// heard from others that lingered here, or a ring neighbour that went silent.
    pub lingering_declared_down: u64,
    /// Ring-watch heartbeats sent and received (`watch.rs`).
    pub heartbeats_out: u64,
    pub heartbeats_in: u64,
    /// Members we suspected because their heartbeats stopped.
    pub watch_suspicions: u64,
}

/// Why `Membership::new` refused its arguments.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    #[error("member id: {0}")]
    Identity(#[from] IdentityError),
    #[error("metadata: {0}")]
    Meta(#[from] MetaError),
    #[error("swim tuning: {0}")]
    Tuning(#[from] TuningError),
}

/// One node's view of cluster membership. See the module docs.
pub struct Membership {
    foca: Foca,
    store: SharedStore,
    rt: Collect,
    tuning: SwimTuning,
    me: NodeId,
    /// The latest local metadata (version = the version it is or will be published under).
    meta: NodeMeta,
    /// The record last handed to foca for dissemination; answers pulls.
    published: MetaRecord,
    published_at: Option<Millis>,
    meta_pending: bool,
    timers: BTreeMap<(Millis, u64), Timer<MemberId>>,
    timer_seq: u64,
    tracked: BTreeMap<NodeId, Tracked>,
    /// The members of `tracked` whose state is `Suspect`, so that a tick does not walk the
    /// whole member list to find lingering suspicions.
    suspects: BTreeSet<NodeId>,
    /// The members of `tracked` (this node excluded) whose metadata has not arrived yet.
    no_meta: BTreeSet<NodeId>,
    /// When one of `no_meta` may next be due for a pull (None: none can be).
    missing_meta_check: Option<Millis>,
    /// When a metadata pull was last sent to each node.
    pulled: BTreeMap<NodeId, Millis>,
    scan: u64,
    /// The highest foca incarnation of ours a peer's suspicion flag made us refute.
    refuted: Option<u16>,
    /// Our identity as postcard encodes it, and our foca incarnation read after it from the
    /// last packet we sent (foca does not expose its own incarnation).
    own_id_bytes: Vec<u8>,
    own_incarnation: u16,
    /// Suspicions our own probes started: notices still to send to the suspect.
    notices: BTreeMap<NodeId, Notice>,
    /// Snapshots served, for their rate limits.
    served: snapshot::Served,
    /// When to pull follow-up snapshots after an announce.
    follow_ups: Vec<Millis>,
    /// Our own choices (which member to ask for a snapshot); foca has its own generator.
    rng: Xoshiro256PlusPlus,
    /// When records of nodes SWIM does not know were last swept from the store.
    swept_at: Millis,
    /// Whether foca has an active member to talk to (its `Active` / `Idle` / `Rejoin`
    /// notifications). Foca stops every periodic timer when it loses its last active member or
    /// renews its identity, and resumes them only when a member talks to it first.
    connected: bool,
    /// While not connected but knowing other members: when to announce to some of them next.
    rejoin_at: Option<Millis>,
    /// Round-robin position over the members announced to while rejoining.
    rejoin_cursor: usize,
    /// Heartbeats to our ring predecessor and the watch of our successor.
    watch: watch::RingWatch,
    left: bool,
    stats: MembershipStats,
}

/// Members announced to in one rejoin round (see `Membership::drive_rejoin`).
const REJOIN_FANOUT: usize = 3;

impl Membership {
    /// A node that knows only itself. `rng_seed` is the only randomness (probe order, gossip
    /// targets): from the OS in the agent, from the scenario in tests.
    pub fn new(
        me: MemberId,
        mut meta: NodeMeta,
        tuning: SwimTuning,
        rng_seed: u64,
    ) -> Result<Self, MembershipError> {
        me.validate()?;
        meta.validate()?;
        tuning.validate()?;
        meta.version = 1;
        let store = SharedStore::default();
        let foca = Foca::with_custom_broadcast(
            me.clone(),
            tuning.foca_config(),
            Xoshiro256PlusPlus::seed_from_u64(rng_seed),
            SwimCodec(store.clone()),
            Handler(store.clone()),
        );
        let published = MetaRecord {
            node: me.node.clone(),
            incarnation: me.incarnation,
            meta: Arc::new(meta),
        };
        let self_member = Member {
            id: me.node.clone(),
            incarnation: me.incarnation,
            state: MemberState::Alive,
            meta: Some(published.meta.clone()),
            addrs: me.addrs.clone(),
            last_heard: Millis(0),
            state_since: Millis(0),
        };
        let mut m = Membership {
            foca,
            store,
            rt: Collect::default(),
            tuning,
            me: me.node.clone(),
            meta: NodeMeta::clone(&published.meta),
            published: published.clone(),
            published_at: None,
            meta_pending: false,
            timers: BTreeMap::new(),
            timer_seq: 0,
            tracked: BTreeMap::new(),
            suspects: BTreeSet::new(),
            no_meta: BTreeSet::new(),
            missing_meta_check: None,
            pulled: BTreeMap::new(),
            scan: 0,
            refuted: None,
            own_id_bytes: postcard::to_allocvec(&me).expect("encoding to a Vec cannot fail"),
            own_incarnation: 0,
            notices: BTreeMap::new(),
            served: snapshot::Served::default(),
            follow_ups: Vec::new(),
            rng: Xoshiro256PlusPlus::seed_from_u64(rng_seed ^ 0x005E_ED0F_5140_A100),
            swept_at: Millis(0),
            connected: false,
            rejoin_at: None,
            rejoin_cursor: 0,
            watch: watch::RingWatch::default(),
            left: false,
            stats: MembershipStats::default(),
        };
        m.tracked.insert(
            me.node,
            Tracked {
                member: self_member,
                renewal: 0,
                foca_state: MemberState::Alive,
                foca_incarnation: 0,
                seen: 0,
            },
        );
        m.broadcast_item(&Item::Meta(published));
        Ok(m)
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// This node's current identity (its renewal grows when it auto-rejoins).
    pub fn identity(&self) -> &MemberId {
        self.foca.identity()
    }

    pub fn tuning(&self) -> &SwimTuning {
        &self.tuning
    }

    /// Asks `to` (typically a seed just connected to) to let us in, and for a snapshot of its
    /// active members (rate-limited at `to`). Repeat it for each seed; announcing to a member
    /// already known is harmless.
    pub fn announce(&mut self, now: Millis, to: NodeId, out: &mut Vec<MemberOutput>) {
        if self.left || to == self.me {
            return;
        }
        if let Err(e) = self
            .foca
            .announce(MemberId::placeholder(to.clone()), &mut self.rt)
        {
            tracing::debug!(error = %e, "swim announce failed");
        }
        self.after_foca(now, out, Scan::All);
        // Foca's answer (a feed) holds one packet of members; the snapshot holds them all.
        self.request_snapshot(to, out);
        self.plan_follow_ups(now);
    }

    /// Feeds a datagram received from `from` (the transport-authenticated sender). Bad bytes
    /// are counted and dropped.
    pub fn handle_datagram(
        &mut self,
        now: Millis,
        from: &NodeId,
        bytes: &[u8],
        out: &mut Vec<MemberOutput>,
    ) {
        if self.left {
            self.stats.ignored_after_leave += 1;
            return;
        }
        self.stats.datagrams_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        if bytes.len() > self.tuning.max_packet_size + wire::MAX_ENVELOPE_BYTES {
            self.stats.oversize += 1;
            tracing::debug!(from = %from, len = bytes.len(), "swim datagram too big, dropped");
            return;
        }
        let (kind, payload) = match wire::decode(bytes) {
            Ok(decoded) => decoded,
            Err(e) => {
                self.stats.decode_errors += 1;
                tracing::debug!(from = %from, error = ?e, "swim envelope undecodable, dropped");
                return;
            }
        };
        match kind {
            Kind::Swim {
                extras,
                src,
                src_addrs,
                src_incarnation,
                dst,
            } => {
                let me = self.foca.identity();
                let packet = wire::expand(from, me, src, src_addrs, src_incarnation, dst, payload);
                self.handle_swim(now, from, extras, &packet, out)
            }
            Kind::SwimFull { extras } => self.handle_swim(now, from, extras, payload, out),
            Kind::MetaPull if payload.is_empty() => {
                let bytes = wire::encode(&Kind::MetaPush, &self.published_item());
                self.emit_datagram(from.clone(), bytes, out);
            }
            Kind::Suspected { incarnation } if payload.is_empty() => {
                self.answer_suspicion(now, from, incarnation, out)
            }
            Kind::SnapshotPull if payload.is_empty() => self.answer_snapshot(now, from, out),
            Kind::SnapshotPush => self.apply_snapshot(now, payload, out),
            Kind::Heartbeat if payload.is_empty() => self.heartbeat_from(now, from),
            Kind::MetaPull | Kind::Suspected { .. } | Kind::SnapshotPull | Kind::Heartbeat => {
                self.stats.decode_errors += 1
            }
            Kind::MetaPush => match Item::decode(payload) {
                Ok(Item::Meta(record)) if record.node == *from => {
                    let offered = self.store.lock().offer_meta(record);
                    if offered.is_err() {
                        self.stats.broadcast_rejected += 1;
                    }
                    self.heard(now, from);
                    self.sync_store(now, out);
                }
                Ok(_) => self.stats.spoofed += 1,
                Err(_) => self.stats.decode_errors += 1,
            },
        }
    }

    fn handle_swim(
        &mut self,
        now: Millis,
        from: &NodeId,
        extras: wire::SwimExtras,
        payload: &[u8],
        out: &mut Vec<MemberOutput>,
    ) {
        let wire::SwimExtras {
            meta: stamp,
            suspect,
        } = extras;
        // Foca trusts the sender named in the packet; the transport knows the real one.
        let mut rest = payload;
        let scan = match Codec::<MemberId>::decode_header(&mut PostcardCodec, &mut rest) {
            Ok(header) if header.src.node == *from => {
                if let Some(incarnation) = suspect
                    && header.dst == *self.foca.identity()
                {
                    self.refute(incarnation);
                }
                if self.is_quiet(&header, rest) {
                    Scan::Skip
                } else {
                    touched(&header, rest)
                }
            }
            Ok(_) => {
                self.stats.spoofed += 1;
                tracing::debug!(from = %from, "swim packet names another sender, dropped");
                return;
            }
            Err(_) => {
                self.stats.decode_errors += 1;
                tracing::debug!(from = %from, "swim packet undecodable, dropped");
                return;
            }
        };
        if let Err(e) = self.foca.handle_data(payload, &mut self.rt) {
            match e {
                foca::Error::CustomBroadcast(_) => self.stats.broadcast_rejected += 1,
                foca::Error::DataFromOurselves | foca::Error::IndirectForOurselves => {
                    self.stats.spoofed += 1
                }
                _ => self.stats.decode_errors += 1,
            }
            tracing::debug!(from = %from, error = %e, "swim packet refused");
        }
        self.after_foca(now, out, scan);
        self.heard(now, from);
        self.maybe_pull(now, from, stamp, out);
    }

    /// Fires every foca timer due at `now`, publishes a coalesced metadata change whose window
    /// has passed and asks members whose metadata is missing for it.
    pub fn tick(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if self.left {
            return;
        }
        let mut scan = Scan::Skip;
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let timer = entry.remove();
            // A timer changes member states only by making a member suspect (foca then submits
            // a `ChangeSuspectToDown`), down or up (a notification), or by forgetting a
            // tombstone; `after_foca` scans on the first two, this on the last. Every other
            // firing only sends, so the O(members) scan is skipped for it.
            if matches!(timer, Timer::RemoveDown(_)) {
                scan = Scan::All;
            }
            if let Err(e) = self.foca.handle_timer(timer, &mut self.rt) {
                self.stats.timer_errors += 1;
                tracing::debug!(error = %e, "swim timer failed");
            }
        }
        if self.meta_pending && self.meta_window_open(now) {
            self.publish_meta(now);
        }
        if let Some(me) = self.tracked.get_mut(&self.me) {
            me.member.last_heard = now;
        }
        self.after_foca(now, out, scan);
        self.drive_rejoin(now, out);
        self.check_lingering(now);
        self.send_notices(now, out);
        self.declare_unanswered(now, out);
        self.drive_watch(now, out);
        self.pull_missing_meta(now, out);
        self.send_follow_ups(now, out);
        if now.since(self.swept_at) >= meta::ORPHAN_SWEEP_MS {
            self.swept_at = now;
            let tracked = &self.tracked;
            let mut store = self.store.lock();
            store.metas.retain(|node, _| tracked.contains_key(node));
            store.leaving.retain(|node, _| tracked.contains_key(node));
        }
    }

    /// When `tick` next has work to do.
    pub fn next_deadline(&self) -> Option<Millis> {
        if self.left {
            return None;
        }
        let timer = self.timers.keys().next().map(|(at, _)| *at);
        let notice = self.notices.values().filter_map(Notice::due).min();
        let follow_up = self.follow_ups.first().copied();
        let rejoin = self.rejoin_at.filter(|_| !self.connected);
        let meta = match (self.meta_pending, self.published_at) {
            (true, Some(at)) => Some(at.plus(self.tuning.meta_min_interval_ms)),
            (true, None) => Some(Millis(0)),
            (false, _) => None,
        };
        timer
            .into_iter()
            .chain(self.watch_deadline())
            .chain(meta)
            .chain(notice)
            .chain(follow_up)
            .chain(rejoin)
            .min()
    }

    /// Foca goes silent when it has no active member left (everyone else looks down) or has
    /// just renewed its identity after being declared down: no probes, no announcements to
    /// down members, until some member talks to it first. When every node of a healed
    /// partition is in that state at once (each side declared the other down, and each node
    /// renewed on hearing so), nobody talks first and the fleet stays split for good. So while
    /// foca is not connected and other members are known, this announces to a few of them
    /// (round-robin, down ones included) every `announce_down_period_ms`, until one answers.
    fn drive_rejoin(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if self.connected || self.left {
            return;
        }
        let Some(at) = self.rejoin_at else { return };
        if at > now {
            return;
        }
        let others: Vec<NodeId> = self
            .tracked
            .iter()
            .filter(|(id, t)| **id != self.me && t.member.state != MemberState::Left)
            .map(|(id, _)| id.clone())
            .collect();
        if others.is_empty() {
            // Nobody to ask (a fresh node): seeds bring the first member; `Idle` or `Rejoin`
            // re-arms this.
            self.rejoin_at = None;
            return;
        }
        for k in 0..REJOIN_FANOUT.min(others.len()) {
            let to = others[(self.rejoin_cursor + k) % others.len()].clone();
            if let Err(e) = self.foca.announce(MemberId::placeholder(to), &mut self.rt) {
                tracing::debug!(error = %e, "swim announce failed");
            }
        }
        self.rejoin_cursor = self.rejoin_cursor.wrapping_add(REJOIN_FANOUT);
        self.after_foca(now, out, Scan::All);
        self.rejoin_at = Some(now.plus(self.tuning.announce_down_period_ms));
    }

    /// Holds the members' metadata records received from now on in `share`, with every other
    /// `Membership` given the same share: one copy of each record per process instead of one
    /// per `Membership` (for the simulator; see [`RecordShare`]).
    pub fn share_records(&mut self, share: RecordShare) {
        self.store.lock().share = Some(share);
    }

    /// Replaces this node's metadata. Its `version` is assigned here. Published at once unless
    /// a change was published less than `meta_min_interval_ms` ago; then it waits for the
    /// window and coalesces with later changes. The local view (`member(me)`) changes at once.
    pub fn set_meta(
        &mut self,
        now: Millis,
        mut meta: NodeMeta,
        out: &mut Vec<MemberOutput>,
    ) -> Result<(), MetaError> {
        meta.validate()?;
        meta.version = self.published.meta.version + 1;
        let size = MetaRecord {
            node: self.me.clone(),
            incarnation: 0,
            meta: Arc::new(meta.clone()),
        }
        .encode()
        .len();
        if size > meta::MAX_META_RECORD_BYTES {
            return Err(MetaError::TooBig { len: size });
        }
        let unchanged = NodeMeta {
            version: self.meta.version,
            ..meta.clone()
        };
        if unchanged == self.meta {
            return Ok(()); // nothing changed but the version we would give it
        }
        self.meta = meta.clone();
        if let Some(me) = self.tracked.get_mut(&self.me) {
            me.member.meta = Some(Arc::new(meta));
        }
        if self.left {
            return Ok(());
        }
        if self.meta_window_open(now) {
            self.publish_meta(now);
            self.after_foca(now, out, Scan::All);
        } else {
            self.meta_pending = true;
        }
        Ok(())
    }

    /// Leaves gracefully: peers mark this node `Left` (not `Down`). Afterwards every input is
    /// ignored; build a new `Membership` with a higher incarnation to come back.
    pub fn leave(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if self.left {
            return;
        }
        let id = self.foca.identity().clone();
        self.broadcast_item(&Item::Leaving {
            node: id.node,
            incarnation: id.incarnation,
            renewal: id.renewal,
        });
        if let Err(e) = self.foca.leave_cluster(&mut self.rt) {
            tracing::debug!(error = %e, "swim leave failed");
        }
        self.left = true;
        self.meta_pending = false;
        self.timers.clear();
        self.notices.clear();
        if let Some(me) = self.tracked.get_mut(&self.me) {
            me.member.state = MemberState::Left;
            me.member.state_since = now;
        }
        self.after_foca(now, out, Scan::All);
    }

    /// Every member, this node included, sorted by id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.tracked.values().map(|t| &t.member)
    }

    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.tracked.get(id).map(|t| &t.member)
    }

    /// Members alive or suspect, this node included (unless it left).
    pub fn alive_count(&self) -> usize {
        self.members().filter(|m| m.state.is_active()).count()
    }

    pub fn stats(&self) -> MembershipStats {
        let mut s = self.stats;
        s.broadcast_rejected += self.store.lock().rejected;
        s
    }
}
