//! `shoal demo`: a local fleet on 127.0.0.1 with temporary data dirs, the example service
//! deployed on it, one node killed and the replicas moving — then the fleet keeps running until
//! Ctrl-C, and everything it created is removed.
//!
//! The agents are real `shoal agent` processes (this same binary); each offers docker when its
//! daemon answers and the process driver always. The demo talks to them through the API client,
//! like the CLI does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;

use crate::api::Client;
use crate::net::ClusterKey;
use crate::node::api::PsEntry;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of nodes (at least 2, so that one can die).
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// The service spec to deploy (its replica count is set to the number of nodes).
    #[arg(long, default_value = "examples/hello.yaml")]
    pub spec: PathBuf,
    /// Exit after the failover instead of waiting for Ctrl-C (for scripts and tests).
    #[arg(long)]
    pub no_wait: bool,
}

/// The example, built in, for when the demo runs outside a checkout.
const HELLO: &str = include_str!("../../examples/hello.yaml");

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct DemoNode {
    name: String,
    dir: PathBuf,
    api: String,
    child: Option<Child>,
    client: Option<Client>,
    id: String,
}

/// Everything the demo created; removed on drop, whatever happened.
struct Demo {
    root: PathBuf,
    nodes: Vec<DemoNode>,
}

impl Drop for Demo {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            // Instances outlive their agent by design: stop the demo's ones explicitly.
            for pid in instance_pids(&n.dir) {
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn instance_pids(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("instances")) else {
        return pids;
    };
    for e in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(pid) = v["pid"].as_u64()
        {
            pids.push(pid as u32);
        }
    }
    pids
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if STOP.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted");
        }
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn print_ps(rows: &[PsEntry], names: &[(String, String)]) {
    let name_of = |id: &Option<String>| {
        id.as_ref()
            .and_then(|id| {
                names
                    .iter()
                    .find(|(nid, _)| nid == id)
                    .map(|(_, n)| n.clone())
            })
            .unwrap_or_else(|| "-".into())
    };
    println!("  SERVICE  SLOT  NODE   STATE      ENDPOINT");
    for r in rows {
        println!(
            "  {:<8} {:<5} {:<6} {:<10} {}",
            r.service,
            r.slot,
            name_of(&r.node),
            r.state,
            r.endpoint.as_deref().unwrap_or("-")
        );
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes >= 2, "the demo needs at least 2 nodes (--nodes)");
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let exe = std::env::current_exe().context("cannot find the shoal binary")?;
    let root = std::env::temp_dir().join(format!("shoal-demo-{}", std::process::id()));
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let mut demo = Demo {
        root: root.clone(),
        nodes: Vec::new(),
    };
    let key_path = root.join("cluster.key");
    ClusterKey::generate().save(&key_path)?;
    let spec_text = std::fs::read_to_string(&args.spec).unwrap_or_else(|_| HELLO.to_string());
    let replicas = args.nodes;
    let spec_text: String = spec_text
        .lines()
        .map(|l| {
            if l.starts_with("replicas:") {
                format!("replicas: {replicas}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");

    println!(
        "starting {} agents on 127.0.0.1 (data in {})",
        args.nodes,
        root.display()
    );
    let mut seed: Option<String> = None;
    for i in 0..args.nodes {
        let name = format!("n{}", i + 1);
        let dir = root.join(&name);
        let api = format!("127.0.0.1:{}", free_port()?);
        let p2p = format!("/ip4/127.0.0.1/tcp/{}", free_port()?);
        let log = std::fs::File::create(root.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("agent")
            .arg("--data-dir")
            .arg(&dir)
            .arg("--api")
            .arg(&api)
            .arg("--listen")
            .arg(&p2p)
            .arg("--cluster-key")
            .arg(&key_path)
            .args(["--label", &format!("zone=z{}", i + 1)])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(s) = &seed {
            cmd.arg("--seed").arg(s);
        }
        let child = cmd.spawn().context("cannot start an agent")?;
        if seed.is_none() {
            seed = Some(p2p.clone());
        }
        demo.nodes.push(DemoNode {
            name,
            dir,
            api,
            child: Some(child),
            client: None,
            id: String::new(),
        });
    }
    for n in &mut demo.nodes {
        let token_path = n.dir.join("api-token");
        let client = wait_until("the agents' APIs", Duration::from_secs(30), || {
            let token = std::fs::read_to_string(&token_path).ok()?;
            let c = Client::new(&n.api, token.trim()).ok()?;
            c.status().ok().map(|s| (c, s))
        })?;
        n.id = client.1.node.clone();
        println!(
            "  {} {} runtimes: {}",
            n.name,
            crate::ids::NodeId(n.id.as_str().into()).short(),
            client.1.runtimes.join(", ")
        );
        n.client = Some(client.0);
    }
    let names: Vec<(String, String)> = demo
        .nodes
        .iter()
        .map(|n| (n.id.clone(), n.name.clone()))
        .collect();
    let first = demo.nodes[0].client.as_ref().expect("connected");
    let count = args.nodes;
    wait_until(
        "every node to see every other",
        Duration::from_secs(30),
        || {
            let nodes = first.nodes().ok()?;
            (nodes.iter().filter(|n| n.state == "alive").count() == count).then_some(())
        },
    )?;
    println!("fleet formed: {count} nodes alive\n");

    let file = args.spec.display().to_string();
    let written = first
        .deploy(&file, &spec_text)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let service = written
        .first()
        .map(|w| w.service.clone())
        .context("the spec holds no service")?;
    println!(
        "deployed {service} with {replicas} replicas through {}",
        demo.nodes[0].name
    );
    let t0 = Instant::now();
    let rows = wait_until("every replica running", Duration::from_secs(60), || {
        let rows = first.ps(Some(&service)).ok()?;
        (rows.len() == replicas && rows.iter().all(|r| r.state == "running")).then_some(rows)
    })?;
    println!("all running after {:.1}s:", t0.elapsed().as_secs_f64());
    print_ps(&rows, &names);

    // Kill a node hosting a replica (not the first: we watch through it).
    let victim = (1..demo.nodes.len())
        .find(|i| {
            rows.iter()
                .any(|r| r.node.as_deref() == Some(demo.nodes[*i].id.as_str()))
        })
        .unwrap_or(1);
    let victim_id = demo.nodes[victim].id.clone();
    println!(
        "\nkill -9 {} (its agent and its instances, like a power cut)",
        demo.nodes[victim].name
    );
    if let Some(mut c) = demo.nodes[victim].child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
    for pid in instance_pids(&demo.nodes[victim].dir) {
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let t0 = Instant::now();
    let observer = demo.nodes[0].client.as_ref().expect("connected");
    wait_until(
        "the node to be declared down",
        Duration::from_secs(30),
        || {
            let nodes = observer.nodes().ok()?;
            nodes
                .iter()
                .any(|n| n.id == victim_id && n.state == "down")
                .then_some(())
        },
    )?;
    println!("  declared down after {:.1}s", t0.elapsed().as_secs_f64());
    let rows = wait_until("the replicas to move", Duration::from_secs(60), || {
        let rows = observer.ps(Some(&service)).ok()?;
        (rows.len() == replicas
            && rows
                .iter()
                .all(|r| r.state == "running" && r.node.as_deref() != Some(victim_id.as_str())))
        .then_some(rows)
    })?;
    println!(
        "  every replica running again after {:.1}s:",
        t0.elapsed().as_secs_f64()
    );
    print_ps(&rows, &names);

    if args.no_wait {
        println!("\ncleaning up");
        return Ok(());
    }
    println!(
        "\nthe fleet keeps running; try `shoal ps --api {} --data-dir {}`\nCtrl-C stops it and removes everything",
        demo.nodes[0].api,
        demo.nodes[0].dir.display()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\ncleaning up");
    Ok(())
}
