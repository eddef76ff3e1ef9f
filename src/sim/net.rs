//! The simulated network: latency profiles, loss, duplication, reordering by jitter, partitions
//! (symmetric, one-way, bridge) and per-message byte accounting.
//!
//! It decides the fate of each message (dropped, delivered once or twice, and when) from its
//! own seeded RNG; it holds no queue and knows nothing of nodes (`Sim` does the delivery).

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Bytes added to every message for framing and transport headers (IP + UDP/TCP + Noise/Yamux
/// framing, roughly): an estimate, the same for every kind of message.
pub const HEADER_BYTES: u64 = 64;

/// Latency of a link, one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetProfile {
    /// One network: ~1 ms ± 1 ms.
    Lan,
    /// Shops and vehicles on cellular links: ~20 ms ± 10 ms.
    Edge,
    /// Regions far apart: ~80 ms ± 20 ms.
    Wan,
}

impl NetProfile {
    /// `(base_ms, jitter_ms)`: one-way delay is `base + uniform(0..=jitter)`.
    pub fn latency(self) -> (u64, u64) {
        match self {
            NetProfile::Lan => (1, 1),
            NetProfile::Edge => (20, 10),
            NetProfile::Wan => (80, 20),
        }
    }

    pub fn parse(s: &str) -> Option<NetProfile> {
        match s {
            "lan" => Some(NetProfile::Lan),
            "edge" => Some(NetProfile::Edge),
            "wan" => Some(NetProfile::Wan),
            _ => None,
        }
    }
}

/// How a partition cuts the fleet. `side[i]` is node `i`'s side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Partition {
    /// Nodes on different sides cannot reach each other.
    Symmetric { side: Vec<u8> },
    /// Side 0 cannot send to side 1; side 1 still reaches side 0.
    OneWay { side: Vec<u8> },
    /// Sides 0 and 2 cannot reach each other; both reach side 1 (the bridge).
    Bridge { side: Vec<u8> },
}

impl Partition {
    /// Whether a message from `from` to `to` is blocked.
    pub fn blocks(&self, from: usize, to: usize) -> bool {
        let s = |side: &Vec<u8>, i: usize| side.get(i).copied().unwrap_or(0);
        match self {
            Partition::Symmetric { side } => s(side, from) != s(side, to),
            Partition::OneWay { side } => s(side, from) == 0 && s(side, to) == 1,
            Partition::Bridge { side } => {
                let (a, b) = (s(side, from), s(side, to));
                (a == 0 && b == 2) || (a == 2 && b == 0)
            }
        }
    }
}

/// What one message costs and carries, counted per kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub messages: u64,
    pub bytes: u64,
}

/// The kind of a message, for accounting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Swim = 0,
    State = 1,
    Bids = 2,
    Sync = 3,
    /// gossipsub's lazy gossip (`IHAVE`, `IWANT`); the messages an `IWANT` brings count as
    /// their own kind.
    Gossip = 4,
}

pub struct Net {
    pub base_ms: u64,
    pub jitter_ms: u64,
    /// Per mille of messages lost.
    pub loss_permille: u32,
    /// Per mille of messages delivered twice.
    pub dup_permille: u32,
    pub partition: Option<Partition>,
    rng: StdRng,
    /// Bytes sent by each node (headers included), lost messages included.
    pub sent_bytes: Vec<u64>,
    /// Per kind (`Kind as usize`): messages and bytes sent.
    pub by_kind: [Traffic; 5],
    /// When set, SWIM datagrams are also counted by what they are
    /// (`membership::classify_datagram`): messages, bytes with headers, and bytes piggybacked
    /// after the foca message. Off by default (it decodes every datagram).
    pub swim_classes: Option<std::collections::BTreeMap<&'static str, SwimClass>>,
}

/// Traffic of one class of SWIM datagram (see `Net::swim_classes`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwimClass {
    pub messages: u64,
    pub bytes: u64,
    pub piggyback_bytes: u64,
}

impl Net {
    pub fn new(profile: NetProfile, nodes: usize, seed: u64) -> Net {
        let (base_ms, jitter_ms) = profile.latency();
        Net {
            base_ms,
            jitter_ms,
            loss_permille: 0,
            dup_permille: 0,
            partition: None,
            rng: StdRng::seed_from_u64(seed),
            sent_bytes: vec![0; nodes],
            by_kind: [Traffic::default(); 5],
            swim_classes: None,
        }
    }

    /// Accounts a message of `payload_bytes` from `from` to `to` and returns the delays after
    /// which it arrives: none (lost or blocked), one, or two (duplicated).
    pub fn route(&mut self, from: usize, to: usize, kind: Kind, payload_bytes: u64) -> Vec<u64> {
        let bytes = payload_bytes + HEADER_BYTES;
        self.sent_bytes[from] += bytes;
        let t = &mut self.by_kind[kind as usize];
        t.messages += 1;
        t.bytes += bytes;
        if self.partition.as_ref().is_some_and(|p| p.blocks(from, to)) {
            return Vec::new();
        }
        if self.loss_permille > 0 && self.rng.random_range(0..1000) < self.loss_permille {
            return Vec::new();
        }
        let mut delays = vec![self.delay()];
        if self.dup_permille > 0 && self.rng.random_range(0..1000) < self.dup_permille {
            delays.push(self.delay());
        }
        delays
    }

    /// Counts a SWIM datagram by class, if classes are being counted.
    pub fn classify_swim(&mut self, bytes: &[u8]) {
        if let Some(classes) = &mut self.swim_classes {
            let (label, piggyback) =
                crate::membership::classify_datagram(bytes).unwrap_or(("undecodable", 0));
            let c = classes.entry(label).or_default();
            c.messages += 1;
            c.bytes += bytes.len() as u64 + HEADER_BYTES;
            c.piggyback_bytes += piggyback as u64;
        }
    }

    /// Whether `from` can reach `to` right now (ignoring loss).
    pub fn reachable(&self, from: usize, to: usize) -> bool {
        !self.partition.as_ref().is_some_and(|p| p.blocks(from, to))
    }

    fn delay(&mut self) -> u64 {
        self.base_ms + self.rng.random_range(0..=self.jitter_ms)
    }

    /// A draw from the network's RNG, for the simulated runtime's delays and failures (the
    /// only other randomness outside the nodes).
    pub fn roll(&mut self, below: u64) -> u64 {
        if below == 0 {
            0
        } else {
            self.rng.random_range(0..below)
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.sent_bytes.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_block_the_right_directions() {
        let side = vec![0, 0, 1, 2];
        let sym = Partition::Symmetric { side: side.clone() };
        assert!(!sym.blocks(0, 1));
        assert!(sym.blocks(0, 2) && sym.blocks(2, 0));
        let one = Partition::OneWay { side: side.clone() };
        assert!(one.blocks(0, 2) && !one.blocks(2, 0));
        let bridge = Partition::Bridge { side };
        assert!(bridge.blocks(0, 3) && bridge.blocks(3, 0));
        assert!(!bridge.blocks(0, 2) && !bridge.blocks(2, 3));
    }
}
