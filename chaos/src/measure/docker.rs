//! The `docker` section: one agent with the docker driver. Deploy -> container running against
//! a plain `docker run -d` of the same local image with the same limits, and the agent's RSS
//! with 20 running containers. Needs the test image (`cargo test --test docker_driver` builds
//! it); without it the section says so and measures nothing.

use std::process::Command;
use std::time::{Duration, Instant};

use shoal::harness::Fleet;

use super::failover::{DOCKER_CPU, DOCKER_CPUS, docker_containers, docker_on};
use super::{Measure, TEST_IMAGE, f, has_test_image, image_spec, pct, wait_all_running};

pub fn docker(m: &Measure, report: &mut Vec<String>, trials: usize) -> anyhow::Result<()> {
    if !has_test_image() {
        report.push(format!(
            "### Docker driver (issue 5)\n\nnot measured: image {TEST_IMAGE} missing (run the docker tests first)\n"
        ));
        return Ok(());
    }
    let mut fl = Fleet::new(&m.shoal, "shoal-measure-docker-")?;
    // The agent's default runtime, as a person would start it.
    let i = fl.prepare(None, &[], &[])?;
    fl.agents[i].poll_every = Duration::from_millis(50);
    let result = measure(&mut fl, report, trials);
    let cli = fl.agents[0].cli();
    let node = cli.status().ok().map(|s| s.node);
    fl.agents[0].kill9();
    if let Some(node) = node {
        docker_on(&["rm", "-f"], &docker_containers(&node, true));
    }
    result
}

fn measure(fl: &mut Fleet, report: &mut Vec<String>, trials: usize) -> anyhow::Result<()> {
    // The agent may be slow to answer the first time (docker connects); go on regardless.
    let _ = fl.agents[0].start();
    let cli = fl.agents[0].cli();
    let root = fl.root.path().to_path_buf();
    let pid = std::process::id();
    let (mut ours, mut plain) = (Vec::new(), Vec::new());
    for i in 0..trials {
        let name = format!("dk{i}-{pid}");
        let p = image_spec(&root, &name, &name, 1, DOCKER_CPU)?;
        let t0 = Instant::now();
        let _ = cli.deploy(&p);
        while t0.elapsed() < Duration::from_secs(60) {
            let rows = cli.ps(Some(&name)).unwrap_or_default();
            if rows.first().is_some_and(|r| r.state == "running") {
                ours.push(t0.elapsed().as_secs_f64());
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = cli.rm(&name);
        let t0 = Instant::now();
        let plain_name = format!("plain-{name}");
        let r = Command::new("docker")
            .args([
                "run",
                "-d",
                "--rm",
                "--name",
                &plain_name,
                "--cpus",
                DOCKER_CPUS,
            ])
            .args(["--memory", "16m", "--memory-swap", "16m", TEST_IMAGE])
            .args(["sleep", "100000"])
            .output();
        if r.is_ok_and(|o| o.status.success()) {
            plain.push(t0.elapsed().as_secs_f64());
            let _ = Command::new("docker")
                .args(["rm", "-f", &plain_name])
                .output();
        }
    }
    let many = format!("many-{pid}");
    let _ = cli.deploy(&image_spec(&root, "many", &many, 20, "10m")?);
    wait_all_running(
        &cli,
        &many,
        20,
        Duration::from_secs(120),
        Duration::from_millis(200),
    );
    std::thread::sleep(Duration::from_secs(5));
    let rss = fl.agents[0].rss_kib().unwrap_or(0) as f64 / 1024.0;
    let _ = cli.rm(&many);
    std::thread::sleep(Duration::from_secs(5));
    report.push("### Docker driver (issue 5)\n".into());
    report.push("| figure | measured |\n| --- | --- |".into());
    report.push(format!(
        "| deploy -> container running (shoal, CLI round trips included), p50 over {} | {} ms |",
        ours.len(),
        f(pct(&ours, 50.0) * 1000.0, 0)
    ));
    report.push(format!(
        "| plain `docker run -d --cpus {DOCKER_CPUS} --memory 16m` of the same image, p50 over {} | {} ms |",
        plain.len(),
        f(pct(&plain, 50.0) * 1000.0, 0)
    ));
    if !plain.is_empty() && !ours.is_empty() {
        report.push(format!(
            "| overhead ratio (p50 / p50) | {:.2} |",
            pct(&ours, 50.0) / pct(&plain, 50.0)
        ));
    }
    report.push(format!(
        "| agent RSS with 20 running containers | {rss:.1} MiB |\n"
    ));
    Ok(())
}
