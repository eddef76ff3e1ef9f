//! The `kill` and `kill-docker` sections: five agents, a 10-replica service, and one agent at a
//! time killed with kill -9 together with its instances (a power loss). Timed from the kill:
//! every survivor lists it `down`, and all 10 replicas run on survivors again.

use std::process::Command;
use std::time::{Duration, Instant};

use super::{Measure, TEST_IMAGE, f, has_test_image, image_spec, pct, spec, wait_all_running};

/// CPU limit of the docker specs measured here. Docker applies it as a CFS quota from the
/// container's first instruction, so a tiny limit slows the start itself (see
/// `docs/measurements.md`); 100m is a small but realistic request.
pub const DOCKER_CPU: &str = "100m";
pub const DOCKER_CPUS: &str = "0.1";

/// Ids of the containers docker has for node `node_id` (running only, unless `all_states`).
pub fn docker_containers(node_id: &str, all_states: bool) -> Vec<String> {
    let mut cmd = Command::new("docker");
    cmd.args(["ps", "-q"]);
    if all_states {
        cmd.arg("-a");
    }
    cmd.args(["--filter", &format!("label=shoal.node={node_id}")]);
    cmd.output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `docker VERB ids…`, quietly (cleanup and faults; a failure leaves what it could not reach).
pub fn docker_on(verb: &[&str], ids: &[String]) {
    if !ids.is_empty() {
        let _ = Command::new("docker").args(verb).args(ids).output();
    }
}

pub fn kills(
    m: &Measure,
    report: &mut Vec<String>,
    trials: usize,
    runtime: &str,
) -> anyhow::Result<()> {
    if runtime == "docker" && !has_test_image() {
        report.push(format!(
            "### kill -9, docker driver\n\nnot measured: image {TEST_IMAGE} missing (run the docker tests first)\n"
        ));
        return Ok(());
    }
    let mut ids: Vec<String> = Vec::new();
    let result = kill_trials(m, report, trials, runtime, &mut ids);
    if runtime == "docker" {
        for id in &ids {
            docker_on(&["rm", "-f"], &docker_containers(id, true));
        }
    }
    result
}

fn kill_trials(
    m: &Measure,
    report: &mut Vec<String>,
    trials: usize,
    runtime: &str,
    ids: &mut Vec<String>,
) -> anyhow::Result<()> {
    let mut fl = m.fleet(5, runtime, &[], &[])?;
    let a0 = fl.agents[0].cli();
    let move_spec = if runtime == "docker" {
        image_spec(fl.root.path(), "move", "move", 10, DOCKER_CPU)?
    } else {
        spec(fl.root.path(), "move", 10, "10m", "8Mi")?
    };
    let _ = a0.deploy(&move_spec);
    let (mut downs, mut repl) = (Vec::new(), Vec::new());
    for a in &fl.agents {
        ids.push(a.cli().status()?.node);
    }
    for t in 0..trials {
        let v = 1 + t % 4;
        let (rows, _) = wait_all_running(
            &a0,
            "move",
            10,
            Duration::from_secs(60),
            Duration::from_millis(100),
        );
        let hosting = rows.iter().any(|r| r.node.as_deref() == Some(&ids[v]));
        let victim = &mut fl.agents[v];
        victim.kill9();
        shoal::harness::procs::kill_all(&victim.instance_pids());
        if runtime == "docker" {
            docker_on(&["kill"], &docker_containers(&ids[v], false));
        }
        let t0 = Instant::now();
        let (mut down, mut rep) = (None, None);
        while t0.elapsed() < Duration::from_secs(60) && (down.is_none() || rep.is_none()) {
            if down.is_none() {
                let all_down = fl.agents.iter().filter(|a| a.is_running()).all(|a| {
                    let nodes = a.cli().nodes().unwrap_or_default();
                    nodes
                        .iter()
                        .find(|x| x.id == ids[v])
                        .is_some_and(|x| x.state == "down")
                });
                if all_down {
                    down = Some(t0.elapsed().as_secs_f64());
                }
            }
            if rep.is_none() {
                let rows = a0.ps(Some("move")).unwrap_or_default();
                if rows.len() == 10
                    && rows
                        .iter()
                        .all(|r| r.state == "running" && r.node.as_deref() != Some(&ids[v]))
                {
                    rep = Some(t0.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        downs.extend(down);
        if hosting {
            repl.extend(rep);
        }
        fl.agents[v].start()?;
        fl.wait_alive(5, Duration::from_secs(60))?;
    }
    report.push(format!(
        "### kill -9 of an agent, 5 agents, LAN profile, {runtime} driver (issues 3 and 6)\n"
    ));
    report.push("| figure | p50 | p99 | trials |\n| --- | --- | --- | --- |".into());
    report.push(format!(
        "| kill -9 -> `down` on every survivor | {} s | {} s | {} |",
        f(pct(&downs, 50.0), 2),
        f(pct(&downs, 99.0), 2),
        downs.len()
    ));
    report.push(format!(
        "| kill -9 (agent and its instances) -> all 10 replicas running on survivors | {} s | {} s | {} |\n",
        f(pct(&repl, 50.0), 2),
        f(pct(&repl, 99.0), 2),
        repl.len()
    ));
    Ok(())
}
