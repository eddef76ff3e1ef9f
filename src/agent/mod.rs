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
mod writer;

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
use crate::net::{ClusterKey, FaultConfig, NetConfig, NetEvent, NetHandle};
use crate::node::api::TestFaults;
use crate::node::api::{ApiErrorKind, PsEntry};
use crate::node::{
    ApiError, ApiReply, ApiRequest, CoreTiming, Input, Message, Node, NodeConfig, Output, SyncMsg,
    TestBugs, Topic,
};
use crate::spec::{DriverKind, Resources, ServiceName};
use crate::state::{ClusterState, Crdt};
use crate::store::Store;
use crate::wire;
use config::{AgentConfig, LogFormat, Profile};
use libp2p::Multiaddr;
pub use runtime_worker::Drivers;

/// The agent's version, advertised to peers and shown in `shoal status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Runs the agent until SIGINT/SIGTERM.
pub fn run(args: config::AgentArgs) -> anyhow::Result<()> {
    let cfg = args.resolve()?;
    init_logging(cfg.log_format);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shoal-core")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // Driver calls (fork and exec, instance records, the docker API) run on a runtime of their
    // own: a burst of starts blocks its threads, never the ones that answer SWIM probes. On a
    // shared runtime, 1,000 starts at once kept the node loop from probing for seconds and every
    // node of a 5-node fleet declared every other down.
    let drivers_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shoal-drivers")
        .enable_all()
        .build()
        .context("cannot start the drivers' async runtime")?;
    let result = rt.block_on(agent_main(cfg, drivers_rt.handle().clone()));
    drop(rt);
    drivers_rt.shutdown_timeout(Duration::from_secs(2));
    result
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SHOAL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
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

/// The cluster key: from `--cluster-key`, or `<data-dir>/cluster.key`; created there when this
/// node starts a new cluster (no key, no seeds). Joining a cluster without its key is an error
/// that says where to get it.
fn cluster_key(cfg: &AgentConfig) -> anyhow::Result<(ClusterKey, PathBuf, bool)> {
    if let Some(path) = &cfg.cluster_key {
        let key = ClusterKey::load(path)
            .with_context(|| format!("cannot read the cluster key {}", path.display()))?;
        return Ok((key, path.clone(), false));
    }
    let path = cfg.data_dir.join("cluster.key");
    if path.exists() {
        let key = ClusterKey::load(&path)
            .with_context(|| format!("cannot read the cluster key {}", path.display()))?;
        return Ok((key, path, false));
    }
    if !cfg.seeds.is_empty() {
        anyhow::bail!(
            "joining a fleet needs its cluster key: copy `cluster.key` from a member's data dir (or the file `shoal keygen` wrote) and pass --cluster-key FILE"
        );
    }
    let key = ClusterKey::generate();
    key.save(&path)
        .with_context(|| format!("cannot write the cluster key {}", path.display()))?;
    Ok((key, path, true))
}

fn parse_multiaddrs(what: &str, list: &[String]) -> anyhow::Result<Vec<Multiaddr>> {
    list.iter()
        .map(|a| {
            a.parse::<Multiaddr>().with_context(|| {
                format!("{what} {a:?} is not a multiaddr (for example /ip4/10.0.0.5/tcp/7801)")
            })
        })
        .collect()
}

/// Everything the node loop drives besides the node itself.
struct Shell {
    writer: mpsc::Sender<writer::Job>,
    cmd_tx: mpsc::Sender<crate::runtime::RuntimeCommand>,
    pending: Pending,
    net: NetHandle,
    /// Sync requests from peers waiting for the core's answer.
    sync_replies: BTreeMap<u64, oneshot::Sender<Vec<u8>>>,
    sync_resp_tx: mpsc::Sender<(NodeId, SyncMsg)>,
    next_id: u64,
    /// Gossip and sync messages this shell could not decode.
    undecodable: u64,
    /// Since when changes learned from peers (or decided here without an API write) have been
    /// committed without fsync: they are made durable within `NONDURABLE_MAX`.
    nondurable_since: Option<std::time::Instant>,
    test_faults: Option<TestFaults>,
    test_faults_allowed: bool,
    bugs: TestBugs,
    known: Vec<NodeId>,
}

/// Largest gossip message this node publishes or accepts (gossipsub's own limit is 64 KiB).
const MAX_GOSSIP_BYTES: usize = 60 * 1024;
/// The longest a change stays committed without fsync (see `nondurable_since`).
const NONDURABLE_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Inputs taken in one turn of the agent loop before placement and reconcile run.
const MAX_BATCH: usize = 256;
/// Largest sync message accepted.
const MAX_SYNC_BYTES: usize = 1 << 20;

async fn agent_main(cfg: AgentConfig, drivers_rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let clock = Clock::new(cfg.test_clock_offset_ms);
    create_private_dir(&cfg.data_dir)?;
    let bugs = match std::env::var("SHOAL_TEST_BUGS") {
        Ok(v) => TestBugs::parse(&v).map_err(|e| anyhow::anyhow!("SHOAL_TEST_BUGS: {e}"))?,
        Err(_) => TestBugs::default(),
    };
    if bugs.any() {
        warn!(bugs = ?bugs, "deliberate bugs are switched on (SHOAL_TEST_BUGS): this agent is for testing only");
    }
    let store = Store::open(&cfg.data_dir)?;
    let (key, key_path, created) = cluster_key(&cfg)?;
    let keypair = crate::net::load_or_create_identity(&cfg.data_dir)?;
    let me = crate::net::node_id(&keypair);
    let cluster_id = key.cluster_id();
    let incarnation = store.next_incarnation()?;
    let state = store.load()?;
    info!(node = %me, incarnation, cluster = %cluster_id, data_dir = %cfg.data_dir.display(), "starting shoal agent");

    // Network first: the addresses we advertise are the ones actually bound.
    let listen = parse_multiaddrs("--listen", &cfg.listen)?;
    let mut net_cfg = NetConfig::new(listen, key, keypair);
    net_cfg.gossip_topics = vec![
        Topic::State.name().to_string(),
        Topic::Bids.name().to_string(),
    ];
    let (net, mut net_rx) = crate::net::spawn(net_cfg)?;
    net.ready().await;
    let advertised: Vec<String> = if cfg.advertise.is_empty() {
        net.listen_addrs()
            .iter()
            .map(|a| a.to_string())
            .take(crate::membership::MAX_ADDRS)
            .collect()
    } else {
        parse_multiaddrs("--advertise", &cfg.advertise)?;
        cfg.advertise.clone()
    };
    if advertised.is_empty() {
        anyhow::bail!("the transport is not listening on any address; check --listen");
    }
    info!(addrs = ?advertised, "listening for peers");
    if created {
        let seed = format!("{}/p2p/{}", advertised[0], me);
        eprintln!(
            "started a new cluster; its key is {}\nto add a machine, copy that file to it and run:\n  shoal agent --cluster-key cluster.key --seed {seed}",
            key_path.display()
        );
    }
    let seeds = parse_multiaddrs("--seed", &cfg.seeds)?;

    let measured = measure_capacity();
    let capacity = Resources {
        cpu_millis: cfg.cpu_millis.unwrap_or(measured.cpu_millis),
        memory_bytes: cfg.memory_bytes.unwrap_or(measured.memory_bytes),
    };
    let owner = crate::runtime::Owner {
        cluster: cluster_id.clone(),
        node: me.clone(),
    };
    let drivers = {
        let cfg = cfg.clone();
        let host = advertise_host(&advertised);
        drivers_rt
            .spawn(async move { Drivers::detect(&cfg, owner, host).await })
            .await
            .context("the drivers' runtime stopped")??
    };
    let runtimes: BTreeSet<DriverKind> = drivers.kinds();
    info!(runtimes = ?runtimes, cpu_millis = capacity.cpu_millis, memory_bytes = capacity.memory_bytes, "node capacity");

    let (timing, profile) = match cfg.profile {
        Profile::Lan => (CoreTiming::lan(), crate::membership::Profile::Lan),
        Profile::Wan => (CoreTiming::wan(), crate::membership::Profile::Wan),
    };
    let mut swim = profile.tuning(64);
    cfg.swim.apply(&mut swim);
    swim.validate()
        .map_err(|e| anyhow::anyhow!("[swim] in the config file: {e}"))?;
    let node_cfg = NodeConfig {
        id: me.clone(),
        incarnation,
        cluster: cluster_id.clone(),
        labels: cfg.labels.clone(),
        capacity,
        runtimes,
        agent_version: VERSION.to_string(),
        timing,
        addrs: advertised.clone(),
        seeds: seeds.iter().map(Multiaddr::to_string).collect(),
        swim,
        bugs,
    };
    let (writer_tx, writer_thread) = writer::spawn(store, state.clone());
    let mut node = Node::new(node_cfg, state, StdRng::from_rng(&mut rand::rng()))
        .context("invalid node configuration")?;

    // Runtime worker: commands in, events out, both bounded.
    let (ev_tx, mut ev_rx) = mpsc::channel(1024);
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    {
        let drivers = drivers.clone();
        drivers_rt.spawn(async move {
            drivers.watch(ev_tx.clone()).await;
            runtime_worker::run(drivers, cmd_rx, ev_tx).await;
        });
    }

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
        me: me.clone(),
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

    let (sync_resp_tx, mut sync_resp_rx) = mpsc::channel(256);
    let mut shell = Shell {
        writer: writer_tx,
        cmd_tx,
        pending: Pending::new(),
        net: net.clone(),
        sync_replies: BTreeMap::new(),
        sync_resp_tx,
        next_id: 0,
        undecodable: 0,
        nondurable_since: None,
        test_faults: None,
        test_faults_allowed: cfg.test_faults,
        bugs,
        known: Vec::new(),
    };
    if cfg.test_faults {
        warn!("test-only fault injection is enabled (--test-faults)");
    }

    let mut shutdown = Box::pin(shutdown_signal());
    let mut lease = LeaseWriter::new(crate::runtime::lease::lease_path(&cfg.data_dir));
    lease.renew(node.majority_lease_ms(clock.now()));
    let mut out = Vec::new();
    loop {
        let now = clock.now();
        let wake = clock.instant_of(node.next_wake(now));
        // Local work first, then the network, then the timer; a busy network cannot starve
        // the timer, because a due tick runs after any input (below).
        let input = tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ev) = ev_rx.recv() => Input::Runtime(ev),
            Some(call) = api_rx.recv() => match shell.api_call(&node, call) {
                Some(input) => input,
                None => continue,
            },
            Some(ev) = net_rx.recv() => match shell.net_event(ev) {
                Some(input) => input,
                None => continue,
            },
            Some((from, msg)) = sync_resp_rx.recv() => Input::SyncResponse { from, msg },
            () = tokio::time::sleep_until(wake.into()) => Input::Tick,
        };
        let is_tick = matches!(input, Input::Tick);
        out.clear();
        node.absorb(clock.now(), input, &mut out);
        // Whatever else is already waiting joins this batch (bounded), and placement and
        // reconcile run once for all of it: a burst of 1,000 runtime events or claims is one
        // pass, not 1,000, and the datagrams queued behind it are answered in the same turn.
        for _ in 1..MAX_BATCH {
            let next = if let Ok(ev) = ev_rx.try_recv() {
                Input::Runtime(ev)
            } else if let Ok(ev) = net_rx.try_recv() {
                match shell.net_event(ev) {
                    Some(input) => input,
                    None => continue,
                }
            } else if let Ok((from, msg)) = sync_resp_rx.try_recv() {
                Input::SyncResponse { from, msg }
            } else {
                break;
            };
            node.absorb(clock.now(), next, &mut out);
        }
        node.flush(clock.now(), &mut out);
        let now = clock.now();
        lease.renew(node.majority_lease_ms(now));
        if !is_tick && node.next_wake(now) <= now {
            node.handle(now, Input::Tick, &mut out);
        }
        shell.execute(&node, &mut out).await;
    }
    info!("shutting down; instances keep running and are adopted on the next start");
    out.clear();
    node.leave(clock.now(), &mut out);
    shell.execute(&node, &mut out).await;
    // Give the leave notice a moment to go out before the connections close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    net.shutdown().await;
    let _ = stop_api_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(2), api_task).await;
    // Let the writer finish what is queued and make it durable.
    drop(shell);
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
    Ok(())
}

/// Keeps `<data-dir>/majority.lease` current (see `runtime::lease`): rewritten at most once a
/// second, and at once when the lease runs out or comes back. The write runs on tokio's
/// blocking pool (the loop never waits on the disk), one at a time: a renewal due while the
/// previous write is still in flight waits for the next turn.
struct LeaseWriter {
    path: std::path::PathBuf,
    last: Option<(Instant, bool)>,
    in_flight: Option<tokio::task::JoinHandle<()>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl LeaseWriter {
    fn new(path: std::path::PathBuf) -> LeaseWriter {
        LeaseWriter {
            path,
            last: None,
            in_flight: None,
            failing: Arc::default(),
        }
    }

    fn renew(&mut self, valid_for_ms: u64) {
        let holds = valid_for_ms > 0;
        if self
            .last
            .is_some_and(|(t, h)| h == holds && t.elapsed() < Duration::from_secs(1))
            || self.in_flight.as_ref().is_some_and(|w| !w.is_finished())
        {
            return;
        }
        self.last = Some((Instant::now(), holds));
        let path = self.path.clone();
        let failing = self.failing.clone();
        self.in_flight = Some(tokio::task::spawn_blocking(move || {
            use std::sync::atomic::Ordering;
            match crate::runtime::lease::write_lease(&path, valid_for_ms) {
                Ok(()) => failing.store(false, Ordering::Relaxed),
                Err(e) => {
                    if !failing.swap(true, Ordering::Relaxed) {
                        warn!(path = %path.display(), error = %e, "cannot renew the majority lease: majority instances here will be stopped when it runs out; free disk space or fix the data dir's permissions");
                    }
                }
            }
        }));
    }
}

/// API requests waiting for the core's reply: id → (is a write, where to answer).
type Pending = BTreeMap<u64, (bool, oneshot::Sender<Result<ApiReply, ApiError>>)>;

impl Shell {
    /// Turns an API call into a core input; test-only fault injection is the shell's own.
    fn api_call(&mut self, node: &Node<StdRng>, call: ApiCall) -> Option<Input> {
        if let ApiRequest::TestFaults(f) = &call.req
            && self.test_faults_allowed
        {
            let known: Vec<NodeId> = node.members().peers().keys().cloned().collect();
            let mut blocked = BTreeSet::new();
            for b in &f.blocked {
                match crate::node::api::resolve_node(b, known.iter()) {
                    Ok(id) => {
                        blocked.insert(id);
                    }
                    Err(e) => {
                        let _ = call.reply.send(Err(e));
                        return None;
                    }
                }
            }
            self.net.set_fault(FaultConfig {
                drop_rate: f.drop_rate,
                delay_ms: f.delay_ms,
                blocked,
            });
            info!(faults = ?f, "test faults set");
            self.test_faults = Some(f.clone())
                .filter(|f| f.drop_rate > 0.0 || f.delay_ms > 0 || !f.blocked.is_empty());
            let _ = call.reply.send(Ok(ApiReply::Written(vec![])));
            return None;
        }
        self.next_id += 1;
        self.pending
            .insert(self.next_id, (call.req.is_write(), call.reply));
        Some(Input::Api {
            id: self.next_id,
            req: call.req,
        })
    }

    /// Turns a transport event into a core input (undecodable messages are counted and dropped).
    fn net_event(&mut self, ev: NetEvent) -> Option<Input> {
        match ev {
            NetEvent::Datagram { from, bytes } => Some(Input::Datagram { from, bytes }),
            NetEvent::Gossip { from, bytes, .. } => {
                match wire::decode::<Message>(&bytes, MAX_GOSSIP_BYTES) {
                    Ok(msg) => Some(Input::Message { from, msg }),
                    Err(e) => {
                        self.undecodable += 1;
                        debug!(peer = %from, error = %e, "undecodable gossip dropped");
                        None
                    }
                }
            }
            NetEvent::SyncRequest { from, bytes, reply } => {
                match wire::decode::<SyncMsg>(&bytes, MAX_SYNC_BYTES) {
                    Ok(msg) => {
                        self.next_id += 1;
                        self.sync_replies.insert(self.next_id, reply);
                        // Bound the table: a peer that never gets answered must not grow it.
                        while self.sync_replies.len() > 256 {
                            self.sync_replies.pop_first();
                        }
                        Some(Input::SyncRequest {
                            from,
                            id: self.next_id,
                            msg,
                        })
                    }
                    Err(e) => {
                        self.undecodable += 1;
                        debug!(peer = %from, error = %e, "undecodable sync request dropped");
                        None
                    }
                }
            }
            NetEvent::Connected { node, .. } => Some(Input::Connected { node }),
            NetEvent::Disconnected { .. } | NetEvent::HandshakeFailed { .. } => None,
        }
    }

    /// Executes the core's outputs in order. Changed entries go to the store writer as one job
    /// per batch; replies to writes ride with that job and are sent once it is durable.
    async fn execute(&mut self, node: &Node<StdRng>, out: &mut Vec<Output>) {
        let mut job = writer::Job {
            entries: ClusterState::default(),
            durable: false,
            acks: Vec::new(),
        };
        for o in out.drain(..) {
            match o {
                Output::Persist(delta) => {
                    let entries = node.state().entries_for(&delta);
                    job.entries.merge(&entries);
                }
                Output::Reply { id, result } => {
                    let Some((is_write, reply)) = self.pending.remove(&id) else {
                        continue;
                    };
                    let result = match result {
                        Ok(ApiReply::Status(mut st)) => {
                            let net = self.net.stats();
                            st.counters.frames_rejected = net.frames_rejected + self.undecodable;
                            st.counters.net_bytes_in = net.bytes_in;
                            st.counters.net_bytes_out = net.bytes_out;
                            if let Some(f) = &self.test_faults {
                                st.faults.push(format!(
                                    "test faults on: drop {} delay {}ms blocked {:?}",
                                    f.drop_rate, f.delay_ms, f.blocked
                                ));
                            }
                            if self.bugs.any() {
                                st.faults
                                    .push(format!("deliberate bugs on: {:?}", self.bugs));
                            }
                            Ok(ApiReply::Status(st))
                        }
                        other => other,
                    };
                    if is_write && !job.entries.is_empty() {
                        job.durable = true;
                        job.acks.push((reply, result));
                    } else if is_write && !job.acks.is_empty() {
                        // Ordered after earlier acknowledgements of this batch.
                        job.acks.push((reply, result));
                    } else {
                        let _ = reply.send(result);
                    }
                }
                Output::Runtime(cmd) => {
                    if let Err(e) = self.cmd_tx.try_send(cmd) {
                        // The periodic re-list repairs what a dropped command leaves undone.
                        warn!(error = %e, "runtime queue full, command dropped");
                    }
                }
                Output::Broadcast { topic, msg } => {
                    let bytes = wire::encode(&msg);
                    if bytes.len() > MAX_GOSSIP_BYTES {
                        // Anti-entropy carries what is too big to gossip.
                        debug!(
                            bytes = bytes.len(),
                            "message too big to gossip, left to anti-entropy"
                        );
                        continue;
                    }
                    self.net.publish(topic.name(), bytes);
                }
                Output::Datagram { to, bytes } => self.net.send_datagram(to, bytes),
                Output::Dial { addr } => match addr.parse::<Multiaddr>() {
                    Ok(a) => self.net.dial(a),
                    Err(e) => warn!(addr = %addr, error = %e, "seed is not a multiaddr"),
                },
                Output::Addresses { node: peer, addrs } => {
                    let addrs: Vec<Multiaddr> =
                        addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    if !self.known.contains(&peer) {
                        self.known.push(peer.clone());
                    }
                    self.net.add_addresses(peer, addrs);
                }
                Output::SyncRequest { to, msg } => {
                    let rx = self.net.request(to.clone(), wire::encode(&msg));
                    let tx = self.sync_resp_tx.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(bytes)) = rx.await else { return };
                        if let Ok(msg) = wire::decode::<SyncMsg>(&bytes, MAX_SYNC_BYTES) {
                            let _ = tx.send((to, msg)).await;
                        }
                    });
                }
                Output::SyncReply { id, msg } => {
                    if let Some(reply) = self.sync_replies.remove(&id) {
                        let _ = reply.send(wire::encode(&msg));
                    }
                }
            }
        }
        // State learned from peers and this node's own claims are committed without fsync, but
        // not for long: a node that loses power must come back with what it knew a moment ago,
        // or it cannot restart its instances while every peer is out of reach.
        if job.durable {
            self.nondurable_since = None;
        } else if !job.entries.is_empty() {
            self.nondurable_since
                .get_or_insert_with(std::time::Instant::now);
        }
        if self
            .nondurable_since
            .is_some_and(|t| t.elapsed() >= NONDURABLE_MAX)
        {
            job.durable = true;
            self.nondurable_since = None;
        }
        if !job.entries.is_empty() || !job.acks.is_empty() || job.durable {
            // Waits only when the writer is a whole queue behind (back-pressure, never loss).
            if self.writer.send(job).await.is_err() {
                error!("the store writer stopped; writes are no longer persisted");
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

/// The host part of the first advertised multiaddr (instances' endpoints use it).
fn advertise_host(advertised: &[String]) -> String {
    for a in advertised {
        let parts: Vec<&str> = a.split('/').collect();
        if parts.len() > 2 && matches!(parts[1], "ip4" | "ip6" | "dns4" | "dns6" | "dns") {
            let host = parts[2];
            if host != "0.0.0.0" && host != "::" {
                return host.to_string();
            }
        }
    }
    "127.0.0.1".to_string()
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

/// `shoal keygen`: a new cluster key, to a file (never overwritten) or stdout.
pub fn keygen(out: Option<&Path>) -> anyhow::Result<()> {
    let key = ClusterKey::generate();
    match out {
        Some(path) => {
            key.save(path)
                .with_context(|| format!("cannot write the cluster key to {}", path.display()))?;
            eprintln!(
                "wrote a new cluster key to {} (mode 0600); give it to every agent with --cluster-key",
                path.display()
            );
        }
        None => print!("{}", key.to_file_text()),
    }
    Ok(())
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
                Some(n) if **n == *me.0 => {}
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
