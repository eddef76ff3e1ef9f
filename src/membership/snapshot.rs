//! Joining a large cluster quickly: with `announce`, the joiner also asks the seed for a
//! snapshot of its active members, answered in packet-sized chunks and applied without
//! re-broadcasting (the rest of the cluster knows these facts already).
//!
//! Without it a joiner learns at once only the members in the seed's feed (one packet: about
//! 150 identities at 16 KiB) and the rest over minutes, as their probes reach it. Part of
//! `Membership`; no IO.

use std::collections::VecDeque;

use rand::RngExt;

use super::*;

/// A requester gets at most one snapshot per this period.
pub(super) const SNAPSHOT_PER_REQUESTER_MS: u64 = 10_000;
/// At most this many snapshots are served per second in all (a thousand nodes booting against
/// one seed must not make it send gigabytes); the others still get foca's feed.
pub(super) const SNAPSHOTS_PER_SECOND: usize = 5;
/// Requesters remembered for the per-requester limit, at most.
const MAX_REQUESTERS: usize = 4096;
/// After announcing, further snapshots are pulled from random active members this long after
/// the announce: members that joined concurrently (whose join rumours were spent while the
/// cluster was small) and the seed's rate limit would otherwise leave gaps for minutes.
pub(super) const FOLLOW_UPS_MS: [u64; 2] = [3_000, 10_000];

/// When snapshots were served: per requester, and the recent ones in all.
#[derive(Default)]
pub(super) struct Served {
    per_requester: BTreeMap<NodeId, Millis>,
    recent: VecDeque<Millis>,
}

impl Served {
    /// Whether a snapshot may go to `to` now; records it if so.
    fn admit(&mut self, now: Millis, to: &NodeId) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|at| now.since(*at) >= 1_000)
        {
            self.recent.pop_front();
        }
        let too_soon = self
            .per_requester
            .get(to)
            .is_some_and(|at| now.since(*at) < SNAPSHOT_PER_REQUESTER_MS);
        if too_soon || self.recent.len() >= SNAPSHOTS_PER_SECOND {
            return false;
        }
        if self.per_requester.len() >= MAX_REQUESTERS {
            self.per_requester
                .retain(|_, at| now.since(*at) < SNAPSHOT_PER_REQUESTER_MS);
        }
        self.per_requester.insert(to.clone(), now);
        self.recent.push_back(now);
        true
    }
}

impl Membership {
    /// Plans the follow-up pulls after an announce at `now`.
    pub(super) fn plan_follow_ups(&mut self, now: Millis) {
        self.follow_ups = FOLLOW_UPS_MS.iter().map(|ms| now.plus(*ms)).collect();
    }

    /// Sends the follow-up pulls that are due, each to a random active member.
    pub(super) fn send_follow_ups(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        while self.follow_ups.first().is_some_and(|at| *at <= now) {
            self.follow_ups.remove(0);
            let active = self.foca.num_members();
            if active == 0 {
                continue;
            }
            let pick = self.rng.random_range(0..active);
            let to = self
                .foca
                .iter_members()
                .nth(pick)
                .map(|m| m.id().node.clone());
            if let Some(to) = to {
                self.request_snapshot(to, out);
            }
        }
    }

    /// Asks `to` for its active members.
    pub(super) fn request_snapshot(&mut self, to: NodeId, out: &mut Vec<MemberOutput>) {
        self.emit_datagram(to, wire::encode(&Kind::SnapshotPull, &[]), out);
    }

    /// Answers a snapshot request: our active members and ourselves, in chunks that each fit
    /// one datagram.
    pub(super) fn answer_snapshot(
        &mut self,
        now: Millis,
        from: &NodeId,
        out: &mut Vec<MemberOutput>,
    ) {
        if !self.served.admit(now, from) {
            return;
        }
        let me = foca::Member::new(
            self.foca.identity().clone(),
            self.own_incarnation,
            foca::State::Alive,
        );
        let budget = self.tuning.max_packet_size;
        let mut chunk: Vec<u8> = Vec::new();
        let mut count = 0usize;
        let mut chunks = Vec::new();
        for member in std::iter::once(&me).chain(self.foca.iter_members()) {
            let bytes = postcard::to_allocvec(member).expect("encoding to a Vec cannot fail");
            if !chunk.is_empty() && chunk.len() + bytes.len() + 3 > budget {
                chunks.push(finish_chunk(count, &chunk));
                chunk.clear();
                count = 0;
            }
            chunk.extend_from_slice(&bytes);
            count += 1;
        }
        if count > 0 {
            chunks.push(finish_chunk(count, &chunk));
        }
        for payload in chunks {
            self.emit_datagram(
                from.clone(),
                wire::encode(&Kind::SnapshotPush, &payload),
                out,
            );
        }
    }

    /// Applies one snapshot chunk. Members are validated while decoding; a bad chunk is
    /// dropped whole and counted.
    pub(super) fn apply_snapshot(
        &mut self,
        now: Millis,
        payload: &[u8],
        out: &mut Vec<MemberOutput>,
    ) {
        let members = match decode_chunk(payload) {
            Some(members) => members,
            None => {
                self.stats.decode_errors += 1;
                return;
            }
        };
        // Only active members: a snapshot never declares anyone down.
        let active = members
            .into_iter()
            .filter(|m| m.state() != foca::State::Down);
        if let Err(e) = self.foca.apply_many(active, false, &mut self.rt) {
            tracing::debug!(error = %e, "swim snapshot not applied");
        }
        self.after_foca(now, out, Scan::All);
    }
}

/// A chunk: the member count (postcard varint), then the members.
fn finish_chunk(count: usize, members: &[u8]) -> Vec<u8> {
    let mut out = postcard::to_allocvec(&(count as u32)).expect("encoding to a Vec cannot fail");
    out.extend_from_slice(members);
    out
}

fn decode_chunk(mut bytes: &[u8]) -> Option<Vec<foca::Member<MemberId>>> {
    let (count, rest) = postcard::take_from_bytes::<u32>(bytes).ok()?;
    bytes = rest;
    // Each member takes more than 8 bytes: a larger count cannot be honest.
    if count as usize > bytes.len() / 8 {
        return None;
    }
    let mut members = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (member, rest) = postcard::take_from_bytes::<foca::Member<MemberId>>(bytes).ok()?;
        members.push(member);
        bytes = rest;
    }
    bytes.is_empty().then_some(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_rate_limited_per_requester_and_in_all() {
        let mut s = Served::default();
        let n = |i: u8| NodeId(format!("n{i}").into());
        assert!(s.admit(Millis(0), &n(0)));
        assert!(!s.admit(Millis(1), &n(0)), "same requester too soon");
        for i in 1..SNAPSHOTS_PER_SECOND as u8 {
            assert!(s.admit(Millis(2), &n(i)));
        }
        assert!(!s.admit(Millis(3), &n(99)), "global limit");
        assert!(s.admit(Millis(1_003), &n(99)));
        assert!(s.admit(Millis(SNAPSHOT_PER_REQUESTER_MS + 5), &n(0)));
    }

    #[test]
    fn a_chunk_round_trips_and_junk_is_refused() {
        let id = MemberId::new(
            NodeId("x".repeat(52).into()),
            3,
            vec!["/ip4/1.2.3.4/tcp/1".into()],
        )
        .unwrap();
        let member = foca::Member::new(id, 2, foca::State::Suspect);
        let bytes = postcard::to_allocvec(&member).unwrap();
        let chunk = finish_chunk(2, &[bytes.clone(), bytes].concat());
        assert_eq!(decode_chunk(&chunk).unwrap(), vec![member.clone(), member]);
        assert!(decode_chunk(&chunk[..chunk.len() - 1]).is_none());
        assert!(decode_chunk(&[0xff, 0xff, 0xff, 0xff, 0x0f]).is_none());
        assert!(decode_chunk(&[]).is_none());
    }
}
