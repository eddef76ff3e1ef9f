//! `shoal-sim`: runs the deterministic simulator from the command line.
//!
//! `shoal-sim bench [--nodes 100,1000] [--seed 1] [--crashes 10] [--writes 20] [--heal-seeds 10]
//! [--out docs/bench/README.md]` measures the DESIGN.md §10 figures and prints (or writes) a
//! Markdown table. `shoal-sim sweep --seed S --nodes N` runs one sweep case and prints its
//! violations. Run it in release: `cargo run --release --bin shoal-sim -- bench`.

use anyhow::{Context, bail};
use shoal::sim::bench;
use shoal::sim::scenario::sweep_case;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        bail!("usage: shoal-sim bench|sweep [options] (see the file's docs)");
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
            let mut figs = Vec::new();
            for n in sizes {
                eprintln!("measuring {n} nodes");
                let f = bench::measure(seed, n, crashes, writes);
                eprintln!("{f:?}");
                figs.push(f);
            }
            let heal = (heal_seeds > 0).then(|| {
                eprintln!("measuring heal convergence over {heal_seeds} sweep seeds");
                let (v, failed) = bench::heal_ms(1..1 + heal_seeds, 50);
                (50, v, failed)
            });
            let table = bench::markdown(&figs, heal);
            match opt("--out") {
                Some(path) => {
                    std::fs::write(path, &table).with_context(|| format!("writing {path}"))?
                }
                None => print!("{table}"),
            }
        }
        other => bail!("unknown command {other:?}: use bench or sweep"),
    }
    Ok(())
}
