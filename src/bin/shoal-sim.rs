//! `shoal-sim`: runs the deterministic simulator from the command line.
//!
//! `shoal-sim bench [--nodes 100,1000] [--seed 1] [--crashes 10] [--writes 20] [--heal-seeds 10]
//! [--binpack-max-nodes 1000] [--large-deploy 1000] [--out-dir docs/bench]` measures the DESIGN.md §10 figures (ours,
//! and the baselines run in the same simulator on the same seed), prints the Markdown table and
//! writes it to `OUT_DIR/figures.md` with the SVG plots, after every step (a long run that is
//! stopped keeps what it measured). `shoal-sim idle --nodes N [--seconds 20] [--tuning ours|memberlist]`
//! joins a fleet and breaks its idle traffic down by kind and SWIM datagram class, with the
//! simulator's speed and peak memory. `shoal-sim placement --nodes N --slots S [--limit-seconds 600]`
//! times one large deploy on an idle fleet. `shoal-sim detect-tail --nodes N [--crashes 300]`
//! crashes one node after another (each restarted before the next) and prints the percentiles of
//! detection, of the time until anyone first sends the victim a datagram and until its first
//! check (a probe, or its ring watcher's notice), and lists the crashes detected after more
//! than 3 s. `shoal-sim sweep --seed S --nodes N` runs one sweep case and prints its
//! violations. `shoal-sim packing --nodes N` runs the placement-quality measurement alone.
//!
//! The simulator is test-only code, behind the `testing` feature: run it in release with
//! `cargo run --release --features testing --bin shoal-sim -- bench`.

use anyhow::{Context, bail};
use shoal::membership::SwimTuning;
use shoal::sim::bench;
use shoal::sim::scenario::sweep_case;

const USAGE: &str = "usage: shoal-sim bench|detect-tail|idle|placement|packing|sweep [options] \
    (the options of each are in the docs at the top of src/bin/shoal-sim.rs)";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!("{USAGE}");
    };
    let opt = |name: &str| -> Option<&str> {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map(String::as_str)
    };
    let num = |name: &str, default: u64| -> anyhow::Result<u64> {
        opt(name).map_or(Ok(default), |v| {
            v.parse()
                .with_context(|| format!("{name} {v:?} is not a number"))
        })
    };
    let seed = num("--seed", 1)?;
    match cmd.as_str() {
        "sweep" => {
            let nodes = num("--nodes", 50)? as usize;
            let o = sweep_case(seed, nodes);
            println!(
                "seed {seed}: {nodes} nodes, converged {:?} ms after heal, {} slots re-placed, trace {:016x}",
                o.converged_after_ms, o.replaced, o.trace_hash
            );
            if !o.violations.is_empty() {
                println!("{}", o.report());
                std::process::exit(1);
            }
        }
        "bench" => {
            let sizes: Vec<usize> = opt("--nodes")
                .unwrap_or("100,1000")
                .split(',')
                .map(|s| s.trim().parse().with_context(|| format!("bad size {s:?}")))
                .collect::<anyhow::Result<_>>()?;
            let crashes = num("--crashes", 10)? as usize;
            let writes = num("--writes", 20)? as usize;
            let heal_seeds = num("--heal-seeds", 10)?;
            let binpack_max = num("--binpack-max-nodes", 1000)? as usize;
            let large_deploy = num("--large-deploy", 1000)? as u32;
            let out_dir = opt("--out-dir").unwrap_or("docs/bench");
            std::fs::create_dir_all(out_dir).with_context(|| format!("creating {out_dir}"))?;
            let mut report = bench::Report::default();
            let write = |report: &bench::Report| -> anyhow::Result<()> {
                let path = format!("{out_dir}/figures.md");
                std::fs::write(&path, report.goals_markdown())
                    .with_context(|| format!("writing {path}"))?;
                for (name, svg) in report.charts() {
                    let path = format!("{out_dir}/{name}");
                    std::fs::write(&path, svg).with_context(|| format!("writing {path}"))?;
                }
                Ok(())
            };
            if heal_seeds > 0 {
                eprintln!("measuring heal convergence over {heal_seeds} sweep seeds");
                let (v, failed) = bench::heal_ms(1..1 + heal_seeds, 50);
                eprintln!("heal ms: {v:?}, {failed} did not converge");
                report.heal = Some((50, v, failed));
            }
            for n in sizes {
                // Smaller samples above 100 nodes: each crash costs a detection and a
                // replacement on every node.
                let (c, w) = if n > 100 {
                    (crashes.min(5), writes.min(10))
                } else {
                    (crashes, writes)
                };
                if n <= binpack_max {
                    eprintln!("measuring placement quality, {n} nodes");
                    let p = bench::measure_binpack(seed, n);
                    eprintln!("{p:?}");
                    report.packing.push(p);
                    write(&report)?;
                }
                // Each parameter set on a fleet of its own, same seed, same victims.
                let profiles = [
                    ("lan profile", None),
                    (
                        "memberlist defaults",
                        Some(SwimTuning::memberlist_defaults(n as u32)),
                    ),
                ];
                for (name, tuning) in profiles {
                    eprintln!("measuring detection, {n} nodes, {name}");
                    let m = bench::measure_membership(seed, n, c, tuning.clone());
                    eprintln!("{m:?}");
                    if tuning.is_some() {
                        report.memberlist.push(m);
                    } else {
                        report.ours_membership.push(m);
                    }
                    write(&report)?;
                }
                eprintln!("measuring {n} nodes");
                // Two slots per node up to 100 nodes; above, `--large-deploy` slots (the
                // simulator's cost per input grows with the slots deployed, see the README).
                let slots = if n > 100 { large_deploy } else { 2 * n as u32 };
                let f = bench::measure(seed, n, c, w, slots);
                eprintln!("{f:?}");
                report.figs.push(f);
                write(&report)?;
            }
            print!("{}", report.goals_markdown());
        }
        "detect-tail" => {
            let nodes = num("--nodes", 100)? as usize;
            let crashes = num("--crashes", 300)? as usize;
            if nodes < 2 {
                bail!("--nodes {nodes}: a crash needs at least 2 nodes");
            }
            let f = bench::measure_detection_tail(seed, nodes, crashes);
            let q = |v: &[u64], p: f64| {
                bench::percentile(v, p)
                    .map_or("–".into(), |x| format!("{:.2} s", x as f64 / 1000.0))
            };
            let over = |v: &[u64], ms: u64| v.iter().filter(|t| **t > ms).count();
            println!(
                "{nodes} nodes, {} crashes ({} not detected within 60 s), {:.0} virtual s in {:.0} wall s",
                f.detect_ms.len() + f.undetected,
                f.undetected,
                f.virtual_ms as f64 / 1000.0,
                f.wall_s
            );
            for (what, v) in [
                ("crash -> known dead at 99%", &f.detect_ms),
                ("crash -> first datagram to the victim", &f.first_contact_ms),
                ("crash -> first check of the victim", &f.first_check_ms),
            ] {
                println!(
                    "{what}: p50 {}, p90 {}, p99 {}, max {}; over 3 s: {}",
                    q(v, 0.5),
                    q(v, 0.9),
                    q(v, 0.99),
                    q(v, 1.0),
                    over(v, 3_000)
                );
            }
            for (detect, contact, check) in &f.slow {
                println!(
                    "over 3 s: detected after {detect} ms, first contact {contact:?} ms, first check {check:?} ms"
                );
            }
        }
        "idle" => {
            let nodes = num("--nodes", 100)? as usize;
            let secs = num("--seconds", 20)?;
            let tuning = match opt("--tuning") {
                None | Some("ours") => None,
                Some("memberlist") => Some(SwimTuning::memberlist_defaults(nodes as u32)),
                Some(other) => bail!("--tuning {other:?}: use ours or memberlist"),
            };
            let f = bench::measure_idle(seed, nodes, tuning, secs * 1000);
            println!(
                "{nodes} nodes: joined at {:?} virtual ms ({:.1} wall s); {:.1} virtual s in {:.1} wall s ({:.2} simulated s per wall s); peak RSS {}",
                f.joined_ms,
                f.join_wall_s,
                f.virtual_ms as f64 / 1000.0,
                f.wall_s,
                f.virtual_ms as f64 / 1000.0 / f.wall_s,
                peak_rss().unwrap_or_else(|| "unknown".into()),
            );
            let [swim, state, bids, sync, lazy] = f.bytes_per_node_s;
            println!(
                "idle bytes per node per s: swim {swim:.0}, state {state:.0}, bids {bids:.0}, sync {sync:.0}, gossip control {lazy:.0}"
            );
            println!("swim class: messages/s, bytes/s, piggybacked bytes/s (per node)");
            for (label, m, b, p) in f.swim_classes {
                println!("  {label:<14} {m:>8.2} {b:>8.0} {p:>8.0}");
            }
        }
        "placement" => {
            let nodes = num("--nodes", 100)? as usize;
            let slots = num("--slots", 10_000)? as u32;
            let limit = num("--limit-seconds", 600)?;
            let f = bench::measure_placement(seed, nodes, slots, limit * 1000);
            match f.place_ms {
                Some(ms) => println!(
                    "{nodes} nodes, {slots} slots: all running {:.2} virtual s after the write: {:.0} placements per simulated second",
                    ms as f64 / 1000.0,
                    f64::from(slots) / (ms.max(1) as f64 / 1000.0)
                ),
                None => println!(
                    "{nodes} nodes, {slots} slots: not all running after {limit} virtual s ({} running)",
                    f.running_by_second.last().unwrap_or(&0)
                ),
            }
            println!(
                "running by virtual second: {:?}; {:.2} bids and {:.3} bid messages per slot; core CPU per node from the write: busiest {:.2} s (node {}), p99 {:.2} s, mean {:.2} s; {:.1} virtual s in {:.1} wall s; peak RSS {}",
                f.running_by_second,
                f.bids_per_slot,
                f.bid_messages_per_slot,
                f.core_s_max,
                f.core_busiest,
                f.core_s_p99,
                f.core_s_mean,
                f.virtual_ms as f64 / 1000.0,
                f.wall_s,
                peak_rss().unwrap_or_else(|| "unknown".into()),
            );
        }
        "packing" => {
            let nodes = num("--nodes", 100)? as usize;
            let f = bench::measure_binpack(seed, nodes);
            println!("{f:?}");
        }
        "help" | "--help" | "-h" => println!("{USAGE}"),
        other => bail!("unknown command {other:?}; {USAGE}"),
    }
    Ok(())
}

/// This process's peak resident memory, from `/proc/self/status` (Linux).
fn peak_rss() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.trim_start_matches("VmHWM:").trim().to_string())
}
