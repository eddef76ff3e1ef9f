//! The swarm task: the loop that turns handle commands into swarm calls and swarm events into
//! `NetEvent`s, applying fault injection on the way, plus the address book and the handshake
//! failure reporting.
//!
//! Owns the swarm; the transport stack and behaviours are built in `transport.rs`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId};
use libp2p::swarm::{DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify};
use rand::RngExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use super::transport::{Behaviour, BehaviourEvent, MISMATCH, SYNC_REQUEST_TIMEOUT, build_swarm};
use super::{
    Command, Counters, FaultConfig, MAX_PENDING_DATAGRAMS, NetConfig, NetError, NetEvent,
    NetHandle, QUEUE_CAPACITY, Shared,
};
use crate::ids::NodeId;

/// Handshake failures are logged at most once per remote address per this period.
const WARN_EVERY: Duration = Duration::from_secs(60);
/// Address book bounds.
const MAX_BOOK_PEERS: usize = 16 * 1024;
const MAX_BOOK_ADDRS: usize = 8;
/// Messages held back by the injected delay, at most.
const MAX_DELAYED: usize = 16 * 1024;

pub(super) fn spawn(cfg: NetConfig) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let counters = Arc::new(Counters::default());
    let mut swarm = build_swarm(&cfg, &counters)?;
    let mut listeners = HashSet::new();
    for addr in &cfg.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }
    let mut topics = HashSet::new();
    for topic in &cfg.gossip_topics {
        let t = gossipsub::IdentTopic::new(topic.clone());
        swarm
            .behaviour_mut()
            .gossip
            .subscribe(&t)
            .map_err(|e| NetError::Setup(format!("gossip topic {topic}: {e}")))?;
        topics.insert(topic.clone());
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(QUEUE_CAPACITY);
    let (event_tx, event_rx) = mpsc::channel(QUEUE_CAPACITY);
    let (ready_tx, ready_rx) = watch::channel(listeners.is_empty());
    let (done_tx, done_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        counters: counters.clone(),
        listen_addrs: Mutex::new(Vec::new()),
        max_sync_bytes: cfg.max_sync_bytes,
    });
    let mut worker = Worker {
        swarm,
        commands: cmd_rx,
        events: event_tx,
        shared: shared.clone(),
        counters,
        fault: FaultConfig::default(),
        max_swim_bytes: cfg.max_swim_bytes,
        gossip_max_bytes: cfg.gossip_max_bytes,
        topics,
        book: HashMap::new(),
        swim_pending: HashMap::new(),
        swim_requests: HashMap::new(),
        sync_requests: HashMap::new(),
        replies: FuturesUnordered::new(),
        delayed: BTreeMap::new(),
        delay_seq: 0,
        warned: WarnLimiter::default(),
        listeners,
        ready: ready_tx,
    };
    worker.set_fault(cfg.fault);
    let span = tracing::info_span!("net", node = %super::node_id(&cfg.identity));
    tokio::spawn(
        async move {
            worker.run().await;
            let _ = done_tx.send(true);
        }
        .instrument(span),
    );
    let handle = NetHandle {
        commands: cmd_tx,
        shared,
        ready: ready_rx,
        done: done_rx,
    };
    Ok((handle, event_rx))
}

/// Something the injected delay holds back.
enum Delayed {
    Out(Command),
    In(NetEvent),
}

type SyncAnswer = oneshot::Sender<Result<Vec<u8>, NetError>>;

type Reply = BoxFuture<'static, (request_response::ResponseChannel<Vec<u8>>, Option<Vec<u8>>)>;

struct Worker {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<NetEvent>,
    shared: Arc<Shared>,
    counters: Arc<Counters>,
    fault: FaultConfig,
    max_swim_bytes: usize,
    gossip_max_bytes: usize,
    topics: HashSet<String>,
    /// Where peers listen: from `add_addresses`, identify and successful dials.
    book: HashMap<PeerId, VecDeque<Multiaddr>>,
    /// Datagrams queued or in flight per peer (bounded by `MAX_PENDING_DATAGRAMS`).
    swim_pending: HashMap<PeerId, usize>,
    swim_requests: HashMap<OutboundRequestId, PeerId>,
    sync_requests: HashMap<OutboundRequestId, (PeerId, SyncAnswer)>,
    /// Sync requests waiting for the application's answer.
    replies: FuturesUnordered<Reply>,
    delayed: BTreeMap<(Instant, u64), Delayed>,
    delay_seq: u64,
    warned: WarnLimiter,
    /// Listeners that have not reported an address yet.
    listeners: HashSet<libp2p::core::transport::ListenerId>,
    ready: watch::Sender<bool>,
}

impl Worker {
    async fn run(&mut self) {
        loop {
            let next_delayed = self.delayed.keys().next().map(|(at, _)| *at);
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Shutdown) | None => break,
                    Some(cmd) => self.command(cmd),
                },
                Some((channel, answer)) = self.replies.next(), if !self.replies.is_empty() => {
                    self.answer(channel, answer);
                }
                () = sleep_until(next_delayed), if next_delayed.is_some() => self.fire_delayed(),
                event = self.swarm.select_next_some() => self.swarm_event(event),
            }
        }
        tracing::debug!("transport shut down");
    }

    // ---- commands ----

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(addr = %addr, error = %e, "dial refused");
                }
            }
            Command::AddAddresses(peer, addrs) => {
                for addr in addrs {
                    self.remember(peer, addr);
                }
            }
            Command::SetFault(fault) => self.set_fault(fault),
            Command::Shutdown => {}
            cmd @ (Command::Datagram(..) | Command::Publish(..) | Command::Request(..)) => {
                let peer = match &cmd {
                    Command::Datagram(peer, _) | Command::Request(peer, _, _) => Some(*peer),
                    _ => None,
                };
                match self.fate(peer.as_ref()) {
                    Fate::Pass => self.execute(cmd),
                    Fate::Delay(d) => self.delay(d, Delayed::Out(cmd)),
                    Fate::Drop => {
                        self.counters.dropped();
                        if let Command::Request(peer, _, tx) = cmd {
                            let _ = tx.send(Err(NetError::Unreachable(node(&peer))));
                        }
                    }
                }
            }
        }
    }

    fn execute(&mut self, cmd: Command) {
        match cmd {
            Command::Datagram(peer, bytes) => self.send_datagram(peer, bytes),
            Command::Publish(topic, bytes) => self.publish(topic, bytes),
            Command::Request(peer, bytes, tx) => {
                let addrs = self.addresses(&peer);
                let id = self
                    .swarm
                    .behaviour_mut()
                    .sync
                    .send_request_with_addresses(&peer, bytes, addrs);
                self.sync_requests.insert(id, (peer, tx));
            }
            other => self.command(other),
        }
    }

    fn send_datagram(&mut self, peer: PeerId, bytes: Vec<u8>) {
        if bytes.len() > self.max_swim_bytes {
            self.counters.frames_rejected.fetch_add(1, Relaxed);
            tracing::debug!(to = %peer, len = bytes.len(), "datagram too big, dropped");
            return;
        }
        let pending = self.swim_pending.entry(peer).or_default();
        if *pending >= MAX_PENDING_DATAGRAMS {
            self.counters.dropped();
            return;
        }
        *pending += 1;
        let addrs = self.addresses(&peer);
        let id = self
            .swarm
            .behaviour_mut()
            .swim
            .send_request_with_addresses(&peer, bytes, addrs);
        self.swim_requests.insert(id, peer);
    }

    fn publish(&mut self, topic: String, bytes: Vec<u8>) {
        if bytes.len() > self.gossip_max_bytes || !self.topics.contains(&topic) {
            self.counters.dropped();
            tracing::debug!(
                topic,
                len = bytes.len(),
                "gossip too big or topic not subscribed, dropped"
            );
            return;
        }
        let published = self
            .swarm
            .behaviour_mut()
            .gossip
            .publish(gossipsub::IdentTopic::new(topic.clone()), bytes);
        if let Err(e) = published {
            self.counters.dropped();
            tracing::debug!(topic, error = %e, "gossip not published");
        }
    }

    fn answer(
        &mut self,
        channel: request_response::ResponseChannel<Vec<u8>>,
        answer: Option<Vec<u8>>,
    ) {
        // No answer: dropping the channel fails the request at the peer.
        if let Some(bytes) = answer
            && self
                .swarm
                .behaviour_mut()
                .sync
                .send_response(channel, bytes)
                .is_err()
        {
            tracing::debug!("sync answer too late, the request is gone");
        }
    }

    // ---- fault injection ----

    fn set_fault(&mut self, fault: FaultConfig) {
        let peers = |f: &FaultConfig| -> HashSet<PeerId> {
            f.blocked.iter().filter_map(|n| n.0.parse().ok()).collect()
        };
        let (old, new) = (peers(&self.fault), peers(&fault));
        let blocked = &mut self.swarm.behaviour_mut().blocked;
        for p in old.difference(&new) {
            blocked.unblock_peer(*p);
        }
        for p in new.difference(&old) {
            // Also closes the existing connections.
            blocked.block_peer(*p);
        }
        self.fault = fault;
    }

    fn fate(&self, peer: Option<&PeerId>) -> Fate {
        if self.fault.is_off() {
            return Fate::Pass;
        }
        if let Some(peer) = peer
            && self.fault.blocked.contains(&node(peer))
        {
            return Fate::Drop;
        }
        if self.fault.drop_rate > 0.0 && rand::rng().random_bool(self.fault.drop_rate.min(1.0)) {
            return Fate::Drop;
        }
        if self.fault.delay_ms > 0 {
            return Fate::Delay(Duration::from_millis(self.fault.delay_ms));
        }
        Fate::Pass
    }

    fn delay(&mut self, d: Duration, what: Delayed) {
        if self.delayed.len() >= MAX_DELAYED {
            self.counters.dropped();
            return;
        }
        self.delayed
            .insert((Instant::now() + d, self.delay_seq), what);
        self.delay_seq += 1;
    }

    fn fire_delayed(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            match entry.remove() {
                Delayed::Out(cmd) => self.execute(cmd),
                Delayed::In(ev) => self.emit(ev),
            }
        }
    }

    /// Applies the fault injection to an inbound event, then hands it over.
    fn inbound(&mut self, from: &PeerId, ev: NetEvent) {
        match self.fate(Some(from)) {
            Fate::Pass => self.emit(ev),
            Fate::Delay(d) => self.delay(d, Delayed::In(ev)),
            Fate::Drop => self.counters.dropped(),
        }
    }

    fn emit(&mut self, ev: NetEvent) {
        if self.events.try_send(ev).is_err() {
            self.counters.events_dropped.fetch_add(1, Relaxed);
        }
    }

    // ---- address book ----

    fn remember(&mut self, peer: PeerId, addr: Multiaddr) {
        let addr = without_p2p(addr);
        if self.book.len() >= MAX_BOOK_PEERS && !self.book.contains_key(&peer) {
            return;
        }
        let addrs = self.book.entry(peer).or_default();
        if addrs.contains(&addr) {
            return;
        }
        if addrs.len() == MAX_BOOK_ADDRS {
            addrs.pop_front();
        }
        addrs.push_back(addr);
    }

    fn addresses(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.book
            .get(peer)
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }

    // ---- swarm events ----

    fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Swim(ev)) => self.swim_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Sync(ev)) => self.sync_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Gossip(gossipsub::Event::Message {
                propagation_source,
                message,
                ..
            })) => {
                let author = message.source.unwrap_or(propagation_source);
                if self.fault.blocked.contains(&node(&author)) {
                    // Partition injection: relayed by someone else, still from a blocked node.
                    self.counters.dropped();
                    return;
                }
                let ev = NetEvent::Gossip {
                    from: node(&author),
                    topic: message.topic.into_string(),
                    bytes: message.data,
                };
                self.inbound(&propagation_source, ev);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                for addr in info.listen_addrs.into_iter().take(MAX_BOOK_ADDRS) {
                    self.remember(peer_id, addr);
                }
            }
            SwarmEvent::Behaviour(_) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if let ConnectedPoint::Dialer { address, .. } = &endpoint {
                    self.remember(peer_id, address.clone());
                }
                self.update_connected();
                if num_established.get() == 1 {
                    let addr = endpoint.get_remote_address().clone();
                    tracing::debug!(peer = %peer_id, addr = %addr, "connected");
                    self.emit(NetEvent::Connected {
                        node: node(&peer_id),
                        addr,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.update_connected();
                if num_established == 0 {
                    tracing::debug!(peer = %peer_id, "disconnected");
                    self.emit(NetEvent::Disconnected {
                        node: node(&peer_id),
                    });
                }
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                self.dial_error(peer_id, &error);
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => {
                let text = error_chain(&error);
                if text.contains(MISMATCH) {
                    self.handshake_failed(Some(send_back_addr), text);
                } else {
                    tracing::debug!(addr = %send_back_addr, error = %text, "incoming connection failed");
                }
            }
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                tracing::info!(addr = %address, "listening");
                self.shared
                    .listen_addrs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(address);
                self.listener_done(listener_id);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.shared
                    .listen_addrs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .retain(|a| *a != address);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Err(e) = reason {
                    tracing::warn!(error = %e, "listener closed");
                }
                self.listener_done(listener_id);
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(error = %error, "listener error");
            }
            _ => {}
        }
    }

    fn swim_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // The empty answer only says "delivered"; SWIM's own ack is a datagram.
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .swim
                    .send_response(channel, Vec::new());
                self.inbound(
                    &peer,
                    NetEvent::Datagram {
                        from: node(&peer),
                        bytes: request,
                    },
                );
            }
            Event::Message {
                message: Message::Response { request_id, .. },
                ..
            } => {
                self.swim_done(request_id);
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                tracing::debug!(to = %peer, error = %error, "datagram not delivered");
                self.swim_done(request_id);
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {}
        }
    }

    fn swim_done(&mut self, id: OutboundRequestId) {
        if let Some(peer) = self.swim_requests.remove(&id)
            && let Some(pending) = self.swim_pending.get_mut(&peer)
        {
            *pending = pending.saturating_sub(1);
            if *pending == 0 {
                self.swim_pending.remove(&peer);
            }
        }
    }

    fn sync_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        use request_response::{Event, Message};
        match ev {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let (tx, rx) = oneshot::channel();
                let ev = NetEvent::SyncRequest {
                    from: node(&peer),
                    bytes: request,
                    reply: tx,
                };
                self.replies.push(
                    async move {
                        let answer = tokio::time::timeout(SYNC_REQUEST_TIMEOUT, rx).await;
                        (channel, answer.ok().and_then(Result::ok))
                    }
                    .boxed(),
                );
                self.inbound(&peer, ev);
            }
            Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some((_, tx)) = self.sync_requests.remove(&request_id) {
                    let _ = tx.send(Ok(response));
                }
            }
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some((_, tx)) = self.sync_requests.remove(&request_id) {
                    let n = node(&peer);
                    let e = match error {
                        OutboundFailure::DialFailure => NetError::Unreachable(n),
                        OutboundFailure::Timeout | OutboundFailure::ConnectionClosed => {
                            NetError::NoAnswer(n)
                        }
                        OutboundFailure::UnsupportedProtocols | OutboundFailure::Io(_) => {
                            NetError::Refused(n)
                        }
                    };
                    let _ = tx.send(Err(e));
                }
            }
            Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(from = %peer, error = %error, "sync request failed");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    fn dial_error(&mut self, peer: Option<PeerId>, error: &DialError) {
        match error {
            DialError::Transport(attempts) => {
                for (addr, e) in attempts {
                    let text = error_chain(e);
                    if text.contains(MISMATCH) {
                        self.handshake_failed(Some(addr.clone()), text);
                    } else {
                        tracing::debug!(addr = %addr, error = %text, "dial failed");
                    }
                }
            }
            other => {
                let peer = peer.map(|p| p.to_string()).unwrap_or_default();
                tracing::debug!(peer, error = %other, "dial failed");
            }
        }
    }

    /// Counts, reports and logs (once per address per minute) a failed handshake. `text` is
    /// the transport's error chain; the reason kept is our handshake layer's own line.
    fn handshake_failed(&mut self, addr: Option<Multiaddr>, text: String) {
        let reason = text
            .find(MISMATCH)
            .and_then(|at| text[at..].lines().next())
            .unwrap_or(MISMATCH)
            .to_string();
        self.counters.handshake_failures.fetch_add(1, Relaxed);
        let host = addr.as_ref().map(remote_host).unwrap_or_default();
        if self.warned.due(host, Instant::now()) {
            let shown = addr.as_ref().map(ToString::to_string).unwrap_or_default();
            tracing::warn!(addr = %shown, reason = %reason, "cluster key mismatch or not a shoal node");
        }
        self.emit(NetEvent::HandshakeFailed { addr, reason });
    }

    fn update_connected(&self) {
        let n = self.swarm.connected_peers().count() as u64;
        self.counters.connected_peers.store(n, Relaxed);
    }

    fn listener_done(&mut self, id: libp2p::core::transport::ListenerId) {
        if self.listeners.remove(&id) && self.listeners.is_empty() {
            let _ = self.ready.send(true);
        }
    }
}

/// Once per remote host per `WARN_EVERY`: a misconfigured node retrying every second must
/// not flood the log. Remembers at most 1,024 hosts (older entries are pruned).
#[derive(Default)]
struct WarnLimiter {
    last: HashMap<String, Instant>,
}

impl WarnLimiter {
    fn due(&mut self, host: String, now: Instant) -> bool {
        if self
            .last
            .get(&host)
            .is_some_and(|at| now.duration_since(*at) < WARN_EVERY)
        {
            return false;
        }
        if self.last.len() >= 1024 {
            self.last
                .retain(|_, at| now.duration_since(*at) < WARN_EVERY);
        }
        self.last.insert(host, now);
        true
    }
}

enum Fate {
    Pass,
    Delay(Duration),
    Drop,
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn node(peer: &PeerId) -> NodeId {
    NodeId(peer.to_base58().into())
}

fn without_p2p(mut addr: Multiaddr) -> Multiaddr {
    if matches!(addr.iter().last(), Some(Protocol::P2p(_))) {
        addr.pop();
    }
    addr
}

/// The host part of an address (IP or DNS name), so that the ephemeral ports of repeated
/// incoming attempts count as one address for the log rate limit.
fn remote_host(addr: &Multiaddr) -> String {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.to_string(),
        Some(Protocol::Ip6(ip)) => ip.to_string(),
        Some(Protocol::Dns(h) | Protocol::Dns4(h) | Protocol::Dns6(h)) => h.to_string(),
        _ => addr.to_string(),
    }
}

/// An error and its sources, `: `-joined: transport errors wrap each other several times.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod unit_tests {
    use super::*;

    #[test]
    fn remote_host_ignores_ports() {
        let a: Multiaddr = "/ip4/10.1.2.3/tcp/4001".parse().unwrap();
        let b: Multiaddr = "/ip4/10.1.2.3/tcp/5999".parse().unwrap();
        assert_eq!(remote_host(&a), remote_host(&b));
    }

    #[test]
    fn handshake_warnings_are_limited_to_one_per_host_per_minute() {
        let mut w = WarnLimiter::default();
        let t0 = Instant::now();
        assert!(w.due("10.0.0.1".into(), t0));
        assert!(!w.due("10.0.0.1".into(), t0 + Duration::from_secs(59)));
        assert!(w.due("10.0.0.2".into(), t0 + Duration::from_secs(1)));
        assert!(w.due("10.0.0.1".into(), t0 + WARN_EVERY));
    }

    #[test]
    fn p2p_suffix_is_stripped_for_the_book() {
        let peer = PeerId::random();
        let a: Multiaddr = format!("/ip4/127.0.0.1/tcp/1/p2p/{peer}").parse().unwrap();
        assert_eq!(without_p2p(a).to_string(), "/ip4/127.0.0.1/tcp/1");
    }
}
