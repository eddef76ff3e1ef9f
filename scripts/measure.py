#!/usr/bin/env python3
"""Measures Shoal against the figures the issues ask for, with the real (release) binary on
127.0.0.1. Prints a Markdown report. Nothing here asserts: it measures.

    cargo build --release && python3 scripts/measure.py [--only single,kill,idle] [--kills 20]

Sections:
  single  idle RSS with 0 and 10 instances, deploy -> running latency (p50/p90), binary size
  kill    kill -9 -> down on every survivor, and -> replacement running (p50/p99), 5 agents
  idle    idle control-plane bytes per second per node, RSS and CPU per agent, 5 and 20 agents
  writes  write -> visible on all 5 nodes (p50/p99) and bytes on the wire per write
"""
import argparse, json, os, shutil, signal, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHOAL = os.environ.get("SHOAL", os.path.join(ROOT, "target", "release", "shoal"))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


class Agent:
    def __init__(self, root, name, key, seed=None, extra=()):
        self.dir = os.path.join(root, name)
        os.makedirs(self.dir, exist_ok=True)
        self.api = f"127.0.0.1:{free_port()}"
        self.p2p = f"/ip4/127.0.0.1/tcp/{free_port()}"
        self.key, self.seed, self.extra = key, seed, list(extra)
        self.log = os.path.join(root, name + ".log")
        self.proc = None

    def start(self):
        args = [SHOAL, "agent", "--data-dir", self.dir, "--api", self.api, "--listen", self.p2p,
                "--runtime", "process", "--cluster-key", self.key] + self.extra
        if self.seed:
            args += ["--seed", self.seed]
        self.proc = subprocess.Popen(args, stdout=open(self.log, "a"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.q("status") is not None:
                return
            time.sleep(0.05)
        raise RuntimeError(f"agent {self.dir} did not start")

    def q(self, *args):
        r = subprocess.run([SHOAL, *args, "-o", "json", "--api", self.api, "--data-dir", self.dir],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None
        try:
            return json.loads(r.stdout)
        except ValueError:
            return None

    def kill9(self):
        if self.proc:
            self.proc.kill(); self.proc.wait(); self.proc = None

    def stop(self):
        if self.proc:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill(); self.proc.wait()
            self.proc = None

    def instance_pids(self):
        d = os.path.join(self.dir, "instances")
        pids = []
        for f in os.listdir(d) if os.path.isdir(d) else []:
            try:
                pids.append(json.load(open(os.path.join(d, f)))["pid"])
            except Exception:
                pass
        return pids

    def rss_kib(self):
        for line in open(f"/proc/{self.proc.pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1])

    def cpu_ticks(self):
        f = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])


class Fleet:
    def __init__(self, n, extra=()):
        self.root = tempfile.mkdtemp(prefix="shoal-measure-")
        self.key = os.path.join(self.root, "cluster.key")
        subprocess.run([SHOAL, "keygen", "--out", self.key], check=True, capture_output=True)
        self.agents = []
        for i in range(n):
            seed = self.agents[0].p2p if self.agents else None
            a = Agent(self.root, f"n{i}", self.key, seed, extra)
            a.start()
            self.agents.append(a)
        self.wait_alive(n)

    def wait_alive(self, n, timeout=60):
        deadline = time.time() + timeout
        while time.time() < deadline:
            ok = True
            for a in self.agents:
                if a.proc is None:
                    continue
                nodes = a.q("nodes") or []
                if sum(1 for x in nodes if x["state"] == "alive") != n:
                    ok = False; break
            if ok:
                return
            time.sleep(0.2)
        raise RuntimeError(f"fleet did not reach {n} alive members")

    def close(self):
        for a in self.agents:
            a.kill9()
            for p in a.instance_pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        shutil.rmtree(self.root, ignore_errors=True)


def spec(dirname, name, replicas, cmd='["sleep", "100000"]', cpu="10m", mem="8Mi"):
    p = os.path.join(dirname, name + ".yaml")
    open(p, "w").write(f"name: {name}\ncommand: {cmd}\nreplicas: {replicas}\nresources: {{cpu: {cpu}, memory: {mem}}}\n")
    return p


def single(report):
    f = Fleet(1)
    a = f.agents[0]
    try:
        time.sleep(5)
        rss0 = a.rss_kib()
        a.q("deploy", "-f", spec(f.root, "ten", 10))
        deadline = time.time() + 60
        while time.time() < deadline:
            rows = a.q("ps", "ten") or []
            if len(rows) == 10 and all(r["state"] == "running" for r in rows):
                break
            time.sleep(0.1)
        time.sleep(5)
        rss10 = a.rss_kib()
        lat = []
        for i in range(20):
            name = f"lat{i}"
            p = spec(f.root, name, 1)
            t0 = time.time()
            a.q("deploy", "-f", p)
            while time.time() - t0 < 30:
                rows = a.q("ps", name) or []
                if rows and rows[0]["state"] == "running":
                    lat.append(time.time() - t0); break
                time.sleep(0.01)
        size = os.path.getsize(SHOAL)
        report.append("### Single node (issue 2)\n")
        report.append(f"| figure | measured |\n| --- | --- |")
        report.append(f"| agent idle RSS, 0 instances | {rss0/1024:.1f} MiB |")
        report.append(f"| agent idle RSS, 10 instances | {rss10/1024:.1f} MiB |")
        report.append(f"| deploy -> instance running, p50 / p90 (20 deploys, CLI round trips included) | {pct(lat,50)*1000:.0f} ms / {pct(lat,90)*1000:.0f} ms |")
        report.append(f"| release binary size | {size/1e6:.1f} MB |\n")
    finally:
        f.close()


def kills(report, trials):
    f = Fleet(5)
    try:
        a0 = f.agents[0]
        a0.q("deploy", "-f", spec(f.root, "move", 10))
        downs, repl = [], []
        ids = [a.q("status")["node"] for a in f.agents]
        for t in range(trials):
            v = 1 + t % 4
            victim = f.agents[v]
            deadline = time.time() + 60
            while time.time() < deadline:
                rows = a0.q("ps", "move") or []
                if len(rows) == 10 and all(r["state"] == "running" for r in rows):
                    break
                time.sleep(0.1)
            hosting = any(r["node"] == ids[v] for r in rows)
            victim.kill9()
            for p in victim.instance_pids():
                try: os.kill(p, signal.SIGKILL)
                except OSError: pass
            t0 = time.time(); down = None; rep = None
            while time.time() - t0 < 60 and (down is None or rep is None):
                if down is None:
                    ok = True
                    for i, a in enumerate(f.agents):
                        if a.proc is None: continue
                        st = [x["state"] for x in (a.q("nodes") or []) if x["id"] == ids[v]]
                        if not st or st[0] != "down": ok = False; break
                    if ok: down = time.time() - t0
                if rep is None:
                    rows = a0.q("ps", "move") or []
                    if len(rows) == 10 and all(r["state"] == "running" and r["node"] != ids[v] for r in rows):
                        rep = time.time() - t0
                time.sleep(0.05)
            if down is not None: downs.append(down)
            if rep is not None and hosting: repl.append(rep)
            victim.start()
            f.wait_alive(5)
        report.append("### kill -9 of an agent, 5 agents, LAN profile (issues 3 and 6)\n")
        report.append("| figure | p50 | p99 | trials |\n| --- | --- | --- | --- |")
        report.append(f"| kill -9 -> `down` on every survivor | {pct(downs,50):.2f} s | {pct(downs,99):.2f} s | {len(downs)} |")
        report.append(f"| kill -9 (agent and its instances) -> all 10 replicas running on survivors | {pct(repl,50):.2f} s | {pct(repl,99):.2f} s | {len(repl)} |\n")
    finally:
        f.close()


def idle(report, sizes):
    report.append("### Idle control plane (issue 3)\n")
    report.append("| agents | bytes/s per node (in+out) | RSS per agent | CPU per agent |\n| --- | --- | --- | --- |")
    for n in sizes:
        f = Fleet(n)
        try:
            time.sleep(10)
            b0 = [sum((a.q("status")["counters"][k]) for k in ("net_bytes_in", "net_bytes_out")) for a in f.agents]
            c0 = [a.cpu_ticks() for a in f.agents]; t0 = time.time()
            time.sleep(30)
            b1 = [sum((a.q("status")["counters"][k]) for k in ("net_bytes_in", "net_bytes_out")) for a in f.agents]
            c1 = [a.cpu_ticks() for a in f.agents]; dt = time.time() - t0
            bps = sum(y - x for x, y in zip(b0, b1)) / n / dt
            hz = os.sysconf("SC_CLK_TCK")
            cpu = sum(y - x for x, y in zip(c0, c1)) / n / hz / dt * 100
            rss = sum(a.rss_kib() for a in f.agents) / n / 1024
            report.append(f"| {n} | {bps:.0f} B/s | {rss:.1f} MiB | {cpu:.2f} % |")
        finally:
            f.close()
    report.append("")


def writes(report, count):
    f = Fleet(5)
    try:
        lat = []
        b0 = sum(sum(a.q("status")["counters"][k] for k in ("net_bytes_in", "net_bytes_out")) for a in f.agents)
        for i in range(count):
            name = f"w{i}"
            p = spec(f.root, name, 0)
            t0 = time.time()
            f.agents[i % 5].q("deploy", "-f", p)
            pending = set(range(5))
            while pending and time.time() - t0 < 30:
                for j in list(pending):
                    if f.agents[j].q("history", name):
                        pending.discard(j)
                time.sleep(0.005)
            lat.append(time.time() - t0)
        b1 = sum(sum(a.q("status")["counters"][k] for k in ("net_bytes_in", "net_bytes_out")) for a in f.agents)
        report.append("### Replicated writes, 5 agents (issue 4)\n")
        report.append("| figure | measured |\n| --- | --- |")
        report.append(f"| write -> visible on all 5 (CLI polling included), p50 / p99 over {count} | {pct(lat,50)*1000:.0f} ms / {pct(lat,99)*1000:.0f} ms |")
        report.append(f"| wire bytes per write, all nodes together (idle traffic during the run included) | {(b1-b0)/count/2:.0f} B |\n")
    finally:
        f.close()


def docker(report, trials=10):
    """Docker driver: deploy -> container running versus a plain `docker run -d` of the same
    local image, and agent RSS with 20 running containers. Needs the test image
    `shoal-test/busybox:1` (built by `cargo test --test docker_driver`)."""
    img = "shoal-test/busybox:1"
    if subprocess.run(["docker", "image", "inspect", img], capture_output=True).returncode != 0:
        report.append(f"### Docker driver (issue 5)\n\nnot measured: image {img} missing (run the docker tests first)\n")
        return
    root = tempfile.mkdtemp(prefix="shoal-measure-docker-")
    key = os.path.join(root, "cluster.key")
    subprocess.run([SHOAL, "keygen", "--out", key], check=True, capture_output=True)
    a = Agent(root, "d0", key)
    try:
        a.proc = subprocess.Popen([SHOAL, "agent", "--data-dir", a.dir, "--api", a.api, "--listen", a.p2p,
                                   "--cluster-key", key], stdout=open(a.log, "a"), stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while a.q("status") is None and time.time() < deadline:
            time.sleep(0.05)
        ours, plain = [], []
        for i in range(trials):
            name = f"dk{i}-{os.getpid()}"
            p = os.path.join(root, name + ".yaml")
            open(p, "w").write(f"name: {name}\nimage: {img}\ncommand: [sleep, '100000']\nreplicas: 1\nresources: {{cpu: 10m, memory: 16Mi}}\n")
            t0 = time.time()
            a.q("deploy", "-f", p)
            while time.time() - t0 < 60:
                rows = a.q("ps", name) or []
                if rows and rows[0]["state"] == "running":
                    ours.append(time.time() - t0); break
                time.sleep(0.01)
            a.q("rm", name)
            t0 = time.time()
            r = subprocess.run(["docker", "run", "-d", "--rm", "--name", f"plain-{name}", img, "sleep", "100000"], capture_output=True, text=True)
            if r.returncode == 0:
                plain.append(time.time() - t0)
                subprocess.run(["docker", "rm", "-f", f"plain-{name}"], capture_output=True)
        many = os.path.join(root, "many.yaml")
        open(many, "w").write(f"name: many-{os.getpid()}\nimage: {img}\ncommand: [sleep, '100000']\nreplicas: 20\nresources: {{cpu: 10m, memory: 16Mi}}\n")
        a.q("deploy", "-f", many)
        deadline = time.time() + 120
        while time.time() < deadline:
            rows = a.q("ps", f"many-{os.getpid()}") or []
            if len(rows) == 20 and all(r["state"] == "running" for r in rows):
                break
            time.sleep(0.2)
        time.sleep(5)
        rss = a.rss_kib() / 1024
        a.q("rm", f"many-{os.getpid()}")
        time.sleep(5)
        report.append("### Docker driver (issue 5)\n")
        report.append("| figure | measured |\n| --- | --- |")
        report.append(f"| deploy -> container running (shoal, CLI round trips included), p50 over {len(ours)} | {pct(ours,50)*1000:.0f} ms |")
        report.append(f"| plain `docker run -d` of the same image, p50 over {len(plain)} | {pct(plain,50)*1000:.0f} ms |")
        if plain and ours:
            report.append(f"| overhead ratio (p50 / p50) | {pct(ours,50)/pct(plain,50):.2f} |")
        report.append(f"| agent RSS with 20 running containers | {rss:.1f} MiB |\n")
    finally:
        node = (a.q("status") or {}).get("node")
        a.kill9()
        if node:
            subprocess.run(f"docker ps -aq --filter label=shoal.node={node} | xargs -r docker rm -f", shell=True, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="single,kill,idle,writes,docker")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--writes", type=int, default=100)
    ap.add_argument("--idle-sizes", default="5,20")
    args = ap.parse_args()
    if not os.path.exists(SHOAL):
        sys.exit(f"no binary at {SHOAL}: cargo build --release first (or set SHOAL)")
    report = [f"## Shoal measurements ({time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})\n"]
    only = args.only.split(",")
    if "single" in only: single(report)
    if "kill" in only: kills(report, args.kills)
    if "idle" in only: idle(report, [int(x) for x in args.idle_sizes.split(",")])
    if "writes" in only: writes(report, args.writes)
    if "docker" in only: docker(report)
    print("\n".join(report))


if __name__ == "__main__":
    main()
