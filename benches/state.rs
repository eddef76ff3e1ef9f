//! Benchmarks of the replicated desired state (`src/state/`): merging full states, applying a
//! stream of small deltas, the size and encode/decode time of a full state on the wire, and the
//! digests. Run with `cargo bench --bench state`; figures go to `docs/bench/README.md`, never
//! into assertions.
//!
//! Inputs are built only through public APIs, the way a node builds them: specs come from
//! `spec::parse`, stamps from `HlcClock`, writes from `ClusterState::put_revision`, `put_claim`
//! and `put_report` (each returns the delta a node would gossip), wire bytes from `wire::encode`
//! with the node's message types (`node::Message`, `node::SyncMsg`).
//!
//! The fleet: `NODES` nodes with realistic 52-character peer ids; every service has `REPLICAS`
//! slots, each claimed by one node, and every node reports the instances of the slots it owns.
//!
//! Besides the timings, the bench prints sizes (bytes on the wire) and a count of anti-entropy
//! rounds for a node that starts empty; criterion does not measure those.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use shoal::ids::{Millis, NodeId, RevisionId, SlotId};
use shoal::node::Message;
use shoal::node::sync::{self, SyncMsg};
use shoal::runtime::Handle;
use shoal::spec::{self, Resources, ServiceName, ServiceSpec};
use shoal::state::{
    Claim, ClusterState, Crdt, HlcClock, InstanceReport, InstanceState, NodeReport, Revision,
    RevisionBody,
};
use shoal::wire;

/// Nodes in the fleet that owns the slots and writes the reports.
const NODES: usize = 100;
/// Slots per service (one claim each).
const REPLICAS: u32 = 3;
/// One service in this many differs between the two states of the merge benchmark (10%).
const DIFFER_EVERY: usize = 10;
/// Deltas applied per iteration of the delta benchmark.
const DELTAS: usize = 1_000;
/// The gossip limit of the agent (`MAX_GOSSIP_BYTES` in `src/agent/mod.rs`, private there).
const MAX_GOSSIP_BYTES: usize = 60 * 1024;
/// Wall time of the first write, close to a real Unix time in ms so varints have real widths.
const T0: u64 = 1_790_000_000_000;

/// A node id shaped like a real one: the base58 text of an Ed25519 `PeerId` (52 characters,
/// starting `12D3KooW`).
fn node_id(i: usize) -> NodeId {
    const B58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut s = String::from("12D3KooW");
    while s.len() < 52 {
        s.push(B58[(x % 58) as usize] as char);
        x = x.rotate_left(7).wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (i as u64);
    }
    NodeId(s.into())
}

fn service_name(i: usize) -> ServiceName {
    ServiceName(format!("svc-{i:05}").into())
}

/// A typical service spec, through the real parser. `version` changes the image tag and one
/// environment variable, as a redeploy does.
fn parse_spec(i: usize, version: u32) -> ServiceSpec {
    let yaml = format!(
        "name: svc-{i:05}\n\
         image: registry.example.com/team-{team}/svc-{i:05}:1.{version}.0\n\
         replicas: {REPLICAS}\n\
         resources: {{ cpu: 250m, memory: 128Mi }}\n\
         ports:\n  - name: http\n    container: 8080\n\
         env:\n  LOG_LEVEL: info\n  RELEASE: \"{version}\"\n\
         restart: {{ policy: always, max_restarts: 5, window: 60s }}\n\
         stop_grace: 10s\n",
        team = i % 17,
    );
    let mut specs = spec::parse("bench.yaml", &yaml).expect("bench spec parses");
    specs.pop().expect("one spec")
}

/// A revision as `Node` builds one: `<seq>.<tag>` and a fresh stamp of the writer's clock.
fn revision(clock: &mut HlcClock, now: Millis, seq: u64, spec: ServiceSpec) -> Revision {
    let stamp = clock.stamp(now);
    let bytes = postcard::to_stdvec(&stamp).expect("in-memory encoding");
    let tag = xxhash_rust::xxh3::xxh3_64(&bytes) & 0xffff;
    Revision {
        id: RevisionId(format!("{seq}.{tag:04x}")),
        stamp,
        body: RevisionBody::Spec(spec),
    }
}

fn owner(service: usize, index: u32) -> usize {
    (service * REPLICAS as usize + index as usize) % NODES
}

/// The reports of `nodes` as read from `s`: every claimed slot's instance, running the
/// claimed revision, with a process handle and an endpoint.
fn write_reports(s: &mut ClusterState, nodes: impl Iterator<Item = usize>, seq: u64) {
    for n in nodes {
        let id = node_id(n);
        let mut report = NodeReport::default();
        for (slot, claim) in s.claims.iter().filter(|(_, c)| c.node == id) {
            let h = xxhash_rust::xxh3::xxh3_128(slot.to_string().as_bytes());
            let rev = s
                .revision_by_stamp(&slot.service, &claim.revision)
                .expect("claimed revision is in history");
            report.instances.insert(
                slot.clone(),
                InstanceReport {
                    epoch: claim.epoch,
                    revision: rev.id.clone(),
                    state: InstanceState::Running,
                    detail: None,
                    handle: Some(Handle::Container {
                        id: format!("{h:032x}{:032x}", h.rotate_left(64)),
                    }),
                    endpoint: Some(format!(
                        "10.0.{}.{}:{}",
                        n / 250,
                        n % 250 + 1,
                        20_000 + slot.index
                    )),
                    restarts: 0,
                    since_ms: claim.revision.wall_ms + 1_500,
                },
            );
            let spec = rev.spec().expect("live");
            report.allocated = Resources {
                cpu_millis: report.allocated.cpu_millis + spec.resources.cpu_millis,
                memory_bytes: report.allocated.memory_bytes + spec.resources.memory_bytes,
            };
        }
        s.put_report(&id, report, (1, seq));
    }
}

/// A converged fleet state: `services` services written by node 0 over time, every slot
/// claimed (epoch 1) by its owner, every node's report.
fn fleet_state(services: usize) -> ClusterState {
    let mut s = ClusterState::default();
    let mut clock = HlcClock::new(node_id(0));
    for i in 0..services {
        let name = service_name(i);
        let now = Millis(T0 + i as u64 * 37);
        let rev = revision(&mut clock, now, 1, parse_spec(i, 1));
        let stamp = rev.stamp.clone();
        s.put_revision(&name, rev);
        for index in 0..REPLICAS {
            s.put_claim(
                &SlotId::new(&name, index),
                Claim {
                    epoch: 1,
                    score: 900 + (i as u64 * 7 + index as u64) % 100,
                    node: node_id(owner(i, index)),
                    released: false,
                    revision: stamp.clone(),
                },
            );
        }
    }
    write_reports(&mut s, 0..NODES, 1);
    s
}

/// `base` after a redeploy of one service in `DIFFER_EVERY` (a new revision, and its owners
/// moving their claims to it) and new reports from one node in `DIFFER_EVERY`: about 10% of
/// services, claims and reports differ from `base`.
fn diverged(base: &ClusterState, services: usize) -> ClusterState {
    let mut s = base.clone();
    let mut clock = HlcClock::new(node_id(1));
    let later = T0 + services as u64 * 37 + 60_000;
    for i in (0..services).step_by(DIFFER_EVERY) {
        let name = service_name(i);
        let rev = revision(&mut clock, Millis(later + i as u64), 2, parse_spec(i, 2));
        let stamp = rev.stamp.clone();
        s.put_revision(&name, rev);
        for index in 0..REPLICAS {
            let slot = SlotId::new(&name, index);
            let mut claim = s.claims[&slot].clone();
            claim.revision = stamp.clone();
            s.put_claim(&slot, claim);
        }
    }
    write_reports(&mut s, (0..NODES).step_by(DIFFER_EVERY), 2);
    s
}

/// Counts entries of `a` that `b` lacks or holds with another value.
fn differing_entries(a: &ClusterState, b: &ClusterState) -> (usize, usize, usize) {
    let services = a
        .services
        .iter()
        .filter(|(k, v)| b.services.get(*k) != Some(*v));
    let claims = a
        .claims
        .iter()
        .filter(|(k, v)| b.claims.get(*k) != Some(*v));
    let reports = a
        .reports
        .iter()
        .filter(|(k, v)| b.reports.get(*k) != Some(*v));
    (services.count(), claims.count(), reports.count())
}

/// The deltas of `DELTAS` local writes on `writer`, one service each (a redeploy), in the order
/// a node would gossip them.
fn write_deltas(writer: &ClusterState, services: usize) -> Vec<ClusterState> {
    let mut w = writer.clone();
    let mut clock = HlcClock::new(node_id(2));
    let later = T0 + services as u64 * 37 + 120_000;
    (0..DELTAS)
        .map(|k| {
            // Spread over the whole key space, touching each service at most once.
            let i = (k * 7_919) % services;
            let name = service_name(i);
            let seq = w.services[&name].current().expect("written").id.seq() + 1;
            let rev = revision(&mut clock, Millis(later + k as u64), seq, parse_spec(i, 3));
            w.put_revision(&name, rev)
        })
        .collect()
}

fn all_buckets() -> BTreeSet<usize> {
    (0..sync::BUCKETS).collect()
}

/// The sync response a node would send if no byte budget applied: the whole state.
fn full_entries(s: &ClusterState) -> SyncMsg {
    SyncMsg::Entries {
        state: s.clone(),
        differing: (0..sync::BUCKETS as u16).collect(),
        complete: true,
    }
}

/// Anti-entropy from a node holding `full` to a node that starts empty, with the real functions
/// and budget of `node::sync`: returns (rounds run, whether the states became equal, services
/// the empty node holds at the end). Stops when a round changes nothing.
fn bootstrap_rounds(full: &ClusterState, max_rounds: usize) -> (usize, bool, usize) {
    let mut fresh = ClusterState::default();
    for round in 1..=max_rounds {
        let d = sync::differing(&sync::digest(full), &sync::digest(&fresh));
        if d.is_empty() {
            return (round - 1, true, fresh.services.len());
        }
        let (chunk, _) = sync::entries_in(full, &d, sync::MAX_SYNC_ENTRY_BYTES, round * 7919);
        if !fresh.merge(&chunk) {
            return (round, false, fresh.services.len());
        }
    }
    (max_rounds, fresh == *full, fresh.services.len())
}

fn kib(n: usize) -> String {
    format!("{:.1} KiB", n as f64 / 1024.0)
}

/// Sizes and counts that criterion does not measure, printed once.
fn print_sizes(states: &[(usize, &ClusterState)]) {
    println!("== state bench: sizes (wire::encode = version byte + postcard)");
    for (n, s) in states {
        let full = wire::encode(&full_entries(s)).len();
        let state_only = wire::encode(*s).len();
        let (chunk, complete) = sync::entries_in(s, &all_buckets(), sync::MAX_SYNC_ENTRY_BYTES, 0);
        let chunk_msg = wire::encode(&SyncMsg::Entries {
            state: chunk.clone(),
            differing: (0..sync::BUCKETS as u16).collect(),
            complete,
        })
        .len();
        println!(
            "{n} services: {} claims, {} reports; full state as SyncMsg::Entries {} ({} B), \
             ClusterState alone {} B, {:.0} B per service; one sync chunk (budget {} B): {} \
             services, {} claims, {} reports, {} B encoded, complete={complete}; \
             over the agent's 1 MiB sync limit: {}",
            s.claims.len(),
            s.reports.len(),
            kib(full),
            full,
            state_only,
            state_only as f64 / *n as f64,
            sync::MAX_SYNC_ENTRY_BYTES,
            chunk.services.len(),
            chunk.claims.len(),
            chunk.reports.len(),
            chunk_msg,
            full > (1 << 20),
        );
        let part = |keep: &dyn Fn(&mut ClusterState)| {
            let mut p = ClusterState::default();
            keep(&mut p);
            wire::encode(&p).len()
        };
        println!(
            "{n} services: by part, services {} B, claims {} B, reports {} B",
            part(&|p| p.services = s.services.clone()),
            part(&|p| p.claims = s.claims.clone()),
            part(&|p| p.reports = s.reports.clone()),
        );
        let (rounds, equal, held) = bootstrap_rounds(s, 50);
        println!(
            "{n} services: an empty node syncing from a full one: {rounds} round(s), \
             converged={equal}, holds {held} of {n} services at the end"
        );
    }
}

fn benches(c: &mut Criterion) {
    let t = std::time::Instant::now();
    let small = fleet_state(1_000);
    let base = fleet_state(10_000);
    let ahead = diverged(&base, 10_000);
    let deltas = write_deltas(&base, 10_000);
    let (ds, dc, dr) = differing_entries(&ahead, &base);
    println!(
        "== state bench: inputs built in {:.1} s; merge inputs differ in {ds}/{} services, \
         {dc}/{} claims, {dr}/{} reports",
        t.elapsed().as_secs_f64(),
        base.services.len(),
        base.claims.len(),
        base.reports.len(),
    );
    let delta_bytes: Vec<Vec<u8>> = deltas
        .iter()
        .map(|d| wire::encode(&Message::Delta(d.clone())))
        .collect();
    let mean = delta_bytes.iter().map(Vec::len).sum::<usize>() / delta_bytes.len();
    println!(
        "== state bench: one delta (Message::Delta, one service write) is {mean} B on average"
    );
    print_sizes(&[(1_000, &small), (10_000, &base)]);

    // 1. Merging two full states of 10,000 services that differ in ~10% of entries.
    {
        let mut g = c.benchmark_group("merge_full_10k");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4));
        g.bench_function("behind_merge_ahead", |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| {
                    assert!(s.merge(black_box(&ahead)));
                    s
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("ahead_merge_behind_unchanged", |b| {
            b.iter_batched(
                || ahead.clone(),
                |mut s| {
                    assert!(!s.merge(black_box(&base)));
                    s
                },
                BatchSize::LargeInput,
            )
        });
        g.bench_function("cvrdt_merge_behind_ahead_by_value", |b| {
            b.iter_batched(
                || (base.clone(), ahead.clone()),
                |(mut s, other)| {
                    crdts::CvRDT::merge(&mut s, black_box(other));
                    s
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }

    // 2. Delta throughput: local writes' deltas applied by a node holding 10,000 services.
    {
        let mut g = c.benchmark_group("deltas_into_10k");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(DELTAS as u64));
        g.bench_function("merge", |b| {
            b.iter_batched(
                || base.clone(),
                |mut s| {
                    for d in &deltas {
                        s.merge(black_box(d));
                    }
                    s
                },
                BatchSize::LargeInput,
            )
        });
        // What the agent does per gossiped delta: decode (bounded), observe the stamps,
        // merge, and snapshot the changed entries for the store writer (`entries_for`).
        g.bench_function("decode_observe_merge_entries_for", |b| {
            b.iter_batched(
                || (base.clone(), HlcClock::new(node_id(3))),
                |(mut s, mut clock)| {
                    let now = Millis(T0 + 10_000_000);
                    let mut persisted = ClusterState::default();
                    for bytes in &delta_bytes {
                        let msg: Message = wire::decode(black_box(bytes), MAX_GOSSIP_BYTES)
                            .expect("a delta decodes");
                        let Message::Delta(d) = msg else {
                            unreachable!("only deltas here")
                        };
                        for e in d.services.values() {
                            for stamp in e.history.keys() {
                                clock.observe(now, stamp);
                            }
                        }
                        if s.merge(&d) {
                            persisted.merge(&s.entries_for(&d));
                        }
                    }
                    (s, persisted)
                },
                BatchSize::LargeInput,
            )
        });
        g.finish();
    }

    // 3. Full state on the wire: encode + decode of the whole state as one sync response, and
    //    of one real sync chunk (`entries_in` under `MAX_SYNC_ENTRY_BYTES`).
    {
        let mut g = c.benchmark_group("wire");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        for (n, s) in [(1_000usize, &small), (10_000, &base)] {
            let msg = full_entries(s);
            let len = wire::encode(&msg).len();
            g.throughput(Throughput::Bytes(len as u64));
            g.bench_function(format!("full_state_{n}/encode"), |b| {
                b.iter(|| wire::encode(black_box(&msg)))
            });
            let bytes = wire::encode(&msg);
            g.bench_function(format!("full_state_{n}/decode"), |b| {
                b.iter(|| wire::decode::<SyncMsg>(black_box(&bytes), usize::MAX).expect("decodes"))
            });
            g.bench_function(format!("full_state_{n}/encode_decode"), |b| {
                b.iter(|| {
                    let bytes = wire::encode(black_box(&msg));
                    wire::decode::<SyncMsg>(&bytes, usize::MAX).expect("decodes")
                })
            });
        }
        let buckets = all_buckets();
        let (chunk, complete) = sync::entries_in(&base, &buckets, sync::MAX_SYNC_ENTRY_BYTES, 0);
        let chunk_msg = SyncMsg::Entries {
            state: chunk,
            differing: (0..sync::BUCKETS as u16).collect(),
            complete,
        };
        let chunk_bytes = wire::encode(&chunk_msg);
        g.throughput(Throughput::Bytes(chunk_bytes.len() as u64));
        g.bench_function("sync_chunk_10k/entries_in", |b| {
            b.iter(|| sync::entries_in(black_box(&base), &buckets, sync::MAX_SYNC_ENTRY_BYTES, 0))
        });
        g.bench_function("sync_chunk_10k/encode_decode", |b| {
            b.iter(|| {
                let bytes = wire::encode(black_box(&chunk_msg));
                wire::decode::<SyncMsg>(&bytes, 1 << 20).expect("a chunk fits the sync limit")
            })
        });
        g.finish();
    }

    // 4. Digests of 10,000 services: the whole-state digest (`shoal status`) and the 64-bucket
    //    digest anti-entropy computes on every round.
    {
        let mut g = c.benchmark_group("digest_10k");
        g.sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(3));
        g.bench_function("cluster_state_digest", |b| {
            b.iter(|| black_box(&base).digest())
        });
        g.bench_function("sync_digest_64_buckets", |b| {
            b.iter(|| sync::digest(black_box(&base)))
        });
        g.finish();
    }
}

criterion_group!(state, benches);
criterion_main!(state);
