//! Node metadata on the move: publishing our record (rate-limited, as a foca broadcast), and
//! pulling records a member missed (its packets show a newer stamp, or none ever arrived).
//!
//! Part of `Membership`; no IO.

use super::*;

impl Membership {
    pub(super) fn meta_window_open(&self, now: Millis) -> bool {
        self.published_at
            .is_none_or(|at| now.since(at) >= self.tuning.meta_min_interval_ms)
    }

    pub(super) fn publish_meta(&mut self, now: Millis) {
        self.meta.version = self.published.meta.version + 1;
        self.published = MetaRecord {
            node: self.me.clone(),
            incarnation: self.foca.identity().incarnation,
            meta: Arc::new(self.meta.clone()),
        };
        self.published_at = Some(now);
        self.meta_pending = false;
        if let Some(me) = self.tracked.get_mut(&self.me) {
            me.member.meta = Some(self.published.meta.clone());
        }
        self.broadcast_item(&Item::Meta(self.published.clone()));
    }

    pub(super) fn published_item(&self) -> Vec<u8> {
        self.published.encode()
    }

    pub(super) fn broadcast_item(&mut self, item: &Item) {
        let bytes = postcard::to_allocvec(item).expect("encoding to a Vec cannot fail");
        if let Err(e) = self.foca.add_broadcast(&bytes) {
            // Sizes are checked before; reaching here is a bug worth seeing in the logs.
            tracing::warn!(error = %e, len = bytes.len(), "swim broadcast refused");
        }
        // Our own record lands in the store too: not news for the rest of this node.
        let mut store = self.store.lock();
        store.meta_changed.retain(|n| *n != self.me);
        store.left.retain(|n| *n != self.me);
    }

    /// Pulls the sender's record when its packet shows a newer one than we have.
    pub(super) fn maybe_pull(
        &mut self,
        now: Millis,
        from: &NodeId,
        stamp: Stamp,
        out: &mut Vec<MemberOutput>,
    ) {
        let stale = self
            .store
            .lock()
            .stamp_of(from)
            .is_none_or(|known| known < stamp);
        if stale && self.tracked.contains_key(from) && self.pull_due(now, from) {
            self.send_pull(now, from.clone(), out);
        }
    }

    pub(super) fn pull_due(&self, now: Millis, node: &NodeId) -> bool {
        self.pulled
            .get(node)
            .is_none_or(|at| now.since(*at) >= self.tuning.meta_pull_retry_ms)
    }

    pub(super) fn send_pull(&mut self, now: Millis, to: NodeId, out: &mut Vec<MemberOutput>) {
        self.stats.meta_pulls_sent += 1;
        self.pulled.insert(to.clone(), now);
        self.emit_datagram(to, wire::encode(&Kind::MetaPull, &[]), out);
    }

    /// Active members whose metadata never arrived (a join missed their broadcast), a few
    /// per tick, each retried after `meta_pull_retry_ms`.
    ///
    /// The walk over the members still missing theirs happens only once one of them may be
    /// due (`missing_meta_check`): while a large fleet joins, most are within their grace for
    /// many ticks.
    pub(super) fn pull_missing_meta(&mut self, now: Millis, out: &mut Vec<MemberOutput>) {
        if self.missing_meta_check.is_none_or(|at| at > now) {
            return;
        }
        let grace = self.tuning.meta_pull_retry_ms;
        let limit = self.tuning.meta_pulls_per_tick;
        let mut missing = Vec::new();
        let mut next: Option<Millis> = None;
        for node in &self.no_meta {
            let Some(t) = self.tracked.get(node) else {
                continue;
            };
            if !t.member.state.is_active() {
                continue; // re-armed by `note_missing_meta` if it comes back
            }
            // After its grace since it came up, and after the retry period since our last pull.
            let since = self
                .pulled
                .get(node)
                .map_or(t.member.state_since, |at| (*at).max(t.member.state_since));
            let due = since.plus(grace);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
            } else if missing.len() < limit {
                missing.push(node.clone());
            } else {
                next = Some(now); // more are due than one tick sends
            }
        }
        // The ones pulled now are due again after the retry period.
        let pulled_again = (!missing.is_empty()).then(|| now.plus(grace));
        self.missing_meta_check = next.into_iter().chain(pulled_again).min();
        for node in missing {
            self.send_pull(now, node, out);
        }
    }

    /// A member without metadata became active at `since`: makes sure `pull_missing_meta`
    /// looks again once that member's grace is over.
    pub(super) fn note_missing_meta(&mut self, since: Millis) {
        let due = since.plus(self.tuning.meta_pull_retry_ms);
        self.missing_meta_check = Some(self.missing_meta_check.map_or(due, |at| at.min(due)));
    }
}
