//! The client commands: each calls the agent's API (`api::Client`) and prints the answer, a
//! table for people or JSON for scripts (`-o json`, the reply exactly as the API gives it).
//!
//! Data goes to stdout, messages to stderr. Each `pub fn` is one command (its help is in
//! `cli/mod.rs`) and writes through a `*_to` twin that tests drive with a buffer; rendering is
//! done by pure functions returning strings. Nothing here makes a decision the agent should make.

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use comfy_table::{ContentArrangement, Table, presets};
use serde::Serialize;

use super::{ClientOpts, Output};
use crate::api::Client;
use crate::node::api::{HistoryEntry, NodeView, PsEntry, ResourcesView, StatusView, WriteResult};
use crate::placement::{fmt_bytes, fmt_cpu};
use crate::spec::Workload;

/// Longest DETAIL (and IMAGE/COMMAND) shown in a table; JSON has it whole.
const DETAIL_CHARS: usize = 60;
/// Characters of a node id shown in tables (after the common `12D3KooW`).
const NODE_CHARS: usize = 12;

pub fn deploy(c: &ClientOpts, file: &Path) -> anyhow::Result<()> {
    deploy_to(c, file, &mut io::stdout().lock())
}

pub fn rm(c: &ClientOpts, service: &str) -> anyhow::Result<()> {
    rm_to(c, service, &mut io::stdout().lock())
}

pub fn scale(c: &ClientOpts, service: &str, replicas: u32) -> anyhow::Result<()> {
    scale_to(c, service, replicas, &mut io::stdout().lock())
}

pub fn rollback(c: &ClientOpts, service: &str, to: Option<&str>) -> anyhow::Result<()> {
    rollback_to(c, service, to, &mut io::stdout().lock())
}

pub fn ps(c: &ClientOpts, service: Option<&str>) -> anyhow::Result<()> {
    ps_to(c, service, &mut io::stdout().lock())
}

pub fn status(c: &ClientOpts) -> anyhow::Result<()> {
    status_to(c, now_ms(), &mut io::stdout().lock())
}

pub fn nodes(c: &ClientOpts) -> anyhow::Result<()> {
    nodes_to(c, now_ms(), &mut io::stdout().lock())
}

pub fn history(c: &ClientOpts, service: &str) -> anyhow::Result<()> {
    history_to(c, service, &mut io::stdout().lock())
}

pub fn logs(
    c: &ClientOpts,
    service: &str,
    slot: u32,
    follow: bool,
    tail: Option<usize>,
) -> anyhow::Result<()> {
    logs_to(c, service, slot, follow, tail, &mut io::stdout().lock())
}

pub fn drain(c: &ClientOpts, node: Option<&str>, on: bool) -> anyhow::Result<()> {
    drain_to(c, node, on, &mut io::stdout().lock())
}

// --- command bodies, writing their data to `out` ---

fn rm_to(c: &ClientOpts, service: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let written = client(c)?.remove(service)?;
    print_data(c, out, &written, || {
        lines(&written, |w| {
            format!("removed {} (revision {})", w.service, w.revision)
        })
    })
}

fn scale_to(
    c: &ClientOpts,
    service: &str,
    replicas: u32,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let written = client(c)?.scale(service, replicas)?;
    print_data(c, out, &written, || {
        lines(&written, |w| scale_line(w, replicas))
    })
}

fn rollback_to(
    c: &ClientOpts,
    service: &str,
    to: Option<&str>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let written = client(c)?.rollback(service, to)?;
    print_data(c, out, &written, || {
        lines(&written, |w| {
            format!(
                "rolled {} back: revision {} now in force",
                w.service, w.revision
            )
        })
    })
}

fn status_to(c: &ClientOpts, now_ms: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let view = client(c)?.status()?;
    print_data(c, out, &view, || status_text(&view, now_ms))
}

fn nodes_to(c: &ClientOpts, now_ms: u64, out: &mut dyn Write) -> anyhow::Result<()> {
    let nodes = client(c)?.nodes()?;
    print_data(c, out, &nodes, || nodes_table(&nodes, now_ms))
}

fn history_to(c: &ClientOpts, service: &str, out: &mut dyn Write) -> anyhow::Result<()> {
    let entries = client(c)?.history(service)?;
    print_data(c, out, &entries, || history_table(&entries))
}

fn drain_to(
    c: &ClientOpts,
    node: Option<&str>,
    on: bool,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let written = client(c)?.drain(node, on)?;
    print_data(c, out, &written, || lines(&written, |w| drain_line(w, on)))
}

fn deploy_to(c: &ClientOpts, file: &Path, out: &mut dyn Write) -> anyhow::Result<()> {
    let name = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|e| {
        anyhow::anyhow!(
            "cannot read spec {name}: {}\nhint: check the path given to -f",
            crate::api::plain_io(&e)
        )
    })?;
    // Parse here first: a mistake is shown with its file, line and field, and the agent is
    // never contacted (it parses again on its side; it does not trust the client).
    crate::spec::parse_bytes(&name, &bytes).map_err(|e| {
        anyhow::anyhow!("{e}\nhint: fix the spec and deploy again; nothing was sent to the agent")
    })?;
    // parse_bytes refused anything that is not UTF-8, so nothing is replaced here.
    let text = String::from_utf8_lossy(&bytes);
    let written = client(c)?.deploy(&name, &text)?;
    print_data(c, out, &written, || written_table(&written))
}

fn ps_to(c: &ClientOpts, service: Option<&str>, out: &mut dyn Write) -> anyhow::Result<()> {
    let entries = client(c)?.ps(service)?;
    if entries.is_empty() && c.output == Output::Table {
        eprintln!("no slots: nothing is deployed");
    }
    print_data(c, out, &entries, || ps_table(&entries))
}

fn logs_to(
    c: &ClientOpts,
    service: &str,
    slot: u32,
    follow: bool,
    tail: Option<usize>,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let client = client(c)?;
    let mut reader = client.logs(service, slot, follow, tail)?;
    let mut buf = vec![0u8; 64 * 1024];
    // Chunk by chunk, flushed at once: `--follow` shows output as the instance writes it,
    // until the stream ends or Ctrl-C ends the process.
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                anyhow::bail!(
                    "the log stream from {} broke: {}\nhint: run the command again",
                    client.url(),
                    crate::api::plain_io(&e)
                )
            }
        };
        match out.write_all(&buf[..n]).and_then(|()| out.flush()) {
            Ok(()) => {}
            // `shoal logs web | head`: the reader is gone, which is not an error.
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e).context("cannot write the log to stdout"),
        }
    }
}

fn client(c: &ClientOpts) -> anyhow::Result<Client> {
    Ok(Client::from_opts(c)?)
}

/// Writes `data` as JSON with `-o json`, else the rendering for people.
fn print_data<T: Serialize>(
    c: &ClientOpts,
    out: &mut dyn Write,
    data: &T,
    render: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    let text = match c.output {
        Output::Json => serde_json::to_string_pretty(data).context("cannot encode the reply")?,
        Output::Table => render(),
    };
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(e).context("cannot write to stdout"),
        _ => Ok(()),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

// --- rendering (pure) ---

/// A table with no borders or colours, columns two spaces apart, no wrapping.
fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(header.iter().copied());
    for column in t.column_iter_mut() {
        column.set_padding((0, 2));
    }
    t
}

/// The table as lines without the trailing blanks the padding leaves.
fn render(t: &Table) -> String {
    t.lines()
        .map(|l| l.trim_end().to_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

fn lines(written: &[WriteResult], line: impl Fn(&WriteResult) -> String) -> String {
    written.iter().map(line).collect::<Vec<_>>().join("\n")
}

fn dash(s: Option<&str>) -> String {
    s.filter(|s| !s.is_empty()).unwrap_or("-").to_owned()
}

/// `12D3KooWQ7bK6nYx…` → `Q7bK6nYxAbCd`: node ids share their first 8 characters; what follows
/// is what tells them apart, and `shoal drain` takes it as a prefix.
pub fn short_node(id: &str) -> String {
    let rest = id.strip_prefix("12D3KooW").unwrap_or(id);
    rest.chars().take(NODE_CHARS).collect()
}

/// At most `max` characters on one line, `…` marking a cut.
fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `deploy`: one row per service.
fn written_table(written: &[WriteResult]) -> String {
    let mut t = table(&["SERVICE", "REVISION", "CHANGE"]);
    for w in written {
        t.add_row([
            w.service.as_str(),
            w.revision.as_str(),
            if w.changed { "deployed" } else { "unchanged" },
        ]);
    }
    render(&t)
}

fn scale_line(w: &WriteResult, replicas: u32) -> String {
    if w.changed {
        format!(
            "scaled {} to {replicas} replicas (revision {})",
            w.service, w.revision
        )
    } else {
        format!(
            "{} already has {replicas} replicas (revision {})",
            w.service, w.revision
        )
    }
}

fn drain_line(w: &WriteResult, on: bool) -> String {
    // The core answers a drain with the node's full id in `revision`.
    let node = &w.revision;
    match (on, w.changed) {
        (true, true) => format!("node {node} is draining: its instances move to other nodes"),
        (true, false) => format!("node {node} was already draining"),
        (false, true) => format!("node {node} is no longer draining: it takes instances again"),
        (false, false) => format!("node {node} was not draining"),
    }
}

fn ps_table(entries: &[PsEntry]) -> String {
    let mut t = table(&[
        "SERVICE",
        "SLOT",
        "NODE",
        "STATE",
        "ENDPOINT",
        "RESTARTS",
        "PID/CONTAINER",
        "DETAIL",
    ]);
    for e in entries {
        let process = match (e.pid, &e.container) {
            (_, Some(c)) => c.chars().take(12).collect(),
            (Some(pid), None) => pid.to_string(),
            (None, None) => "-".into(),
        };
        t.add_row([
            e.service.clone(),
            e.slot.to_string(),
            e.node.as_deref().map_or("-".into(), short_node),
            e.state.clone(),
            dash(e.endpoint.as_deref()),
            e.restarts.to_string(),
            process,
            e.detail
                .as_deref()
                .map_or("-".into(), |d| truncate(d, DETAIL_CHARS)),
        ]);
    }
    render(&t)
}

fn history_table(entries: &[HistoryEntry]) -> String {
    let mut t = table(&[
        "REVISION",
        "CURRENT",
        "WRITTEN-BY",
        "WRITTEN-AT",
        "REPLICAS",
        "IMAGE/COMMAND",
    ]);
    for e in entries {
        let (replicas, what) = match &e.spec {
            Some(spec) => (spec.replicas.to_string(), workload(&spec.workload)),
            None => ("-".into(), "(removed)".into()),
        };
        t.add_row([
            e.revision.clone(),
            if e.current { "*" } else { "" }.into(),
            short_node(&e.written_by),
            rfc3339(e.written_at),
            replicas,
            truncate(&what, DETAIL_CHARS),
        ]);
    }
    render(&t)
}

fn workload(w: &Workload) -> String {
    match w {
        Workload::Image { image, command } => match command {
            Some(args) => format!("{image} {}", args.join(" ")),
            None => image.clone(),
        },
        Workload::Command { command } => command.join(" "),
    }
}

fn rfc3339(unix_ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
    let mut t = table(&[
        "ID",
        "STATE",
        "LABELS",
        "CPU",
        "MEM",
        "RUNTIMES",
        "INCARNATION",
        "LAST-HEARD",
    ]);
    for n in nodes {
        let labels = n
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let state = if n.draining {
            format!("{},draining", n.state)
        } else {
            n.state.clone()
        };
        t.add_row([
            short_node(&n.id),
            state,
            dash(Some(&labels)),
            format!(
                "{}/{}",
                fmt_cpu(n.allocated.cpu_millis),
                fmt_cpu(n.capacity.cpu_millis)
            ),
            format!(
                "{}/{}",
                fmt_bytes(n.allocated.memory_bytes),
                fmt_bytes(n.capacity.memory_bytes)
            ),
            dash(Some(&n.runtimes.join(","))),
            n.incarnation.to_string(),
            ago(now_ms, n.last_heard),
        ]);
    }
    render(&t)
}

/// How long ago `then_ms` was, for people: `just now`, `12s ago`, `5m ago`, `3h ago`, `2d ago`.
/// The times come from the agent's clock, `now_ms` from this machine's.
fn ago(now_ms: u64, then_ms: u64) -> String {
    if then_ms == 0 {
        return "never".into();
    }
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0 => "just now".into(),
        1..90 => format!("{s}s ago"),
        90..5400 => format!("{}m ago", s / 60),
        5400..129_600 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn resources(r: ResourcesView) -> String {
    format!(
        "cpu {}, memory {}",
        fmt_cpu(r.cpu_millis),
        fmt_bytes(r.memory_bytes)
    )
}

/// `status`: key/value lines, then the unplaceable slots with their reasons.
fn status_text(s: &StatusView, now_ms: u64) -> String {
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let c = &s.counters;
    let mut rows: Vec<(&str, String)> = vec![
        ("node", s.node.clone()),
        ("incarnation", s.incarnation.to_string()),
        ("version", s.agent_version.clone()),
        ("digest", s.digest.clone()),
        ("services", s.services.to_string()),
        ("slots", format!("{} ({} running)", s.slots, s.running)),
        (
            "members",
            format!(
                "{} alive, {} suspect, {} down, {} left",
                s.members.alive, s.members.suspect, s.members.down, s.members.left
            ),
        ),
        ("capacity", resources(s.capacity)),
        ("allocated", resources(s.allocated)),
        ("runtimes", dash(Some(&s.runtimes.join(", ")))),
        ("draining", yes_no(s.draining)),
        (
            "deltas",
            format!(
                "{} sent, {} received, {} rejected",
                c.deltas_sent, c.deltas_received, c.deltas_rejected
            ),
        ),
        (
            "bids",
            format!("{} sent, {} received", c.bids_sent, c.bids_received),
        ),
        ("claims won", c.claims_won.to_string()),
        ("frames rejected", c.frames_rejected.to_string()),
        ("clock skew", format!("{} stamps", c.clock_skew_stamps)),
    ];
    if s.last_sync.is_empty() {
        rows.push(("last sync", "-".into()));
    }
    for (i, (peer, at)) in s.last_sync.iter().enumerate() {
        let key = if i == 0 { "last sync" } else { "" };
        rows.push((key, format!("{}  {}", short_node(peer), ago(now_ms, *at))));
    }
    if !s.faults.is_empty() {
        rows.push(("faults", s.faults.join(", ")));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 2;
    let mut out: Vec<String> = rows
        .iter()
        .map(|(k, v)| format!("{k:<width$}{v}").trim_end().to_owned())
        .collect();
    if !s.unplaceable.is_empty() {
        out.push(String::new());
        out.push(format!("unplaceable slots ({}):", s.unplaceable.len()));
        let mut t = table(&["SERVICE", "SLOT", "REASON"]);
        for u in &s.unplaceable {
            t.add_row([u.service.clone(), u.slot.to_string(), u.reason.clone()]);
        }
        out.push(render(&t));
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::api::testing::{self, FakeAgent, NODE, TOKEN, WEB_YAML, spawn_fake_agent};
    use crate::node::api::{Counters, MemberCounts, Unplaceable};

    fn opts(api: &str, output: Output) -> ClientOpts {
        ClientOpts {
            api: api.into(),
            data_dir: None,
            token: Some(TOKEN.into()),
            output,
        }
    }

    /// Runs a command body against the fake agent off the runtime's threads; its stdout.
    async fn run(
        a: &FakeAgent,
        output: Output,
        f: impl FnOnce(&ClientOpts, &mut Vec<u8>) -> anyhow::Result<()> + Send + 'static,
    ) -> anyhow::Result<String> {
        let c = opts(&a.url(), output);
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            f(&c, &mut out).map(|()| String::from_utf8(out).unwrap())
        })
        .await
        .unwrap()
    }

    #[test]
    fn node_ids_are_shortened_past_their_common_prefix() {
        assert_eq!(short_node("12D3KooWQ7bK6nYxAbCdEfGh"), "Q7bK6nYxAbCd");
        assert_eq!(short_node("node-1"), "node-1");
    }

    #[test]
    fn long_details_are_cut_to_one_short_line() {
        assert_eq!(truncate("short", 60), "short");
        assert_eq!(truncate("a\nb", 60), "a b");
        let long = "x".repeat(100);
        let cut = truncate(&long, 60);
        assert_eq!(cut.chars().count(), 60);
        assert!(cut.ends_with('…'));
    }

    #[test]
    fn ages_read_as_people_say_them() {
        let now = 1_000_000_000;
        assert_eq!(ago(now, 0), "never");
        assert_eq!(ago(now, now + 5_000), "just now");
        assert_eq!(ago(now, now - 500), "just now");
        assert_eq!(ago(now, now - 12_000), "12s ago");
        assert_eq!(ago(now, now - 300_000), "5m ago");
        assert_eq!(ago(now, now - 3 * 3_600_000), "3h ago");
        assert_eq!(ago(now, now - 2 * 86_400_000), "2d ago");
    }

    #[test]
    fn ps_table_shows_one_row_per_slot() {
        let mut entries = testing::ps();
        entries[1].detail = Some("d".repeat(80));
        let text = ps_table(&entries);
        assert_eq!(
            text,
            [
                "SERVICE  SLOT  NODE          STATE    ENDPOINT         RESTARTS  PID/CONTAINER  DETAIL",
                "web      0     fakefakefake  running  127.0.0.1:31000  0         4242           -",
                "web      1     -             pending  -                0         -              ddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd…",
            ]
            .join("\n")
        );
    }

    #[test]
    fn history_table_shows_revisions_with_times_in_utc() {
        let text = history_table(&testing::history());
        assert_eq!(
            text,
            [
                "REVISION  CURRENT  WRITTEN-BY    WRITTEN-AT                REPLICAS  IMAGE/COMMAND",
                "web-1     *        fakefakefake  2023-11-14T22:13:20.123Z  2         sleep 1000",
            ]
            .join("\n")
        );
    }

    #[test]
    fn nodes_table_shows_usage_against_capacity() {
        let mut n = testing::node_view();
        n.draining = true;
        let text = nodes_table(&[n], 1_700_000_012_000);
        assert_eq!(
            text,
            [
                "ID            STATE           LABELS          CPU    MEM        RUNTIMES  INCARNATION  LAST-HEARD",
                "fakefakefake  alive,draining  region=eu-west  1.5/4  768Mi/8Gi  process   2            12s ago",
            ]
            .join("\n")
        );
    }

    #[test]
    fn status_lists_facts_then_unplaceable_slots() {
        let s = StatusView {
            node: NODE.into(),
            incarnation: 2,
            agent_version: "0.1.0".into(),
            digest: "d1g3st".into(),
            services: 2,
            slots: 5,
            running: 4,
            members: MemberCounts {
                alive: 3,
                suspect: 0,
                down: 1,
                left: 0,
            },
            capacity: ResourcesView {
                cpu_millis: 2500,
                memory_bytes: 3 << 29,
            },
            allocated: ResourcesView {
                cpu_millis: 500,
                memory_bytes: 256 << 20,
            },
            runtimes: vec!["docker".into(), "process".into()],
            draining: false,
            unplaceable: vec![Unplaceable {
                service: "web".into(),
                slot: 4,
                reason: "no node has 1 cpu free".into(),
            }],
            counters: Counters {
                deltas_sent: 10,
                ..Counters::default()
            },
            last_sync: BTreeMap::from([
                ("12D3KooWRpeerpeerpeer2".to_owned(), 1_700_000_000_000),
                ("12D3KooWSpeerpeerpeer3".to_owned(), 1_699_999_000_000),
            ]),
            faults: vec![],
        };
        let text = status_text(&s, 1_700_000_003_000);
        assert_eq!(
            text,
            [
                "node             12D3KooWfakefakefake1",
                "incarnation      2",
                "version          0.1.0",
                "digest           d1g3st",
                "services         2",
                "slots            5 (4 running)",
                "members          3 alive, 0 suspect, 1 down, 0 left",
                "capacity         cpu 2.5, memory 1.5Gi",
                "allocated        cpu 0.5, memory 256Mi",
                "runtimes         docker, process",
                "draining         no",
                "deltas           10 sent, 0 received, 0 rejected",
                "bids             0 sent, 0 received",
                "claims won       0",
                "frames rejected  0",
                "clock skew       0 stamps",
                "last sync        Rpeerpeerpee  3s ago",
                "                 Speerpeerpee  16m ago",
                "",
                "unplaceable slots (1):",
                "SERVICE  SLOT  REASON",
                "web      4     no node has 1 cpu free",
            ]
            .join("\n")
        );
    }

    #[test]
    fn deploy_table_says_what_changed() {
        let text = written_table(&[
            WriteResult {
                service: "web".into(),
                revision: "web-2".into(),
                changed: true,
            },
            WriteResult {
                service: "db".into(),
                revision: "db-1".into(),
                changed: false,
            },
        ]);
        assert_eq!(
            text,
            [
                "SERVICE  REVISION  CHANGE",
                "web      web-2     deployed",
                "db       db-1      unchanged",
            ]
            .join("\n")
        );
    }

    async fn agent() -> FakeAgent {
        spawn_fake_agent(Duration::from_secs(5)).await
    }

    fn spec_file(dir: &Path, text: &str) -> std::path::PathBuf {
        let path = dir.join("web.yaml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[tokio::test]
    async fn deploy_sends_the_spec_and_prints_what_changed() {
        let a = agent().await;
        let dir = tempfile::tempdir().unwrap();
        let file = spec_file(dir.path(), WEB_YAML);
        let out = run(&a, Output::Table, move |c, out| deploy_to(c, &file, out))
            .await
            .unwrap();
        assert_eq!(
            out,
            "SERVICE  REVISION  CHANGE\nweb      web-1     deployed\n"
        );
        assert_eq!(a.requests().len(), 1);
    }

    #[tokio::test]
    async fn deploy_of_a_bad_spec_fails_with_its_line_without_contacting_the_agent() {
        let a = agent().await;
        let dir = tempfile::tempdir().unwrap();
        let file = spec_file(dir.path(), "name: web\ncommand: [sleep]\nreplica: 2\n");
        let shown = file.display().to_string();
        let e = run(&a, Output::Table, move |c, out| deploy_to(c, &file, out))
            .await
            .unwrap_err();
        let text = format!("{e:#}");
        assert!(text.starts_with(&format!("spec {shown} line 3")), "{text}");
        assert!(
            text.ends_with("\nhint: fix the spec and deploy again; nothing was sent to the agent"),
            "{text}"
        );
        assert!(a.requests().is_empty());
    }

    #[test]
    fn deploy_of_a_missing_file_says_so() {
        // No agent, no token: neither is needed to find out.
        let c = ClientOpts {
            token: None,
            ..opts("127.0.0.1:1", Output::Table)
        };
        let e = deploy_to(&c, Path::new("/nonexistent/web.yaml"), &mut Vec::new()).unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "cannot read spec /nonexistent/web.yaml: no such file or directory\nhint: check the path given to -f"
        );
    }

    #[tokio::test]
    async fn json_output_is_the_reply_as_the_api_gives_it() {
        let a = agent().await;
        let out = run(&a, Output::Json, |c, out| ps_to(c, None, out))
            .await
            .unwrap();
        let back: Vec<PsEntry> = serde_json::from_str(&out).unwrap();
        assert_eq!(back, testing::ps());

        let out = run(&a, Output::Json, |c, out| history_to(c, "web", out))
            .await
            .unwrap();
        let back: Vec<HistoryEntry> = serde_json::from_str(&out).unwrap();
        assert_eq!(back, testing::history());

        let out = run(&a, Output::Json, |c, out| nodes_to(c, 0, out))
            .await
            .unwrap();
        let back: Vec<NodeView> = serde_json::from_str(&out).unwrap();
        assert_eq!(back, vec![testing::node_view()]);

        let out = run(&a, Output::Json, |c, out| status_to(c, 0, out))
            .await
            .unwrap();
        let back: StatusView = serde_json::from_str(&out).unwrap();
        assert_eq!(back.node, NODE);
        assert!(out.starts_with('{'));

        let out = run(&a, Output::Json, |c, out| scale_to(c, "web", 3, out))
            .await
            .unwrap();
        let back: Vec<WriteResult> = serde_json::from_str(&out).unwrap();
        assert_eq!(back[0].revision, "web-2");
    }

    #[tokio::test]
    async fn writes_print_the_revision_now_in_force() {
        let a = agent().await;
        let out = run(&a, Output::Table, |c, out| rm_to(c, "web", out))
            .await
            .unwrap();
        assert_eq!(out, "removed web (revision web-3)\n");
        let out = run(&a, Output::Table, |c, out| scale_to(c, "web", 3, out))
            .await
            .unwrap();
        assert_eq!(out, "scaled web to 3 replicas (revision web-2)\n");
        let out = run(&a, Output::Table, |c, out| rollback_to(c, "web", None, out))
            .await
            .unwrap();
        assert_eq!(out, "rolled web back: revision web-4 now in force\n");
        let out = run(&a, Output::Table, |c, out| drain_to(c, None, true, out))
            .await
            .unwrap();
        assert_eq!(
            out,
            format!("node {NODE} is draining: its instances move to other nodes\n")
        );
    }

    #[tokio::test]
    async fn an_agent_refusal_reads_as_error_then_hint() {
        let a = agent().await;
        let e = run(&a, Output::Table, |c, out| history_to(c, "db", out))
            .await
            .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "no service db\nhint: see `shoal ps` for the services deployed"
        );
    }

    #[test]
    fn an_agent_that_is_not_running_reads_as_error_then_hint() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = status_to(
            &opts(&format!("127.0.0.1:{port}"), Output::Table),
            0,
            &mut Vec::new(),
        )
        .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            format!(
                "cannot reach the shoal agent at http://127.0.0.1:{port}: connection refused\nhint: is `shoal agent` running? set --api or SHOAL_API to reach another"
            )
        );
    }

    #[tokio::test]
    async fn logs_are_copied_to_stdout_until_the_stream_ends() {
        let a = agent().await;
        let out = run(&a, Output::Table, |c, out| {
            logs_to(c, "web", 0, false, None, out)
        })
        .await
        .unwrap();
        assert_eq!(out, "line 1\nline 2\n");
    }
}
