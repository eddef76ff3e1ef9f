//! The `idle` and `writes` sections: what the control plane costs with nothing to do (bytes on
//! the wire, RSS and CPU per agent), and how fast a write reaches every node and what it costs
//! on the wire. Bytes are the agents' own `net_bytes_in` + `net_bytes_out` counters.

use std::time::{Duration, Instant};

use shoal::harness::Fleet;
use shoal::harness::procs::clock_ticks_per_second;

use super::{Measure, f, pct, spec};

/// Bytes in plus out of each agent, from its `status` counters.
fn bytes_per_agent(fl: &Fleet) -> anyhow::Result<Vec<u64>> {
    fl.agents
        .iter()
        .map(|a| {
            let c = a.cli().status()?.counters;
            Ok(c.net_bytes_in + c.net_bytes_out)
        })
        .collect()
}

fn cpu_per_agent(fl: &Fleet) -> Vec<u64> {
    fl.agents
        .iter()
        .map(|a| a.cpu_ticks().unwrap_or(0))
        .collect()
}

fn diff_sum(before: &[u64], after: &[u64]) -> f64 {
    before
        .iter()
        .zip(after)
        .map(|(x, y)| y.saturating_sub(*x) as f64)
        .sum()
}

pub fn idle(m: &Measure, report: &mut Vec<String>, sizes: &[usize]) -> anyhow::Result<()> {
    report.push("### Idle control plane (issue 3)\n".into());
    report.push(
        "| agents | bytes/s per node (in+out) | RSS per agent | CPU per agent |\n| --- | --- | --- | --- |"
            .into(),
    );
    for &n in sizes {
        let fl = m.fleet(n, "process", &[], &[])?;
        std::thread::sleep(Duration::from_secs(10));
        let b0 = bytes_per_agent(&fl)?;
        let c0 = cpu_per_agent(&fl);
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_secs(30));
        let b1 = bytes_per_agent(&fl)?;
        let c1 = cpu_per_agent(&fl);
        let dt = t0.elapsed().as_secs_f64();
        let nf = n as f64;
        let bps = diff_sum(&b0, &b1) / nf / dt;
        let hz = clock_ticks_per_second() as f64;
        let cpu = diff_sum(&c0, &c1) / nf / hz / dt * 100.0;
        let rss: u64 = fl.agents.iter().map(|a| a.rss_kib().unwrap_or(0)).sum();
        let rss = rss as f64 / nf / 1024.0;
        report.push(format!(
            "| {n} | {} B/s | {:.1} MiB | {:.2} % |",
            f(bps, 0),
            rss,
            cpu
        ));
    }
    report.push(String::new());
    Ok(())
}

pub fn writes(m: &Measure, report: &mut Vec<String>, count: usize) -> anyhow::Result<()> {
    let fl = m.fleet(5, "process", &[], &[])?;
    let clis: Vec<_> = fl.agents.iter().map(|a| a.cli()).collect();
    let mut lat = Vec::new();
    let b0: u64 = bytes_per_agent(&fl)?.iter().sum();
    for i in 0..count {
        let name = format!("w{i}");
        let p = spec(fl.root.path(), &name, 0, "10m", "8Mi")?;
        let t0 = Instant::now();
        let _ = clis[i % 5].deploy(&p);
        let mut pending: Vec<usize> = (0..5).collect();
        while !pending.is_empty() && t0.elapsed() < Duration::from_secs(30) {
            pending.retain(|&j| clis[j].history(&name).map_or(true, |h| h.is_empty()));
            std::thread::sleep(Duration::from_millis(5));
        }
        lat.push(t0.elapsed().as_secs_f64());
    }
    let b1: u64 = bytes_per_agent(&fl)?.iter().sum();
    report.push("### Replicated writes, 5 agents (issue 4)\n".into());
    report.push("| figure | measured |\n| --- | --- |".into());
    report.push(format!(
        "| write -> visible on all 5 (CLI polling included), p50 / p99 over {count} | {} ms / {} ms |",
        f(pct(&lat, 50.0) * 1000.0, 0),
        f(pct(&lat, 99.0) * 1000.0, 0)
    ));
    report.push(format!(
        "| wire bytes per write, all nodes together (idle traffic during the run included) | {} B |\n",
        f(b1.saturating_sub(b0) as f64 / count.max(1) as f64 / 2.0, 0)
    ));
    Ok(())
}
