//! The process driver's behaviour through the `Runtime` trait: the conformance suite, adoption
//! after a restart, owners, recycled pids, corrupt records, ports and environment, stop. Each test
//! runs real processes in its own data dir and leaks none.

use std::io::Write;
use std::sync::Arc;

use super::proc::read_stat;
use super::spawn::resolve_program;
use super::*;
use crate::ids::NodeId;
use crate::runtime::conformance::{self, Fixture, HELLO, instance_spec};
use crate::runtime::{Handle, ObservedStatus};
use crate::spec::PortSpec;

fn owner() -> Owner {
    Owner {
        cluster: "c1".into(),
        node: NodeId("n1".into()),
    }
}

fn other_owner() -> Owner {
    Owner {
        cluster: "c1".into(),
        node: NodeId("n2".into()),
    }
}

/// `start`'s progress channel: the process driver reports no progress.
fn progress() -> mpsc::Sender<RuntimeEvent> {
    mpsc::channel(1).0
}

/// The variable marking every process a test's instances start.
const MARKER: &str = "SHOAL_TEST_DATA_DIR";

/// One test's data dir. Its instances carry [`MARKER`] in their environment, and dropping
/// the harness kills every process that does, so even a failing test leaks no process (not
/// even one that escaped its instance).
struct Harness(tempfile::TempDir);

impl Harness {
    fn new() -> Harness {
        Harness(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn driver(&self, owner: Owner) -> ProcessDriver {
        ProcessDriver::new(self.path(), owner, "127.0.0.1".into()).unwrap()
    }

    fn fixture(&self, owner: Owner) -> ShellFixture {
        let marker = self.path().display().to_string();
        ShellFixture { owner, marker }
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let marker = format!("{MARKER}={}", self.path().display());
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return;
        };
        for pid in dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            if environ
                .split(|&b| b == 0)
                .any(|var| var == marker.as_bytes())
            {
                // SAFETY: kill has no memory-safety preconditions.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

struct ShellFixture {
    owner: Owner,
    marker: String,
}

impl ShellFixture {
    fn sh(&self, key: InstanceKey, script: &str, ports: Vec<PortSpec>) -> InstanceSpec {
        let command = vec!["sh".into(), "-c".into(), script.into()];
        let mut spec = instance_spec(&self.owner, key, Workload::Command { command }, ports);
        spec.spec.env.insert(MARKER.into(), self.marker.clone());
        spec
    }
}

fn port(name: &str) -> PortSpec {
    PortSpec {
        name: name.into(),
        container: None,
        host: None,
    }
}

impl Fixture for ShellFixture {
    fn long_running(&self, key: InstanceKey) -> InstanceSpec {
        self.sh(key, &format!("echo {HELLO}; exec sleep 1000"), Vec::new())
    }
    fn exits_with(&self, key: InstanceKey, code: i32) -> InstanceSpec {
        self.sh(key, &format!("exit {code}"), Vec::new())
    }
    fn ignores_sigterm(&self, key: InstanceKey) -> InstanceSpec {
        let script = format!("trap '' TERM; echo {HELLO}; while true; do sleep 1; done");
        self.sh(key, &script, Vec::new())
    }
    fn serves_http(&self, key: InstanceKey) -> Option<InstanceSpec> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        if resolve_program("python3", &path).is_none() {
            eprintln!("serves_http: python3 is not in PATH, so the HTTP check cannot run");
            return None;
        }
        let script = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";
        Some(self.sh(key, script, vec![port("http")]))
    }
}

/// Polls the instance's log until it holds `needle`; returns the log.
async fn log_with(driver: &ProcessDriver, key: &InstanceKey, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut rx = driver.logs(key, false, None).await.unwrap();
        let mut log = Vec::new();
        while let Some(chunk) = rx.recv().await {
            log.extend_from_slice(&chunk);
        }
        let log = String::from_utf8_lossy(&log).into_owned();
        if log.contains(needle) {
            return log;
        }
        assert!(
            Instant::now() < deadline,
            "log of {key} lacks {needle:?}: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn proc_of(observed: &Observed) -> Proc {
    match observed.handle {
        Handle::Pid { pid, start_ticks } => Proc { pid, start_ticks },
        Handle::Container { .. } => panic!("a process instance with a container handle"),
    }
}

#[tokio::test]
async fn process_driver_passes_the_conformance_suite() {
    let h = Harness::new();
    let driver = h.driver(owner());
    conformance::run_all(&driver, &h.fixture(owner())).await;
}

#[tokio::test]
async fn restarted_driver_adopts_a_running_process_with_the_same_pid() {
    let h = Harness::new();
    let key = conformance::key("adopt");
    let first = h.driver(owner());
    let spec = h.fixture(owner()).long_running(key.clone());
    let started = first.start(&spec, &progress()).await.unwrap();
    drop(first);

    let second = h.driver(owner());
    let listed = second.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].handle, started.handle);
    assert_eq!(listed[0].status, ObservedStatus::Running);

    let (tx, mut rx) = mpsc::channel(8);
    second.watch(tx).await.unwrap();
    proc_of(&started).signal(libc::SIGKILL);
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap();
    let Some(RuntimeEvent::Exited { key: exited, exit }) = event else {
        panic!("expected an exit, got {event:?}")
    };
    assert_eq!(exited, key);
    assert_eq!(
        exit.code, None,
        "an adopted process's status cannot be collected"
    );
    let listed = second.list().await.unwrap();
    assert!(matches!(listed[0].status, ObservedStatus::Exited(_)));
    second.stop(&key, 0).await.unwrap();
    assert!(second.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn exit_of_a_child_started_before_watch_is_reported_once_watched() {
    let h = Harness::new();
    let driver = h.driver(owner());
    let key = conformance::key("early");
    let spec = h.fixture(owner()).exits_with(key.clone(), 5);
    driver.start(&spec, &progress()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while driver.list().await.unwrap()[0].status == ObservedStatus::Running {
        assert!(Instant::now() < deadline, "{key} never exited");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let (tx, mut rx) = mpsc::channel(8);
    driver.watch(tx).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(20), rx.recv()).await;
    let exit = ExitInfo {
        code: Some(5),
        signal: None,
        oom_killed: false,
    };
    assert_eq!(
        event.unwrap(),
        Some(RuntimeEvent::Exited {
            key: key.clone(),
            exit
        })
    );
    driver.stop(&key, 0).await.unwrap();
}

#[tokio::test]
async fn records_of_another_node_are_never_listed_or_stopped() {
    let h = Harness::new();
    let key = conformance::key("foreign");
    let theirs = h.driver(other_owner());
    let mine = h.driver(owner());
    let spec = h.fixture(other_owner()).long_running(key.clone());
    let started = theirs.start(&spec, &progress()).await.unwrap();

    assert!(mine.list().await.unwrap().is_empty());
    mine.stop(&key, 0).await.unwrap();
    assert!(
        proc_of(&started).alive(),
        "stop touched another node's instance"
    );
    let err = mine.logs(&key, false, None).await.unwrap_err();
    assert!(matches!(err, DriverError::Rejected { .. }), "{err}");
    let own_spec = h.fixture(owner()).long_running(key.clone());
    let err = mine.start(&own_spec, &progress()).await.unwrap_err();
    assert!(matches!(err, DriverError::Rejected { .. }), "{err}");
    assert_eq!(
        theirs.list().await.unwrap()[0].status,
        ObservedStatus::Running
    );

    theirs.stop(&key, 0).await.unwrap();
    assert!(proc_of(&started).gone());
}

#[tokio::test]
async fn recycled_pid_with_a_different_start_time_is_not_ours() {
    let h = Harness::new();
    let key = conformance::key("recycled");
    let driver = h.driver(owner());
    let spec = h.fixture(owner()).long_running(key.clone());
    let real = proc_of(&driver.start(&spec, &progress()).await.unwrap());

    // The record now names the pid with another start time, as if the pid had been reused.
    let mut record = driver.inner.read_record(&key).unwrap().unwrap();
    record.start_ticks += 1;
    driver.inner.write_record(&record).unwrap();

    let listed = driver.list().await.unwrap();
    assert!(
        matches!(listed[0].status, ObservedStatus::Exited(_)),
        "{listed:?}"
    );
    driver.stop(&key, 0).await.unwrap();
    assert!(
        real.alive(),
        "a process with another start time was signalled"
    );
    assert!(driver.list().await.unwrap().is_empty());

    real.signal(libc::SIGKILL);
    assert!(real.wait_gone(Duration::from_secs(10)).await);
}

/// Log lines written while `f` runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn corrupt_record_is_skipped_with_a_warning() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let h = Harness::new();
    let driver = h.driver(owner());
    let key = conformance::key("healthy");
    let spec = h.fixture(owner()).long_running(key.clone());
    driver.start(&spec, &progress()).await.unwrap();
    let corrupt = h.path().join("instances/shoal-broken-0-1.json");
    std::fs::write(&corrupt, b"{\"version\": 1, \"key\": ").unwrap();

    let listed = driver.list().await.unwrap();
    assert_eq!(
        listed.iter().map(|o| &o.key).collect::<Vec<_>>(),
        vec![&key]
    );
    assert!(!corrupt.exists());
    assert!(
        h.path()
            .join("instances/shoal-broken-0-1.json.corrupt")
            .exists()
    );
    let logged = String::from_utf8_lossy(&lock(&captured.0)).into_owned();
    assert!(
        logged.contains("WARN") && logged.contains("corrupt instance record"),
        "{logged}"
    );
    driver.stop(&key, 0).await.unwrap();
}

#[tokio::test]
async fn port_env_vars_are_passed() {
    let h = Harness::new();
    let driver = h.driver(owner());
    let key = conformance::key("ports");
    // CARGO_MANIFEST_DIR is in this test's environment (under cargo), not the instance's.
    let script = concat!(
        "echo \"PORT=$PORT HTTP=$SHOAL_PORT_HTTP ADMIN=$SHOAL_PORT_ADMIN_API ",
        "ID=$SHOAL_SERVICE/$SHOAL_SLOT/$SHOAL_EPOCH/$SHOAL_REVISION GREETING=$GREETING ",
        "LEAK=${CARGO_MANIFEST_DIR:-none}\"; exec sleep 1000"
    );
    let mut spec =
        h.fixture(owner())
            .sh(key.clone(), script, vec![port("http"), port("admin-api")]);
    spec.spec.env.insert("GREETING".into(), "hi".into());
    let started = driver.start(&spec, &progress()).await.unwrap();

    let (http, admin) = (started.ports["http"], started.ports["admin-api"]);
    assert_ne!(http, admin);
    assert_eq!(started.endpoint, Some(format!("127.0.0.1:{http}")));
    let log = log_with(&driver, &key, "GREETING=").await;
    let expected = format!(
        "PORT={http} HTTP={http} ADMIN={admin} ID=ports/0/1/{} GREETING=hi LEAK=none\n",
        spec.revision
    );
    assert_eq!(log, expected);
    driver.stop(&key, 0).await.unwrap();
}

#[tokio::test]
async fn fixed_host_port_in_use_is_rejected_naming_the_port() {
    let h = Harness::new();
    let driver = h.driver(owner());
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let fixed = PortSpec {
        name: "http".into(),
        container: None,
        host: Some(port),
    };
    let spec = h
        .fixture(owner())
        .sh(conformance::key("fixed"), "exec sleep 1000", vec![fixed]);
    match driver.start(&spec, &progress()).await {
        Err(DriverError::Rejected { reason }) => {
            assert!(reason.contains(&port.to_string()), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert!(driver.list().await.unwrap().is_empty());
}

#[tokio::test]
async fn missing_command_is_rejected_naming_it() {
    let h = Harness::new();
    let driver = h.driver(owner());
    let command = vec!["shoal-no-such-command".into()];
    let spec = instance_spec(
        &owner(),
        conformance::key("missing"),
        Workload::Command { command },
        Vec::new(),
    );
    let err = driver.start(&spec, &progress()).await.unwrap_err();
    assert_eq!(
        err,
        DriverError::Rejected {
            reason: "command \"shoal-no-such-command\" not found in PATH".into()
        }
    );
}

#[tokio::test]
async fn instance_survives_when_the_driver_is_dropped() {
    let h = Harness::new();
    let key = conformance::key("survivor");
    let first = h.driver(owner());
    let spec = h.fixture(owner()).long_running(key.clone());
    let proc = proc_of(&first.start(&spec, &progress()).await.unwrap());
    drop(first);
    // Let the runtime cancel the dropped driver's tasks.
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(proc.alive());
    let stat = read_stat(proc.pid).unwrap();
    assert_eq!(
        stat.session, proc.pid as i32,
        "the instance leads its own session"
    );
    let second = h.driver(owner());
    second.stop(&key, 0).await.unwrap();
    assert!(proc.gone());
}

#[tokio::test]
async fn stop_also_kills_children_that_outlive_their_leader() {
    let h = Harness::new();
    let driver = h.driver(owner());
    let key = conformance::key("leftover");
    let script = "(trap '' TERM; exec sleep 1000) & echo \"child $!\"; wait";
    let spec = h.fixture(owner()).sh(key.clone(), script, Vec::new());
    driver.start(&spec, &progress()).await.unwrap();
    let log = log_with(&driver, &key, "\n").await;
    let pid: u32 = log.trim().strip_prefix("child ").unwrap().parse().unwrap();
    let child = Proc {
        pid,
        start_ticks: read_stat(pid).unwrap().start_ticks,
    };

    driver.stop(&key, 300).await.unwrap();
    assert!(!child.alive(), "a child ignoring SIGTERM survived stop");
}
