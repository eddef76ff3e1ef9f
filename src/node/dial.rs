//! Seed dialling: the node's part that decides when the transport dials the seeds it was given.
//!
//! While the node sees no other present member, every seed is dialled, then again after a
//! backoff that starts at `FIRST_BACKOFF_MS`, doubles up to `MAX_BACKOFF_MS`, and carries a
//! jitter of up to half of it (from the core's RNG), so that a fleet started together does not
//! dial in lockstep. Once a member answers, the backoff starts over; should the node find
//! itself alone again, it dials at once. The agent and the simulator carry the `Output::Dial`
//! decisions out; neither holds a rule of its own. No IO, no clock.

use rand::{Rng, RngExt};

use crate::ids::Millis;

use super::Output;

/// The first pause between two rounds of dials.
pub const FIRST_BACKOFF_MS: u64 = 500;
/// The longest pause between two rounds of dials.
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// When the seeds are dialled next, and how long the pause after that round is.
#[derive(Clone, Debug)]
pub struct Dialer {
    seeds: Vec<String>,
    backoff_ms: u64,
    next: Millis,
}

impl Dialer {
    pub fn new(seeds: Vec<String>) -> Dialer {
        Dialer {
            seeds,
            backoff_ms: FIRST_BACKOFF_MS,
            next: Millis(0),
        }
    }

    /// Dials every seed if the node is `alone` and the backoff has run out; starts the backoff
    /// over when it is not alone.
    pub fn drive<R: Rng>(&mut self, now: Millis, alone: bool, rng: &mut R, out: &mut Vec<Output>) {
        if self.seeds.is_empty() {
            return;
        }
        if !alone {
            self.backoff_ms = FIRST_BACKOFF_MS;
            return;
        }
        if now < self.next {
            return;
        }
        for addr in &self.seeds {
            out.push(Output::Dial { addr: addr.clone() });
        }
        let jitter = rng.random_range(0..=self.backoff_ms / 2);
        self.next = now.plus(self.backoff_ms + jitter);
        self.backoff_ms = (self.backoff_ms * 2).min(MAX_BACKOFF_MS);
    }

    /// When the next round of dials is due, if the node is `alone` and has seeds.
    pub fn next_dial(&self, alone: bool) -> Option<Millis> {
        (alone && !self.seeds.is_empty()).then_some(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn dials(out: &[Output]) -> usize {
        out.iter()
            .filter(|o| matches!(o, Output::Dial { .. }))
            .count()
    }

    #[test]
    fn a_lone_node_dials_every_seed_with_a_growing_jittered_backoff() {
        let mut d = Dialer::new(vec![
            "/ip4/127.0.0.1/tcp/1".into(),
            "/ip4/127.0.0.1/tcp/2".into(),
        ]);
        let mut rng = StdRng::seed_from_u64(7);
        let mut out = Vec::new();
        d.drive(Millis(0), true, &mut rng, &mut out);
        assert_eq!(dials(&out), 2);
        let first = d.next_dial(true).expect("alone with seeds");
        assert!((500..=750).contains(&first.0), "{first:?}");
        d.drive(first, true, &mut rng, &mut out);
        assert_eq!(dials(&out), 4);
        let second = d.next_dial(true).expect("alone with seeds");
        assert!((1_000..=1_500).contains(&second.since(first)), "{second:?}");
        d.drive(Millis(first.0 + 1), true, &mut rng, &mut out);
        assert_eq!(dials(&out), 4, "not due yet");
    }

    #[test]
    fn the_backoff_never_passes_thirty_seconds_and_starts_over_once_a_member_answers() {
        let mut d = Dialer::new(vec!["/ip4/127.0.0.1/tcp/1".into()]);
        let mut rng = StdRng::seed_from_u64(1);
        let mut out = Vec::new();
        let mut now = Millis(0);
        for _ in 0..20 {
            d.drive(now, true, &mut rng, &mut out);
            now = d.next_dial(true).expect("due");
        }
        assert_eq!(d.backoff_ms, MAX_BACKOFF_MS);
        d.drive(now, false, &mut rng, &mut out);
        assert_eq!(d.backoff_ms, FIRST_BACKOFF_MS);
        assert_eq!(d.next_dial(false), None);
        let before = dials(&out);
        d.drive(now, true, &mut rng, &mut out);
        assert_eq!(dials(&out), before + 1, "alone again: dials at once");
    }

    #[test]
    fn a_node_without_seeds_never_dials() {
        let mut d = Dialer::new(Vec::new());
        let mut out = Vec::new();
        d.drive(Millis(0), true, &mut StdRng::seed_from_u64(1), &mut out);
        assert!(out.is_empty());
        assert_eq!(d.next_dial(true), None);
    }
}
