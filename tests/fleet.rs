//! Multi-agent tests: real `shoal agent` processes on 127.0.0.1, joined through one seed, with
//! the process driver. Membership (issue: fleet membership), replicated state, and placement and
//! failover. Timeouts are correctness bounds, not performance assertions; the figures are measured
//! by `shoal-chaos measure`.
//!
//! The tests of this file run one at a time (a shared lock): several five-agent fleets at once
//! on a two-core machine would measure the machine, not Shoal.

mod support;

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::Duration;

use support::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn sigstop(a: &Agent) {
    unsafe { libc::kill(a.pid() as i32, libc::SIGSTOP) };
}

fn sigcont(a: &Agent) {
    unsafe { libc::kill(a.pid() as i32, libc::SIGCONT) };
}

#[test]
fn five_agents_join_detect_a_kill_see_a_leave_and_welcome_a_restart() {
    let _g = serial();
    let mut f = Fleet::start(5, &[]);
    let ids: Vec<String> = (0..5).map(|i| f.id(i)).collect();

    // kill -9: every survivor sees it down.
    f.agents[4].kill9();
    wait_for("node 4 down everywhere", Duration::from_secs(30), || {
        (0..4)
            .all(|i| f.state_of(i, &ids[4]).is_some_and(|(s, _)| s == "down"))
            .then_some(())
    });

    // SIGTERM: the others see it left.
    f.agents[3].stop();
    wait_for("node 3 left everywhere", Duration::from_secs(30), || {
        (0..3)
            .all(|i| f.state_of(i, &ids[3]).is_some_and(|(s, _)| s == "left"))
            .then_some(())
    });

    // The killed node comes back with its data dir: alive, with a higher incarnation.
    f.agents[4].start();
    wait_for(
        "node 4 alive again with incarnation 2",
        Duration::from_secs(30),
        || {
            (0..3)
                .all(|i| f.state_of(i, &ids[4]) == Some(("alive".into(), 2)))
                .then_some(())
        },
    );
    assert_eq!(f.id(4), ids[4], "same node id after a restart");

    // A node with another cluster key never appears.
    let other_key = f.root.path().join("other.key");
    let out = std::process::Command::new(shoal_bin())
        .args(["keygen", "--out"])
        .arg(&other_key)
        .output()
        .unwrap();
    assert!(out.status.success());
    let seed = f.agents[0].multiaddr();
    let mut stranger = Agent::new(
        f.root.path(),
        "stranger",
        &[
            "--runtime",
            "process",
            "--cluster-key",
            other_key.to_str().unwrap(),
            "--seed",
            &seed,
        ],
    );
    stranger.start();
    let stranger_id = stranger.json(&["status"])["node"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_secs(5));
    for i in [0, 1, 2, 4] {
        assert!(
            f.state_of(i, &stranger_id).is_none(),
            "a node with another key joined"
        );
    }
    let nodes = stranger.json(&["nodes"]);
    assert_eq!(
        nodes.as_array().unwrap().len(),
        1,
        "the stranger sees only itself: {nodes}"
    );
    let log = stranger.log_text() + &f.agents[0].log_text();
    assert!(
        log.contains("cluster key mismatch or not a shoal node"),
        "no clear key-mismatch message in the logs"
    );
}

#[test]
fn a_pause_shorter_than_the_suspicion_timeout_is_not_a_death() {
    let _g = serial();
    let f = Fleet::start(3, &[]);
    let id = f.id(2);
    sigstop(&f.agents[2]);
    // Suspicion in these tests is 3 s (see `Fleet::start`); a 0.5 s pause must not kill.
    let mut worst = String::from("alive");
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(100));
        for i in 0..2 {
            if let Some((s, _)) = f.state_of(i, &id)
                && s == "down"
            {
                worst = s;
            }
        }
    }
    sigcont(&f.agents[2]);
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        let (s, _) = f.state_of(i, &id).unwrap();
        assert_ne!(s, "down", "a short pause was declared a death");
    }
    assert_ne!(worst, "down");
}

#[test]
fn a_write_on_one_node_reaches_all_five_with_identical_digests_and_survives_a_restart() {
    let _g = serial();
    let mut f = Fleet::start(5, &[]);
    let svc = unique("repl");
    let spec = sleep_service(f.root.path(), &svc, 2, "");
    f.agents[0].ok(&["deploy", "-f", &spec]);
    f.wait_same_digest();
    for i in 0..5 {
        let h = f.agents[i].json(&["history", &svc]);
        assert_eq!(h.as_array().unwrap().len(), 1, "node {i} misses the write");
    }

    // A node is killed; writes happen while it is down; it catches up after restart.
    f.agents[4].kill9();
    f.agents[1].ok(&["scale", &svc, "3"]);
    f.agents[2].ok(&["scale", &svc, "4"]);
    f.agents[4].start();
    f.wait_same_digest();
    let h = f.agents[4].json(&["history", &svc]);
    assert_eq!(
        h.as_array().unwrap().len(),
        3,
        "the restarted node caught up: {h}"
    );
    assert_eq!(h[0]["spec"]["replicas"], 4);
}

#[test]
fn concurrent_deploys_of_one_service_converge_to_one_winner_with_both_in_history() {
    let _g = serial();
    let f = Fleet::start(3, &["--test-faults"]);
    let svc = unique("race");
    let ids: Vec<String> = (0..3).map(|i| f.id(i)).collect();
    // Cut node 0 and node 1 from each other so their writes are truly concurrent.
    faults(&f, 0, &format!("{{\"blocked\": [\"{}\"]}}", ids[1]));
    faults(&f, 1, &format!("{{\"blocked\": [\"{}\"]}}", ids[0]));
    let a = spec_file(
        f.root.path(),
        "a",
        &format!(
            "name: {svc}\ncommand: [sleep, '100000']\nreplicas: 1\nenv: {{WHO: a}}\nresources: {{cpu: 10m, memory: 8Mi}}\n"
        ),
    );
    let b = spec_file(
        f.root.path(),
        "b",
        &format!(
            "name: {svc}\ncommand: [sleep, '100000']\nreplicas: 1\nenv: {{WHO: b}}\nresources: {{cpu: 10m, memory: 8Mi}}\n"
        ),
    );
    f.agents[0].ok(&["deploy", "-f", &a]);
    f.agents[1].ok(&["deploy", "-f", &b]);
    // Heal.
    for i in 0..2 {
        faults(&f, i, "{}");
    }
    f.wait_same_digest();
    let mut winners = BTreeSet::new();
    for i in 0..3 {
        let h = f.agents[i].json(&["history", &svc]);
        let h = h.as_array().unwrap();
        assert_eq!(h.len(), 2, "both revisions kept on node {i}");
        winners.insert(h[0]["spec"]["env"]["WHO"].as_str().unwrap().to_string());
    }
    assert_eq!(
        winners.len(),
        1,
        "every node picked the same winner: {winners:?}"
    );
    wait_for("exactly one instance", Duration::from_secs(30), || {
        (instance_processes(&svc).len() == 1).then_some(())
    });
}

#[test]
fn ten_replicas_on_five_nodes_spread_evenly_survive_a_kill_and_are_reclaimed_on_return() {
    let _g = serial();
    // Small CPU overrides: 10 × 300m on 5 × 1 CPU fits, but not by much.
    let mut f = Fleet::start(5, &["--cpu", "1", "--memory", "1Gi"]);
    let svc = unique("ten");
    let spec = spec_file(
        f.root.path(),
        &svc,
        &format!(
            "name: {svc}\ncommand: [sleep, '100000']\nreplicas: 10\nresources: {{cpu: 300m, memory: 16Mi}}\n"
        ),
    );
    f.agents[0].ok(&["deploy", "-f", &spec]);
    let exactly_ten = || {
        let procs = instance_processes(&svc);
        let slots: BTreeSet<u32> = procs.iter().map(|(s, _, _)| *s).collect();
        (procs.len() == 10 && slots.len() == 10).then_some(procs)
    };
    wait_for(
        "exactly 10 instances, each slot once",
        Duration::from_secs(60),
        exactly_ten,
    );
    // The processes run; the owners' reports reach node 0 a moment later.
    let rows = wait_for(
        "every slot reported running",
        Duration::from_secs(30),
        || {
            let rows = f.ps(0, &svc);
            rows.iter().all(|r| r["state"] == "running").then_some(rows)
        },
    );
    let mut per_node = std::collections::BTreeMap::<String, usize>::new();
    for r in &rows {
        *per_node
            .entry(r["node"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let (min, max) = (
        per_node.values().min().unwrap(),
        per_node.values().max().unwrap(),
    );
    if per_node.len() != 5 || max - min > 1 {
        for a in &f.agents {
            let placed: Vec<String> = a
                .log_text()
                .lines()
                .filter(|l| l.contains(&svc) || l.contains("member"))
                .map(str::to_string)
                .collect();
            eprintln!("--- {} ---\n{}", a.log.display(), placed.join("\n"));
        }
        panic!("spread within one of even: {per_node:?}");
    }
    for i in 0..5 {
        let st = f.agents[i].json(&["status"]);
        assert!(
            st["allocated"]["cpu_millis"].as_u64().unwrap()
                <= st["capacity"]["cpu_millis"].as_u64().unwrap()
        );
    }

    // kill -9 a node hosting instances (its instances keep running): its slots move.
    let victim = f.id(3);
    f.agents[3].kill9();
    wait_for("10 running on survivors", Duration::from_secs(60), || {
        let rows = f.ps(0, &svc);
        (rows.len() == 10
            && rows
                .iter()
                .all(|r| r["state"] == "running" && r["node"] != victim.as_str()))
        .then_some(())
    });
    // It returns: its stale instances are reclaimed; exactly 10 again, no slot twice.
    f.agents[3].start();
    wait_for(
        "stale instances reclaimed: exactly 10",
        Duration::from_secs(60),
        exactly_ten,
    );
    f.wait_same_digest();
}

#[test]
fn drain_keeps_n_minus_one_running_and_an_unplaceable_service_explains_itself() {
    let _g = serial();
    let f = Fleet::start(3, &["--cpu", "2", "--memory", "1Gi"]);
    let svc = unique("drain");
    let spec = spec_file(
        f.root.path(),
        &svc,
        &format!(
            "name: {svc}\ncommand: [sleep, '100000']\nreplicas: 3\nresources: {{cpu: 100m, memory: 8Mi}}\n"
        ),
    );
    f.agents[0].ok(&["deploy", "-f", &spec]);
    wait_for("3 running", Duration::from_secs(60), || {
        (instance_processes(&svc).len() == 3).then_some(())
    });
    let target = f.id(1);
    f.agents[0].ok(&["drain", &target]);
    let mut lowest = usize::MAX;
    wait_for(
        "nothing left on the drained node",
        Duration::from_secs(60),
        || {
            let procs = instance_processes(&svc);
            lowest = lowest.min(procs.len());
            let rows = f.ps(0, &svc);
            (rows
                .iter()
                .all(|r| r["node"] != target.as_str() && r["state"] == "running")
                && procs.len() == 3)
                .then_some(())
        },
    );
    assert!(lowest >= 2, "dropped to {lowest} running during the drain");

    let big = unique("huge");
    let spec = spec_file(
        f.root.path(),
        &big,
        &format!(
            "name: {big}\ncommand: [sleep, '100000']\nreplicas: 1\nresources: {{cpu: 8, memory: 8Mi}}\n"
        ),
    );
    f.agents[0].ok(&["deploy", "-f", &spec]);
    let reason = wait_for("an explanation", Duration::from_secs(20), || {
        let rows = f.ps(0, &big);
        rows.first()
            .and_then(|r| r["detail"].as_str().map(str::to_string))
            .filter(|d| d.contains("needs cpu 8"))
    });
    assert!(reason.contains("largest free"), "{reason}");
}

#[test]
fn the_demo_forms_a_fleet_fails_a_node_over_and_cleans_up() {
    let _g = serial();
    let spec = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml");
    let out = std::process::Command::new(shoal_bin())
        .args(["demo", "--no-wait", "--spec", spec])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("every replica running again"), "{stdout}");
    let root = stdout
        .lines()
        .next()
        .and_then(|l| l.split("data in ").nth(1))
        .map(|s| s.trim_end_matches(')').to_string());
    let root = root.expect("the demo names its data dir");
    assert!(
        !std::path::Path::new(&root).exists(),
        "the demo left {root} behind"
    );
}

/// Sets this node's injected transport faults (`--test-faults`).
fn faults(f: &Fleet, i: usize, body: &str) {
    let token = std::fs::read_to_string(f.agents[i].dir.join("api-token")).unwrap();
    let r = http_post(&f.agents[i].api, "/v1/test/faults", &token, body);
    assert!(r.starts_with("HTTP/1.1 200"), "faults on n{i}: {r}");
}

/// Deploys `svc` as a `partition: majority` singleton through agent 0 and waits until it runs:
/// its process (slot, epoch, pid) and the id of the node that owns it.
fn deploy_singleton(f: &Fleet, svc: &str) -> ((u32, u64, u32), String) {
    let spec = sleep_service(f.root.path(), svc, 1, "partition: majority\n");
    f.agents[0].ok(&["deploy", "-f", &spec]);
    let first = wait_for("the singleton running", Duration::from_secs(60), || {
        let procs = instance_processes(svc);
        (procs.len() == 1).then(|| procs[0])
    });
    let owner_id = wait_for("its owner reported", Duration::from_secs(30), || {
        let rows = f.ps(0, svc);
        (rows.len() == 1 && rows[0]["state"] == "running")
            .then(|| rows[0]["node"].as_str().unwrap().to_string())
    });
    (first, owner_id)
}

#[test]
fn a_majority_singleton_cut_off_in_a_minority_moves_to_the_majority_and_never_runs_twice() {
    let _g = serial();
    let f = Fleet::start(5, &["--test-faults"]);
    let svc = unique("single");
    let (first, owner_id) = deploy_singleton(&f, &svc);
    let ids: Vec<String> = (0..5).map(|i| f.id(i)).collect();
    let owner = ids.iter().position(|id| *id == owner_id).unwrap();
    // The owner and one other node form a minority of 2 out of 5.
    let minority = [owner, (owner + 1) % 5];
    let majority: Vec<usize> = (0..5).filter(|i| !minority.contains(i)).collect();
    let block = |side: &[usize], others: &[usize]| {
        let list: Vec<String> = others.iter().map(|o| format!("\"{}\"", ids[*o])).collect();
        for i in side {
            faults(&f, *i, &format!("{{\"blocked\": [{}]}}", list.join(",")));
        }
    };
    block(&minority, &majority);
    block(&majority, &minority);

    // Sample the process table: never two copies; the majority side takes over at a new epoch.
    let moved = wait_for(
        "the singleton re-placed on the majority side",
        Duration::from_secs(90),
        || {
            let procs = instance_processes(&svc);
            assert!(procs.len() <= 1, "the singleton runs twice: {procs:?}");
            let now = procs.first().copied().filter(|p| p.1 > first.1)?;
            let rows = f.ps(majority[0], &svc);
            rows.iter()
                .find(|r| r["state"] == "running" && r["epoch"].as_u64() == Some(now.1))
                .map(|r| r["node"].as_str().unwrap().to_string())
        },
    );
    assert!(
        majority.iter().any(|i| ids[*i] == moved),
        "re-placed on {moved}, which is not on the majority side"
    );
    assert!(!alive(first.2), "the minority's copy was stopped");

    // Heal: still exactly one copy, and the fleet agrees.
    for i in 0..5 {
        faults(&f, i, "{}");
    }
    let until = std::time::Instant::now() + Duration::from_secs(8);
    while std::time::Instant::now() < until {
        let procs = instance_processes(&svc);
        assert!(
            procs.len() <= 1,
            "the singleton runs twice after the heal: {procs:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    f.wait_same_digest();
    assert_eq!(instance_processes(&svc).len(), 1);
}

#[test]
fn a_majority_singleton_whose_agent_is_paused_is_stopped_by_its_lease_before_it_moves() {
    // A stopped agent cannot fence its own instance; the instance-side lease (`shoal
    // lease-run`) must end it before the majority side starts the replacement.
    let _g = serial();
    let f = Fleet::start(3, &[]);
    let svc = unique("leased");
    let (first, owner_id) = deploy_singleton(&f, &svc);
    let owner = (0..3).find(|i| f.id(*i) == owner_id).unwrap();
    let other = (owner + 1) % 3;
    sigstop(&f.agents[owner]);
    let moved = wait_for(
        "the singleton re-placed while its owner is stopped",
        Duration::from_secs(60),
        || {
            let procs = instance_processes(&svc);
            assert!(procs.len() <= 1, "the singleton runs twice: {procs:?}");
            procs.first().copied().filter(|p| p.1 > first.1)
        },
    );
    assert!(
        !alive(first.2),
        "the stopped agent's copy was ended by its lease"
    );
    sigcont(&f.agents[owner]);
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let procs = instance_processes(&svc);
        assert!(procs.len() <= 1, "the singleton runs twice: {procs:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    f.wait_same_digest();
    assert_eq!(instance_processes(&svc), vec![moved]);
    let rows = f.ps(other, &svc);
    assert_eq!(rows[0]["state"], "running");
}

#[test]
fn a_crash_looping_instance_is_released_and_moves_to_another_node() {
    let _g = serial();
    let f = Fleet::start(3, &[]);
    let svc = unique("loop");
    let spec = spec_file(
        f.root.path(),
        &svc,
        &format!(
            "name: {svc}\ncommand: [sh, -c, 'sleep 0.2; exit 3']\nreplicas: 1\nrestart: {{ policy: always, max_restarts: 2, window: 60s }}\nresources: {{cpu: 10m, memory: 8Mi}}\n"
        ),
    );
    f.agents[0].ok(&["deploy", "-f", &spec]);
    let first = wait_for("a first owner", Duration::from_secs(60), || {
        let rows = f.ps(0, &svc);
        rows.first()
            .and_then(|r| r["node"].as_str().map(str::to_string))
    });
    let second = wait_for(
        "the slot released and taken by another node",
        Duration::from_secs(90),
        || {
            let rows = f.ps(0, &svc);
            rows.first()
                .and_then(|r| r["node"].as_str().map(str::to_string))
                .filter(|n| *n != first)
        },
    );
    assert_ne!(first, second);
}

#[test]
fn a_node_that_restarts_with_every_peer_unreachable_brings_its_instances_back() {
    let _g = serial();
    let mut f = Fleet::start(2, &[]);
    let svc = unique("offline");
    let spec = sleep_service(f.root.path(), &svc, 2, "");
    f.agents[0].ok(&["deploy", "-f", &spec]);
    let b = f.id(1);
    wait_for("one instance on each node", Duration::from_secs(60), || {
        let rows = f.ps(0, &svc);
        (rows.len() == 2
            && rows.iter().all(|r| r["state"] == "running")
            && rows.iter().any(|r| r["node"] == b.as_str()))
        .then_some(())
    });
    let old = f.agents[1].instance_pids();
    assert_eq!(old.len(), 1, "node 1 runs one instance: {old:?}");
    // What a node learns from peers is fsync'd within a second (API writes before their ack).
    std::thread::sleep(Duration::from_millis(1_500));
    // Power loss of node 1 (agent and instance), and node 0 gone too: no peer to ask.
    f.agents[1].kill9();
    kill_all(&old);
    f.agents[0].kill9();
    f.agents[1].start();
    // From its own store alone, node 1 starts its instance again.
    let new = wait_for(
        "node 1's instance running again from its stored state",
        Duration::from_secs(30),
        || {
            let pids: Vec<u32> = f.agents[1]
                .instance_pids()
                .into_iter()
                .filter(|p| alive(*p) && !old.contains(p))
                .collect();
            (pids.len() == 1).then_some(pids)
        },
    );
    let st = f.agents[1].json(&["status"]);
    assert_eq!(st["services"], 1, "status: {st}");
    // The fleet comes back: they merge and still run exactly two.
    f.agents[0].start();
    f.wait_same_digest();
    wait_for("exactly two instances", Duration::from_secs(30), || {
        let procs = instance_processes(&svc);
        (procs.len() == 2).then_some(())
    });
    assert!(alive(new[0]), "the instance started offline kept running");
}
