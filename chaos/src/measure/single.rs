//! The `single` section: one agent alone. Its idle RSS with 0 and with 10 instances, deploy ->
//! instance running (20 deploys, CLI round trips included) and the size of the binary.

use std::time::{Duration, Instant};

use super::{Measure, f, pct, spec, wait_all_running};

pub fn single(m: &Measure, report: &mut Vec<String>) -> anyhow::Result<()> {
    let fl = m.fleet(1, "process", &[], &[])?;
    let a = &fl.agents[0];
    let cli = a.cli();
    let root = fl.root.path();
    std::thread::sleep(Duration::from_secs(5));
    let rss0 = a.rss_kib().unwrap_or(0) as f64;
    let _ = cli.deploy(&spec(root, "ten", 10, "10m", "8Mi")?);
    wait_all_running(
        &cli,
        "ten",
        10,
        Duration::from_secs(60),
        Duration::from_millis(100),
    );
    std::thread::sleep(Duration::from_secs(5));
    let rss10 = a.rss_kib().unwrap_or(0) as f64;
    let mut lat = Vec::new();
    for i in 0..20 {
        let name = format!("lat{i}");
        let p = spec(root, &name, 1, "10m", "8Mi")?;
        let t0 = Instant::now();
        let _ = cli.deploy(&p);
        while t0.elapsed() < Duration::from_secs(30) {
            let rows = cli.ps(Some(&name)).unwrap_or_default();
            if rows.first().is_some_and(|r| r.state == "running") {
                lat.push(t0.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let size = std::fs::metadata(&m.shoal)?.len() as f64;
    report.push("### Single node (issue 2)\n".into());
    report.push("| figure | measured |\n| --- | --- |".into());
    report.push(format!(
        "| agent idle RSS, 0 instances | {:.1} MiB |",
        rss0 / 1024.0
    ));
    report.push(format!(
        "| agent idle RSS, 10 instances | {:.1} MiB |",
        rss10 / 1024.0
    ));
    report.push(format!(
        "| deploy -> instance running, p50 / p90 (20 deploys, CLI round trips included) | {} ms / {} ms |",
        f(pct(&lat, 50.0) * 1000.0, 0),
        f(pct(&lat, 90.0) * 1000.0, 0)
    ));
    report.push(format!("| release binary size | {:.1} MB |\n", size / 1e6));
    Ok(())
}
