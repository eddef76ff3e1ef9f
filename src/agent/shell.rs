//! The shell's side of the node loop: it turns what arrives on the channels (API calls,
//! transport events) into core inputs, and carries out the core's outputs in order: changed
//! entries and write acknowledgements to the store writer, runtime commands to the runtime
//! worker's bounded queue (never awaited inline), gossip, datagrams, dials and sync messages to
//! the transport.
//!
//! It does not start anything (`agent/setup.rs`) and does not own the loop (`agent/mod.rs`).

use std::collections::{BTreeMap, BTreeSet};

use libp2p::Multiaddr;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use super::writer;
use crate::api::ApiCall;
use crate::ids::NodeId;
use crate::net::{FaultConfig, NetEvent, NetHandle};
use crate::node::api::TestFaults;
use crate::node::{
    ApiError, ApiReply, ApiRequest, Input, Message, Node, Output, SyncMsg, TestBugs,
};
use crate::state::{ClusterState, Crdt};
use crate::wire;
use rand::rngs::StdRng;

/// Everything the node loop drives besides the node itself.
pub(super) struct Shell {
    writer: mpsc::Sender<writer::Job>,
    cmd_tx: mpsc::Sender<crate::runtime::RuntimeCommand>,
    pending: Pending,
    net: NetHandle,
    /// Sync requests from peers waiting for the core's answer.
    sync_replies: BTreeMap<u64, oneshot::Sender<Vec<u8>>>,
    sync_resp_tx: mpsc::Sender<(NodeId, SyncMsg)>,
    next_id: u64,
    /// Gossip and sync messages this shell could not decode.
    undecodable: u64,
    /// Since when changes learned from peers (or decided here without an API write) have been
    /// committed without fsync: they are made durable within `NONDURABLE_MAX`.
    nondurable_since: Option<std::time::Instant>,
    test_faults: Option<TestFaults>,
    test_faults_allowed: bool,
    bugs: TestBugs,
}

/// Largest gossip message this node publishes or accepts (gossipsub's own limit is 64 KiB).
const MAX_GOSSIP_BYTES: usize = 60 * 1024;
/// The longest a change stays committed without fsync (see `nondurable_since`).
const NONDURABLE_MAX: std::time::Duration = std::time::Duration::from_secs(1);
/// Largest sync message accepted.
const MAX_SYNC_BYTES: usize = 1 << 20;

/// API requests waiting for the core's reply: id → (is a write, where to answer).
type Pending = BTreeMap<u64, (bool, oneshot::Sender<Result<ApiReply, ApiError>>)>;

impl Shell {
    pub(super) fn new(
        writer: mpsc::Sender<writer::Job>,
        cmd_tx: mpsc::Sender<crate::runtime::RuntimeCommand>,
        net: NetHandle,
        sync_resp_tx: mpsc::Sender<(NodeId, SyncMsg)>,
        test_faults_allowed: bool,
        bugs: TestBugs,
    ) -> Shell {
        Shell {
            writer,
            cmd_tx,
            pending: Pending::new(),
            net,
            sync_replies: BTreeMap::new(),
            sync_resp_tx,
            next_id: 0,
            undecodable: 0,
            nondurable_since: None,
            test_faults: None,
            test_faults_allowed,
            bugs,
        }
    }

    /// Turns an API call into a core input; test-only fault injection is the shell's own.
    pub(super) fn api_call(&mut self, node: &Node<StdRng>, call: ApiCall) -> Option<Input> {
        if let ApiRequest::TestFaults(f) = &call.req
            && self.test_faults_allowed
        {
            let known: Vec<NodeId> = node.members().peers().keys().cloned().collect();
            let mut blocked = BTreeSet::new();
            for b in &f.blocked {
                match crate::node::api::resolve_node(b, known.iter()) {
                    Ok(id) => {
                        blocked.insert(id);
                    }
                    Err(e) => {
                        let _ = call.reply.send(Err(e));
                        return None;
                    }
                }
            }
            self.net.set_fault(FaultConfig {
                drop_rate: f.drop_rate,
                delay_ms: f.delay_ms,
                blocked,
            });
            info!(faults = ?f, "test faults set");
            self.test_faults = Some(f.clone())
                .filter(|f| f.drop_rate > 0.0 || f.delay_ms > 0 || !f.blocked.is_empty());
            let _ = call.reply.send(Ok(ApiReply::Written(vec![])));
            return None;
        }
        self.next_id += 1;
        self.pending
            .insert(self.next_id, (call.req.is_write(), call.reply));
        Some(Input::Api {
            id: self.next_id,
            req: call.req,
        })
    }

    /// Turns a transport event into a core input (undecodable messages are counted and dropped).
    pub(super) fn net_event(&mut self, ev: NetEvent) -> Option<Input> {
        match ev {
            NetEvent::Datagram { from, bytes } => Some(Input::Datagram { from, bytes }),
            NetEvent::Gossip { from, bytes, .. } => {
                match wire::decode::<Message>(&bytes, MAX_GOSSIP_BYTES) {
                    Ok(msg) => Some(Input::Message { from, msg }),
                    Err(e) => {
                        self.undecodable += 1;
                        debug!(peer = %from, error = %e, "undecodable gossip dropped");
                        None
                    }
                }
            }
            NetEvent::SyncRequest { from, bytes, reply } => {
                match wire::decode::<SyncMsg>(&bytes, MAX_SYNC_BYTES) {
                    Ok(msg) => {
                        self.next_id += 1;
                        self.sync_replies.insert(self.next_id, reply);
                        // Bound the table: a peer that never gets answered must not grow it.
                        while self.sync_replies.len() > 256 {
                            self.sync_replies.pop_first();
                        }
                        Some(Input::SyncRequest {
                            from,
                            id: self.next_id,
                            msg,
                        })
                    }
                    Err(e) => {
                        self.undecodable += 1;
                        debug!(peer = %from, error = %e, "undecodable sync request dropped");
                        None
                    }
                }
            }
            NetEvent::Connected { node, .. } => Some(Input::Connected { node }),
            NetEvent::Disconnected { .. } | NetEvent::HandshakeFailed { .. } => None,
        }
    }

    /// Executes the core's outputs in order. Changed entries go to the store writer as one job
    /// per batch; replies to writes ride with that job and are sent once it is durable.
    pub(super) async fn execute(&mut self, node: &Node<StdRng>, out: &mut Vec<Output>) {
        let mut job = writer::Job {
            entries: ClusterState::default(),
            durable: false,
            acks: Vec::new(),
        };
        for o in out.drain(..) {
            match o {
                Output::Persist(delta) => {
                    let entries = node.state().entries_for(&delta);
                    job.entries.merge(&entries);
                }
                Output::Reply { id, result } => {
                    let Some((is_write, reply)) = self.pending.remove(&id) else {
                        continue;
                    };
                    let result = match result {
                        Ok(ApiReply::Status(mut st)) => {
                            let net = self.net.stats();
                            st.counters.frames_rejected = net.frames_rejected + self.undecodable;
                            st.counters.net_bytes_in = net.bytes_in;
                            st.counters.net_bytes_out = net.bytes_out;
                            if let Some(f) = &self.test_faults {
                                st.faults.push(format!(
                                    "test faults on: drop {} delay {}ms blocked {:?}",
                                    f.drop_rate, f.delay_ms, f.blocked
                                ));
                            }
                            if self.bugs.any() {
                                st.faults
                                    .push(format!("deliberate bugs on: {:?}", self.bugs));
                            }
                            Ok(ApiReply::Status(st))
                        }
                        other => other,
                    };
                    if is_write && !job.entries.is_empty() {
                        job.durable = true;
                        job.acks.push((reply, result));
                    } else if is_write && !job.acks.is_empty() {
                        // Ordered after earlier acknowledgements of this batch.
                        job.acks.push((reply, result));
                    } else {
                        let _ = reply.send(result);
                    }
                }
                Output::Runtime(cmd) => {
                    if let Err(e) = self.cmd_tx.try_send(cmd) {
                        // The periodic re-list repairs what a dropped command leaves undone.
                        warn!(error = %e, "runtime queue full, command dropped");
                    }
                }
                Output::Broadcast { topic, msg } => {
                    let bytes = wire::encode(&msg);
                    if bytes.len() > MAX_GOSSIP_BYTES {
                        // Anti-entropy carries what is too big to gossip.
                        debug!(
                            bytes = bytes.len(),
                            "message too big to gossip, left to anti-entropy"
                        );
                        continue;
                    }
                    self.net.publish(topic.name(), bytes);
                }
                Output::Datagram { to, bytes } => self.net.send_datagram(to, bytes),
                Output::Dial { addr } => match addr.parse::<Multiaddr>() {
                    Ok(a) => self.net.dial(a),
                    Err(e) => warn!(addr = %addr, error = %e, "seed is not a multiaddr"),
                },
                Output::Addresses { node: peer, addrs } => {
                    let addrs: Vec<Multiaddr> =
                        addrs.iter().filter_map(|a| a.parse().ok()).collect();
                    self.net.add_addresses(peer, addrs);
                }
                Output::SyncRequest { to, msg } => {
                    let rx = self.net.request(to.clone(), wire::encode(&msg));
                    let tx = self.sync_resp_tx.clone();
                    tokio::spawn(async move {
                        let Ok(Ok(bytes)) = rx.await else { return };
                        if let Ok(msg) = wire::decode::<SyncMsg>(&bytes, MAX_SYNC_BYTES) {
                            let _ = tx.send((to, msg)).await;
                        }
                    });
                }
                Output::SyncReply { id, msg } => {
                    if let Some(reply) = self.sync_replies.remove(&id) {
                        let _ = reply.send(wire::encode(&msg));
                    }
                }
            }
        }
        // State learned from peers and this node's own claims are committed without fsync, but
        // not for long: a node that loses power must come back with what it knew a moment ago,
        // or it cannot restart its instances while every peer is out of reach.
        if job.durable {
            self.nondurable_since = None;
        } else if !job.entries.is_empty() {
            self.nondurable_since
                .get_or_insert_with(std::time::Instant::now);
        }
        if self
            .nondurable_since
            .is_some_and(|t| t.elapsed() >= NONDURABLE_MAX)
        {
            job.durable = true;
            self.nondurable_since = None;
        }
        if !job.entries.is_empty() || !job.acks.is_empty() || job.durable {
            // Waits only when the writer is a whole queue behind (back-pressure, never loss).
            if self.writer.send(job).await.is_err() {
                error!("the store writer stopped; writes are no longer persisted");
            }
        }
    }
}
