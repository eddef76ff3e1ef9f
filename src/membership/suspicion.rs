//! Getting suspicions refuted in time: the "you are suspected" flag on datagrams (Lifeguard's
//! buddy system), notices from the prober that started a suspicion, and the suspect's direct
//! answer carrying its current incarnation.
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
}

/// Notices sent per suspicion started by our own probe, spread over the suspicion timeout.
pub(super) const NOTICES_PER_SUSPICION: u8 = 3;

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
            if !standing || n.left == 0 {
                return false;
            }
            if n.next <= now {
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
        let dst = MemberId {
            node: from.clone(),
            incarnation: t.member.incarnation,
            renewal: t.renewal,
            addrs: t.member.addrs.clone(),
        };
        if incarnation >= self.own_incarnation {
            self.refute(incarnation);
            // Flushes foca's refutation gossip, which also updates `own_incarnation`.
            self.after_foca(now, out, false);
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
