//! The ring watch: a bound on how long a crash can go unnoticed.
//!
//! SWIM finds a crashed member only when some node's random probe picks it. Each node probes
//! one member per period over its own shuffled list, so fleet-wide a member is probed about
//! once per period at random moments and the wait for the first probe is roughly exponential:
//! p50 0.7 periods, p99 4.6, and now and then much longer.
//!
//! So every member also sends one small heartbeat per probe period to its predecessor on the
//! ring of node ids (the active member with the next lower id, as it sees the fleet), and every
//! member watches its successor. When the successor has sent heartbeats to us in its current
//! life and then nothing at all arrives from it for `WATCH_MISSES` periods plus the probe
//! round-trip allowance, we suspect it: the suspicion goes out through foca like a failed
//! probe's, the suspect is told directly (the same notices as a prober's) and, unless it
//! answers within the suspicion timeout, we declare it down (`declare_unanswered`). A crash is
//! then suspected at most `WATCH_MISSES × period + rtt` after it happened, whatever the probe
//! schedule does.
//!
//! Why heartbeats one way rather than a ping and an ack: one datagram per node per period
//! instead of two (idle traffic matters at the edge), and a one-way loss of 10% makes
//! `WATCH_MISSES` = 3 misses in a row a 10⁻³ event per period, about foca's own false-suspicion
//! rate at that loss. A false suspicion is refuted, never a death: the suspect answers the
//! notices.
//!
//! What keeps it from suspecting healthy members:
//! - A watch arms only when the watched life has sent us a heartbeat. A peer that runs an
//!   older version (it drops the unknown kind) or sees another predecessor never arms it.
//! - After it fires, the watch disarms until the next heartbeat from that member: a one-way
//!   cut (its datagrams to us lost, ours to it delivered) costs one refuted suspicion, not one
//!   per period.
//! - Views differ for a while after a join: when a member's predecessor changes, it keeps
//!   beating the previous one for `GRACE_PERIODS` periods, so a watcher that has not yet
//!   heard of the joiner between them does not take the silence for a crash.
//!
//! Part of `Membership`; no IO.

use std::ops::Bound::{Excluded, Unbounded};

use super::*;

/// Heartbeat periods without a datagram from the watched member before it is suspected.
pub(super) const WATCH_MISSES: u64 = 3;

/// Periods a member keeps beating its previous predecessor after its predecessor changed.
const GRACE_PERIODS: u64 = 20;

/// The ring watch of one node.
#[derive(Default)]
pub(super) struct RingWatch {
    /// When the next heartbeat is due (`None`: at the next tick).
    beat_at: Option<Millis>,
    /// The member our heartbeats go to.
    pred: Option<NodeId>,
    /// The previous one, beaten until the given time.
    old_pred: Option<(NodeId, Millis)>,
    /// The member we watch.
    watched: Option<Watched>,
    /// When its silence is next worth checking: the earliest it can be long enough, from what
    /// we had heard when last looking (a datagram since only moves it later, so waking at this
    /// time is at worst early). Kept so `next_deadline` needs no member lookup.
    check_at: Option<Millis>,
}

struct Watched {
    node: NodeId,
    life: (u64, u32),
    /// It has sent us a heartbeat in this life since we last suspected it.
    armed: bool,
}

/// The nearest active member after (`after`) or before `me` on the ring of ids.
fn ring_neighbour<'a>(
    tracked: &'a BTreeMap<NodeId, view::Tracked>,
    me: &NodeId,
    after: bool,
) -> Option<(&'a NodeId, &'a view::Tracked)> {
    let active = |(id, t): &(&NodeId, &view::Tracked)| *id != me && t.member.state.is_active();
    let mut higher = tracked.range::<NodeId, _>((Excluded(me), Unbounded));
    let mut lower = tracked.range::<NodeId, _>(..me);
    if after {
        higher.find(active).or_else(|| lower.find(active))
    } else {
        lower
            .rev()
            .find(active)
            .or_else(|| higher.rev().find(active))
    }
}

impl Membership {
    /// How long the watched member may stay silent before we suspect it.
    fn watch_silence_ms(&self) -> u64 {
        WATCH_MISSES * self.tuning.probe_period_ms + self.tuning.probe_rtt_ms
    }

    /// A heartbeat arrived from `from`: it arms our watch if `from` is the member we watch.
    pub(super) fn heartbeat_from(&mut self, now: Millis, from: &NodeId) {
        self.heard(now, from);
        self.stats.heartbeats_in += 1;
        if let Some(w) = self.watch.watched.as_mut().filter(|w| w.node == *from) {
            w.armed = true;
        }
    }

    /// Sends the heartbeat when due, follows ring changes and suspects a watched member that
    /// went silent.
    pub(super) fn drive_watch(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if !self.tuning.ring_watch {
            return;
        }
        if self.watch.beat_at.is_none_or(|at| at <= now) {
            self.beat(now, out);
        }
        self.watch.check_at = None;
        let silence = self.watch_silence_ms();
        let Some((node, t)) = ring_neighbour(&self.tracked, &self.me, true) else {
            self.watch.watched = None;
            return;
        };
        let life = (t.member.incarnation, t.renewal);
        let w = match self.watch.watched.as_mut() {
            Some(w) if w.node == *node && w.life == life => w,
            _ => {
                self.watch.watched = Some(Watched {
                    node: node.clone(),
                    life,
                    armed: false,
                });
                return;
            }
        };
        if !w.armed {
            return;
        }
        let last_heard = t.member.last_heard;
        if now.since(last_heard) > silence {
            w.armed = false;
            let node = node.clone();
            self.suspect_silent(now, &node, out);
        } else {
            self.watch.check_at = Some(last_heard.plus(silence + 1));
        }
    }

    fn beat(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        let period = self.tuning.probe_period_ms;
        self.watch.beat_at = Some(now.plus(period));
        let pred = ring_neighbour(&self.tracked, &self.me, false).map(|(id, _)| id.clone());
        if pred != self.watch.pred {
            let grace = now.plus(GRACE_PERIODS * period);
            self.watch.old_pred = self.watch.pred.take().map(|old| (old, grace));
            self.watch.pred = pred;
        }
        if let Some((old, until)) = &self.watch.old_pred {
            let still = *until > now
                && self.watch.pred.as_ref() != Some(old)
                && self
                    .tracked
                    .get(old)
                    .is_some_and(|t| t.member.state.is_active());
            if !still {
                self.watch.old_pred = None;
            }
        }
        let targets: Vec<NodeId> = self
            .watch
            .pred
            .iter()
            .chain(self.watch.old_pred.as_ref().map(|(old, _)| old))
            .cloned()
            .collect();
        for to in targets {
            self.stats.heartbeats_out += 1;
            self.emit_datagram(to, wire::encode(&Kind::Heartbeat, &[]), out);
        }
    }

    /// The watched member went silent: suspect it (unless it is already) and check it
    /// ourselves, as for a suspicion that lingers here.
    fn suspect_silent(&mut self, now: Millis, node: &NodeId, out: &mut Vec<MemberOutput>) {
        if self.notices.contains_key(node) {
            return; // a check of ours, or our probe's, is under way
        }
        let Some(t) = self.tracked.get(node) else {
            return;
        };
        if t.member.state == MemberState::Alive {
            let id = MemberId::life(
                node.clone(),
                t.member.incarnation,
                t.renewal,
                t.member.addrs.clone(),
            );
            let key = id.addr();
            let suspect = foca::Member::new(id, t.foca_incarnation, foca::State::Suspect);
            if let Err(e) = self
                .foca
                .apply_many(std::iter::once(suspect), true, &mut self.rt)
            {
                tracing::debug!(error = %e, "swim suspicion not applied");
            }
            self.after_foca(now, out, Scan::Only(vec![key]));
        }
        let Some(t) = self
            .tracked
            .get(node)
            .filter(|t| t.member.state == MemberState::Suspect)
        else {
            return;
        };
        tracing::debug!(member = %node, "ring neighbour silent, suspected");
        self.stats.watch_suspicions += 1;
        let notice = Notice::own_check(now, t, self.tuning.suspect_to_down_ms);
        self.notices.insert(node.clone(), notice);
        self.send_notices(now, out);
    }

    /// When the ring watch next needs a tick.
    pub(super) fn watch_deadline(&self) -> Option<Millis> {
        if !self.tuning.ring_watch {
            return None;
        }
        let beat = self.watch.beat_at.unwrap_or(Millis(0));
        Some(self.watch.check_at.map_or(beat, |c| c.min(beat)))
    }
}
