//! The agent: the tokio shell around the node core. It wires the store (redb), the local API
//! (axum), the runtime drivers and the network to `Node::handle`, and does nothing else: every
//! decision is the core's.
//!
//! One loop owns the node; the API, the runtime worker and the network talk to it through bounded
//! channels. Runtime commands go to a worker so a slow driver never stalls the loop. Outputs are
//! executed in order, so a write is on disk before the API acknowledges it.

pub mod config;
pub mod demo;
mod runtime_worker;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::api::{ApiCall, LogSource};
use crate::ids::{InstanceKey, Millis, NodeId, SlotId};
use crate::node::api::{ApiErrorKind, PsEntry};
use crate::node::{ApiError, ApiReply, ApiRequest, CoreTiming, Input, Node, NodeConfig, Output};
use crate::spec::{DriverKind, Resources, ServiceName};
use crate::store::Store;
use config::{AgentConfig, LogFormat, Profile};
pub use runtime_worker::Drivers;

/// The agent's version, advertised to peers and shown in `shoal status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: config::AgentArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    init_logging(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(agent_main(cfg))
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The node's clock: one wall-clock reading at start plus a monotonic clock, so it never goes
/// backwards within a run (plus a test-only offset for clock-skew experiments).
#[derive(Clone, Copy)]
pub struct Clock {
    start: Instant,
    start_wall_ms: u64,
    offset_ms: i64,
}

impl Clock {
    pub fn new(offset_ms: i64) -> Clock {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Clock {
            start: Instant::now(),
            start_wall_ms: wall,
            offset_ms,
        }
    }

    pub fn now(&self) -> Millis {
        let ms =
            self.start_wall_ms as i64 + self.start.elapsed().as_millis() as i64 + self.offset_ms;
        Millis(ms.max(0) as u64)
    }

    /// The instant at which `now()` will read `at`.
    pub fn instant_of(&self, at: Millis) -> Instant {
        let from_start = at.0 as i64 - self.start_wall_ms as i64 - self.offset_ms;
        self.start + Duration::from_millis(from_start.max(0) as u64)
    }
}

/// CPU millicores and memory bytes this machine offers: the available parallelism (which honours
/// CPU quotas and affinity) and the physical memory clamped by the cgroup limit.
pub fn measure_capacity() -> Resources {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let mut memory = 0;
    if let Ok(mut sys) = sysinfo::System::new() {
        sys.refresh_memory();
        memory = sys.total_memory();
        if let Some(limits) = sys.cgroup_limits()
            && limits.total_memory > 0
            && limits.total_memory < memory
        {
            memory = limits.total_memory;
        }
    }
    Resources {
        cpu_millis: cpus * 1000,
        memory_bytes: memory,
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create data dir {}", dir.display()))
}

/// The identity, id and cluster id of this node, and the key the network uses.
pub struct Identity {
    pub node: NodeId,
    pub cluster_id: String,
}

async fn agent_main(cfg: AgentConfig) -> anyhow::Result<()> {
    let clock = Clock::new(cfg.test_clock_offset_ms);
    create_private_dir(&cfg.data_dir)?;
    let mut store = Store::open(&cfg.data_dir)?;
    let incarnation = store.next_incarnation()?;
    let state = store.load()?;
    let identity = load_identity(&cfg)?;
    info!(node = %identity.node, incarnation, data_dir = %cfg.data_dir.display(), "starting shoal agent");

    let measured = measure_capacity();
    let capacity = Resources {
        cpu_millis: cfg.cpu_millis.unwrap_or(measured.cpu_millis),
        memory_bytes: cfg.memory_bytes.unwrap_or(measured.memory_bytes),
    };
    let owner = crate::runtime::Owner {
        cluster: identity.cluster_id.clone(),
        node: identity.node.clone(),
    };
    let advertise_host = advertise_host(&cfg);
    let drivers = Drivers::detect(&cfg, owner, advertise_host).await?;
    let runtimes: BTreeSet<DriverKind> = drivers.kinds();
    info!(runtimes = ?runtimes, cpu_millis = capacity.cpu_millis, memory_bytes = capacity.memory_bytes, "node capacity");

    let timing = match cfg.profile {
        Profile::Lan => CoreTiming::lan(),
        Profile::Wan => CoreTiming::wan(),
    };
    let node_cfg = NodeConfig {
        id: identity.node.clone(),
        incarnation,
        cluster: identity.cluster_id.clone(),
        labels: cfg.labels.clone(),
        capacity,
        runtimes,
        agent_version: VERSION.to_string(),
        timing,
    };
    let mut node = Node::new(node_cfg, state, StdRng::from_rng(&mut rand::rng()));

    // Runtime worker: commands in, events out, both bounded.
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    drivers.watch(ev_tx.clone()).await;
    tokio::spawn(runtime_worker::run(drivers.clone(), cmd_rx, ev_tx));

    // Local API.
    let token = crate::api::load_or_create_token(&cfg.data_dir)
        .with_context(|| format!("cannot create the API token in {}", cfg.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(cfg.api).await.with_context(|| {
        format!("cannot listen on {} for the API: is another agent running? choose another address with --api", cfg.api)
    })?;
    let (api_tx, mut api_rx) = mpsc::channel::<ApiCall>(64);
    let (stop_api_tx, stop_api_rx) = oneshot::channel::<()>();
    let logs = Arc::new(AgentLogs {
        calls: api_tx.clone(),
        drivers: drivers.clone(),
        me: identity.node.clone(),
    });
    let api_task = tokio::spawn(crate::api::serve(
        listener,
        token,
        api_tx,
        logs,
        async move {
            let _ = stop_api_rx.await;
        },
    ));
    info!(api = %cfg.api, "api listening");

    let mut shutdown = Box::pin(shutdown_signal());
    let mut pending: BTreeMap<u64, (bool, oneshot::Sender<Result<ApiReply, ApiError>>)> =
        BTreeMap::new();
    let mut next_id = 0u64;
    let mut out = Vec::new();
    loop {
        let now = clock.now();
        let wake = clock.instant_of(node.next_wake(now));
        let input = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ev) = ev_rx.recv() => Input::Runtime(ev),
            Some(call) = api_rx.recv() => {
                next_id += 1;
                pending.insert(next_id, (call.req.is_write(), call.reply));
                Input::Api { id: next_id, req: call.req }
            }
            () = tokio::time::sleep_until(wake.into()) => Input::Tick,
        };
        out.clear();
        node.handle(clock.now(), input, &mut out);
        execute(&node, &mut store, &cmd_tx, &mut pending, &mut out);
    }
    info!("shutting down; instances keep running and are adopted on the next start");
    let _ = stop_api_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    Ok(())
}

/// API requests waiting for the core's reply: id → (is a write, where to answer).
type Pending = BTreeMap<u64, (bool, oneshot::Sender<Result<ApiReply, ApiError>>)>;

/// Executes the core's outputs in order.
fn execute(
    node: &Node<StdRng>,
    store: &mut Store,
    cmd_tx: &mpsc::Sender<crate::runtime::RuntimeCommand>,
    pending: &mut Pending,
    out: &mut Vec<Output>,
) {
    let mut persist_failed: Option<String> = None;
    for o in out.drain(..) {
        match o {
            Output::Persist(delta) => {
                if let Err(e) = store.persist(node.state(), &delta) {
                    error!(error = %e, "cannot persist state");
                    persist_failed = Some(e.to_string());
                }
            }
            Output::Reply { id, result } => {
                let Some((is_write, reply)) = pending.remove(&id) else {
                    continue;
                };
                let result = match (&persist_failed, is_write) {
                    (Some(e), true) => Err(ApiError {
                        kind: ApiErrorKind::Unavailable,
                        error: format!("the write could not be persisted: {e}"),
                        hint: Some("it was not acknowledged; fix the disk and retry".into()),
                    }),
                    _ => result,
                };
                let _ = reply.send(result);
            }
            Output::Runtime(cmd) => {
                if let Err(e) = cmd_tx.try_send(cmd) {
                    // The periodic re-list repairs what a dropped command leaves undone.
                    warn!(error = %e, "runtime queue full, command dropped");
                }
            }
            Output::Broadcast { .. } | Output::Send { .. } => {
                if persist_failed.is_some() {
                    continue;
                }
                debug!("no peers to send to");
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn advertise_host(cfg: &AgentConfig) -> String {
    // The host part of the first advertised or listen multiaddr, unless it is unspecified.
    for a in cfg.advertise.iter().chain(cfg.listen.iter()) {
        let parts: Vec<&str> = a.split('/').collect();
        if parts.len() > 2
            && (parts[1] == "ip4" || parts[1] == "ip6" || parts[1] == "dns4" || parts[1] == "dns")
        {
            let host = parts[2];
            if host != "0.0.0.0" && host != "::" {
                return host.to_string();
            }
        }
    }
    "127.0.0.1".to_string()
}

fn load_identity(cfg: &AgentConfig) -> anyhow::Result<Identity> {
    let path = cfg.data_dir.join("node.key");
    let kp = if path.exists() {
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        libp2p::identity::Keypair::from_protobuf_encoding(&bytes).with_context(|| {
            format!(
                "{} is not a valid node key; move it away to create a new identity",
                path.display()
            )
        })?
    } else {
        let kp = libp2p::identity::Keypair::generate_ed25519();
        write_private(
            &path,
            &kp.to_protobuf_encoding()
                .context("cannot encode the node key")?,
        )?;
        kp
    };
    let node = NodeId(kp.public().to_peer_id().to_string());
    Ok(Identity {
        node,
        cluster_id: "local".into(),
    })
}

/// Writes a file readable only by its owner, atomically (temp file + rename).
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp: PathBuf = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// `shoal keygen`.
pub fn keygen(_out: Option<&Path>) -> anyhow::Result<()> {
    anyhow::bail!("keygen is being written")
}

/// Serves `shoal logs` for instances on this node.
struct AgentLogs {
    calls: mpsc::Sender<ApiCall>,
    drivers: Drivers,
    me: NodeId,
}

impl LogSource for AgentLogs {
    fn logs(
        &self,
        service: String,
        slot: u32,
        follow: bool,
        tail: Option<usize>,
    ) -> futures::future::BoxFuture<'static, Result<mpsc::Receiver<Vec<u8>>, ApiError>> {
        let calls = self.calls.clone();
        let drivers = self.drivers.clone();
        let me = self.me.clone();
        Box::pin(async move {
            let name = ServiceName::new(&service)
                .map_err(|e| ApiError::invalid(e, "give a service name"))?;
            let (tx, rx) = oneshot::channel();
            calls
                .send(ApiCall {
                    req: ApiRequest::Ps {
                        service: Some(name.clone()),
                    },
                    reply: tx,
                })
                .await
                .map_err(|_| unavailable())?;
            let rows = match rx.await.map_err(|_| unavailable())?? {
                ApiReply::Ps(rows) => rows,
                _ => return Err(unavailable()),
            };
            let row: &PsEntry = rows.iter().find(|r| r.slot == slot).ok_or_else(|| {
                ApiError::not_found(
                    format!("service {service} has no slot {slot}"),
                    format!("see `shoal ps {service}`"),
                )
            })?;
            match &row.node {
                Some(n) if n == &me.0 => {}
                Some(n) => {
                    return Err(ApiError::not_found(
                        format!("slot {service}/{slot} runs on node {n}, not on this node"),
                        "run `shoal logs` against that node's API (--api)",
                    ));
                }
                None => {
                    return Err(ApiError::not_found(
                        format!("slot {service}/{slot} is not placed"),
                        "see `shoal ps`",
                    ));
                }
            }
            let key = InstanceKey {
                slot: SlotId::new(&name, slot),
                epoch: row.epoch,
            };
            let driver = if row.container.is_some() {
                DriverKind::Docker
            } else {
                DriverKind::Process
            };
            drivers
                .logs(driver, &key, follow, tail)
                .await
                .map_err(|e| ApiError::not_found(e.to_string(), "see `shoal ps`"))
        })
    }
}

fn unavailable() -> ApiError {
    ApiError {
        kind: ApiErrorKind::Unavailable,
        error: "the agent is shutting down".into(),
        hint: None,
    }
}
