//! Starting an agent: the data dir, the cluster key and node identity, the store and its writer,
//! the transport, the runtime drivers and their worker, the local API, and the node core built
//! from all of them. `start` hands the pieces to the node loop in `agent/mod.rs`.
//!
//! It also holds the small helpers only start-up needs (capacity measurement, multiaddr parsing,
//! the advertised host) and `shoal keygen`. It does not run the loop or carry out outputs
//! (`agent/shell.rs`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use libp2p::Multiaddr;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use super::config::{AgentConfig, Profile};
use super::logs::AgentLogs;
use super::shell::Shell;
use super::{Clock, Drivers, VERSION, runtime_worker, writer};
use crate::api::ApiCall;
use crate::ids::NodeId;
use crate::net::{ClusterKey, NetConfig, NetEvent, NetHandle};
use crate::node::{CoreTiming, Node, NodeConfig, SyncMsg, TestBugs, Topic};
use crate::runtime::RuntimeEvent;
use crate::spec::{DriverKind, Resources};
use crate::store::Store;

/// A started agent, as the node loop takes it over.
pub(super) struct Started {
    pub clock: Clock,
    pub node: Node<StdRng>,
    pub shell: Shell,
    pub net: NetHandle,
    pub net_rx: mpsc::Receiver<NetEvent>,
    pub ev_rx: mpsc::Receiver<RuntimeEvent>,
    pub api_rx: mpsc::Receiver<ApiCall>,
    pub sync_resp_rx: mpsc::Receiver<(NodeId, SyncMsg)>,
    /// Stops the API server.
    pub stop_api_tx: oneshot::Sender<()>,
    pub api_task: tokio::task::JoinHandle<std::io::Result<()>>,
    pub writer_thread: std::thread::JoinHandle<()>,
}

/// Starts everything the node loop drives, in order: the network first (the addresses
/// advertised are the ones actually bound), then the drivers, the core, the runtime worker and
/// the API.
pub(super) async fn start(
    cfg: &AgentConfig,
    drivers_rt: &tokio::runtime::Handle,
) -> anyhow::Result<Started> {
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
    let (key, key_path, created) = cluster_key(cfg)?;
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
    let (net, net_rx) = crate::net::spawn(net_cfg)?;
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
    let node = Node::new(node_cfg, state, StdRng::from_rng(&mut rand::rng()))
        .context("invalid node configuration")?;

    // Runtime worker: commands in, events out, both bounded.
    let (ev_tx, ev_rx) = mpsc::channel(1024);
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
    let (api_tx, api_rx) = mpsc::channel::<ApiCall>(64);
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

    let (sync_resp_tx, sync_resp_rx) = mpsc::channel(256);
    let shell = Shell::new(
        writer_tx,
        cmd_tx,
        net.clone(),
        sync_resp_tx,
        cfg.test_faults,
        bugs,
    );
    if cfg.test_faults {
        warn!("test-only fault injection is enabled (--test-faults)");
    }
    Ok(Started {
        clock,
        node,
        shell,
        net,
        net_rx,
        ev_rx,
        api_rx,
        sync_resp_rx,
        stop_api_tx,
        api_task,
        writer_thread,
    })
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
