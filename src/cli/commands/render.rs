//! Rendering of the agent's replies for people: the tables and lines the client commands print
//! without `-o json`. Pure functions from a reply (and, for ages, this machine's clock reading)
//! to a string; they do no IO and make no request (the command bodies in `commands.rs` do).

use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{ContentArrangement, Table, presets};

use crate::node::api::{HistoryEntry, NodeView, PsEntry, ResourcesView, StatusView, WriteResult};
use crate::placement::{fmt_bytes, fmt_cpu};
use crate::spec::Workload;

/// Longest DETAIL (and IMAGE/COMMAND) shown in a table; JSON has it whole.
const DETAIL_CHARS: usize = 60;
/// Characters of a node id shown in tables (after the common `12D3KooW`).
const NODE_CHARS: usize = 12;

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

pub(super) fn lines(written: &[WriteResult], line: impl Fn(&WriteResult) -> String) -> String {
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
pub(super) fn written_table(written: &[WriteResult]) -> String {
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

pub(super) fn scale_line(w: &WriteResult, replicas: u32) -> String {
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

pub(super) fn drain_line(w: &WriteResult, on: bool) -> String {
    // The core answers a drain with the node's full id in `revision`.
    let node = &w.revision;
    match (on, w.changed) {
        (true, true) => format!("node {node} is draining: its instances move to other nodes"),
        (true, false) => format!("node {node} was already draining"),
        (false, true) => format!("node {node} is no longer draining: it takes instances again"),
        (false, false) => format!("node {node} was not draining"),
    }
}

pub(super) fn ps_table(entries: &[PsEntry]) -> String {
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

pub(super) fn history_table(entries: &[HistoryEntry]) -> String {
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

pub(super) fn nodes_table(nodes: &[NodeView], now_ms: u64) -> String {
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
pub(super) fn status_text(s: &StatusView, now_ms: u64) -> String {
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

    use super::*;
    use crate::api::testing::{self, NODE};
    use crate::node::api::{Counters, MemberCounts, Unplaceable};

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
}
