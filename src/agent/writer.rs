//! The store writer: a thread that owns the redb store, commits changed entries in groups, and
//! acknowledges API writes only once they are committed durably.
//!
//! The node loop hands each batch of changed entries (with the API replies that must wait for
//! them) to this thread through a bounded queue, so it waits for the disk only when that queue
//! is full (back-pressure: the loop then takes no new input until the writer catches up). The thread drains what
//! is queued, commits it as one transaction — fsync'd when any job in it acknowledges a write,
//! not otherwise (state learned from peers can be learned again) — then sends the replies. It
//! keeps a mirror of the state so that after a failed write it can rewrite everything.

use tokio::sync::{mpsc, oneshot};
use tracing::error;

use crate::node::api::ApiErrorKind;
use crate::node::{ApiError, ApiReply};
use crate::state::{ClusterState, Crdt};
use crate::store::Store;

/// A reply that must wait until its write is on disk.
pub type Ack = (
    oneshot::Sender<Result<ApiReply, ApiError>>,
    Result<ApiReply, ApiError>,
);

/// One batch of changed entries (current values), and the replies waiting for them.
pub struct Job {
    pub entries: ClusterState,
    pub durable: bool,
    pub acks: Vec<Ack>,
}

/// Jobs queued at most; a full queue makes the node loop wait (back-pressure), never drops.
pub const QUEUE: usize = 256;

/// Starts the writer thread; it ends (after a last durable commit) when the sender is dropped.
pub fn spawn(
    mut store: Store,
    initial: ClusterState,
) -> (mpsc::Sender<Job>, std::thread::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Job>(QUEUE);
    let handle = std::thread::Builder::new()
        .name("shoal-store".into())
        .spawn(move || {
            let mut mirror = initial;
            let mut dirty_nondurable = false;
            while let Some(first) = rx.blocking_recv() {
                let mut jobs = vec![first];
                while jobs.len() < QUEUE {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let mut scope = ClusterState::default();
                let mut durable = false;
                for j in &jobs {
                    mirror.merge(&j.entries);
                    scope.merge(&j.entries);
                    durable |= j.durable;
                }
                let scope = mirror.entries_for(&scope);
                let result = store.persist_with(&mirror, &scope, durable);
                match &result {
                    Ok(()) => dirty_nondurable = !durable,
                    Err(e) => error!(error = %e, "cannot persist state"),
                }
                for j in jobs {
                    for (reply, answer) in j.acks {
                        let answer = match &result {
                            Ok(()) => answer,
                            Err(e) => Err(ApiError {
                                kind: ApiErrorKind::Unavailable,
                                error: format!("the write could not be persisted: {e}"),
                                hint: Some(
                                    "it was not acknowledged; fix the disk and retry".into(),
                                ),
                            }),
                        };
                        let _ = reply.send(answer);
                    }
                }
            }
            if dirty_nondurable {
                let empty = ClusterState::default();
                if let Err(e) = store.persist_with(&mirror, &empty, true) {
                    error!(error = %e, "cannot make the last changes durable");
                }
            }
        })
        .expect("spawn the store writer thread");
    (tx, handle)
}
