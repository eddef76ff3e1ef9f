//! In-memory clusters of `Membership`s driven by a discrete-event loop with virtual time: a
//! `BTreeMap<(time, seq), event>` queue, fixed latency plus seeded jitter, seeded loss. No
//! threads, no clock: one seed replays a run exactly.
//!
//! A failing test prints its seed; rerun with `MEMBERSHIP_SEED=<seed> cargo test ...` to
//! replay it. Knobs are read when the test is compiled (`option_env!`; cargo rebuilds when
//! they change), so this folder reads no environment at run time.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use super::*;
use crate::spec::DriverKind;

/// As long as a real base58 Ed25519 `PeerId` (52 characters), so byte counts are realistic.
fn nid(i: usize) -> NodeId {
    NodeId(format!("12D3KooW{i:0>44}").into())
}

fn meta_for(i: usize) -> NodeMeta {
    NodeMeta {
        labels: [("zone".to_string(), format!("z{}", i % 3))].into(),
        cpu_millis: 4000,
        memory_bytes: 8 << 30,
        runtimes: vec![DriverKind::Process],
        agent_version: "0.1.0".into(),
        addrs: vec![format!("/ip4/10.0.{}.{}/tcp/7946", i / 250, i % 250)],
        ..NodeMeta::default()
    }
}

fn member_id(i: usize, incarnation: u64) -> MemberId {
    MemberId::new(
        nid(i),
        incarnation,
        vec![format!("/ip4/10.0.{}.{}/tcp/7946", i / 250, i % 250)],
    )
    .unwrap()
}

/// A compile-time knob, parsed, or `default`.
fn knob(value: Option<&str>, default: u64) -> u64 {
    value.and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// The seed of a test: `MEMBERSHIP_SEED` when set (to replay), else the given default.
fn seed(default: u64) -> u64 {
    knob(option_env!("MEMBERSHIP_SEED"), default)
}

enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        bytes: Vec<u8>,
    },
    Tick(NodeId),
}

struct SimNode {
    m: Membership,
    incarnation: u64,
    /// Crashed: sends nothing, receives nothing, never ticks.
    stopped: bool,
    /// Paused (SIGSTOP): datagrams to it are lost, ticks wait for the resume.
    paused: bool,
    tick_at: Option<Millis>,
}

struct Sim {
    seed: u64,
    now: Millis,
    nodes: BTreeMap<NodeId, SimNode>,
    queue: BTreeMap<(Millis, u64), Ev>,
    seq: u64,
    rng: Xoshiro256PlusPlus,
    latency_ms: u64,
    jitter_ms: u64,
    loss_permille: u32,
    tuning: SwimTuning,
    /// (time, observer, event)
    events: Vec<(Millis, NodeId, MemberEvent)>,
    datagrams: u64,
    datagram_bytes: u64,
    largest_datagram: usize,
    /// A sample of datagrams for fuzzing.
    captured: Vec<Vec<u8>>,
    /// A symmetric partition: datagrams between these nodes and the others are lost.
    cut: Option<BTreeSet<NodeId>>,
    /// One-way cuts: datagrams from the first node to the second are lost.
    one_way: BTreeSet<(NodeId, NodeId)>,
    /// Nodes whose heartbeats are never sent, as if they ran a version without the ring watch.
    no_heartbeats: BTreeSet<NodeId>,
}

impl Sim {
    fn new(n: usize, seed: u64, tuning: SwimTuning) -> Sim {
        let mut sim = Sim {
            seed,
            now: Millis(0),
            nodes: BTreeMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            latency_ms: 1,
            jitter_ms: 2,
            loss_permille: 0,
            tuning,
            events: Vec::new(),
            datagrams: 0,
            datagram_bytes: 0,
            largest_datagram: 0,
            captured: Vec::new(),
            cut: None,
            one_way: BTreeSet::new(),
            no_heartbeats: BTreeSet::new(),
        };
        for i in 0..n {
            sim.add_node(i, 1);
        }
        sim
    }

    fn lan(n: usize, seed: u64) -> Sim {
        Sim::new(n, seed, Profile::Lan.tuning(n as u32))
    }

    fn add_node(&mut self, i: usize, incarnation: u64) {
        let node_seed = self.seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ incarnation;
        let m = Membership::new(
            member_id(i, incarnation),
            meta_for(i),
            self.tuning.clone(),
            node_seed,
        )
        .unwrap();
        let node = SimNode {
            m,
            incarnation,
            stopped: false,
            paused: false,
            tick_at: None,
        };
        self.nodes.insert(nid(i), node);
    }

    fn push(&mut self, at: Millis, ev: Ev) {
        self.queue.insert((at, self.seq), ev);
        self.seq += 1;
    }

    /// Every node but the seed announces to node 0, 20 ms apart.
    fn join_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().cloned().collect();
        let start = self.now;
        for (k, id) in ids.iter().enumerate().skip(1) {
            let at = start.plus(20 * k as u64);
            self.run_until(at);
            self.with_node(id, |m, now, out| m.announce(now, nid(0), out));
        }
    }

    fn with_node(
        &mut self,
        id: &NodeId,
        f: impl FnOnce(&mut Membership, Millis, &mut Vec<MemberOutput>),
    ) {
        let now = self.now;
        let mut out = Vec::new();
        let node = self.nodes.get_mut(id).unwrap();
        f(&mut node.m, now, &mut out);
        self.apply(id.clone(), out);
    }

    fn apply(&mut self, from: NodeId, out: Vec<MemberOutput>) {
        for o in out {
            match o {
                MemberOutput::Datagram { to, bytes } => {
                    if self.no_heartbeats.contains(&from)
                        && matches!(wire::decode(&bytes), Ok((wire::Kind::Heartbeat, _)))
                    {
                        continue;
                    }
                    self.datagrams += 1;
                    self.datagram_bytes += bytes.len() as u64;
                    self.largest_datagram = self.largest_datagram.max(bytes.len());
                    if self.captured.len() < 200 && self.datagrams.is_multiple_of(7) {
                        self.captured.push(bytes.clone());
                    }
                    if self.rng.random_range(0..1000) < self.loss_permille {
                        continue;
                    }
                    if self
                        .cut
                        .as_ref()
                        .is_some_and(|c| c.contains(&from) != c.contains(&to))
                        || self.one_way.contains(&(from.clone(), to.clone()))
                    {
                        continue;
                    }
                    let delay = self.latency_ms + self.rng.random_range(0..=self.jitter_ms);
                    self.push(
                        self.now.plus(delay),
                        Ev::Deliver {
                            to,
                            from: from.clone(),
                            bytes,
                        },
                    );
                }
                MemberOutput::Event(e, _) => self.events.push((self.now, from.clone(), e)),
                MemberOutput::Addresses { .. } => {}
            }
        }
        self.schedule_tick(&from);
    }

    fn schedule_tick(&mut self, id: &NodeId) {
        let node = &self.nodes[id];
        if node.stopped {
            return;
        }
        if let Some(d) = node.m.next_deadline() {
            let d = d.max(self.now);
            if node.tick_at.is_none_or(|t| d < t) {
                self.nodes.get_mut(id).unwrap().tick_at = Some(d);
                self.push(d, Ev::Tick(id.clone()));
            }
        }
    }

    fn run_until(&mut self, until: Millis) {
        while let Some(entry) = self.queue.first_entry() {
            if entry.key().0 > until {
                break;
            }
            let ((at, _), ev) = entry.remove_entry();
            self.now = at;
            match ev {
                Ev::Deliver { to, from, bytes } => {
                    let Some(node) = self.nodes.get_mut(&to) else {
                        continue;
                    };
                    if node.stopped || node.paused {
                        continue;
                    }
                    let mut out = Vec::new();
                    node.m.handle_datagram(at, &from, &bytes, &mut out);
                    self.apply(to, out);
                }
                Ev::Tick(id) => {
                    let node = self.nodes.get_mut(&id).unwrap();
                    if node.stopped || node.paused || node.tick_at != Some(at) {
                        continue;
                    }
                    node.tick_at = None;
                    let mut out = Vec::new();
                    node.m.tick(at, &mut out);
                    self.apply(id, out);
                }
            }
        }
        self.now = until;
        for node in self.nodes.values() {
            node.m.check_indexes();
        }
    }

    fn run_for(&mut self, ms: u64) {
        self.run_until(self.now.plus(ms));
    }

    fn stop(&mut self, i: usize) {
        let node = self.nodes.get_mut(&nid(i)).unwrap();
        node.stopped = true;
        node.tick_at = None;
    }

    fn pause(&mut self, i: usize, paused: bool) {
        self.nodes.get_mut(&nid(i)).unwrap().paused = paused;
        if !paused {
            let node = self.nodes.get_mut(&nid(i)).unwrap();
            node.tick_at = Some(self.now);
            self.push(self.now, Ev::Tick(nid(i)));
        }
    }

    /// A new process for node `i` with the next incarnation, announcing to node 0.
    fn restart(&mut self, i: usize) {
        let incarnation = self.nodes[&nid(i)].incarnation + 1;
        self.add_node(i, incarnation);
        self.with_node(&nid(i), |m, now, out| m.announce(now, nid(0), out));
    }

    fn running(&self) -> impl Iterator<Item = (&NodeId, &SimNode)> {
        self.nodes.iter().filter(|(_, n)| !n.stopped)
    }

    fn state_everywhere(&self, of: usize) -> BTreeMap<NodeId, Option<MemberState>> {
        self.running()
            .filter(|(id, _)| **id != nid(of))
            .map(|(id, n)| (id.clone(), n.m.member(&nid(of)).map(|m| m.state)))
            .collect()
    }

    fn everyone_sees(&self, of: usize, state: MemberState) -> bool {
        self.state_everywhere(of)
            .values()
            .all(|s| *s == Some(state))
    }

    /// Runs until `done` holds (checked every 10 ms) or `limit_ms` passes; returns the time
    /// it took.
    fn run_until_true(&mut self, limit_ms: u64, done: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now.since(start) < limit_ms {
            if done(self) {
                return Some(self.now.since(start));
            }
            self.run_for(10);
        }
        done(self).then(|| self.now.since(start))
    }

    fn events_since(&self, since: Millis) -> impl Iterator<Item = &(Millis, NodeId, MemberEvent)> {
        self.events.iter().filter(move |(t, _, _)| *t >= since)
    }

    /// A joined cluster of `n` nodes where everyone sees everyone alive with metadata.
    fn joined(n: usize, seed: u64) -> Sim {
        let mut sim = Sim::lan(n, seed);
        sim.join_all();
        let took = sim.run_until_true(30_000, |s| s.all_alive_with_meta());
        assert!(took.is_some(), "seed {seed}: cluster did not converge");
        sim
    }

    fn all_alive_with_meta(&self) -> bool {
        let n = self.running().count();
        self.running().all(|(_, node)| {
            node.m
                .members()
                .filter(|m| m.state == MemberState::Alive && m.meta.is_some())
                .count()
                == n
        })
    }
}

#[test]
fn all_join_through_one_seed_and_see_everyone_alive() {
    for n in [5, 20] {
        let seed = seed(1);
        let mut sim = Sim::lan(n, seed);
        sim.join_all();
        let took = sim.run_until_true(30_000, |s| s.all_alive_with_meta());
        assert!(took.is_some(), "seed {seed}: {n} nodes did not converge");
        for (_, node) in sim.running() {
            assert_eq!(node.m.alive_count(), n);
            let ids: Vec<_> = node.m.members().map(|m| m.id.clone()).collect();
            assert_eq!(
                ids,
                (0..n).map(nid).collect::<Vec<_>>(),
                "sorted by id, self included"
            );
            for i in 0..n {
                assert_eq!(
                    node.m
                        .member(&nid(i))
                        .unwrap()
                        .meta
                        .as_ref()
                        .unwrap()
                        .labels,
                    meta_for(i).labels
                );
            }
        }
        // Every node saw every other come up exactly once.
        for (id, _) in sim.running() {
            let ups = sim
                .events
                .iter()
                .filter(|(_, o, e)| o == id && matches!(e, MemberEvent::Up(_)));
            assert_eq!(ups.count(), n - 1, "seed {seed}: {id}");
        }
    }
}

#[test]
fn stopped_node_is_down_everywhere_within_the_tuned_time() {
    let t = Profile::Lan.tuning(20);
    // Budget: p99 wait for a first probe (≈ 4.6 periods) + the probe itself + suspicion +
    // dissemination (a few gossip rounds).
    let budget = t.probe_period_ms * 6 + t.suspect_to_down_ms + 10 * t.gossip_period_ms;
    let mut worst = 0;
    for run in 0..5 {
        let seed = seed(100 + run);
        let mut sim = Sim::joined(20, seed);
        sim.run_for(2_000);
        let victim = 7;
        let t0 = sim.now;
        sim.stop(victim);
        let took = sim.run_until_true(budget * 2, |s| s.everyone_sees(victim, MemberState::Down));
        let took = took.unwrap_or_else(|| panic!("seed {seed}: not down everywhere"));
        assert!(
            took <= budget,
            "seed {seed}: took {took} ms, budget {budget} ms"
        );
        worst = worst.max(took);
        // Nobody else was declared down.
        let downs: BTreeSet<_> = sim
            .events_since(t0)
            .filter_map(|(_, _, e)| match e {
                MemberEvent::Down(n) => Some(n.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(downs, [nid(victim)].into(), "seed {seed}");
    }
    println!(
        "20 nodes: stopped node down everywhere after at most {worst} ms (budget {budget} ms)"
    );
}

#[test]
fn wan_profile_detects_a_crash_and_survives_loss_with_wan_latency() {
    let t = Profile::Wan.tuning(20);
    let budget = t.probe_period_ms * 6 + t.suspect_to_down_ms + 10 * t.gossip_period_ms;
    let seed = seed(150);
    let mut sim = Sim::new(20, seed, t.clone());
    sim.latency_ms = 80;
    sim.jitter_ms = 40;
    sim.join_all();
    assert!(
        sim.run_until_true(60_000, |s| s.all_alive_with_meta())
            .is_some(),
        "seed {seed}"
    );
    sim.loss_permille = 100;
    let t0 = sim.now;
    sim.run_for(300_000);
    let false_downs = sim
        .events_since(t0)
        .filter(|(_, _, e)| matches!(e, MemberEvent::Down(_)))
        .count();
    assert_eq!(false_downs, 0, "seed {seed}");
    sim.stop(7);
    let took = sim.run_until_true(budget * 2, |s| s.everyone_sees(7, MemberState::Down));
    let took = took.unwrap_or_else(|| panic!("seed {seed}: not down everywhere"));
    assert!(
        took <= budget,
        "seed {seed}: took {took} ms, budget {budget} ms"
    );
    println!(
        "wan, 20 nodes, 80 ms latency, 10% loss: crash down everywhere after {took} ms (budget {budget} ms)"
    );
}

#[test]
fn leaving_node_is_left_everywhere_quickly() {
    let seed = seed(200);
    let mut sim = Sim::joined(20, seed);
    sim.run_for(1_000);
    let t0 = sim.now;
    sim.with_node(&nid(3), |m, now, out| m.leave(now, out));
    assert_eq!(
        sim.nodes[&nid(3)].m.member(&nid(3)).unwrap().state,
        MemberState::Left
    );
    sim.stop(3);
    let took = sim.run_until_true(5_000, |s| s.everyone_sees(3, MemberState::Left));
    let took = took.unwrap_or_else(|| panic!("seed {seed}: not left everywhere"));
    assert!(took <= 1_500, "seed {seed}: took {took} ms");
    sim.run_for(10_000);
    assert!(
        sim.everyone_sees(3, MemberState::Left),
        "seed {seed}: left stays left"
    );
    let downs = sim
        .events_since(t0)
        .filter(|(_, _, e)| matches!(e, MemberEvent::Down(_)))
        .count();
    println!("20 nodes: left everywhere after {took} ms; {downs} nodes saw Down before Left");
}

#[test]
fn node_paused_shorter_than_the_suspicion_is_never_declared_down() {
    let t = Profile::Lan.tuning(20);
    for run in 0..5 {
        let seed = seed(300 + run);
        let mut sim = Sim::joined(20, seed);
        sim.run_for(1_000);
        let t0 = sim.now;
        sim.pause(4, true);
        sim.run_for(t.suspect_to_down_ms * 3 / 4);
        sim.pause(4, false);
        sim.run_for(20_000);
        let bad: Vec<_> = sim
            .events_since(t0)
            .filter(|(_, _, e)| matches!(e, MemberEvent::Down(_) | MemberEvent::Left(_)))
            .collect();
        assert!(bad.is_empty(), "seed {seed}: {bad:?}");
        assert!(sim.everyone_sees(4, MemberState::Alive), "seed {seed}");
        assert_eq!(
            sim.nodes[&nid(4)].m.identity().renewal,
            0,
            "seed {seed}: no rejoin"
        );
    }
}

#[test]
fn both_sides_of_a_healed_partition_rejoin_even_when_every_node_renewed_at_once() {
    // Each side declares the other down; on the heal every node hears it was declared down,
    // renews its identity and goes silent until someone talks to it first. The membership
    // layer must talk first (the chaos harness's majority-partition found fleets that stayed
    // split for good).
    let seeds = knob(option_env!("MEMBERSHIP_HEAL_SEEDS"), 12);
    let mut stuck = Vec::new();
    for k in 0..seeds {
        let seed = seed(900) + k;
        let mut sim = Sim::joined(5, seed);
        sim.cut = Some([nid(0), nid(1)].into());
        let apart = sim.run_until_true(30_000, |s| {
            s.nodes[&nid(0)].m.member(&nid(4)).map(|m| m.state) == Some(MemberState::Down)
                && s.nodes[&nid(4)].m.member(&nid(0)).map(|m| m.state) == Some(MemberState::Down)
        });
        assert!(
            apart.is_some(),
            "seed {seed}: the sides never saw each other down"
        );
        sim.run_for(10_000);
        sim.cut = None;
        let healed = sim.run_until_true(30_000, |s| {
            (0..5).all(|i| s.everyone_sees(i, MemberState::Alive))
        });
        if healed.is_none() {
            stuck.push(seed);
        }
    }
    assert!(
        stuck.is_empty(),
        "still split 30 s after the heal: seeds {stuck:?}"
    );
}

#[test]
fn node_paused_past_the_suspicion_rejoins_by_itself() {
    let t = Profile::Lan.tuning(20);
    let seed = seed(350);
    let mut sim = Sim::joined(20, seed);
    let t0 = sim.now;
    sim.pause(4, true);
    let took = sim.run_until_true(20_000, |s| s.everyone_sees(4, MemberState::Down));
    assert!(took.is_some(), "seed {seed}: never declared down");
    sim.run_for(t.probe_period_ms);
    sim.pause(4, false);
    let back = sim.run_until_true(20_000, |s| s.everyone_sees(4, MemberState::Alive));
    assert!(back.is_some(), "seed {seed}: did not come back");
    assert_eq!(
        sim.nodes[&nid(4)].m.identity().renewal,
        1,
        "one rejoin, same incarnation"
    );
    let about_itself = sim
        .events_since(t0)
        .filter(|(_, o, e)| *o == nid(4) && *e == MemberEvent::Down(nid(4)));
    assert_eq!(
        about_itself.count(),
        0,
        "seed {seed}: a node never reports itself"
    );
    assert_eq!(
        sim.nodes[&nid(4)].m.member(&nid(4)).unwrap().state,
        MemberState::Alive
    );
}

/// A suspicion heard from others whose verdict we missed: after two suspicion timeouts we
/// check the member ourselves, and declare it down if it does not answer within one more.
#[test]
fn lingering_suspicion_is_checked_and_concluded_here() {
    use foca::Codec;
    let t = Profile::Lan.tuning(10);
    let s = t.suspect_to_down_ms;
    let mut a = Membership::new(member_id(0, 1), meta_for(0), t.clone(), 7).unwrap();
    // b tells a that c is suspect (and that b itself is alive).
    let header = foca::Header {
        src: member_id(1, 1),
        src_incarnation: 0,
        dst: member_id(0, 1),
        message: foca::Message::Gossip,
    };
    let mut packet = Vec::new();
    foca::PostcardCodec
        .encode_header(&header, &mut packet)
        .unwrap();
    packet.extend_from_slice(&1u16.to_be_bytes());
    let c = foca::Member::new(member_id(2, 1), 0, foca::State::Suspect);
    foca::PostcardCodec.encode_member(&c, &mut packet).unwrap();
    let extras = wire::SwimExtras {
        meta: Stamp::default(),
        suspect: None,
    };
    let mut out = Vec::new();
    a.handle_datagram(
        Millis(0),
        &nid(1),
        &wire::encode(&wire::Kind::SwimFull { extras }, &packet),
        &mut out,
    );
    assert_eq!(a.member(&nid(2)).unwrap().state, MemberState::Suspect);

    out.clear();
    a.tick(Millis(2 * s), &mut out);
    let notices = out
        .iter()
        .filter(|o| {
            matches!(o, MemberOutput::Datagram { to, bytes }
        if *to == nid(2) && matches!(wire::decode(bytes), Ok((wire::Kind::Suspected { .. }, _))))
        })
        .count();
    assert_eq!(notices, 1, "our own check starts: {out:?}");
    assert_eq!(a.member(&nid(2)).unwrap().state, MemberState::Suspect);

    out.clear();
    a.tick(Millis(3 * s), &mut out);
    assert_eq!(a.member(&nid(2)).unwrap().state, MemberState::Down);
    assert!(out.iter().any(|o| matches!(
        o,
        MemberOutput::Event(MemberEvent::Down(n), m) if *n == nid(2) && m.state == MemberState::Down
    )));
    assert_eq!(a.stats().lingering_declared_down, 1);
}

/// The member before `i` on the ring of ids in a full cluster of `n`: its watcher.
fn watcher_of(i: usize, n: usize) -> usize {
    let mut ids: Vec<(NodeId, usize)> = (0..n).map(|k| (nid(k), k)).collect();
    ids.sort();
    let pos = ids.iter().position(|(_, k)| *k == i).unwrap();
    ids[(pos + n - 1) % n].1
}

#[test]
fn every_crash_is_suspected_within_the_ring_watch_bound() {
    // Crashes one node after another (each restarted and rejoined before the next) and
    // checks that each is known down everywhere within the bound the ring watch gives,
    // however long random probing would have taken to reach it.
    let n = 20;
    let t = Profile::Lan.tuning(n as u32);
    let silence = watch::WATCH_MISSES * t.probe_period_ms + t.probe_rtt_ms;
    let budget = silence + t.suspect_to_down_ms + 10 * t.gossip_period_ms;
    let seed = seed(150);
    let mut sim = Sim::joined(n, seed);
    sim.run_for(5_000);
    let (mut worst, mut by_watch) = (0, 0);
    for k in 0..40 {
        let victim = 1 + (k * 7) % (n - 1);
        let watcher = watcher_of(victim, n);
        let before = sim.nodes[&nid(watcher)].m.stats().watch_suspicions;
        sim.stop(victim);
        let took = sim
            .run_until_true(10_000, |s| s.everyone_sees(victim, MemberState::Down))
            .unwrap_or_else(|| panic!("seed {seed}, crash {k}: node {victim} not down"));
        assert!(
            took <= budget,
            "seed {seed}, crash {k}: node {victim} down everywhere after {took} ms, bound {budget} ms"
        );
        worst = worst.max(took);
        if sim.nodes[&nid(watcher)].m.stats().watch_suspicions > before {
            by_watch += 1;
        }
        sim.restart(victim);
        let back = sim.run_until_true(10_000, |s| s.all_alive_with_meta());
        assert!(
            back.is_some(),
            "seed {seed}, crash {k}: node {victim} did not rejoin"
        );
        sim.run_for(2_000);
    }
    println!(
        "{n} nodes, 40 crashes: down everywhere after at most {worst} ms (bound {budget} ms); \
         the ring watcher suspected the victim in {by_watch}"
    );
    assert!(by_watch > 0, "seed {seed}: the ring watch never fired");
}

#[test]
fn the_ring_watch_suspects_nobody_in_a_healthy_fleet_or_one_without_heartbeats() {
    let seed = seed(160);
    let mut sim = Sim::lan(20, seed);
    // Node 5 runs a version that sends no heartbeats: its watcher never arms.
    sim.no_heartbeats.insert(nid(5));
    sim.join_all();
    assert!(
        sim.run_until_true(30_000, |s| s.all_alive_with_meta())
            .is_some()
    );
    sim.run_for(60_000);
    let fired: u64 = sim
        .running()
        .map(|(_, n)| n.m.stats().watch_suspicions)
        .sum();
    assert_eq!(fired, 0, "seed {seed}: watch suspicions in a healthy fleet");
    let beats: u64 = sim.running().map(|(_, n)| n.m.stats().heartbeats_in).sum();
    assert!(beats > 0);
    let suspects = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, MemberEvent::Suspect(_) | MemberEvent::Down(_)))
        .count();
    assert_eq!(suspects, 0, "seed {seed}");
    // Turned off, it sends nothing.
    let mut t = Profile::Lan.tuning(4);
    t.ring_watch = false;
    let mut quiet = Sim::new(4, seed, t);
    quiet.join_all();
    quiet.run_for(10_000);
    let beats: u64 = quiet
        .running()
        .map(|(_, n)| n.m.stats().heartbeats_out)
        .sum();
    assert_eq!(beats, 0);
}

#[test]
fn a_one_way_cut_costs_one_refuted_suspicion_not_a_death() {
    let n = 12;
    let seed = seed(170);
    let mut sim = Sim::joined(n, seed);
    sim.run_for(3_000);
    let victim = 4;
    let watcher = watcher_of(victim, n);
    // Everything the victim sends its watcher is lost; the other way works.
    sim.one_way.insert((nid(victim), nid(watcher)));
    let t0 = sim.now;
    sim.run_for(60_000);
    let fired = sim.nodes[&nid(watcher)].m.stats().watch_suspicions;
    assert_eq!(
        fired, 1,
        "seed {seed}: the watch fires once, then waits for a heartbeat"
    );
    let downs: Vec<_> = sim
        .events_since(t0)
        .filter(|(_, _, e)| matches!(e, MemberEvent::Down(_)))
        .collect();
    assert!(downs.is_empty(), "seed {seed}: {downs:?}");
    assert!(sim.running().all(|(_, n)| n.m.alive_count() == 12));
    // Healed: the heartbeats arm the watch again, and a crash is caught by it.
    sim.one_way.clear();
    sim.run_for(2_000);
    let before = sim.nodes[&nid(watcher)].m.stats().watch_suspicions;
    sim.stop(victim);
    assert!(
        sim.run_until_true(10_000, |s| s.everyone_sees(victim, MemberState::Down))
            .is_some()
    );
    let after = sim.nodes[&nid(watcher)].m.stats().watch_suspicions;
    assert!(after <= before + 1);
}

#[test]
fn restarted_node_is_up_again_everywhere_with_its_new_incarnation() {
    let seed = seed(400);
    let mut sim = Sim::joined(10, seed);
    // Restart after being declared down.
    sim.stop(5);
    assert!(
        sim.run_until_true(20_000, |s| s.everyone_sees(5, MemberState::Down))
            .is_some()
    );
    let t0 = sim.now;
    sim.restart(5);
    let took = sim.run_until_true(10_000, |s| s.all_alive_with_meta());
    assert!(
        took.is_some(),
        "seed {seed}: restarted node not alive everywhere"
    );
    for (id, node) in sim.running() {
        assert_eq!(
            node.m.member(&nid(5)).unwrap().incarnation,
            2,
            "seen from {id}"
        );
        if *id != nid(5) {
            let ups = sim
                .events_since(t0)
                .filter(|(_, o, e)| o == id && *e == MemberEvent::Up(nid(5)));
            assert_eq!(ups.count(), 1, "seed {seed}: {id}");
        }
    }

    // Restart faster than detection: the new life replaces the old one, `Up` again, no `Down`.
    let t1 = sim.now;
    sim.stop(6);
    sim.run_for(50);
    sim.restart(6);
    let took = sim.run_until_true(10_000, |s| {
        s.running()
            .all(|(_, n)| n.m.member(&nid(6)).is_some_and(|m| m.incarnation == 2))
    });
    assert!(
        took.is_some(),
        "seed {seed}: fast restart not seen everywhere"
    );
    sim.run_for(10_000);
    assert!(sim.everyone_sees(6, MemberState::Alive));
    for (id, _) in sim.running().filter(|(id, _)| **id != nid(6)) {
        let mine: Vec<_> = sim
            .events_since(t1)
            .filter(|(_, o, e)| {
                o == id && matches!(e, MemberEvent::Up(n) | MemberEvent::Down(n) if *n == nid(6))
            })
            .map(|(_, _, e)| e.clone())
            .collect();
        assert_eq!(
            mine,
            vec![MemberEvent::Up(nid(6))],
            "seed {seed}: seen from {id}"
        );
    }
}

#[test]
fn metadata_change_propagates_and_is_rate_limited() {
    let seed = seed(500);
    let mut sim = Sim::joined(20, seed);
    let t0 = sim.now;
    let mut meta = meta_for(9);
    meta.allocated_cpu_millis = 1500;
    sim.with_node(&nid(9), |m, now, out| {
        m.set_meta(now, meta.clone(), out).unwrap()
    });
    let took = sim.run_until_true(5_000, |s| {
        s.running().all(|(_, n)| {
            n.m.member(&nid(9))
                .unwrap()
                .meta
                .as_ref()
                .unwrap()
                .allocated_cpu_millis
                == 1500
        })
    });
    let took = took.unwrap_or_else(|| panic!("seed {seed}: metadata did not propagate"));
    let changed = sim
        .events_since(t0)
        .filter(|(_, _, e)| *e == MemberEvent::MetaChanged(nid(9)))
        .count();
    assert_eq!(changed, 19);
    println!("20 nodes: metadata change everywhere after {took} ms");

    // Three changes within the window: the first goes out at once, the last two coalesce.
    let t1 = sim.now;
    for cpu in [1600, 1700, 1800] {
        meta.allocated_cpu_millis = cpu;
        sim.with_node(&nid(9), |m, now, out| {
            m.set_meta(now, meta.clone(), out).unwrap()
        });
        sim.run_for(100);
    }
    let local = sim.nodes[&nid(9)]
        .m
        .member(&nid(9))
        .unwrap()
        .meta
        .clone()
        .unwrap();
    assert_eq!(
        local.allocated_cpu_millis, 1800,
        "local view changes at once"
    );
    sim.run_for(5_000);
    let versions: BTreeSet<u64> = sim
        .running()
        .map(|(_, n)| n.m.member(&nid(9)).unwrap().meta.as_ref().unwrap().version)
        .collect();
    assert_eq!(versions.len(), 1, "everyone converged on one version");
    let version = *versions.first().unwrap();
    assert_eq!(version, local.version);
    // Initial 1, first change 2; 1600, 1700 and 1800 came within the window of the first
    // change and coalesce into 3.
    assert_eq!(version, 3);
    let seen_by_0 = sim
        .events_since(t1)
        .filter(|(_, o, e)| *o == nid(0) && *e == MemberEvent::MetaChanged(nid(9)))
        .count();
    assert_eq!(seen_by_0, 1, "one published change");
}

#[test]
fn setting_the_same_metadata_again_publishes_nothing() {
    let mut m = Membership::new(member_id(1, 1), meta_for(1), Profile::Lan.tuning(10), 7).unwrap();
    let mut out = Vec::new();
    m.set_meta(Millis(5_000), meta_for(1), &mut out).unwrap();
    assert_eq!(m.member(&nid(1)).unwrap().meta.as_ref().unwrap().version, 1);
    let mut changed = meta_for(1);
    changed.draining = true;
    m.set_meta(Millis(6_000), changed.clone(), &mut out)
        .unwrap();
    assert_eq!(m.member(&nid(1)).unwrap().meta.as_ref().unwrap().version, 2);
    m.set_meta(Millis(9_000), changed, &mut out).unwrap();
    assert_eq!(m.member(&nid(1)).unwrap().meta.as_ref().unwrap().version, 2);
}

#[test]
fn late_joiner_learns_every_metadata_record() {
    let seed = seed(600);
    let mut sim = Sim::joined(15, seed);
    // Long after the initial broadcasts died out.
    sim.run_for(30_000);
    sim.add_node(15, 1);
    sim.with_node(&nid(15), |m, now, out| m.announce(now, nid(0), out));
    let took = sim.run_until_true(20_000, |s| s.all_alive_with_meta());
    let took = took.unwrap_or_else(|| panic!("seed {seed}: late joiner incomplete"));
    println!("late joiner had all 16 records after {took} ms");
}

#[test]
fn no_false_down_at_ten_percent_loss_over_ten_minutes() {
    let seed = seed(700);
    let mut sim = Sim::joined(20, seed);
    sim.loss_permille = 100;
    let t0 = sim.now;
    sim.run_for(600_000);
    // A node that thinks it was declared down rejoins with a new renewal: count them.
    let rejoins: u32 = sim.running().map(|(_, n)| n.m.identity().renewal).sum();
    let suppressed: u64 = sim
        .running()
        .map(|(_, n)| n.m.stats().turn_undead_suppressed)
        .sum();
    assert_eq!(
        rejoins, 0,
        "seed {seed}: spurious rejoins ({suppressed} refuted suspicions)"
    );
    let downs: Vec<_> = sim
        .events_since(t0)
        .filter(|(_, _, e)| matches!(e, MemberEvent::Down(_) | MemberEvent::Left(_)))
        .collect();
    let suspects = sim
        .events_since(t0)
        .filter(|(_, _, e)| matches!(e, MemberEvent::Suspect(_)))
        .count();
    let secs = 600 * 20;
    println!(
        "20 nodes, 10% loss, 600 s: {} false downs, {suspects} suspicions, {} datagrams/node/s, {} bytes/node/s, largest {} bytes",
        downs.len(),
        sim.datagrams / secs,
        sim.datagram_bytes / secs,
        sim.largest_datagram,
    );
    assert!(downs.is_empty(), "seed {seed}: {downs:?}");
    assert!(sim.running().all(|(_, n)| n.m.alive_count() == 20));
}

#[test]
fn same_seed_same_run() {
    let trace = |seed| {
        let mut sim = Sim::joined(8, seed);
        sim.loss_permille = 50;
        sim.stop(2);
        sim.run_for(10_000);
        (sim.events.clone(), sim.datagram_bytes)
    };
    assert_eq!(trace(seed(800)), trace(seed(800)));
}

#[test]
fn idle_traffic_per_node() {
    let seed = seed(900);
    let mut sim = Sim::joined(20, seed);
    sim.run_for(10_000);
    let (d0, b0) = (sim.datagrams, sim.datagram_bytes);
    sim.run_for(60_000);
    let per_node_s = |x: u64| x / (60 * 20);
    println!(
        "20 nodes idle: {} datagrams/node/s, {} bytes/node/s, {} bytes/datagram",
        per_node_s(sim.datagrams - d0),
        per_node_s(sim.datagram_bytes - b0),
        (sim.datagram_bytes - b0) / (sim.datagrams - d0),
    );
}

fn captured_datagrams() -> Vec<Vec<u8>> {
    let mut sim = Sim::joined(6, 1000);
    let mut meta = meta_for(2);
    meta.draining = true;
    sim.with_node(&nid(2), |m, now, out| m.set_meta(now, meta, out).unwrap());
    sim.stop(4);
    sim.run_for(10_000);
    sim.with_node(&nid(3), |m, now, out| m.leave(now, out));
    sim.run_for(2_000);
    sim.captured
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048), with_version in any::<bool>()) {
        let mut bytes = bytes;
        if with_version && !bytes.is_empty() {
            bytes[0] = wire::WIRE_VERSION;
        }
        let mut m = Membership::new(member_id(1, 1), meta_for(1), Profile::Lan.tuning(10), 7).unwrap();
        let mut out = Vec::new();
        m.handle_datagram(Millis(10), &nid(2), &bytes, &mut out);
        m.tick(Millis(5_000), &mut out);
    }

    #[test]
    fn truncated_or_flipped_datagrams_never_panic(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), flip in any::<u8>()) {
        thread_local!(static CAPTURED: Vec<Vec<u8>> = captured_datagrams());
        let bytes = CAPTURED.with(|c| c[pick.index(c.len())].clone());
        let mut m = Membership::new(member_id(1, 1), meta_for(1), Profile::Lan.tuning(10), 7).unwrap();
        let mut out = Vec::new();
        let truncated = &bytes[..cut.index(bytes.len() + 1)];
        m.handle_datagram(Millis(10), &nid(2), truncated, &mut out);
        let mut flipped = bytes.clone();
        let at = cut.index(flipped.len());
        flipped[at] ^= flip;
        m.handle_datagram(Millis(20), &nid(2), &flipped, &mut out);
        m.tick(Millis(5_000), &mut out);
    }
}

#[test]
fn oversized_datagram_is_counted_and_dropped() {
    let mut m = Membership::new(member_id(1, 1), meta_for(1), Profile::Lan.tuning(10), 7).unwrap();
    let mut out = Vec::new();
    m.handle_datagram(Millis(1), &nid(2), &vec![1; 100_000], &mut out);
    assert_eq!(m.stats().oversize, 1);
    assert!(out.is_empty());
}

/// Compacted datagrams take the sender's node id from the transport, so they cannot name
/// anyone else; a whole foca packet naming another sender than the transport's is dropped.
#[test]
fn datagram_naming_another_sender_is_dropped() {
    use foca::Codec;
    let mut b = Membership::new(member_id(2, 1), meta_for(2), Profile::Lan.tuning(10), 8).unwrap();
    let header = foca::Header {
        src: member_id(1, 1),
        src_incarnation: 0,
        dst: MemberId::placeholder(nid(2)),
        message: foca::Message::Announce,
    };
    let mut packet = Vec::new();
    foca::PostcardCodec
        .encode_header(&header, &mut packet)
        .unwrap();
    let extras = wire::SwimExtras {
        meta: Stamp::default(),
        suspect: None,
    };
    let datagram = wire::encode(&wire::Kind::SwimFull { extras }, &packet);
    let mut out = Vec::new();
    b.handle_datagram(Millis(2), &nid(3), &datagram, &mut out);
    assert_eq!(b.stats().spoofed, 1);
    assert!(out.is_empty());
    assert_eq!(b.alive_count(), 1);
    // The same packet from its real sender is an announce: b answers with a feed.
    b.handle_datagram(Millis(3), &nid(1), &datagram, &mut out);
    assert_eq!(b.alive_count(), 2);
    assert!(matches!(&out[..], [.., MemberOutput::Datagram { to, .. }] if *to == nid(1)));
}

#[test]
fn heartbeats_with_a_payload_or_from_strangers_change_nothing() {
    let mut b = Membership::new(member_id(2, 1), meta_for(2), Profile::Lan.tuning(10), 8).unwrap();
    let mut out = Vec::new();
    let mut junk = wire::encode(&wire::Kind::Heartbeat, &[]);
    junk.push(0);
    b.handle_datagram(Millis(1), &nid(1), &junk, &mut out);
    assert_eq!(b.stats().decode_errors, 1);
    b.handle_datagram(
        Millis(2),
        &nid(3),
        &wire::encode(&wire::Kind::Heartbeat, &[]),
        &mut out,
    );
    assert_eq!(b.stats().heartbeats_in, 1);
    assert!(out.is_empty());
    assert_eq!(b.alive_count(), 1);
    // Alone, it beats nobody and watches nobody.
    b.tick(Millis(1_000), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(b.stats().heartbeats_out, 0);
}

/// Figures for DESIGN.md §10 at fleet scale: join time, idle traffic, false downs and
/// detection time at 10% loss. Runs at 50 nodes by default. Knobs (at compile time):
/// `MEMBERSHIP_SCALE` (nodes, 1000 for the goal; slow in a debug build),
/// `MEMBERSHIP_LOSSY_SECS` (virtual seconds at 10% loss), `MEMBERSHIP_KILLS` (crashes
/// measured), `MEMBERSHIP_TUNE` (`field=value,...` overriding the `lan` tuning).
#[test]
fn fleet_scale_figures() {
    let n = knob(option_env!("MEMBERSHIP_SCALE"), 50) as usize;
    let lossy_secs = knob(option_env!("MEMBERSHIP_LOSSY_SECS"), 60);
    let kills = knob(option_env!("MEMBERSHIP_KILLS"), 5) as usize;
    let mut tuning = Profile::Lan.tuning(n as u32);
    if let Some(tune) = option_env!("MEMBERSHIP_TUNE") {
        let mut v = serde_json::to_value(&tuning).unwrap();
        for kv in tune.split(',').filter(|s| !s.is_empty()) {
            let (k, val) = kv.split_once('=').expect("field=value");
            v[k] = val.parse::<u64>().expect("integer").into();
        }
        tuning = serde_json::from_value(v).expect("valid tuning fields");
    }
    let seed = seed(1_100);
    let mut sim = Sim::new(n, seed, tuning.clone());
    let phase = |sim: &Sim, what: &str| eprintln!("[{:?}] {n} nodes: {what}", sim.now);
    sim.join_all();
    let join = sim.run_until_true(120_000, |s| s.all_alive_with_meta());
    let join = join.unwrap_or_else(|| panic!("seed {seed}: {n} nodes did not converge"));
    phase(&sim, &format!("joined {join} ms after the last announce"));
    sim.run_for(10_000);
    let (d0, b0) = (sim.datagrams, sim.datagram_bytes);
    sim.run_for(30_000);
    let idle_bytes = (sim.datagram_bytes - b0) / (30 * n as u64);
    let idle_datagrams = (sim.datagrams - d0) as f64 / (30 * n) as f64;
    phase(
        &sim,
        &format!("idle: {idle_datagrams:.1} datagrams, {idle_bytes} bytes per node per second"),
    );

    sim.loss_permille = 100;
    let t0 = sim.now;
    sim.run_for(lossy_secs * 1000);
    let count = |sim: &Sim, f: fn(&MemberEvent) -> bool| {
        sim.events_since(t0).filter(|(_, _, e)| f(e)).count()
    };
    let false_downs = count(&sim, |e| matches!(e, MemberEvent::Down(_)));
    let suspicions = count(&sim, |e| matches!(e, MemberEvent::Suspect(_)));
    phase(
        &sim,
        &format!(
            "10% loss for {lossy_secs} s: {false_downs} false downs, {suspicions} suspect events"
        ),
    );

    let victims: Vec<usize> = (0..kills).map(|k| 1 + k * (n - 1) / kills.max(1)).collect();
    let mut detections = Vec::new();
    for &victim in &victims {
        sim.stop(victim);
        let took = sim.run_until_true(30_000, |s| s.everyone_sees(victim, MemberState::Down));
        if took.is_none() {
            let missing: Vec<_> = sim
                .state_everywhere(victim)
                .into_iter()
                .filter(|(_, st)| *st != Some(MemberState::Down))
                .take(5)
                .collect();
            eprintln!("crash of node {victim} not seen by {missing:?}");
        }
        detections.push(took.unwrap_or(u64::MAX));
        sim.run_for(1_000);
    }
    detections.sort_unstable();
    let wrong: Vec<_> = sim
        .events_since(t0)
        .filter(
            |(_, _, e)| matches!(e, MemberEvent::Down(x) if !victims.iter().any(|v| *x == nid(*v))),
        )
        .collect();
    if let Some((t, o, e)) = wrong.first() {
        eprintln!("first wrong down at {t:?}, seen by {o}: {e:?}");
    }
    let pct = |p: usize| detections[(detections.len() * p / 100).min(detections.len() - 1)];
    phase(
        &sim,
        &format!(
            "crash known down everywhere at 10% loss: p50 {} ms, p99 {} ms, max {} ms over {kills} crashes; {} wrong downs in all; largest datagram {} bytes",
            pct(50),
            pct(99),
            detections.last().unwrap(),
            wrong.len(),
            sim.largest_datagram
        ),
    );
    eprintln!("tuning: {tuning:?}");
    assert!(wrong.is_empty(), "seed {seed}");
    assert!(detections.iter().all(|d| *d != u64::MAX), "seed {seed}");
}

#[test]
fn records_of_nodes_swim_does_not_know_are_swept() {
    let mut m = Membership::new(member_id(1, 1), meta_for(1), Profile::Lan.tuning(10), 7).unwrap();
    let stranger = MetaRecord {
        node: nid(9),
        incarnation: 1,
        meta: meta_for(9).into(),
    };
    let mut out = Vec::new();
    m.handle_datagram(
        Millis(1),
        &nid(9),
        &wire::encode(&wire::Kind::MetaPush, &stranger.encode()),
        &mut out,
    );
    assert!(m.store.lock().metas.contains_key(&nid(9)));
    assert!(
        m.member(&nid(9)).is_none(),
        "metadata alone does not make a member"
    );
    m.tick(Millis(meta::ORPHAN_SWEEP_MS + 1), &mut out);
    assert!(!m.store.lock().metas.contains_key(&nid(9)));
    assert!(
        m.store.lock().metas.contains_key(&nid(1)),
        "our own record stays"
    );
}
