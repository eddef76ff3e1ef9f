//! SWIM timing: the `lan` and `wan` profiles, the overridable `SwimTuning` they produce, and
//! its translation into `foca::Config`.
//!
//! Pure arithmetic on integers; how the defaults were measured is in docs/bench/README.md.

use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A named starting point for [`SwimTuning`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Machines on one network (default). Goal (DESIGN.md §10): a crashed node is known down
    /// everywhere within 3 s at p99 in fleets up to ~1,000 nodes, with no false death at 10%
    /// datagram loss. Parameters: probe every 300 ms, ack expected within 120 ms, 5 indirect
    /// probes, suspicion 800 ms + 100 ms per decade of fleet size (1.1 s at 1,000), each update
    /// sent 6 × (decades + 1) times (24 at 1,000), gossip every 100 ms to 4 members, a ring
    /// watch heartbeat every 300 ms. The measurements behind these numbers are in
    /// docs/bench/README.md.
    ///
    /// What makes the short suspicion safe is that the prober tells the suspect directly (8
    /// notices over the timeout), so refuting does not wait for cluster-wide dissemination.
    Lan,
    /// Sites far apart over slow or lossy links: probe every 2 s, ack within 800 ms, suspicion
    /// 4 s + 2 s per decade.
    Wan,
}

/// SWIM timing and sizes. Start from [`Profile::tuning`] and override single fields.
///
/// Detection time of a crashed node ≈ the time until it is first suspected, plus
/// `suspect_to_down_ms`, plus dissemination (≈ log_fanout(n) × `gossip_period_ms`). It is
/// first suspected by whichever comes first: a random probe (the wait for one is ≈
/// `probe_period_ms` × a geometric number of rounds, p50 ≈ 0.7, p99 ≈ 4.6, unbounded; then
/// one more period for the probe to end) or its ring watcher, at most 3 × `probe_period_ms` +
/// `probe_rtt_ms` after the crash (the heartbeats of `watch.rs`, one datagram per node per
/// `probe_period_ms`). False deaths come from a suspicion that is not refuted in time: keep
/// `suspect_to_down_ms` above twice the dissemination time of the fleet size you expect.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwimTuning {
    /// Milliseconds between two probes started by one node, and between two ring-watch
    /// heartbeats. Lower detects faster and costs about three datagrams per period per node.
    /// LAN 300–500, WAN 1,000–5,000.
    pub probe_period_ms: u64,
    /// Milliseconds to wait for a direct ack before asking others to probe indirectly. Must be
    /// below `probe_period_ms` (the rest of the period is left to the indirect probes). Set
    /// above the p99 round trip through the transport, including a busy peer's scheduling.
    pub probe_rtt_ms: u64,
    /// How many members are asked to probe indirectly when the direct ack is late; also the
    /// fan-out of the gossip sent when a suspicion must be refuted. More makes a false
    /// suspicion under loss rarer (each extra one divides it by ≈ 3 at 10% loss). 3–6.
    pub num_indirect_probes: usize,
    /// Milliseconds a suspected member has to refute the suspicion before it is declared down.
    /// The largest share of detection time; too low causes false deaths under loss or pauses.
    pub suspect_to_down_ms: u64,
    /// How many times each membership update (and each metadata record) is sent on before
    /// being dropped. About 4 × log10(cluster size); too low leaves members that never hear.
    pub max_transmissions: u8,
    /// Bytes: the largest SWIM datagram produced and accepted. Joins (a feed of members) and
    /// update backlogs fill up to this size; metadata records must fit with a header. The
    /// transport frame limit must be at least this plus 32. 10,240–65,504; the largest
    /// metadata record (8 KiB) must fit with a header.
    pub max_packet_size: usize,
    /// Milliseconds between periodic gossip rounds (only sent when there is news).
    pub gossip_period_ms: u64,
    /// Members each gossip round is sent to.
    pub gossip_fanout: usize,
    /// Milliseconds between announces to one random member, a slow repair for members missed
    /// anyway (joins are completed by snapshots). Each answer is a feed of up to
    /// `max_packet_size` bytes, so this is most of the idle traffic if set low. 0 disables.
    pub announce_period_ms: u64,
    /// Milliseconds between announces to two random members believed down, so that the two
    /// sides of a healed partition find each other again: the heal is noticed within about
    /// this period divided by the number of nodes on either side. An announce to a member
    /// that is really dead costs one small datagram (and, over TCP, a failed dial), so keep
    /// this well below the partition-heal target. 0 disables.
    pub announce_down_period_ms: u64,
    /// Milliseconds a down (or left) member is remembered before it is forgotten: its
    /// tombstone stops stale updates from resurrecting it. Longer than any partition you
    /// expect to heal on its own with stale updates in flight; 1 h is plenty.
    pub remove_down_after_ms: u64,
    /// Milliseconds between two metadata changes published by one node: later changes within
    /// the window coalesce into one.
    pub meta_min_interval_ms: u64,
    /// Milliseconds before asking a member again for metadata it has not sent us.
    pub meta_pull_retry_ms: u64,
    /// At most this many metadata pulls are sent per `tick`.
    pub meta_pulls_per_tick: usize,
    /// The ring watch (`watch.rs`): a heartbeat to the ring predecessor every
    /// `probe_period_ms`, and suspicion of a successor whose heartbeats stop. It bounds the
    /// time before a crash is first suspected (3 periods plus `probe_rtt_ms`) for one small
    /// datagram per node per period. Off, detection waits for a random probe (unbounded).
    #[serde(default = "on")]
    pub ring_watch: bool,
}

fn on() -> bool {
    true
}

/// Why a `SwimTuning` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TuningError {
    #[error("{field} must be greater than 0")]
    Zero { field: &'static str },
    #[error("probe_rtt_ms ({rtt}) must be below probe_period_ms ({period})")]
    RttNotBelowPeriod { rtt: u64, period: u64 },
    #[error("max_packet_size ({0}) must be between 10240 and 65504 bytes")]
    PacketSize(usize),
}

impl Profile {
    /// The tuning for a fleet of about `cluster_size` nodes (the expected size; a larger fleet
    /// still works, with slower dissemination relative to the suspicion timeout).
    pub fn tuning(self, cluster_size: u32) -> SwimTuning {
        let n = cluster_size.max(2);
        // Dissemination rounds grow with log(n): one step per decade.
        let decades = u64::from(n.ilog10().max(1)); // 1 for n < 100, 2 below 1,000, 3 below 10,000
        let max_transmissions = (6 * (decades + 1)).min(u64::from(u8::MAX)) as u8;
        match self {
            Profile::Lan => SwimTuning {
                probe_period_ms: 300,
                probe_rtt_ms: 120,
                num_indirect_probes: 5,
                suspect_to_down_ms: 800 + 100 * decades,
                max_transmissions,
                max_packet_size: 16 * 1024,
                gossip_period_ms: 100,
                gossip_fanout: 4,
                announce_period_ms: 120_000,
                announce_down_period_ms: 2_000,
                remove_down_after_ms: 3_600_000,
                meta_min_interval_ms: 1_000,
                meta_pull_retry_ms: 2_000,
                meta_pulls_per_tick: 16,
                ring_watch: true,
            },
            Profile::Wan => SwimTuning {
                probe_period_ms: 2_000,
                probe_rtt_ms: 800,
                num_indirect_probes: 5,
                suspect_to_down_ms: 4_000 + 2_000 * decades,
                max_transmissions,
                max_packet_size: 16 * 1024,
                gossip_period_ms: 400,
                gossip_fanout: 4,
                announce_period_ms: 300_000,
                announce_down_period_ms: 10_000,
                remove_down_after_ms: 3_600_000,
                meta_min_interval_ms: 1_000,
                meta_pull_retry_ms: 8_000,
                meta_pulls_per_tick: 16,
                ring_watch: true,
            },
        }
    }
}

impl SwimTuning {
    /// hashicorp/memberlist's `DefaultLANConfig` (the parameters Serf and Consul inherit)
    /// expressed for foca, for a fleet of `cluster_size`: the baseline the simulator measures
    /// our `lan` profile against, not a profile to run. ProbeInterval 1 s, ProbeTimeout 500 ms,
    /// IndirectChecks 3, GossipInterval 200 ms to GossipNodes 3, PushPullInterval 30 s (as a
    /// periodic announce), suspicion timeout SuspicionMult (4) × max(1, log10 n) ×
    /// ProbeInterval, retransmissions RetransmitMult (4) × ceil(log10(n + 1)).
    ///
    /// What does not carry over: memberlist's Lifeguard suspicion timeout starts at
    /// SuspicionMaxTimeoutMult (6) times the figure above and shrinks to it as independent
    /// suspicions arrive; foca has one fixed timeout, so this is memberlist's fastest case.
    /// Its 1,400-byte UDP packets do not fit our metadata records, so the packet size stays
    /// ours; there is no announce to down members (memberlist only gossips to the dead for
    /// 30 s). Our own additions around foca (the prober telling the suspect directly, metadata
    /// pulls) stay on, as they are part of the membership layer, not of its parameters.
    pub fn memberlist_defaults(cluster_size: u32) -> SwimTuning {
        let n = f64::from(cluster_size.max(1));
        let scale = n.log10().max(1.0);
        let probe_interval_ms = 1_000u64;
        let suspicion_mult = 4.0;
        let retransmit_mult = 4u64;
        let retransmits = retransmit_mult * (n + 1.0).log10().ceil() as u64;
        SwimTuning {
            probe_period_ms: probe_interval_ms,
            probe_rtt_ms: 500,
            num_indirect_probes: 3,
            suspect_to_down_ms: (suspicion_mult * scale * probe_interval_ms as f64) as u64,
            max_transmissions: retransmits.clamp(1, u64::from(u8::MAX)) as u8,
            gossip_period_ms: 200,
            gossip_fanout: 3,
            announce_period_ms: 30_000,
            announce_down_period_ms: 0,
            // Memberlist has no such watch: it waits for a random probe.
            ring_watch: false,
            ..Profile::Lan.tuning(cluster_size)
        }
    }

    /// Checks the relations between fields that serde cannot.
    pub fn validate(&self) -> Result<(), TuningError> {
        let nonzero = [
            ("probe_period_ms", self.probe_period_ms),
            ("probe_rtt_ms", self.probe_rtt_ms),
            ("num_indirect_probes", self.num_indirect_probes as u64),
            ("suspect_to_down_ms", self.suspect_to_down_ms),
            ("max_transmissions", u64::from(self.max_transmissions)),
            ("gossip_period_ms", self.gossip_period_ms),
            ("gossip_fanout", self.gossip_fanout as u64),
            ("remove_down_after_ms", self.remove_down_after_ms),
            ("meta_pull_retry_ms", self.meta_pull_retry_ms),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, v)| *v == 0) {
            return Err(TuningError::Zero { field });
        }
        if self.probe_rtt_ms >= self.probe_period_ms {
            return Err(TuningError::RttNotBelowPeriod {
                rtt: self.probe_rtt_ms,
                period: self.probe_period_ms,
            });
        }
        if !(10_240..=65_504).contains(&self.max_packet_size) {
            return Err(TuningError::PacketSize(self.max_packet_size));
        }
        Ok(())
    }

    /// The foca configuration. Call `validate` first; zero fields are raised to 1 here.
    pub(crate) fn foca_config(&self) -> foca::Config {
        let ms = Duration::from_millis;
        let nz = |v: usize| NonZeroUsize::new(v.max(1)).expect("max(1) is not zero");
        let periodic = |period_ms: u64, members: usize| {
            (period_ms > 0).then(|| foca::PeriodicParams {
                frequency: ms(period_ms),
                num_members: nz(members),
            })
        };
        let mut c = foca::Config::simple();
        c.probe_period = ms(self.probe_period_ms);
        c.probe_rtt = ms(self.probe_rtt_ms);
        c.num_indirect_probes = nz(self.num_indirect_probes);
        c.max_transmissions = NonZeroU8::new(self.max_transmissions.max(1)).expect("max(1)");
        c.suspect_to_down_after = ms(self.suspect_to_down_ms);
        c.remove_down_after = Some(ms(self.remove_down_after_ms));
        c.max_packet_size = nz(self.max_packet_size);
        c.notify_down_members = true;
        c.periodic_announce = periodic(self.announce_period_ms, 1);
        c.periodic_announce_to_down_members = periodic(self.announce_down_period_ms, 2);
        c.periodic_gossip = periodic(self.gossip_period_ms, self.gossip_fanout);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_are_valid_for_every_fleet_size() {
        for n in [0, 1, 5, 20, 99, 100, 1_000, 10_000, u32::MAX] {
            Profile::Lan.tuning(n).validate().unwrap();
            Profile::Wan.tuning(n).validate().unwrap();
        }
    }

    #[test]
    fn memberlist_defaults_follow_its_formulas() {
        let t = SwimTuning::memberlist_defaults(1_000);
        t.validate().unwrap();
        assert_eq!(t.probe_period_ms, 1_000);
        assert_eq!(t.probe_rtt_ms, 500);
        assert_eq!(t.suspect_to_down_ms, 12_000); // 4 × log10(1000) × 1 s
        assert_eq!(t.max_transmissions, 16); // 4 × ceil(log10(1001))
        assert_eq!(
            SwimTuning::memberlist_defaults(100).suspect_to_down_ms,
            8_000
        );
        assert_eq!(SwimTuning::memberlist_defaults(5).suspect_to_down_ms, 4_000);
        assert_eq!(SwimTuning::memberlist_defaults(100).max_transmissions, 12);
        for n in [0, 1, 10_000, u32::MAX] {
            SwimTuning::memberlist_defaults(n).validate().unwrap();
        }
    }

    #[test]
    fn rtt_must_be_below_period() {
        let mut t = Profile::Lan.tuning(10);
        t.probe_rtt_ms = t.probe_period_ms;
        assert!(matches!(
            t.validate(),
            Err(TuningError::RttNotBelowPeriod { .. })
        ));
    }

    #[test]
    fn ring_watch_defaults_on_when_absent_and_is_off_for_the_memberlist_baseline() {
        let t = Profile::Lan.tuning(10);
        let mut v = serde_json::to_value(&t).unwrap();
        v.as_object_mut().unwrap().remove("ring_watch");
        assert!(serde_json::from_value::<SwimTuning>(v).unwrap().ring_watch);
        assert!(!SwimTuning::memberlist_defaults(10).ring_watch);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let t = Profile::Lan.tuning(10);
        let mut v = serde_json::to_value(&t).unwrap();
        v["probe_periode_ms"] = 5.into();
        assert!(serde_json::from_value::<SwimTuning>(v).is_err());
    }
}
