//! The agent: the tokio shell around the node core. It wires the store (redb), the local API
//! (axum), the runtime drivers and the network to `Node::handle`, and does nothing else: every
//! decision is the core's.
//!
//! One loop owns the node; the API, the runtime worker and the network talk to it through bounded
//! channels. Runtime commands go to a worker so a slow driver never stalls the loop. Outputs are
//! executed in order, so a write is on disk before the API acknowledges it.
//!
//! This file holds the entry point, the clock and the node loop. Starting up is `setup`,
//! turning channel items into inputs and carrying out outputs is `shell`, the majority lease
//! file is `lease`, `shoal logs` is `logs`, the store writer is `writer` and the runtime worker
//! is `runtime_worker`.

pub mod config;
pub mod demo;
mod lease;
mod logs;
mod runtime_worker;
mod setup;
mod shell;
mod writer;

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tracing::{info, warn};

use crate::ids::Millis;
use crate::node::Input;
use config::{AgentConfig, LogFormat};
use lease::LeaseWriter;
pub use runtime_worker::Drivers;
pub use setup::{keygen, measure_capacity, write_private};

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

/// Inputs taken in one turn of the agent loop before placement and reconcile run.
const MAX_BATCH: usize = 256;

async fn agent_main(cfg: AgentConfig, drivers_rt: tokio::runtime::Handle) -> anyhow::Result<()> {
    let setup::Started {
        clock,
        mut node,
        mut shell,
        net,
        mut net_rx,
        mut ev_rx,
        mut api_rx,
        mut sync_resp_rx,
        stop_api_tx,
        api_task,
        writer_thread,
    } = setup::start(&cfg, &drivers_rt).await?;

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
