//! Membership's side of foca: the `foca::Runtime` that collects what foca asks for during one
//! call (`Collect`), and `after_foca`, which turns that into datagrams, timers, suspicion
//! notices and member events, scanning only the members a call can have changed (`Scan`).
//!
//! Part of `Membership`; no IO.

use super::*;

impl Membership {
    pub(super) fn heard(&mut self, now: Millis, from: &NodeId) {
        if let Some(t) = self.tracked.get_mut(from) {
            t.member.last_heard = now;
        }
    }

    pub(super) fn emit_datagram(
        &mut self,
        to: NodeId,
        bytes: Vec<u8>,
        out: &mut Vec<MemberOutput>,
    ) {
        self.stats.datagrams_out += 1;
        self.stats.bytes_out += bytes.len() as u64;
        out.push(MemberOutput::Datagram { to, bytes });
    }

    /// Turns what foca produced into outputs and, if `scan`, brings `tracked` up to date.
    pub(super) fn after_foca(&mut self, now: Millis, out: &mut Vec<MemberOutput>, mut scan: Scan) {
        for (timer, after) in self.rt.timers.drain(..) {
            if let Timer::ChangeSuspectToDown {
                member_id,
                incarnation,
                ..
            } = &timer
            {
                // A member was made suspect (or stays so): its state changed in foca.
                scan.add(member_id.addr());
                // Our probe just failed: tell the suspect (see `Kind::Suspected`).
                let notice = Notice {
                    next: now,
                    life: (member_id.incarnation, member_id.renewal),
                    incarnation: *incarnation,
                    left: NOTICES_PER_SUSPICION,
                    declare_at: None,
                };
                // A check of ours already under way for this suspicion keeps its verdict time.
                let same = self
                    .notices
                    .get(&member_id.node)
                    .is_some_and(|n| (n.life, n.incarnation) == (notice.life, notice.incarnation));
                if !same {
                    self.notices.insert(member_id.node.clone(), notice);
                }
            }
            let at = now.plus(ceil_millis(after));
            self.timers.insert((at, self.timer_seq), timer);
            self.timer_seq += 1;
        }
        for note in self.rt.notes.drain(..) {
            match &note {
                OwnedNotification::MemberUp(id) | OwnedNotification::MemberDown(id) => {
                    scan.add(id.addr())
                }
                OwnedNotification::Rename(old, new) => {
                    scan.add(old.addr());
                    scan.add(new.addr());
                }
                _ => scan = Scan::All,
            }
            match note {
                OwnedNotification::Rejoin(id) => {
                    // A new life: foca's incarnation starts again from 0, and foca is silent
                    // until someone talks to it: announce ourselves at once.
                    self.connected = false;
                    self.rejoin_at = Some(now);
                    self.refuted = None;
                    self.own_incarnation = 0;
                    self.own_id_bytes =
                        postcard::to_allocvec(&id).expect("encoding to a Vec cannot fail");
                    tracing::info!(identity = %id, "declared down by the cluster, rejoined")
                }
                OwnedNotification::Defunct if !self.left => {
                    tracing::warn!("declared down by the cluster and cannot rejoin")
                }
                OwnedNotification::Idle => {
                    self.connected = false;
                    self.rejoin_at.get_or_insert(now);
                    tracing::debug!("no active member left")
                }
                OwnedNotification::Active => {
                    self.connected = true;
                    self.rejoin_at = None;
                    tracing::debug!("joined the cluster")
                }
                _ => {}
            }
        }
        // A join's feed can bring hundreds of updates at once: do not keep room for such a burst
        // in every node's buffers for the rest of the run.
        self.rt.timers.shrink_to(Collect::KEEP);
        self.rt.notes.shrink_to(Collect::KEEP);
        match scan {
            Scan::Skip => {}
            Scan::Only(keys) => self.sync_members(now, Some(&keys), out),
            Scan::All => self.sync_members(now, None, out),
        }
        self.sync_store(now, out);
        // After the scan, so that a member suspected during this call is flagged already.
        let stamp = self.published.stamp();
        let sends: Vec<_> = self.rt.sends.drain(..).collect();
        self.rt.sends.shrink_to(Collect::KEEP);
        for (to, data) in sends {
            let known = self
                .tracked
                .get(&to.node)
                .filter(|t| (t.member.incarnation, t.renewal) == (to.incarnation, to.renewal));
            if known.is_some_and(|t| t.foca_state.is_active()) && is_turn_undead(&data) {
                // Foca 2.0.0 also sends "you are down" when a suspicion was refuted in time
                // (its suspect-to-down timer finds the member alive again); the member would
                // then rejoin as a new life for nothing. We only tell members we hold down.
                self.stats.turn_undead_suppressed += 1;
                continue;
            }
            let suspect = known
                .filter(|t| t.member.state == MemberState::Suspect)
                .map(|t| t.foca_incarnation);
            if let Some(rest) = data.strip_prefix(self.own_id_bytes.as_slice())
                && let Ok((incarnation, _)) = postcard::take_from_bytes::<u16>(rest)
            {
                self.own_incarnation = incarnation;
            }
            let extras = wire::SwimExtras {
                meta: stamp,
                suspect,
            };
            let me = self.foca.identity();
            let bytes = wire::compact(me, &self.own_id_bytes, &to, &data, extras);
            self.emit_datagram(to.node, bytes, out);
        }
        self.send_notices(now, out);
    }
}

/// Which members `after_foca` compares with foca's view: foca changes only the members a call
/// names (a packet's sender and updates, a timer's member, a notification's), so most calls
/// need not walk the whole list.
#[derive(Debug)]
pub(super) enum Scan {
    Skip,
    Only(Vec<NodeKey>),
    All,
}

impl Scan {
    pub(super) fn add(&mut self, key: NodeKey) {
        match self {
            Scan::Skip => *self = Scan::Only(vec![key]),
            Scan::Only(keys) => keys.push(key),
            Scan::All => {}
        }
    }
}

/// The members a foca packet can change: its sender and those in its updates (what foca's
/// `handle_data` applies). `Scan::All` if the updates do not decode (foca refuses the packet
/// then, but a full scan is always safe).
pub(super) fn touched(header: &foca::Header<MemberId>, mut rest: &[u8]) -> Scan {
    let mut keys = vec![header.src.addr()];
    if rest.len() >= 2 && header.message != foca::Message::Broadcast {
        let count = u16::from_be_bytes([rest[0], rest[1]]);
        rest = &rest[2..];
        for _ in 0..count {
            match Codec::<MemberId>::decode_member(&mut PostcardCodec, &mut rest) {
                Ok(m) => keys.push(m.id().addr()),
                Err(_) => return Scan::All,
            }
        }
    }
    Scan::Only(keys)
}

/// Whether a foca packet (as foca produced it) is a `TurnUndead`. Decodes only the header.
fn is_turn_undead(packet: &[u8]) -> bool {
    Codec::<MemberId>::decode_header(&mut PostcardCodec, packet)
        .is_ok_and(|h| h.message == foca::Message::TurnUndead)
}

fn ceil_millis(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

/// The `foca::Runtime`: collects what foca asks for during one call.
#[derive(Default)]
pub(super) struct Collect {
    pub(super) sends: Vec<(MemberId, Vec<u8>)>,
    pub(super) timers: Vec<(Timer<MemberId>, Duration)>,
    pub(super) notes: Vec<OwnedNotification<MemberId>>,
}

impl Collect {
    /// Room kept in each buffer between two calls into foca.
    pub(super) const KEEP: usize = 64;
}

impl foca::Runtime<MemberId> for Collect {
    fn notify(&mut self, notification: foca::Notification<'_, MemberId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        self.sends.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        self.timers.push((event, after));
    }
}
