//! The transport: one libp2p swarm per agent, TCP + `pnet` (the cluster key) + Noise + Yamux,
//! carrying SWIM datagrams (`/shoal/swim/1`), sync requests (`/shoal/sync/1`) and gossipsub
//! topics. Runs in its own tokio task; the rest of the agent talks to it through a cloneable
//! `NetHandle` (bounded queue, never blocks) and a bounded event receiver.
//!
//! Only transport: what the bytes mean belongs to `membership/` and the state layer. Nothing
//! here retries at the application level; a lost datagram is a missed ack for SWIM.
//!
//! Files: `key.rs` (cluster key and node identity files), `transport.rs` (the stack: pnet
//! followed by an encrypted key check so a wrong key fails at once with "cluster key mismatch
//! or not a shoal node"; byte counting at the socket; the behaviours), `codec.rs` (frames),
//! `swarm.rs` (the loop, address book, fault injection, handshake failure reports).
//!
//! Bounds: the command queue and the event queue (1,024 each; a full queue drops and counts),
//! 64 datagrams waiting per peer, frames checked against `max_swim_bytes` / `max_sync_bytes`
//! before allocation, gossip messages at most `gossip_max_bytes`, address book 16,384 peers ×
//! 8 addresses, delayed (fault-injected) messages 16,384.
//!
//! Cost: each datagram is one request-response exchange on a new Yamux stream, which adds
//! about 290 bytes on the wire (stream open, multistream-select, Noise framing, the empty
//! answer) to the payload; `datagram_wire_cost_is_bounded` measures it.

mod codec;
mod key;
mod swarm;
mod transport;

#[cfg(test)]
mod tests;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use libp2p::identity::Keypair;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::ids::NodeId;

pub use codec::{FrameError, decode_frame, encode_frame};
pub use key::{ClusterKey, load_or_create_identity, node_id};

/// Capacity of the command queue (handle → swarm task) and of the event queue.
pub const QUEUE_CAPACITY: usize = 1024;
/// Datagrams waiting (or in flight) per peer; more are dropped and counted.
pub const MAX_PENDING_DATAGRAMS: usize = 64;

/// Everything the transport needs. No `Default`: the key and identity have to be chosen.
pub struct NetConfig {
    /// Multiaddrs to listen on, for example `/ip4/0.0.0.0/tcp/7946`; port 0 picks one.
    pub listen: Vec<Multiaddr>,
    /// The cluster key: peers without it cannot connect.
    pub key: ClusterKey,
    /// This node's identity (see `load_or_create_identity`).
    pub identity: Keypair,
    /// Gossipsub topics to subscribe to, for example `shoal/state/1`, `shoal/bids/1`.
    pub gossip_topics: Vec<String>,
    /// Largest SWIM datagram, bytes. Must cover `SwimTuning::max_packet_size` plus the
    /// membership envelope (32 bytes). Default 64 KiB.
    pub max_swim_bytes: usize,
    /// Largest sync request or response, bytes. Default 1 MiB: move more as several requests.
    pub max_sync_bytes: usize,
    /// Largest gossip message, bytes. Default 64 KiB (gossipsub's own default): gossip small
    /// deltas, move full state over sync.
    pub gossip_max_bytes: usize,
    /// Fault injection for tests; off by default.
    pub fault: FaultConfig,
}

impl NetConfig {
    /// The defaults above, listening on `listen`.
    pub fn new(listen: Vec<Multiaddr>, key: ClusterKey, identity: Keypair) -> Self {
        NetConfig {
            listen,
            key,
            identity,
            gossip_topics: Vec::new(),
            max_swim_bytes: 64 * 1024,
            max_sync_bytes: 1024 * 1024,
            gossip_max_bytes: 64 * 1024,
            fault: FaultConfig::default(),
        }
    }
}

/// Test-only fault injection, applied to outbound and inbound datagrams, gossip and sync
/// requests. `Default` is off.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Probability (0..1) of dropping each message, each way.
    pub drop_rate: f64,
    /// Extra delay added to each message, each way, in milliseconds.
    pub delay_ms: u64,
    /// Partition: no connection to or from these nodes, and everything to or from them is
    /// dropped.
    pub blocked: BTreeSet<NodeId>,
}

impl FaultConfig {
    pub fn is_off(&self) -> bool {
        self.drop_rate <= 0.0 && self.delay_ms == 0 && self.blocked.is_empty()
    }
}

/// What the transport reports.
#[derive(Debug)]
pub enum NetEvent {
    /// A SWIM datagram from an authenticated peer.
    Datagram { from: NodeId, bytes: Vec<u8> },
    /// A gossip message; `from` is its signed author (not the peer that relayed it).
    Gossip {
        from: NodeId,
        topic: String,
        bytes: Vec<u8>,
    },
    /// A sync request; answer through `reply` (dropping it fails the request at the peer).
    SyncRequest {
        from: NodeId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Vec<u8>>,
    },
    /// First connection to `node` established.
    Connected { node: NodeId, addr: Multiaddr },
    /// Last connection to `node` closed.
    Disconnected { node: NodeId },
    /// A connection failed during the pnet/Noise handshake: another cluster key or not a
    /// shoal node. `reason` starts with "cluster key mismatch or not a shoal node".
    HandshakeFailed {
        addr: Option<Multiaddr>,
        reason: String,
    },
}

/// Counters; `NetHandle::stats` reads them without touching the swarm task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Bytes received over TCP: every protocol, with pnet, Noise, Yamux and stream
    /// negotiation overhead (what the network carries, TCP/IP headers aside).
    pub bytes_in: u64,
    /// Bytes sent over TCP, counted the same way.
    pub bytes_out: u64,
    /// Frames refused: oversized, truncated or undecodable, either way.
    pub frames_rejected: u64,
    /// Connections that failed in the pnet/Noise handshake.
    pub handshake_failures: u64,
    /// Peers with at least one open connection now.
    pub connected_peers: u64,
    /// Messages dropped: per-peer datagram bound, fault injection, blocked peers, gossip too
    /// big or without subscribers.
    pub messages_dropped: u64,
    /// Commands dropped because the command queue was full.
    pub commands_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
}

/// Errors of the transport and of its key files.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster key: {0}")]
    KeyFormat(String),
    #[error("{0}: already exists, refusing to overwrite it")]
    AlreadyExists(PathBuf),
    #[error("node identity {path}: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("not a node id: {0:?}")]
    BadNodeId(String),
    #[error("transport setup: {0}")]
    Setup(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    /// The request never reached the peer: no address, dial failed, blocked, or dropped by
    /// fault injection. Retrying later may help.
    #[error("peer {0} unreachable")]
    Unreachable(NodeId),
    /// Sent, but no answer in time or the connection closed. The peer may have seen it.
    #[error("no answer from {0}")]
    NoAnswer(NodeId),
    /// The peer refused the request (too big for it, or it dropped the request).
    #[error("request refused by {0}")]
    Refused(NodeId),
    #[error("request of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("transport queue full")]
    QueueFull,
    #[error("transport shut down")]
    ShutDown,
}

impl NetError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        NetError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Default)]
pub(crate) struct Counters {
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub connected_peers: AtomicU64,
    pub messages_dropped: AtomicU64,
    pub commands_dropped: AtomicU64,
    pub events_dropped: AtomicU64,
}

impl Counters {
    pub fn dropped(&self) {
        self.messages_dropped.fetch_add(1, Relaxed);
    }
}

pub(crate) enum Command {
    Dial(Multiaddr),
    AddAddresses(PeerId, Vec<Multiaddr>),
    Datagram(PeerId, Vec<u8>),
    Publish(String, Vec<u8>),
    Request(PeerId, Vec<u8>, oneshot::Sender<Result<Vec<u8>, NetError>>),
    SetFault(FaultConfig),
    Shutdown,
}

/// State the handle reads without the swarm task.
pub(crate) struct Shared {
    pub counters: Arc<Counters>,
    pub listen_addrs: Mutex<Vec<Multiaddr>>,
    pub max_sync_bytes: usize,
}

/// The way into the transport. Cheap to clone; every method returns at once.
#[derive(Clone)]
pub struct NetHandle {
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    ready: watch::Receiver<bool>,
    done: watch::Receiver<bool>,
}

/// Starts the swarm in its own tokio task (call from within a runtime). Returns once the
/// listeners are requested; `NetHandle::ready` waits for their addresses.
pub fn spawn(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    swarm::spawn(cfg)
}

impl NetHandle {
    /// Dials a seed; the peer id in the address (`/p2p/...`) is optional.
    pub fn dial(&self, addr: Multiaddr) {
        self.command(Command::Dial(addr));
    }

    /// Records where `node` listens (from membership metadata) for later dials.
    pub fn add_addresses(&self, node: NodeId, addrs: Vec<Multiaddr>) {
        if let Some(peer) = self.peer(&node) {
            self.command(Command::AddAddresses(peer, addrs));
        }
    }

    /// Sends a SWIM datagram, fire and forget: dials if needed, drops when the peer already
    /// has `MAX_PENDING_DATAGRAMS` waiting.
    pub fn send_datagram(&self, to: NodeId, bytes: Vec<u8>) {
        if let Some(peer) = self.peer(&to) {
            self.command(Command::Datagram(peer, bytes));
        }
    }

    /// Publishes on a gossipsub topic (subscribed at spawn). Dropped and counted if too big or
    /// if no peer subscribes yet.
    pub fn publish(&self, topic: &str, bytes: Vec<u8>) {
        self.command(Command::Publish(topic.to_string(), bytes));
    }

    /// A sync request to `to`; the answer (or why there is none) arrives on the receiver.
    pub fn request(
        &self,
        to: NodeId,
        bytes: Vec<u8>,
    ) -> oneshot::Receiver<Result<Vec<u8>, NetError>> {
        let (tx, rx) = oneshot::channel();
        let max = self.shared.max_sync_bytes;
        let Some(peer) = self.peer(&to) else {
            let _ = tx.send(Err(NetError::BadNodeId(to.0.to_string())));
            return rx;
        };
        if bytes.len() > max {
            let _ = tx.send(Err(NetError::TooLarge {
                len: bytes.len(),
                max,
            }));
            return rx;
        }
        if let Err(e) = self.commands.try_send(Command::Request(peer, bytes, tx)) {
            self.shared.counters.commands_dropped.fetch_add(1, Relaxed);
            let (error, cmd) = match e {
                mpsc::error::TrySendError::Full(cmd) => (NetError::QueueFull, cmd),
                mpsc::error::TrySendError::Closed(cmd) => (NetError::ShutDown, cmd),
            };
            if let Command::Request(_, _, tx) = cmd {
                let _ = tx.send(Err(error));
            }
        }
        rx
    }

    /// Replaces the fault injection.
    pub fn set_fault(&self, fault: FaultConfig) {
        self.command(Command::SetFault(fault));
    }

    pub fn stats(&self) -> NetStats {
        let c = &self.shared.counters;
        NetStats {
            bytes_in: c.bytes_in.load(Relaxed),
            bytes_out: c.bytes_out.load(Relaxed),
            frames_rejected: c.frames_rejected.load(Relaxed),
            handshake_failures: c.handshake_failures.load(Relaxed),
            connected_peers: c.connected_peers.load(Relaxed),
            messages_dropped: c.messages_dropped.load(Relaxed),
            commands_dropped: c.commands_dropped.load(Relaxed),
            events_dropped: c.events_dropped.load(Relaxed),
        }
    }

    /// The addresses actually bound (port 0 resolved). Empty until `ready` returns.
    pub fn listen_addrs(&self) -> Vec<Multiaddr> {
        self.shared
            .listen_addrs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until every listener reported its address (or failed).
    pub async fn ready(&self) {
        let mut ready = self.ready.clone();
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Stops the swarm task (closing every connection) and waits for it to end.
    pub async fn shutdown(&self) {
        let _ = self.commands.send(Command::Shutdown).await;
        let mut done = self.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    fn command(&self, cmd: Command) {
        if self.commands.try_send(cmd).is_err() {
            self.shared.counters.commands_dropped.fetch_add(1, Relaxed);
        }
    }

    fn peer(&self, node: &NodeId) -> Option<PeerId> {
        let peer = node.0.parse().ok();
        if peer.is_none() {
            tracing::debug!(node = %node, "not a peer id, message dropped");
            self.shared.counters.dropped();
        }
        peer
    }
}
