//! The `placement` section: many replicas of a tiny `sleep` service in one deploy, over one
//! agent and over five, with each profile: deploy -> every slot owned and running in `ps`, what
//! really runs (instances in `/proc`, by the agent that started them), agent CPU and RSS, and
//! `shoal rm` -> nothing left. Then bids per placed slot on fleets of each `--bid-sizes`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use shoal::harness::procs::{self, clock_ticks_per_second};
use shoal::node::api::Counters;

use super::{
    Measure, f, fleet_counters, log_count, pct, reap_service, service_instances, spec,
    wait_all_running,
};

/// Capacity each agent claims here: 1,000 slots of 1m / 1Mi fit on any one.
const PLACE_CAPACITY: [&str; 4] = ["--cpu", "4", "--memory", "4Gi"];

/// The figures of one `place_many` run.
struct PlaceRun {
    profile: String,
    n: usize,
    deploy_ms: f64,
    placed: Option<f64>,
    half: Option<f64>,
    done: Option<f64>,
    ps_running: usize,
    poll_p50: f64,
    poll_max: f64,
    settle: f64,
    instances: usize,
    per_node: BTreeMap<String, usize>,
    wall: f64,
    counters: Counters,
    cpu_s: Vec<f64>,
    downs: usize,
    rss_before: Vec<u64>,
    rss_max: Vec<u64>,
    hwm: Vec<u64>,
    rm_s: f64,
    rm_killed: usize,
}

fn counters_diff(a: &Counters, b: &Counters) -> Counters {
    Counters {
        bids_sent: b.bids_sent.saturating_sub(a.bids_sent),
        bids_received: b.bids_received.saturating_sub(a.bids_received),
        claims_won: b.claims_won.saturating_sub(a.claims_won),
        ..Counters::default()
    }
}

fn profile_args(profile: &str) -> Vec<&str> {
    let mut a = PLACE_CAPACITY.to_vec();
    a.extend(["--profile", profile]);
    a
}

/// `replicas` slots over `n` agents: deploy returned -> `ps` on the deploying node shows every
/// slot running; then what really runs, waiting up to `settle` for it to reach `replicas`.
fn place_many(m: &Measure, replicas: u32, n: usize, profile: &str) -> anyhow::Result<PlaceRun> {
    let timeout = Duration::from_secs(300);
    let settle = Duration::from_secs(60);
    let name = format!("place-{profile}-{}", std::process::id());
    let want = replicas as usize;
    let mut fl = m.fleet(n, "process", &profile_args(profile), &[])?;
    let a0 = fl.agents[0].cli();
    std::thread::sleep(Duration::from_secs(3));
    let rss_before: Vec<u64> = fl.agents.iter().map(|a| a.rss_kib().unwrap_or(0)).collect();
    let pids: Vec<u32> = fl.agents.iter().filter_map(|a| a.pid()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let rss_max = Arc::new(Mutex::new(vec![0u64; pids.len()]));
    let sampler = {
        let (stop, rss_max, pids) = (stop.clone(), rss_max.clone(), pids.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for (i, p) in pids.iter().enumerate() {
                    let r = procs::rss_kib(*p).unwrap_or(0);
                    let mut m = rss_max.lock().unwrap_or_else(|e| e.into_inner());
                    m[i] = m[i].max(r);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let c0 = fleet_counters(&fl);
    let cpu0: Vec<u64> = fl
        .agents
        .iter()
        .map(|a| a.cpu_ticks().unwrap_or(0))
        .collect();
    let downs0 = log_count(&fl, "member down");
    let p = spec(fl.root.path(), &name, replicas, "1m", "1Mi")?;
    let td = Instant::now();
    let r = a0.deploy(&p);
    let t0 = Instant::now();
    let deploy_ms = (t0 - td).as_secs_f64() * 1000.0;
    if let Err(e) = r {
        stop.store(true, Ordering::Relaxed);
        let _ = sampler.join();
        return Err(e).with_context(|| format!("deploy of {replicas} replicas failed"));
    }
    let (mut placed, mut half, mut done) = (None, None, None);
    let (mut rows, mut polls) = (Vec::new(), Vec::new());
    while t0.elapsed() < timeout {
        let tq = Instant::now();
        rows = a0.ps(Some(&name)).unwrap_or_default();
        let now = t0.elapsed().as_secs_f64();
        polls.push(tq.elapsed().as_secs_f64());
        if placed.is_none()
            && rows.len() == want
            && rows
                .iter()
                .all(|x| x.node.as_deref().is_some_and(|s| !s.is_empty()))
        {
            placed = Some(now);
        }
        let nrun = rows.iter().filter(|x| x.state == "running").count();
        if half.is_none() && nrun >= want / 2 {
            half = Some(now);
        }
        if rows.len() == want && nrun == want {
            done = Some(now);
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let ps_running = rows.iter().filter(|x| x.state == "running").count();
    // What really runs: instances in /proc, by the agent that started them.
    let t1 = Instant::now();
    let found = loop {
        let found = service_instances(&name);
        if found.len() == want || t1.elapsed() >= settle {
            break found;
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let settled = t1.elapsed().as_secs_f64();
    let by_pid: BTreeMap<u32, String> = fl
        .agents
        .iter()
        .enumerate()
        .filter_map(|(i, a)| Some((a.pid()?, format!("n{i}"))))
        .collect();
    let mut per_node = BTreeMap::new();
    for i in &found {
        let who = by_pid
            .get(&i.ppid)
            .cloned()
            .unwrap_or_else(|| "other".into());
        *per_node.entry(who).or_insert(0) += 1;
    }
    let wall = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let c1 = fleet_counters(&fl);
    let hz = clock_ticks_per_second() as f64;
    let cpu_s = fl
        .agents
        .iter()
        .zip(&cpu0)
        .map(|(a, x)| a.cpu_ticks().unwrap_or(0).saturating_sub(*x) as f64 / hz)
        .collect();
    let downs = log_count(&fl, "member down").saturating_sub(downs0);
    let hwm = fl.agents.iter().map(|a| a.hwm_kib().unwrap_or(0)).collect();
    let _ = a0.rm(&name);
    let (rm_s, rm_killed) = reap_service(&name, settle);
    for a in &mut fl.agents {
        let _ = a.stop(Duration::from_secs(10));
    }
    drop(fl);
    let (_, killed) = reap_service(&name, Duration::ZERO);
    if killed > 0 {
        eprintln!("placement: killed {killed} leftover instances of {name}");
    }
    let rss_max = rss_max.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Ok(PlaceRun {
        profile: profile.to_owned(),
        n,
        deploy_ms,
        placed,
        half,
        done,
        ps_running,
        poll_p50: pct(&polls, 50.0),
        poll_max: polls.iter().copied().fold(0.0, f64::max),
        settle: settled,
        instances: found.len(),
        per_node,
        wall,
        counters: counters_diff(&c0, &c1),
        cpu_s,
        downs,
        rss_before,
        rss_max,
        hwm,
        rm_s,
        rm_killed,
    })
}

fn t(x: Option<f64>) -> String {
    x.map_or("not reached".into(), |x| format!("{x:.1} s"))
}

fn mib(xs: &[u64]) -> String {
    let lo = xs.iter().min().copied().unwrap_or(0) as f64 / 1024.0;
    let hi = xs.iter().max().copied().unwrap_or(0) as f64 / 1024.0;
    format!("{lo:.0}-{hi:.0} MiB")
}

type Row<'a> = (String, Box<dyn Fn(&PlaceRun) -> String + 'a>);

fn place_report(report: &mut Vec<String>, replicas: u32, runs: &[PlaceRun]) {
    let cap = PLACE_CAPACITY.join(" ");
    report.push(format!(
        "### Placement: {replicas} replicas in one deploy, process driver\n"
    ));
    report.push(format!(
        "Spec `command: [sleep, '100000']`, `resources: {{cpu: 1m, memory: 1Mi}}`, `replicas: {replicas}`; \
agents started with `{cap} --profile P`. Times from the deploy command returning; `shoal ps SERVICE -o json` \
polled on the deploying node every 200 ms plus the poll itself. \"Instances in /proc\" counts processes whose \
environment has the service's SHOAL_SERVICE, by parent agent, after `ps` showed all running (or gave up), \
waiting up to 60 s for the count to reach {replicas}.\n"
    ));
    let heads: Vec<String> = runs
        .iter()
        .map(|r| {
            let s = if r.n > 1 { "s" } else { "" };
            format!("{} agent{s}, `--profile {}`", r.n, r.profile)
        })
        .collect();
    report.push(format!("| figure | {} |", heads.join(" | ")));
    report.push(format!("| --- |{}", " --- |".repeat(runs.len())));
    let rs = replicas as f64;
    let rows: Vec<Row> = vec![
        (
            "deploy command (write acknowledged)".into(),
            Box::new(|r| f(r.deploy_ms, 0) + " ms"),
        ),
        (
            "-> every slot has an owner in `ps`".into(),
            Box::new(|r| t(r.placed)),
        ),
        (
            format!("-> {} running in `ps`", replicas / 2),
            Box::new(|r| t(r.half)),
        ),
        (
            format!("-> all {replicas} running in `ps`"),
            Box::new(|r| match r.done {
                Some(_) => t(r.done),
                None => format!("not reached ({} running)", r.ps_running),
            }),
        ),
        (
            "one `ps` poll, p50 / max".into(),
            Box::new(|r| {
                format!(
                    "{} ms / {:.0} ms",
                    f(r.poll_p50 * 1000.0, 0),
                    r.poll_max * 1000.0
                )
            }),
        ),
        (
            "instances in /proc at the end".into(),
            Box::new(|r| format!("{} (after {:.0} s more)", r.instances, r.settle)),
        ),
        (
            "instances per node".into(),
            Box::new(|r| {
                let s: Vec<String> = r.per_node.iter().map(|(k, v)| format!("{k} {v}")).collect();
                if s.is_empty() {
                    "none".into()
                } else {
                    s.join(", ")
                }
            }),
        ),
        (
            "`member down` events logged (all agents)".into(),
            Box::new(|r| r.downs.to_string()),
        ),
        (
            "agent CPU during the run (per agent)".into(),
            Box::new(|r| {
                let s: Vec<String> = r.cpu_s.iter().map(|x| format!("{x:.1}")).collect();
                format!("{} s over {:.0} s", s.join(", "), r.wall)
            }),
        ),
        (
            "agent RSS before the deploy".into(),
            Box::new(|r| mib(&r.rss_before)),
        ),
        (
            "agent RSS max during the run (sampled every 0.1 s)".into(),
            Box::new(|r| mib(&r.rss_max)),
        ),
        (
            "agent peak RSS (VmHWM) at the end".into(),
            Box::new(|r| mib(&r.hwm)),
        ),
        (
            "bids sent / received / claims won (all nodes)".into(),
            Box::new(|r| {
                let c = &r.counters;
                format!("{} / {} / {}", c.bids_sent, c.bids_received, c.claims_won)
            }),
        ),
        (
            "bids sent per slot".into(),
            Box::new(move |r| format!("{:.2}", r.counters.bids_sent as f64 / rs)),
        ),
        (
            "`shoal rm` -> no instance left (SIGKILLed after 60 s)".into(),
            Box::new(|r| format!("{:.1} s, {} killed", r.rm_s, r.rm_killed)),
        ),
    ];
    for (label, cell) in &rows {
        let cells: Vec<String> = runs.iter().map(cell).collect();
        report.push(format!("| {label} | {} |", cells.join(" | ")));
    }
    report.push(String::new());
}

/// Bid broadcasts in an agent log at `shoal::node=debug`, counted as runs of consecutive `bid`
/// lines: one auction round logs its bids back to back and broadcasts them as one message, so
/// this is a lower bound (two rounds with no other node line between count as one).
fn bid_batches(log: &str) -> usize {
    let (mut runs, mut prev) = (0, false);
    for line in log.lines().filter(|l| l.contains("shoal::node")) {
        let is_bid = line.contains(" bid slot=");
        if is_bid && !prev {
            runs += 1;
        }
        prev = is_bid;
    }
    runs
}

fn bid_cost(
    m: &Measure,
    report: &mut Vec<String>,
    sizes: &[usize],
    profiles: &[String],
) -> anyhow::Result<()> {
    let replicas: u32 = 100;
    let timeout = Duration::from_secs(120);
    let rs = f64::from(replicas);
    report.push(format!(
        "### Bids per placed slot, {replicas} replicas in one deploy\n"
    ));
    report.push(
        "`bids_sent`, `bids_received` and `claims_won` are summed over every node's \
`shoal status -o json` counters (after minus before the deploy, read 3 s after `ps` showed every slot \
running). The counters count bids, not bid messages; bid broadcasts are counted from the agents' \
`shoal::node=debug` logs as runs of consecutive `bid` lines (a lower bound). Instances in /proc as above.\n"
            .into(),
    );
    report.push(
        "| agents | profile | deploy -> all running in `ps` | bids sent per slot | bid broadcasts per slot \
| bids received per slot (all nodes) | claims won per slot | `member down` events | instances in /proc \
|\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
            .into(),
    );
    for profile in profiles {
        for &n in sizes {
            let name = format!("bids{n}-{profile}-{}", std::process::id());
            let env = [("SHOAL_LOG", "info,shoal::node=debug")];
            let result = (|| -> anyhow::Result<()> {
                let fl = m.fleet(n, "process", &profile_args(profile), &env)?;
                let a0 = fl.agents[0].cli();
                let batches =
                    || -> usize { fl.agents.iter().map(|a| bid_batches(&a.log_text())).sum() };
                std::thread::sleep(Duration::from_secs(3));
                let c0 = fleet_counters(&fl);
                let b0 = batches();
                let d0 = log_count(&fl, "member down");
                let _ = a0.deploy(&spec(fl.root.path(), &name, replicas, "1m", "1Mi")?);
                let t0 = Instant::now();
                let (_, all) = wait_all_running(
                    &a0,
                    &name,
                    replicas as usize,
                    timeout,
                    Duration::from_millis(100),
                );
                let done = all.then(|| t0.elapsed().as_secs_f64());
                std::thread::sleep(Duration::from_secs(3));
                let d = counters_diff(&c0, &fleet_counters(&fl));
                let b1 = batches();
                let inst = service_instances(&name).len();
                let done = done.map_or(format!("not reached in {} s", timeout.as_secs()), |x| {
                    format!("{x:.1} s")
                });
                report.push(format!(
                    "| {n} | {profile} | {done} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {inst} |",
                    d.bids_sent as f64 / rs,
                    b1.saturating_sub(b0) as f64 / rs,
                    d.bids_received as f64 / rs,
                    d.claims_won as f64 / rs,
                    log_count(&fl, "member down").saturating_sub(d0),
                ));
                let _ = a0.rm(&name);
                reap_service(&name, Duration::from_secs(60));
                Ok(())
            })();
            reap_service(&name, Duration::ZERO);
            result?;
        }
    }
    report.push(String::new());
    Ok(())
}

pub fn placement(
    m: &Measure,
    report: &mut Vec<String>,
    replicas: u32,
    sizes: &[usize],
    profiles: &[String],
) -> anyhow::Result<()> {
    let first = profiles
        .first()
        .context("--place-profiles names no profile")?;
    // One agent alone first: what placing and starting costs a node without a fleet around it.
    let mut runs = vec![place_many(m, replicas, 1, first)?];
    for p in profiles {
        runs.push(place_many(m, replicas, 5, p)?);
    }
    place_report(report, replicas, &runs);
    bid_cost(m, report, sizes, profiles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bid_broadcasts_are_runs_of_consecutive_bid_lines() {
        let log = "x shoal::node: bid slot=a\nx shoal::node: bid slot=b\nx shoal::node: slot placed\n\
                   other crate line\nx shoal::node: bid slot=c\n";
        assert_eq!(bid_batches(log), 2);
    }
}
