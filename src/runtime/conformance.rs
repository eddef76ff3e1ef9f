//! The conformance suite every runtime driver passes: the fake always, process and docker on
//! machines that have them. A driver's tests supply a [`Fixture`] (how to express a workload for
//! that driver) and call [`run_all`]; each check is also public so a failure names its check.
//!
//! Behind the `testing` feature, not `cfg(test)`: integration tests under `tests/` run it against
//! docker. It checks behaviour every driver shares; driver-specific behaviour (adoption, pid
//! reuse, port variables) is tested beside each driver. Time limits here are correctness bounds,
//! generous on purpose, never performance assertions.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::{DriverError, InstanceSpec, Observed, ObservedStatus, Owner, Runtime, RuntimeEvent};
use crate::ids::{InstanceKey, RevisionId, SlotId};
use crate::spec::{
    PartitionMode, PortSpec, Resources, RestartPolicy, ServiceName, ServiceSpec, Strategy, Workload,
};

/// How to express the suite's workloads for one driver.
pub trait Fixture {
    /// Runs until stopped; prints `hello from shoal` to stdout at start.
    fn long_running(&self, key: InstanceKey) -> InstanceSpec;
    /// Exits on its own with `code` soon after start.
    fn exits_with(&self, key: InstanceKey, code: i32) -> InstanceSpec;
    /// Prints `hello from shoal` once it ignores SIGTERM, then runs until killed.
    fn ignores_sigterm(&self, key: InstanceKey) -> InstanceSpec;
    /// Answers HTTP `GET /` on its endpoint; `None` when the driver cannot express that here.
    fn serves_http(&self, key: InstanceKey) -> Option<InstanceSpec>;
}

/// The limit on anything the suite waits for (an exit event, a log line, a server coming up).
const WAIT: Duration = Duration::from_secs(20);
/// The grace period the suite stops instances with.
const GRACE_MS: u64 = 1_000;
/// What a stop of a SIGTERM-ignoring instance may take beyond its grace period.
const STOP_SLACK: Duration = Duration::from_secs(15);
/// What `long_running` and `ignores_sigterm` print.
pub const HELLO: &str = "hello from shoal";

/// The key of the suite's instance of `service` (slot 0, epoch 1). Each check uses its own
/// service so that checks never see each other's instances.
pub fn key(service: &str) -> InstanceKey {
    InstanceKey {
        slot: SlotId {
            service: ServiceName(service.into()),
            index: 0,
        },
        epoch: 1,
    }
}

/// An instance spec for `owner` with `workload` and `ports` and defaults elsewhere, for
/// fixtures.
pub fn instance_spec(
    owner: &Owner,
    key: InstanceKey,
    workload: Workload,
    ports: Vec<PortSpec>,
) -> InstanceSpec {
    InstanceSpec {
        revision: RevisionId("1.c0de".into()),
        cluster: owner.cluster.clone(),
        node: owner.node.clone(),
        spec: ServiceSpec {
            name: key.slot.service.clone(),
            workload,
            replicas: 1,
            resources: Resources::default(),
            ports,
            env: BTreeMap::new(),
            constraints: Vec::new(),
            spread: None,
            strategy: Strategy::default(),
            restart: RestartPolicy::default(),
            partition: PartitionMode::default(),
            stop_grace_ms: GRACE_MS,
        },
        key,
    }
}

/// Runs every check, in order; panics naming the first that fails.
pub async fn run_all<R: Runtime, F: Fixture>(driver: &R, fixture: &F) {
    start_then_list_shows_it_running(driver, fixture).await;
    start_twice_gives_one_instance_with_the_same_handle(driver, fixture).await;
    stop_removes_the_instance_from_list(driver, fixture).await;
    stop_twice_and_stop_of_an_unknown_key_succeed(driver, fixture).await;
    exit_is_reported_by_watch_and_by_list(driver, fixture).await;
    sigterm_ignoring_instance_is_killed_after_its_grace_period(driver, fixture).await;
    logs_hold_the_instance_output(driver, fixture).await;
    http_instance_answers_on_its_endpoint(driver, fixture).await;
}

pub async fn start_then_list_shows_it_running<R: Runtime, F: Fixture>(driver: &R, fixture: &F) {
    const CHECK: &str = "start_then_list_shows_it_running";
    let key = key("conformance-list");
    clean(CHECK, driver, &key).await;
    let spec = fixture.long_running(key.clone());
    let started = start(CHECK, driver, &spec).await;
    assert_eq!(started.key, key, "{CHECK}: start reported another key");
    assert_eq!(
        started.status,
        ObservedStatus::Running,
        "{CHECK}: start did not report it running"
    );
    let listed = find(CHECK, driver, &key)
        .await
        .unwrap_or_else(|| panic!("{CHECK}: {key} started but not listed"));
    assert_eq!(
        listed.revision, spec.revision,
        "{CHECK}: listed with another revision"
    );
    assert_eq!(
        listed.status,
        ObservedStatus::Running,
        "{CHECK}: listed but not running"
    );
    assert_eq!(
        listed.handle, started.handle,
        "{CHECK}: listed with another handle"
    );
    stop(CHECK, driver, &key).await;
}

pub async fn start_twice_gives_one_instance_with_the_same_handle<R: Runtime, F: Fixture>(
    driver: &R,
    fixture: &F,
) {
    const CHECK: &str = "start_twice_gives_one_instance_with_the_same_handle";
    let key = key("conformance-twice");
    clean(CHECK, driver, &key).await;
    let spec = fixture.long_running(key.clone());
    let first = start(CHECK, driver, &spec).await;
    let second = start(CHECK, driver, &spec).await;
    assert_eq!(
        first.handle, second.handle,
        "{CHECK}: second start made another instance"
    );
    let listed = list(CHECK, driver).await;
    let copies = listed.iter().filter(|o| o.key == key).count();
    assert_eq!(copies, 1, "{CHECK}: {copies} instances listed for {key}");
    stop(CHECK, driver, &key).await;
}

pub async fn stop_removes_the_instance_from_list<R: Runtime, F: Fixture>(driver: &R, fixture: &F) {
    const CHECK: &str = "stop_removes_the_instance_from_list";
    let key = key("conformance-stop");
    clean(CHECK, driver, &key).await;
    start(CHECK, driver, &fixture.long_running(key.clone())).await;
    stop(CHECK, driver, &key).await;
    assert!(
        find(CHECK, driver, &key).await.is_none(),
        "{CHECK}: {key} still listed after stop"
    );
}

pub async fn stop_twice_and_stop_of_an_unknown_key_succeed<R: Runtime, F: Fixture>(
    driver: &R,
    fixture: &F,
) {
    const CHECK: &str = "stop_twice_and_stop_of_an_unknown_key_succeed";
    let key = key("conformance-stop-twice");
    clean(CHECK, driver, &key).await;
    start(CHECK, driver, &fixture.long_running(key.clone())).await;
    stop(CHECK, driver, &key).await;
    stop(CHECK, driver, &key).await;
    stop(CHECK, driver, &self::key("conformance-never-started")).await;
}

pub async fn exit_is_reported_by_watch_and_by_list<R: Runtime, F: Fixture>(
    driver: &R,
    fixture: &F,
) {
    const CHECK: &str = "exit_is_reported_by_watch_and_by_list";
    let key = key("conformance-exit");
    clean(CHECK, driver, &key).await;
    let (tx, mut rx) = mpsc::channel(64);
    driver
        .watch(tx)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: watch failed: {e}"));
    start(CHECK, driver, &fixture.exits_with(key.clone(), 3)).await;
    let wait_exit = async {
        loop {
            match rx.recv().await {
                Some(RuntimeEvent::Exited { key: k, exit }) if k == key => return exit,
                Some(_) => continue,
                None => panic!("{CHECK}: the watch channel closed before {key} exited"),
            }
        }
    };
    let exit = timeout(WAIT, wait_exit)
        .await
        .unwrap_or_else(|_| panic!("{CHECK}: no Exited event for {key} within {WAIT:?}"));
    assert_eq!(
        exit.code,
        Some(3),
        "{CHECK}: exit event with the wrong code: {exit:?}"
    );
    let listed = find(CHECK, driver, &key)
        .await
        .unwrap_or_else(|| panic!("{CHECK}: exited instance {key} not listed"));
    match listed.status {
        ObservedStatus::Exited(e) => {
            assert_eq!(
                e.code,
                Some(3),
                "{CHECK}: listed with the wrong exit: {e:?}"
            )
        }
        ObservedStatus::Running => panic!("{CHECK}: {key} listed as running after its exit"),
    }
    stop(CHECK, driver, &key).await;
}

pub async fn sigterm_ignoring_instance_is_killed_after_its_grace_period<R: Runtime, F: Fixture>(
    driver: &R,
    fixture: &F,
) {
    const CHECK: &str = "sigterm_ignoring_instance_is_killed_after_its_grace_period";
    let key = key("conformance-sigterm");
    clean(CHECK, driver, &key).await;
    start(CHECK, driver, &fixture.ignores_sigterm(key.clone())).await;
    // It prints only once SIGTERM is ignored; stopping earlier would not test anything.
    wait_for_log(CHECK, driver, &key, HELLO).await;
    let began = Instant::now();
    stop(CHECK, driver, &key).await;
    let took = began.elapsed();
    let limit = Duration::from_millis(GRACE_MS) + STOP_SLACK;
    assert!(
        took <= limit,
        "{CHECK}: stop took {took:?}, more than {limit:?}"
    );
    assert!(
        find(CHECK, driver, &key).await.is_none(),
        "{CHECK}: {key} still listed after stop"
    );
}

pub async fn logs_hold_the_instance_output<R: Runtime, F: Fixture>(driver: &R, fixture: &F) {
    const CHECK: &str = "logs_hold_the_instance_output";
    let key = key("conformance-logs");
    clean(CHECK, driver, &key).await;
    start(CHECK, driver, &fixture.long_running(key.clone())).await;
    wait_for_log(CHECK, driver, &key, HELLO).await;
    let last = read_log(CHECK, driver, &key, Some(1)).await;
    assert!(
        String::from_utf8_lossy(&last).contains(HELLO),
        "{CHECK}: the last line of the log lacks {HELLO:?}: {:?}",
        String::from_utf8_lossy(&last)
    );

    // Following: the output arrives, and the stream ends once the instance is stopped.
    let mut follow = driver
        .logs(&key, true, None)
        .await
        .unwrap_or_else(|e| panic!("{CHECK}: following the log failed: {e}"));
    let mut seen = Vec::new();
    let saw_hello = async {
        while !String::from_utf8_lossy(&seen).contains(HELLO) {
            match follow.recv().await {
                Some(chunk) => seen.extend_from_slice(&chunk),
                None => panic!("{CHECK}: the followed log ended while the instance runs"),
            }
        }
    };
    timeout(WAIT, saw_hello)
        .await
        .unwrap_or_else(|_| panic!("{CHECK}: the followed log lacked {HELLO:?} after {WAIT:?}"));
    stop(CHECK, driver, &key).await;
    let ended = async { while follow.recv().await.is_some() {} };
    timeout(WAIT, ended)
        .await
        .unwrap_or_else(|_| panic!("{CHECK}: the followed log went on {WAIT:?} after stop"));

    match driver
        .logs(&self::key("conformance-never-started"), false, None)
        .await
    {
        Err(DriverError::Rejected { .. }) => {}
        Err(e) => panic!("{CHECK}: logs of an unknown instance failed with {e}, not Rejected"),
        Ok(_) => panic!("{CHECK}: logs of an unknown instance did not fail"),
    }
}

pub async fn http_instance_answers_on_its_endpoint<R: Runtime, F: Fixture>(
    driver: &R,
    fixture: &F,
) {
    const CHECK: &str = "http_instance_answers_on_its_endpoint";
    let key = key("conformance-http");
    let Some(spec) = fixture.serves_http(key.clone()) else {
        eprintln!("{CHECK}: not run: the fixture has no HTTP workload for this driver");
        return;
    };
    clean(CHECK, driver, &key).await;
    let started = start(CHECK, driver, &spec).await;
    let endpoint = started
        .endpoint
        .clone()
        .unwrap_or_else(|| panic!("{CHECK}: an instance with ports reported no endpoint"));
    let deadline = Instant::now() + WAIT;
    let answer = loop {
        match http_get(&endpoint).await {
            Ok(answer) => break answer,
            Err(e) if Instant::now() >= deadline => {
                stop(CHECK, driver, &key).await;
                panic!("{CHECK}: GET http://{endpoint}/ failed for {WAIT:?}: {e}");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    stop(CHECK, driver, &key).await;
    assert!(
        answer.starts_with("HTTP/"),
        "{CHECK}: not an HTTP answer: {answer:?}"
    );
}

async fn http_get(endpoint: &str) -> std::io::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(endpoint).await?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: shoal\r\n\r\n")
        .await?;
    let mut answer = Vec::new();
    timeout(WAIT, stream.read_to_end(&mut answer)).await??;
    if answer.is_empty() {
        return Err(std::io::Error::other("connection closed without an answer"));
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// A sender for start's progress events whose receiver is drained, so a driver that reports
/// progress never blocks on it.
fn progress_sink() -> mpsc::Sender<RuntimeEvent> {
    let (tx, mut rx) = mpsc::channel(16);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tx
}

async fn start<R: Runtime>(check: &str, driver: &R, spec: &InstanceSpec) -> Observed {
    driver
        .start(spec, &progress_sink())
        .await
        .unwrap_or_else(|e| panic!("{check}: start of {} failed: {e}", spec.key))
}

async fn stop<R: Runtime>(check: &str, driver: &R, key: &InstanceKey) {
    driver
        .stop(key, GRACE_MS)
        .await
        .unwrap_or_else(|e| panic!("{check}: stop of {key} failed: {e}"));
}

/// Removes what an earlier, failed run may have left.
async fn clean<R: Runtime>(check: &str, driver: &R, key: &InstanceKey) {
    driver
        .stop(key, 0)
        .await
        .unwrap_or_else(|e| panic!("{check}: clearing {key} before the check failed: {e}"));
}

async fn list<R: Runtime>(check: &str, driver: &R) -> Vec<Observed> {
    driver
        .list()
        .await
        .unwrap_or_else(|e| panic!("{check}: list failed: {e}"))
}

async fn find<R: Runtime>(check: &str, driver: &R, key: &InstanceKey) -> Option<Observed> {
    list(check, driver)
        .await
        .into_iter()
        .find(|o| &o.key == key)
}

/// The log as it is now (not followed).
async fn read_log<R: Runtime>(
    check: &str,
    driver: &R,
    key: &InstanceKey,
    tail_lines: Option<usize>,
) -> Vec<u8> {
    let mut rx = driver
        .logs(key, false, tail_lines)
        .await
        .unwrap_or_else(|e| panic!("{check}: logs of {key} failed: {e}"));
    let mut log = Vec::new();
    let read = async {
        while let Some(chunk) = rx.recv().await {
            log.extend_from_slice(&chunk);
        }
    };
    timeout(WAIT, read)
        .await
        .unwrap_or_else(|_| panic!("{check}: an unfollowed log of {key} did not end"));
    log
}

async fn wait_for_log<R: Runtime>(check: &str, driver: &R, key: &InstanceKey, needle: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = read_log(check, driver, key, None).await;
        if String::from_utf8_lossy(&log).contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{check}: the log of {key} lacked {needle:?} after {WAIT:?}: {:?}",
            String::from_utf8_lossy(&log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
