//! The single-node end-to-end test: the real `shoal` binary, one agent in a temp data dir, the
//! process driver, `examples/hello.yaml`.

mod support;

use std::time::Duration;

use support::*;

fn instance(agent: &Agent) -> Option<(u32, String, u64)> {
    let ps = agent.json(&["ps"]);
    let row = ps.as_array()?.iter().find(|r| r["service"] == "hello")?;
    if row["state"] != "running" {
        return None;
    }
    Some((
        row["pid"].as_u64()? as u32,
        row["endpoint"].as_str()?.to_string(),
        row["restarts"].as_u64()?,
    ))
}

#[test]
fn deploy_restart_adopt_and_remove_on_one_node() {
    let tmp = tempfile::tempdir().unwrap();
    let mut agent = Agent::new(tmp.path(), "a", &["--runtime", "process"]);
    agent.start();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/hello.yaml");

    // Deploy: the instance runs and its HTTP port answers.
    let out = agent.json(&["deploy", "-f", example]);
    assert_eq!(out[0]["service"], "hello");
    assert_eq!(out[0]["changed"], true);
    let (pid, endpoint, restarts) = wait_for("hello running", Duration::from_secs(30), || {
        instance(&agent)
    });
    assert_eq!(restarts, 0);
    let status = wait_for("hello answering HTTP", Duration::from_secs(30), || {
        http_get(&endpoint)
    });
    assert!(status.contains("200"), "{status}");

    // Kill the instance: it is restarted (new pid), per its policy.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let (pid2, endpoint2, restarts2) = wait_for("hello restarted", Duration::from_secs(30), || {
        instance(&agent).filter(|(p, _, _)| *p != pid)
    });
    assert!(restarts2 >= 1);
    wait_for(
        "restarted hello answering HTTP",
        Duration::from_secs(30),
        || http_get(&endpoint2),
    );

    // Restart the agent: the instance keeps running and is adopted with the same pid.
    agent.stop();
    assert!(alive(pid2), "the instance must survive the agent's restart");
    agent.start();
    let (pid3, _, _) = wait_for("hello adopted", Duration::from_secs(30), || {
        instance(&agent)
    });
    assert_eq!(pid3, pid2, "adopted, not restarted");

    // A malformed spec fails naming the line, and changes nothing.
    let before = agent.json(&["ps"]);
    let bad = tmp.path().join("bad.yaml");
    std::fs::write(&bad, "name: hello\ncommand: [sleep, '1']\nreplica: 3\n").unwrap();
    let out = agent.cli(&["deploy", "-f", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 3") && err.contains("replicas"), "{err}");
    let after = agent.json(&["ps"]);
    assert_eq!(before, after);

    // Remove: the process is gone.
    agent.ok(&["rm", "hello"]);
    wait_for("hello stopped", Duration::from_secs(30), || {
        (!alive(pid2)).then_some(())
    });
    let ps = agent.json(&["ps"]);
    assert_eq!(ps.as_array().unwrap().len(), 0, "{ps}");
    agent.stop();
}
