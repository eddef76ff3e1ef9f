//! Getting suspicions resolved in time: the "you are suspected" flag on datagrams (Lifeguard's
//! buddy system), notices from the prober that started a suspicion, the suspect's direct
//! answer carrying its current incarnation, and our own check of a suspicion that lingers
//! here (we heard it but missed how it ended).
//!
//! Part of `Membership`; no IO.

use foca::Codec;

use super::*;

/// Repeated "you are suspected" notices, so one lost datagram does not decide.
pub(super) struct Notice {
    pub(super) next: Millis,
    pub(super) life: (u64, u32),
    pub(super) incarnation: u16,
    pub(super) left: u8,
    /// Set for our own check of a lingering suspicion: declare the member down at this time
    /// if it has not answered. `None` when our probe started the suspicion (foca's timer
    /// decides then).
    pub(super) declare_at: Option<Millis>,
}

impl Notice {
    /// Our own check of suspect `t`: notices from `now`, and a verdict after
    /// `suspect_to_down_ms` unless it answers (`declare_unanswered`).
    pub(super) fn own_check(now: Millis, t: &view::Tracked, suspect_to_down_ms: u64) -> Notice {
        Notice {
            next: now,
            life: (t.member.incarnation, t.renewal),
            incarnation: t.foca_incarnation,
            left: NOTICES_PER_SUSPICION,
            declare_at: Some(now.plus(suspect_to_down_ms)),
        }
    }

    /// When this notice entry next needs attention.
    pub(super) fn due(&self) -> Option<Millis> {
        if self.left > 0 {
            Some(self.next)
        } else {
            self.declare_at
        }
    }
}

/// A suspicion heard from others and neither refuted nor confirmed here after this many
/// suspicion timeouts is checked by us (foca runs a timer only at the prober; if we missed
/// the prober's verdict, the member would stay suspect here until our own probe reaches it).
pub(super) const LINGER_TIMEOUTS: u64 = 2;

/// Notices sent per suspicion started by our own probe, spread over the suspicion timeout.
/// The suspicion only stands if all of them or all answers are lost: at 10% loss each round
/// trip fails with p = 0.19, all eight with p ≈ 2·10⁻⁶.
pub(super) const NOTICES_PER_SUSPICION: u8 = 8;

impl Membership {
    /// The sender suspects us at foca `incarnation`: let foca refute it (bump its incarnation
    /// and gossip) before answering, so the answer itself carries the refutation. Flags at or
    /// below one already refuted are stale and ignored (foca would gossip for nothing).
    pub(super) fn refute(&mut self, incarnation: u16) {
        if self.refuted.is_some_and(|done| incarnation <= done) {
            return;
        }
        self.refuted = Some(incarnation);
        let me = foca::Member::new(
            self.foca.identity().clone(),
            incarnation,
            foca::State::Suspect,
        );
        if let Err(e) = self
            .foca
            .apply_many(std::iter::once(me), true, &mut self.rt)
        {
            tracing::debug!(error = %e, "swim refutation failed");
        }
    }

    /// Starts our own check of suspicions that linger here: notices now, and a verdict after
    /// one suspicion timeout (`declare_unanswered`).
    pub(super) fn check_lingering(&mut self, now: Millis) {
        let s = self.tuning.suspect_to_down_ms;
        let lingering: Vec<(NodeId, Notice)> = self
            .suspects
            .iter()
            .filter_map(|node| self.tracked.get(node).map(|t| (node, t)))
            .filter(|(node, t)| {
                t.member.state == MemberState::Suspect
                    && now.since(t.member.state_since) >= LINGER_TIMEOUTS * s
                    && !self.notices.contains_key(*node)
            })
            .map(|(node, t)| (node.clone(), Notice::own_check(now, t, s)))
            .collect();
        self.notices.extend(lingering);
    }

    /// Declares down the members our own check found silent: the verdict goes out as a normal
    /// membership update.
    pub(super) fn declare_unanswered(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        let mut verdicts = Vec::new();
        self.notices.retain(|node, n| {
            if n.declare_at.is_none_or(|at| at > now) {
                return true;
            }
            if let Some(t) = self.tracked.get(node).filter(|t| {
                (t.member.incarnation, t.renewal) == n.life
                    && t.member.state == MemberState::Suspect
                    && t.foca_incarnation == n.incarnation
            }) {
                let id = MemberId::life(
                    node.clone(),
                    t.member.incarnation,
                    t.renewal,
                    t.member.addrs.clone(),
                );
                verdicts.push(foca::Member::new(id, n.incarnation, foca::State::Down));
            }
            false
        });
        if verdicts.is_empty() {
            return;
        }
        self.stats.lingering_declared_down += verdicts.len() as u64;
        if let Err(e) = self
            .foca
            .apply_many(verdicts.into_iter(), true, &mut self.rt)
        {
            tracing::debug!(error = %e, "swim verdict not applied");
        }
        self.after_foca(now, out, Scan::All);
    }

    /// Sends the due "you are suspected" notices while the suspicion stands.
    pub(super) fn send_notices(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if self.notices.is_empty() {
            return;
        }
        let spacing = (self.tuning.suspect_to_down_ms / u64::from(NOTICES_PER_SUSPICION)).max(1);
        let mut due = Vec::new();
        self.notices.retain(|node, n| {
            let standing = self.tracked.get(node).is_some_and(|t| {
                (t.member.incarnation, t.renewal) == n.life
                    && t.member.state == MemberState::Suspect
                    && t.foca_incarnation == n.incarnation
            });
            if !standing || (n.left == 0 && n.declare_at.is_none()) {
                return false;
            }
            if n.left > 0 && n.next <= now {
                due.push((node.clone(), n.incarnation));
                n.left -= 1;
                n.next = now.plus(spacing);
            }
            true
        });
        for (node, incarnation) in due {
            self.emit_datagram(
                node,
                wire::encode(&Kind::Suspected { incarnation }, &[]),
                out,
            );
        }
    }

    /// A prober suspects us: refute if it suspects our current incarnation, then answer it
    /// directly with a minimal foca packet (a gossip with no update) whose header carries our
    /// incarnation, which clears the suspicion at the one member whose timer would fire.
    pub(super) fn answer_suspicion(
        &mut self,
        now: Millis,
        from: &NodeId,
        incarnation: u16,
        out: &mut Vec<MemberOutput>,
    ) {
        let Some(t) = self.tracked.get(from) else {
            return;
        };
        let dst = MemberId::life(
            from.clone(),
            t.member.incarnation,
            t.renewal,
            t.member.addrs.clone(),
        );
        if incarnation >= self.own_incarnation {
            self.refute(incarnation);
            // Flushes foca's refutation gossip, which also updates `own_incarnation`.
            self.after_foca(now, out, Scan::Skip);
        }
        let header = foca::Header {
            src: self.foca.identity().clone(),
            src_incarnation: self.own_incarnation,
            dst,
            message: foca::Message::Gossip,
        };
        let mut packet = Vec::new();
        if Codec::<MemberId>::encode_header(&mut PostcardCodec, &header, &mut packet).is_ok() {
            packet.extend_from_slice(&[0, 0]); // no membership update
            let extras = wire::SwimExtras {
                meta: self.published.stamp(),
                suspect: None,
            };
            let me = self.foca.identity();
            let to = &header.dst;
            let bytes = wire::compact(me, &self.own_id_bytes, to, &packet, extras);
            self.emit_datagram(from.clone(), bytes, out);
        }
    }
}
