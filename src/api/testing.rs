//! A fake agent for tests of the API and the CLI: the real server in front of a fake node loop
//! and a fake log source, on 127.0.0.1 with an ephemeral port.
//!
//! The fake loop answers from fixed data and records every request it receives, so tests can
//! assert what reached the core (and that nothing did).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{ApiCall, LogSource};
use crate::node::api::{
    ApiError, ApiReply, ApiRequest, HistoryEntry, NodeView, PsEntry, ResourcesView, StatusView,
    WriteResult,
};

pub(crate) const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A spec the fake knows as `web`.
pub(crate) const WEB_YAML: &str = "name: web\ncommand: [sleep, \"1000\"]\nreplicas: 2\n";

pub(crate) struct FakeAgent {
    pub addr: SocketAddr,
    /// Every request the fake node loop received, in order.
    pub seen: Arc<Mutex<Vec<ApiRequest>>>,
    pub logs: Arc<FakeLogs>,
    stop: Option<oneshot::Sender<()>>,
    pub server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl FakeAgent {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<ApiRequest> {
        self.seen.lock().unwrap().clone()
    }

    /// Starts the server's graceful shutdown.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the real server with a fake node loop on the current runtime.
pub(crate) async fn spawn_fake_agent(reply_timeout: Duration) -> FakeAgent {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (calls_tx, calls_rx) = mpsc::channel(8);
    let seen = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(fake_node_loop(calls_rx, seen.clone()));
    let logs = Arc::new(FakeLogs::default());
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let server = tokio::spawn(super::server::serve_with(
        listener,
        TOKEN.to_owned(),
        calls_tx,
        logs.clone(),
        reply_timeout,
        async move {
            let _ = stop_rx.await;
        },
    ));
    FakeAgent {
        addr,
        seen,
        logs,
        stop: Some(stop_tx),
        server,
    }
}

/// Answers like a node that holds one service, `web`, on one node `12D3KooWfakefakefake1`.
/// Requests about the service `slow` are never answered; about `dropped`, the reply is dropped.
async fn fake_node_loop(mut rx: mpsc::Receiver<ApiCall>, seen: Arc<Mutex<Vec<ApiRequest>>>) {
    let mut unanswered = Vec::new();
    while let Some(ApiCall { req, reply }) = rx.recv().await {
        seen.lock().unwrap().push(req.clone());
        let about = match &req {
            ApiRequest::Remove { service }
            | ApiRequest::Scale { service, .. }
            | ApiRequest::Rollback { service, .. }
            | ApiRequest::History { service } => Some(service.as_str().to_owned()),
            ApiRequest::Ps { service } => service.as_ref().map(|s| s.as_str().to_owned()),
            _ => None,
        };
        match about.as_deref() {
            Some("slow") => {
                unanswered.push(reply);
                continue;
            }
            Some("dropped") => continue,
            Some("web") | None => {}
            Some(other) => {
                let _ = reply.send(Err(unknown(other)));
                continue;
            }
        }
        let _ = reply.send(Ok(answer(req)));
    }
}

fn unknown(service: &str) -> ApiError {
    ApiError::not_found(
        format!("no service {service}"),
        "see `shoal ps` for the services deployed",
    )
}

fn written(service: &str, revision: &str) -> ApiReply {
    ApiReply::Written(vec![WriteResult {
        service: service.into(),
        revision: revision.into(),
        changed: true,
    }])
}

fn answer(req: ApiRequest) -> ApiReply {
    match req {
        ApiRequest::Deploy { specs } => ApiReply::Written(
            specs
                .iter()
                .map(|s| WriteResult {
                    service: s.name.0.to_string(),
                    revision: "web-1".into(),
                    changed: true,
                })
                .collect(),
        ),
        ApiRequest::Remove { .. } => written("web", "web-3"),
        ApiRequest::Scale { .. } => written("web", "web-2"),
        ApiRequest::Rollback { .. } => written("web", "web-4"),
        ApiRequest::History { .. } => ApiReply::History(history()),
        ApiRequest::Ps { .. } => ApiReply::Ps(ps()),
        ApiRequest::Status => ApiReply::Status(Box::new(StatusView {
            node: NODE.into(),
            incarnation: 2,
            agent_version: "0.1.0".into(),
            digest: "d1g3st".into(),
            services: 1,
            slots: 2,
            running: 1,
            ..StatusView::default()
        })),
        ApiRequest::Nodes => ApiReply::Nodes(vec![node_view()]),
        ApiRequest::Drain { node, on } => ApiReply::Written(vec![WriteResult {
            service: String::new(),
            revision: node.unwrap_or_else(|| NODE.into()),
            changed: on,
        }]),
        ApiRequest::TestFaults(_) => ApiReply::Written(vec![]),
    }
}

pub(crate) const NODE: &str = "12D3KooWfakefakefake1";

pub(crate) fn history() -> Vec<HistoryEntry> {
    let spec = crate::spec::parse("web.yaml", WEB_YAML).unwrap().remove(0);
    vec![HistoryEntry {
        revision: "web-1".into(),
        written_by: NODE.into(),
        written_at: 1_700_000_000_123,
        current: true,
        deleted: false,
        spec: Some(spec),
    }]
}

pub(crate) fn ps() -> Vec<PsEntry> {
    vec![
        PsEntry {
            service: "web".into(),
            slot: 0,
            node: Some(NODE.into()),
            epoch: 1,
            revision: Some("web-1".into()),
            state: "running".into(),
            pid: Some(4242),
            container: None,
            endpoint: Some("127.0.0.1:31000".into()),
            restarts: 0,
            detail: None,
        },
        PsEntry {
            service: "web".into(),
            slot: 1,
            node: None,
            epoch: 0,
            revision: None,
            state: "pending".into(),
            pid: None,
            container: None,
            endpoint: None,
            restarts: 0,
            detail: Some("no node has 1 cpu free".into()),
        },
    ]
}

pub(crate) fn node_view() -> NodeView {
    NodeView {
        id: NODE.into(),
        addresses: vec!["/ip4/127.0.0.1/tcp/7801".into()],
        labels: BTreeMap::from([("region".to_owned(), "eu-west".to_owned())]),
        state: "alive".into(),
        incarnation: 2,
        capacity: ResourcesView {
            cpu_millis: 4000,
            memory_bytes: 8 << 30,
        },
        allocated: ResourcesView {
            cpu_millis: 1500,
            memory_bytes: 768 << 20,
        },
        runtimes: vec!["process".into()],
        draining: false,
        last_heard: 1_700_000_000_000,
        agent_version: Some("0.1.0".into()),
    }
}

/// Logs of `web` slot 0: two chunks at once; with `follow`, a third after [`FakeLogs::more`]
/// is notified, then the end. Any other instance is unknown.
#[derive(Default)]
pub(crate) struct FakeLogs {
    pub more: Arc<Notify>,
}

impl LogSource for FakeLogs {
    fn logs(
        &self,
        service: String,
        slot: u32,
        follow: bool,
        _tail: Option<usize>,
    ) -> BoxFuture<'static, Result<mpsc::Receiver<Vec<u8>>, ApiError>> {
        let more = self.more.clone();
        async move {
            if (service.as_str(), slot) != ("web", 0) {
                return Err(ApiError::not_found(
                    format!("no instance {service}/{slot} on this node"),
                    "see `shoal ps` for where it runs",
                ));
            }
            let (tx, rx) = mpsc::channel(4);
            tokio::spawn(async move {
                let _ = tx.send(b"line 1\n".to_vec()).await;
                let _ = tx.send(b"line 2\n".to_vec()).await;
                if follow {
                    more.notified().await;
                    let _ = tx.send(b"line 3\n".to_vec()).await;
                }
            });
            Ok(rx)
        }
        .boxed()
    }
}
