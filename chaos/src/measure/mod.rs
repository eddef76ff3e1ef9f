//! `shoal-chaos measure`: the real (release) binary as agents on 127.0.0.1, measured against the
//! figures the issues ask for, printed as the Markdown tables of `docs/measurements.md`. Nothing
//! here asserts: it measures. Agents are started, queried and counted through the one fleet
//! harness (`shoal::harness`); no namespace and no root are needed.
//!
//! Sections (`--only`): `single` (idle RSS, deploy -> running, binary size), `kill` and
//! `kill-docker` (kill -9 -> down, -> replacement running), `idle` (control-plane bytes, RSS
//! and CPU), `writes` (write -> visible everywhere, bytes per write), `docker` (deploy against
//! a plain `docker run`), `placement` (many replicas in one deploy; bids per placed slot). Each
//! lives in its own file; this one holds the options, the report and what they share.

mod docker;
mod failover;
mod placement;
mod single;
mod traffic;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::bail;
use shoal::harness::cli::AgentCli;
use shoal::harness::{Fleet, procs};
use shoal::node::api::Counters;

/// Measure the real binary on 127.0.0.1 and print Markdown tables (no root needed).
#[derive(clap::Args, Debug)]
pub struct MeasureArgs {
    /// Sections to run, comma-separated: single, kill, kill-docker, idle, writes, docker,
    /// placement.
    #[arg(
        long,
        default_value = "single,kill,kill-docker,idle,writes,docker,placement"
    )]
    pub only: String,
    /// kill -9 trials per driver.
    #[arg(long, default_value_t = 20)]
    pub kills: usize,
    /// Writes timed in the writes section.
    #[arg(long, default_value_t = 100)]
    pub writes: usize,
    /// Fleet sizes of the idle section, comma-separated.
    #[arg(long, default_value = "5,20")]
    pub idle_sizes: String,
    /// Replicas in the one deploy of the placement section.
    #[arg(long, default_value_t = 1000)]
    pub place_replicas: u32,
    /// Fleet sizes of the bids-per-slot table, comma-separated.
    #[arg(long, default_value = "5,20")]
    pub bid_sizes: String,
    /// Agent profiles the placement section runs with, comma-separated.
    #[arg(long, default_value = "lan,wan")]
    pub place_profiles: String,
}

const SECTIONS: &[&str] = &[
    "single",
    "kill",
    "kill-docker",
    "idle",
    "writes",
    "docker",
    "placement",
];

fn list<T: std::str::FromStr>(flag: &str, s: &str) -> anyhow::Result<Vec<T>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .map_err(|_| anyhow::anyhow!("--{flag}: {x:?} is not a number"))
        })
        .collect()
}

/// Runs the chosen sections with `shoal` and prints the report on stdout.
pub fn run(shoal: &Path, args: &MeasureArgs) -> anyhow::Result<()> {
    let only: Vec<&str> = args.only.split(',').map(str::trim).collect();
    if let Some(bad) = only.iter().find(|s| !SECTIONS.contains(s)) {
        bail!(
            "--only: unknown section {bad:?} (known: {})",
            SECTIONS.join(", ")
        );
    }
    let idle_sizes: Vec<usize> = list("idle-sizes", &args.idle_sizes)?;
    let bid_sizes: Vec<usize> = list("bid-sizes", &args.bid_sizes)?;
    let profiles: Vec<String> = args
        .place_profiles
        .split(',')
        .map(|p| p.trim().to_owned())
        .collect();
    let m = Measure {
        shoal: shoal.to_path_buf(),
    };
    let mut report = vec![format!(
        "## Shoal measurements ({}, {} cores, load {:.1})\n",
        now_minutes(),
        cores(),
        load()
    )];
    if only.contains(&"single") {
        single::single(&m, &mut report)?;
    }
    if only.contains(&"kill") {
        failover::kills(&m, &mut report, args.kills, "process")?;
    }
    if only.contains(&"kill-docker") {
        failover::kills(&m, &mut report, args.kills, "docker")?;
    }
    if only.contains(&"idle") {
        traffic::idle(&m, &mut report, &idle_sizes)?;
    }
    if only.contains(&"writes") {
        traffic::writes(&m, &mut report, args.writes)?;
    }
    if only.contains(&"docker") {
        docker::docker(&m, &mut report, 10)?;
    }
    if only.contains(&"placement") {
        placement::placement(&m, &mut report, args.place_replicas, &bid_sizes, &profiles)?;
    }
    println!("{}", report.join("\n"));
    Ok(())
}

/// What every section needs.
pub struct Measure {
    pub shoal: PathBuf,
}

impl Measure {
    /// `n` process-driver agents (or `runtime`) with `args` and `env`, joined and formed.
    fn fleet(
        &self,
        n: usize,
        runtime: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Fleet> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Ok(Fleet::start(&self.shoal, n, runtime, &args, env)?)
    }
}

/// The docker test image the docker sections use (built by `cargo test --test docker_driver`).
const TEST_IMAGE: &str = "shoal-test/busybox:1";

/// Whether docker has the test image.
fn has_test_image() -> bool {
    std::process::Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Writes the spec of a `sleep` service and returns its path.
fn spec(dir: &Path, name: &str, replicas: u32, cpu: &str, mem: &str) -> anyhow::Result<PathBuf> {
    write_spec(
        dir,
        name,
        &format!(
            "name: {name}\ncommand: [\"sleep\", \"100000\"]\nreplicas: {replicas}\nresources: {{cpu: {cpu}, memory: {mem}}}\n"
        ),
    )
}

/// Writes the spec of a `sleep` service in the docker test image and returns its path.
fn image_spec(
    dir: &Path,
    file: &str,
    name: &str,
    replicas: u32,
    cpu: &str,
) -> anyhow::Result<PathBuf> {
    write_spec(
        dir,
        file,
        &format!(
            "name: {name}\nimage: {TEST_IMAGE}\ncommand: [sleep, '100000']\nreplicas: {replicas}\nresources: {{cpu: {cpu}, memory: 16Mi}}\n"
        ),
    )
}

fn write_spec(dir: &Path, file: &str, body: &str) -> anyhow::Result<PathBuf> {
    let p = dir.join(format!("{file}.yaml"));
    std::fs::write(&p, body)?;
    Ok(p)
}

/// Polls `ps SERVICE` on `cli` every `every` until `want` rows all run or `timeout` passes;
/// returns the last rows seen and whether they all ran.
fn wait_all_running(
    cli: &AgentCli,
    service: &str,
    want: usize,
    timeout: Duration,
    every: Duration,
) -> (Vec<shoal::node::api::PsEntry>, bool) {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = cli.ps(Some(service)).unwrap_or_default();
        let done = rows.len() == want && rows.iter().all(|r| r.state == "running");
        if done || Instant::now() >= deadline {
            return (rows, done);
        }
        std::thread::sleep(every);
    }
}

/// The counters of every agent's `status`, summed (an agent that does not answer adds 0).
fn fleet_counters(f: &Fleet) -> Counters {
    let mut t = Counters::default();
    for a in &f.agents {
        if let Ok(s) = a.cli().status() {
            let c = s.counters;
            t.bids_sent += c.bids_sent;
            t.bids_received += c.bids_received;
            t.claims_won += c.claims_won;
            t.net_bytes_in += c.net_bytes_in;
            t.net_bytes_out += c.net_bytes_out;
        }
    }
    t
}

/// Occurrences of `text` in every agent's log.
fn log_count(f: &Fleet, text: &str) -> usize {
    f.agents
        .iter()
        .map(|a| a.log_text().matches(text).count())
        .sum()
}

/// The instances of `service` running now, from the process table.
fn service_instances(service: &str) -> Vec<procs::Instance> {
    procs::instances_of(service)
}

/// Waits up to `timeout` for the instances of a removed service to go, then SIGKILLs every
/// process left. Returns (seconds waited, instances that had to be killed).
fn reap_service(service: &str, timeout: Duration) -> (f64, usize) {
    let t0 = Instant::now();
    while !service_instances(service).is_empty() && t0.elapsed() < timeout {
        std::thread::sleep(Duration::from_millis(500));
    }
    let left = service_instances(service).len();
    let pids: Vec<u32> = procs::scan(|_, _| true)
        .into_iter()
        .filter(|p| p.env.get("SHOAL_SERVICE").map(String::as_str) == Some(service))
        .map(|p| p.pid)
        .collect();
    procs::kill_all(&pids);
    (t0.elapsed().as_secs_f64(), left)
}

/// The `p`-th percentile of `xs`, NaN when empty (printed `nan`, as the tables always have).
fn pct(xs: &[f64], p: f64) -> f64 {
    shoal::harness::percentile(xs, p).unwrap_or(f64::NAN)
}

/// `x` with `prec` decimals; `nan` for NaN.
fn f(x: f64, prec: usize) -> String {
    if x.is_nan() {
        "nan".into()
    } else {
        format!("{x:.prec$}")
    }
}

/// `YYYY-MM-DD HH:MM`, UTC.
fn now_minutes() -> String {
    let s = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    s.get(..16).unwrap_or(&s).replace('T', " ")
}

fn cores() -> i64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }
}

/// The 1-minute load average.
fn load() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_the_tables_print_them() {
        assert_eq!(f(f64::NAN, 2), "nan");
        assert_eq!(f(1.234, 2), "1.23");
        assert_eq!(f(pct(&[], 50.0), 0), "nan");
        assert_eq!(now_minutes().len(), 16);
    }

    #[test]
    fn lists_of_sizes_name_the_flag_they_came_from() {
        assert_eq!(list::<usize>("idle-sizes", "5, 20").unwrap(), vec![5, 20]);
        let e = list::<usize>("bid-sizes", "5,x").unwrap_err().to_string();
        assert!(e.contains("--bid-sizes"), "{e}");
    }
}
