//! The client commands: each calls the agent's API (`api::Client`) and prints the answer, a
//! table for people or JSON for scripts (`-o json`, the reply exactly as the API gives it).
//!
//! Data goes to stdout, messages to stderr. Each `pub fn` is one command (its help is in
//! `cli/mod.rs`) and writes through a `*_to` twin that tests drive with a buffer; rendering is
//! done by the pure functions of `render.rs`, which return strings. Nothing here makes a decision
//! the agent should make.

mod render;

use std::io::{self, Read, Write};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Serialize;

use super::{ClientOpts, Output};
use crate::api::Client;
pub use render::short_node;
use render::{
    drain_line, history_table, lines, nodes_table, ps_table, scale_line, status_text, written_table,
};

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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::api::testing::{self, FakeAgent, NODE, TOKEN, WEB_YAML, spawn_fake_agent};
    use crate::node::api::{HistoryEntry, NodeView, PsEntry, StatusView, WriteResult};

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
