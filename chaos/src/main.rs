//! `shoal-chaos`: runs real `shoal agent` processes in network namespaces, injects faults from
//! outside and checks invariants from outside. See `chaos/README.md`.
//!
//! This file holds the command line, suites and exit codes; the work is in the modules.

mod fleet;
mod interrupt;
mod invariants;
mod measure;
mod model;
mod nemesis;
mod net;
mod procs;
mod report;
mod runner;
mod scenario;
mod svg;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};

use invariants::Invariant;
use runner::{RunOpts, ScenarioResult, Verdict};
use scenario::Scenario;

/// Chaos testing for Shoal: real agents in network namespaces, faults and checks from outside.
/// Needs root (it creates network namespaces).
#[derive(Parser, Debug)]
#[command(name = "shoal-chaos", version, about)]
struct Cli {
    /// The shoal binary (default: target/release/shoal, else target/debug/shoal).
    #[arg(long, global = true)]
    shoal: Option<PathBuf>,
    /// Where reports, timelines and agent logs go.
    #[arg(long, global = true, default_value = "target/chaos")]
    out: PathBuf,
    /// Timing profile for every agent (`lan`, `wan`), over the scenarios' own choice.
    #[arg(long, global = true)]
    profile: Option<String>,
    /// How often the fleet is sampled (process table, status, ps, nodes).
    #[arg(long, global = true, default_value = "500ms", value_parser = humantime::parse_duration)]
    sample_every: Duration,
    /// The scenario folder (default: chaos/scenarios of this workspace).
    #[arg(long, global = true)]
    scenarios: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run scenario files.
    Run {
        files: Vec<PathBuf>,
        /// Run each scenario this many times (for percentiles).
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Run the agents with SHOAL_TEST_BUGS=BUG and expect an invariant to fail.
        #[arg(long)]
        deliberate_bug: Option<String>,
        /// The invariant the bug must break (default: the scenario's `bugs` entry).
        #[arg(long, value_enum)]
        expect: Option<Invariant>,
    },
    /// Run a named suite: ci (short, for every change), full (every scenario and a 10-minute
    /// nemesis) or bugs (each scenario with a `bugs:` entry passes clean, and each deliberate
    /// bug is caught by its invariant).
    Suite {
        #[arg(value_enum)]
        suite: Suite,
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        /// Seed of the nemesis in the full suite (default: from the clock, printed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// A seeded random nemesis: faults, heals and writes picked by the seed.
    Nemesis {
        #[arg(long)]
        seed: Option<u64>,
        /// How long to inject faults (`10m`, `90s`).
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 5)]
        nodes: usize,
    },
    /// List the shipped scenarios and suites.
    List,
    /// Check scenario files without running them (no root needed).
    Validate { files: Vec<PathBuf> },
    /// Remove what dead harness runs left behind (namespaces, their processes, work dirs).
    Sweep,
    /// Measure the release binary on 127.0.0.1 and print the tables of docs/measurements.md
    /// (no root needed).
    Measure(measure::MeasureArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Suite {
    Ci,
    Full,
    Bugs,
}

/// The ci suite: short scenarios on 3–5 nodes, under 10 minutes on 2 cores.
const CI: &[&str] = &[
    "kill-one",
    "kill-with-instances",
    "pause-short",
    "majority-partition",
    "one-way-partition",
    "rolling-restart",
];

const NEMESIS_FULL: Duration = Duration::from_secs(600);

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("shoal-chaos: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn scenario_dir(given: Option<&Path>) -> PathBuf {
    if let Some(d) = given {
        return d.to_path_buf();
    }
    let here = Path::new("chaos/scenarios");
    if here.is_dir() {
        return here.to_path_buf();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

fn load_named(dir: &Path, name: &str) -> anyhow::Result<Scenario> {
    Ok(scenario::load(&dir.join(format!("{name}.yaml")))?)
}

fn all_scenarios(dir: &Path) -> anyhow::Result<Vec<Scenario>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .iter()
        .map(|p| scenario::load(p).map_err(Into::into))
        .collect()
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "needs root: it creates network namespaces, veths and routes (run it as root, e.g. with sudo)"
        );
    }
    Ok(())
}

fn seed_from_clock() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        % 1_000_000
}

/// One planned run.
struct Plan {
    scenario: Scenario,
    bug: Option<String>,
    expect: Option<Invariant>,
    replay: Option<String>,
}

fn real_main(cli: Cli) -> anyhow::Result<bool> {
    let dir = scenario_dir(cli.scenarios.as_deref());
    let mut plans = Vec::new();
    let mut repeat = 1;
    match cli.command {
        Cmd::List => {
            for s in all_scenarios(&dir)? {
                let ci = if CI.contains(&s.name.as_str()) {
                    " [ci]"
                } else {
                    ""
                };
                println!(
                    "{:<28} {} nodes  {}{ci}",
                    s.name,
                    s.start().nodes,
                    s.description
                );
                for (bug, i) in &s.bugs {
                    println!("{:<28}   with bug {bug}: {i} must fail", "");
                }
            }
            println!(
                "suites: ci = {}; full = every scenario + nemesis 10m; bugs = every bugs: entry",
                CI.join(", ")
            );
            return Ok(true);
        }
        Cmd::Measure(args) => {
            let shoal = fleet::find_shoal(cli.shoal.as_deref())?;
            eprintln!("shoal-chaos: measuring {}", shoal.display());
            measure::run(&shoal, &args)?;
            return Ok(true);
        }
        Cmd::Sweep => {
            require_root()?;
            for name in net::sweep() {
                println!("removed {name}");
            }
            return Ok(true);
        }
        Cmd::Validate { files } => {
            for f in &files {
                let s = scenario::load(f)?;
                println!("{}: ok ({} steps)", f.display(), s.steps.len());
            }
            return Ok(true);
        }
        Cmd::Run {
            files,
            repeat: r,
            deliberate_bug,
            expect,
        } => {
            repeat = r;
            if files.is_empty() {
                bail!("run needs scenario files, for example chaos/scenarios/kill-one.yaml");
            }
            for f in &files {
                let s = scenario::load(f)?;
                let expect = match (&deliberate_bug, expect) {
                    (Some(_), Some(i)) => Some(i),
                    (Some(b), None) => Some(*s.bugs.get(b).with_context(|| {
                        format!(
                            "scenario {} names no invariant for bug {b}: add `bugs: {{ {b}: INVARIANT }}` or pass --expect",
                            s.name
                        )
                    })?),
                    (None, e) => e,
                };
                plans.push(Plan {
                    scenario: s,
                    bug: deliberate_bug.clone(),
                    expect,
                    replay: None,
                });
            }
        }
        Cmd::Suite {
            suite,
            repeat: r,
            seed,
        } => {
            repeat = r;
            match suite {
                Suite::Ci => {
                    for name in CI {
                        plans.push(Plan {
                            scenario: load_named(&dir, name)?,
                            bug: None,
                            expect: None,
                            replay: None,
                        });
                    }
                }
                Suite::Full => {
                    for s in all_scenarios(&dir)? {
                        plans.push(Plan {
                            scenario: s,
                            bug: None,
                            expect: None,
                            replay: None,
                        });
                    }
                    let seed = seed.unwrap_or_else(seed_from_clock);
                    plans.push(nemesis_plan(seed, NEMESIS_FULL, 5));
                }
                Suite::Bugs => {
                    for s in all_scenarios(&dir)? {
                        if s.bugs.is_empty() {
                            continue;
                        }
                        // The baseline: without the bug the invariant must hold, or catching
                        // the bug would prove nothing.
                        plans.push(Plan {
                            scenario: s.clone(),
                            bug: None,
                            expect: None,
                            replay: None,
                        });
                        for (bug, inv) in s.bugs.clone() {
                            plans.push(Plan {
                                scenario: s.clone(),
                                bug: Some(bug),
                                expect: Some(inv),
                                replay: None,
                            });
                        }
                    }
                }
            }
        }
        Cmd::Nemesis {
            seed,
            duration,
            nodes,
        } => {
            if !(3..=9).contains(&nodes) {
                bail!("--nodes must be between 3 and 9");
            }
            let seed = seed.unwrap_or_else(seed_from_clock);
            plans.push(nemesis_plan(seed, duration, nodes));
        }
    }
    require_root()?;
    let shoal = fleet::find_shoal(cli.shoal.as_deref())?;
    interrupt::install();
    eprintln!("shoal-chaos: agent binary {}", shoal.display());
    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut tag = 0;
    'plans: for plan in &plans {
        for _ in 0..repeat {
            if interrupt::interrupted() {
                break 'plans;
            }
            if let Some(r) = &plan.replay {
                eprintln!("replay: {r}");
            }
            let opts = RunOpts {
                shoal: shoal.clone(),
                out: cli.out.clone(),
                bug: plan.bug.clone(),
                expect_fail: plan.expect,
                tag,
                replay: plan.replay.clone(),
                sample_every: cli.sample_every,
            };
            tag += 1;
            let mut scenario = plan.scenario.clone();
            if let Some(p) = &cli.profile {
                scenario.set_profile(p);
            }
            let r = runner::run(&scenario, &opts);
            print_verdict(&r);
            results.push(r);
            // Keep the report current, so an interrupted suite still leaves one.
            report::write(&cli.out, &results)?;
        }
    }
    let ok = !results.is_empty()
        && !interrupt::interrupted()
        && results.iter().all(|r| r.verdict == Verdict::Pass);
    eprintln!(
        "shoal-chaos: {} of {} runs passed; report in {}",
        results
            .iter()
            .filter(|r| r.verdict == Verdict::Pass)
            .count(),
        results.len(),
        cli.out.join("report.md").display()
    );
    if interrupt::interrupted() {
        eprintln!("shoal-chaos: interrupted; everything the harness made was torn down");
    }
    Ok(ok)
}

fn nemesis_plan(seed: u64, duration: Duration, nodes: usize) -> Plan {
    let replay = format!(
        "shoal-chaos nemesis --seed {seed} --duration {} --nodes {nodes}",
        humantime::format_duration(duration)
    );
    Plan {
        scenario: nemesis::schedule(seed, duration, nodes),
        bug: None,
        expect: None,
        replay: Some(replay),
    }
}

fn print_verdict(r: &ScenarioResult) {
    let slug = r.slug();
    match r.verdict {
        Verdict::Pass => match (r.expect_fail, &r.bug) {
            (Some(i), Some(b)) => eprintln!("PASS {slug}: invariant {i} caught bug {b}"),
            _ => eprintln!("PASS {slug}"),
        },
        Verdict::Fail => {
            if let (Some(i), Some(b)) = (r.expect_fail, &r.bug) {
                eprintln!("FAIL {slug}: invariant {i} did not catch bug {b}");
            }
            for i in r.failed() {
                let first = r.invariants[&i]
                    .violations
                    .first()
                    .map(|f| f.text.clone())
                    .unwrap_or_default();
                eprintln!("FAIL {slug}: invariant {i} failed: {first}");
            }
        }
        Verdict::Error => eprintln!(
            "ERROR {slug}: {}",
            r.error.as_deref().unwrap_or("unknown error")
        ),
    }
    if r.verdict != Verdict::Pass
        && let Some(replay) = &r.replay
    {
        eprintln!("replay: {replay}");
    }
}
