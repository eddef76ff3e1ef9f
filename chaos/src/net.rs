//! The test network: a harness namespace holding a Linux bridge, and one namespace per node
//! joined to it by a veth pair, with addresses in 10.77.<run>.0/24 that exist only inside these
//! namespaces. Also the network faults done from outside: blackhole routes (partitions) and
//! netem (loss, delay, duplication) where the kernel has it.
//!
//! Namespace names carry the run's prefix (`shoalc<pid>-`), so parallel runs never collide;
//! `sweep` removes what dead runs left behind. Dropping a `TestNet` deletes every namespace it
//! made, which takes their veths and bridge with them. This file does not start agents
//! (`fleet.rs`).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;

use anyhow::{Context, bail};

/// The namespace name prefix of every harness run.
pub const PREFIX: &str = "shoalc";

/// Runs `ip` (or another tool) and fails with its stderr.
pub fn sh(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One node's namespace.
pub struct NodeNet {
    pub name: String,
    pub addr: String,
    /// The namespace's inode: processes whose `/proc/<pid>/ns/net` shows it run there.
    pub inode: u64,
    /// Open handle, for `setns` when spawning or calling into the namespace.
    pub fd: File,
}

/// The whole test network of one run.
pub struct TestNet {
    pub prefix: String,
    pub harness_ns: String,
    pub nodes: Vec<NodeNet>,
    pub netem: bool,
}

fn ns_inode(name: &str) -> anyhow::Result<(u64, File)> {
    use std::os::unix::fs::MetadataExt;
    let path = format!("/run/netns/{name}");
    let f = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let ino = f
        .metadata()
        .with_context(|| format!("cannot stat {path}"))?
        .ino();
    Ok((ino, f))
}

impl TestNet {
    /// Creates the harness namespace, bridge and `n` node namespaces. `tag` distinguishes
    /// several fleets of one process (run sequentially).
    pub fn create(n: usize, tag: u32) -> anyhow::Result<TestNet> {
        let pid = std::process::id();
        let prefix = format!("{PREFIX}{pid}x{tag}-");
        let subnet = ((pid as u64 * 31 + tag as u64) % 250) as u8 + 1;
        let harness_ns = format!("{prefix}h");
        let mut net = TestNet {
            prefix: prefix.clone(),
            harness_ns: harness_ns.clone(),
            nodes: Vec::new(),
            netem: false,
        };
        sh("ip", &["netns", "add", &harness_ns])?;
        sh("ip", &["-n", &harness_ns, "link", "set", "lo", "up"])?;
        sh(
            "ip",
            &["-n", &harness_ns, "link", "add", "br0", "type", "bridge"],
        )?;
        sh("ip", &["-n", &harness_ns, "link", "set", "br0", "up"])?;
        for i in 1..=n {
            let name = format!("{prefix}n{i}");
            sh("ip", &["netns", "add", &name])?;
            let (inode, fd) = ns_inode(&name)?;
            let addr = format!("10.77.{subnet}.{i}");
            net.nodes.push(NodeNet {
                name: name.clone(),
                addr: addr.clone(),
                inode,
                fd,
            });
            let v = format!("v{i}");
            sh(
                "ip",
                &[
                    "-n",
                    &harness_ns,
                    "link",
                    "add",
                    &v,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    &name,
                ],
            )?;
            sh(
                "ip",
                &["-n", &harness_ns, "link", "set", &v, "master", "br0"],
            )?;
            sh("ip", &["-n", &harness_ns, "link", "set", &v, "up"])?;
            sh("ip", &["-n", &name, "link", "set", "lo", "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &name,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            sh("ip", &["-n", &name, "link", "set", "eth0", "up"])?;
        }
        net.netem = net.detect_netem();
        Ok(net)
    }

    /// Whether `tc netem` works here (it does not on kernels built without sch_netem).
    fn detect_netem(&self) -> bool {
        let Some(first) = self.nodes.first() else {
            return false;
        };
        let ok = sh(
            "ip",
            &[
                "netns",
                "exec",
                &first.name,
                "tc",
                "qdisc",
                "add",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                "0ms",
            ],
        )
        .is_ok();
        if ok {
            let _ = sh(
                "ip",
                &[
                    "netns",
                    "exec",
                    &first.name,
                    "tc",
                    "qdisc",
                    "del",
                    "dev",
                    "eth0",
                    "root",
                ],
            );
        }
        ok
    }

    pub fn node(&self, i: usize) -> &NodeNet {
        &self.nodes[i - 1]
    }

    /// `from` drops everything it sends to `to` (a blackhole route in `from`'s namespace).
    pub fn block(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let dst = format!("{}/32", self.node(to).addr);
        let ns = &self.node(from).name;
        // Adding twice is an error for `ip`; `replace` is idempotent.
        sh("ip", &["-n", ns, "route", "replace", "blackhole", &dst])?;
        Ok(())
    }

    pub fn unblock(&self, from: usize, to: usize) -> anyhow::Result<()> {
        let dst = format!("{}/32", self.node(to).addr);
        let ns = &self.node(from).name;
        let _ = sh("ip", &["-n", ns, "route", "del", "blackhole", &dst]);
        Ok(())
    }

    /// netem on the node's side (its egress) and on the bridge side (its ingress).
    pub fn netem(&self, node: usize, args: &[String]) -> anyhow::Result<()> {
        let n = self.node(node);
        let v = format!("v{node}");
        for (ns, dev) in [
            (n.name.as_str(), "eth0"),
            (self.harness_ns.as_str(), v.as_str()),
        ] {
            let mut a = vec![
                "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "netem",
            ];
            a.extend(args.iter().map(String::as_str));
            sh("ip", &a)?;
        }
        Ok(())
    }

    pub fn clear_netem(&self, node: usize) {
        let n = self.node(node);
        let v = format!("v{node}");
        for (ns, dev) in [
            (n.name.as_str(), "eth0"),
            (self.harness_ns.as_str(), v.as_str()),
        ] {
            let _ = sh(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                ],
            );
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        for n in &self.nodes {
            kill_namespace_processes(n.inode);
        }
        for n in &self.nodes {
            let _ = sh("ip", &["netns", "del", &n.name]);
        }
        let _ = sh("ip", &["netns", "del", &self.harness_ns]);
    }
}

/// The network namespace inode of a process, if it can be read.
pub fn proc_net_inode(pid: u32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/net")).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// SIGKILLs every process in the namespace, until none is left (a few rounds, as a dying
/// process may have forked).
pub fn kill_namespace_processes(inode: u64) {
    let me = std::process::id();
    for _ in 0..20 {
        let victims: Vec<u32> = all_pids()
            .into_iter()
            .filter(|&p| p != me && proc_net_inode(p) == Some(inode))
            .collect();
        if victims.is_empty() {
            return;
        }
        for p in victims {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(p as i32, libc::SIGCONT);
                libc::kill(p as i32, libc::SIGKILL);
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Removes namespaces left by earlier harness runs whose process is gone, killing what still
/// runs in them. Namespaces of live runs are left alone.
pub fn sweep() -> Vec<String> {
    let Ok(list) = sh("ip", &["netns", "list"]) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    // Work dirs (data dirs, key) of dead runs.
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix(PREFIX) else {
                continue;
            };
            let pid = rest.split(['x', '-']).next().and_then(|p| p.parse().ok());
            if name.ends_with("-work") && pid.is_some_and(|p| !pid_alive_as_harness(p)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid: u32 = match rest.split(['x', '-']).next().and_then(|p| p.parse().ok()) {
            Some(p) => p,
            None => continue,
        };
        if pid_alive_as_harness(pid) {
            continue;
        }
        if let Ok((inode, _)) = ns_inode(name) {
            kill_namespace_processes(inode);
        }
        if sh("ip", &["netns", "del", name]).is_ok() {
            removed.push(name.to_string());
        }
    }
    removed
}

/// Whether the run of `pid` may still be alive: the pid exists and is not a zombie. Its name
/// is not checked (the harness binary may be renamed or copied); a recycled pid only delays a
/// sweep, while sweeping a live run would wreck it.
fn pid_alive_as_harness(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // `pid (comm) S ...`: a zombie (Z) or dead (X) process is gone.
    let Some(close) = stat.rfind(')') else {
        return false;
    };
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("X");
    !matches!(state, "Z" | "X")
}

/// Moves the calling thread into the namespace. Used in `pre_exec` (async-signal-safe: one
/// syscall) and in short-lived helper threads.
pub fn enter(fd: &File) -> std::io::Result<()> {
    // SAFETY: setns takes a valid open fd and a flag; it changes only the calling thread.
    let r = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The links a `bridge` fault cuts, as `(a, b)` pairs with `a < b`: each node keeps the nodes
/// within ring distance `d` of it, `d` the smallest that makes what it sees a strict majority.
/// So every node sees a majority and no two see the same one.
pub fn bridge_cuts(n: usize) -> Vec<(usize, usize)> {
    let majority = n / 2 + 1;
    let d = (majority - 1).div_ceil(2);
    let mut cuts = Vec::new();
    for a in 1..=n {
        for b in a + 1..=n {
            let dist = (b - a).min(n - (b - a));
            if dist > d {
                cuts.push((a, b));
            }
        }
    }
    cuts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::Arc;
    use std::time::Duration;

    /// Whether a root-only test may run; without root it says why it did not, except on CI,
    /// where it must run.
    fn root_or_skip(test: &str) -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return true;
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs root (network namespaces) and CI is set: run CI as root"
        );
        eprintln!("skipped {test}: needs root to create network namespaces");
        false
    }

    /// Connects from inside node `from`'s namespace to `addr`.
    fn connects(fd: Arc<File>, addr: SocketAddr) -> bool {
        std::thread::spawn(move || {
            enter(&fd).expect("setns");
            TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
        })
        .join()
        .expect("thread")
    }

    #[test]
    fn namespaces_connect_blackholes_cut_one_way_and_nothing_is_left_after_drop() {
        if !root_or_skip("namespaces_connect_blackholes_cut_one_way_and_nothing_is_left_after_drop")
        {
            return;
        }
        let net = TestNet::create(2, 9_000).expect("test net");
        let prefix = net.prefix.clone();
        let fd1 = Arc::new(net.node(1).fd.try_clone().expect("fd"));
        let fd2 = Arc::new(net.node(2).fd.try_clone().expect("fd"));
        let addr1: SocketAddr = format!("{}:7999", net.node(1).addr).parse().expect("addr");
        let addr2: SocketAddr = format!("{}:7999", net.node(2).addr).parse().expect("addr");
        let listen = |fd: Arc<File>, addr: SocketAddr| {
            std::thread::spawn(move || {
                enter(&fd).expect("setns");
                let l = TcpListener::bind(addr).expect("bind");
                l.set_nonblocking(true).expect("nonblocking");
                // Accept whatever comes for a few seconds, then stop.
                let end = std::time::Instant::now() + Duration::from_secs(4);
                while std::time::Instant::now() < end {
                    let _ = l.accept();
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let l1 = listen(fd1.clone(), addr1);
        let l2 = listen(fd2.clone(), addr2);
        std::thread::sleep(Duration::from_millis(200));
        assert!(connects(fd1.clone(), addr2), "n1 reaches n2");
        assert!(connects(fd2.clone(), addr1), "n2 reaches n1");
        // The node addresses exist only inside the namespaces (checked without sending
        // anything from the host's namespace).
        let host_addrs = sh("ip", &["-o", "addr"]).expect("ip addr");
        assert!(!host_addrs.contains(&net.node(1).addr), "{host_addrs}");
        // And a node namespace has no route anywhere but the test subnet.
        let routes = sh("ip", &["-n", &net.node(1).name, "route"]).expect("ip route");
        assert!(!routes.contains("default"), "{routes}");
        net.block(1, 2).expect("block");
        assert!(!connects(fd1.clone(), addr2), "n1 no longer reaches n2");
        net.unblock(1, 2).expect("unblock");
        assert!(connects(fd1.clone(), addr2), "healed");
        drop(net);
        let left = sh("ip", &["netns", "list"]).expect("ip netns list");
        assert!(!left.contains(&prefix), "left behind: {left}");
        let _ = (l1.join(), l2.join());
    }

    #[test]
    fn sweep_removes_namespaces_of_dead_runs_only() {
        if !root_or_skip("sweep_removes_namespaces_of_dead_runs_only") {
            return;
        }
        // A pid above the kernel's limit never exists, so this looks like a dead run's.
        let stale = format!("{PREFIX}99999999x77-n1");
        sh("ip", &["netns", "add", &stale]).expect("add");
        let net = TestNet::create(1, 9_001).expect("test net");
        sweep();
        // Another test's run may have swept it first; either way it is gone.
        let left = sh("ip", &["netns", "list"]).expect("list");
        assert!(!left.lines().any(|l| l.starts_with(&stale)), "{left}");
        assert!(
            left.contains(&net.harness_ns),
            "a live run's namespace was swept"
        );
    }

    #[test]
    fn in_a_bridge_every_node_sees_a_majority_and_no_two_the_same() {
        for n in 4..=9 {
            let cuts = bridge_cuts(n);
            let mut views = BTreeSet::new();
            for a in 1..=n {
                let sees: BTreeSet<usize> = (1..=n)
                    .filter(|&b| !cuts.contains(&(a.min(b), a.max(b))))
                    .collect();
                assert!(sees.len() > n / 2, "n={n} node {a} sees {sees:?}");
                assert!(sees.len() < n, "n={n} node {a} sees everyone");
                views.insert(sees);
            }
            assert_eq!(views.len(), n, "n={n}: two nodes share a view");
        }
    }
}
