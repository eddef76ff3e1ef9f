//! The transport stack and the behaviours: TCP → pnet with a key check → Noise → Yamux,
//! socket-level byte counting, and the composed `NetworkBehaviour` (block list, swim and sync
//! request-response, gossipsub, identify, ping).
//!
//! Construction only; the loop that drives the swarm is `swarm.rs`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::core::Transport;
use libp2p::core::transport::upgrade::Version;
use libp2p::pnet::{PnetConfig, PnetOutput, PreSharedKey};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, allow_block_list, gossipsub, identify, noise, ping, tcp,
    yamux,
};

use super::codec::FrameCodec;
use super::{Counters, MAX_PENDING_DATAGRAMS, NetConfig, NetError};

pub(super) const SWIM_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/swim/1");
pub(super) const SYNC_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/sync/1");
const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";

/// The text every handshake failure carries (in logs, in `HandshakeFailed`).
pub(crate) const MISMATCH: &str = "cluster key mismatch or not a shoal node";

/// Sent (encrypted) by both sides right after the pnet nonces: a peer with another key reads
/// garbage and fails at once instead of stalling in multistream-select on garbled bytes.
const KEY_CHECK: &[u8; 8] = b"shoal/1\n";
/// The pnet exchange and key check must finish within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection setup (TCP, handshake, Noise, Yamux) must finish within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection no protocol uses is closed after this (SWIM reopens one when it probes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(20);
pub(super) const SWIM_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const SYNC_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Gossipsub's RPC framing around a message (signature, key, topic, sequence number).
const GOSSIP_OVERHEAD_BYTES: usize = 1024;

#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) swim: request_response::Behaviour<FrameCodec>,
    pub(super) sync: request_response::Behaviour<FrameCodec>,
    pub(super) gossip: gossipsub::Behaviour,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
}

/// Why a connection failed before Noise: its `Display` starts with [`MISMATCH`], which is how
/// the swarm loop recognises it through the transport's error wrappers.
#[derive(Debug, thiserror::Error)]
#[error("{MISMATCH} ({stage}: {detail})")]
struct HandshakeRefused {
    stage: &'static str,
    detail: String,
}

fn refused(stage: &'static str, detail: impl ToString) -> HandshakeRefused {
    HandshakeRefused {
        stage,
        detail: detail.to_string(),
    }
}

/// A socket that counts the bytes it moves (TCP payload: everything above TCP, all
/// protocols, encryption and framing included).
struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: futures::AsyncRead + Unpin> futures::AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters.bytes_in.fetch_add(*n as u64, Relaxed);
        }
        polled
    }
}

impl<S: futures::AsyncWrite + Unpin> futures::AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counters.bytes_out.fetch_add(*n as u64, Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Counting, pnet, then the key check, within `HANDSHAKE_TIMEOUT`.
async fn private_handshake<S>(
    psk: PreSharedKey,
    socket: S,
    counters: Arc<Counters>,
) -> Result<PnetOutput<Counted<S>>, HandshakeRefused>
where
    S: futures::AsyncRead + futures::AsyncWrite + Send + Unpin + 'static,
{
    let socket = Counted {
        inner: socket,
        counters,
    };
    let exchange = async move {
        let mut s = PnetConfig::new(psk)
            .handshake(socket)
            .await
            .map_err(|e| refused("pnet", e))?;
        s.write_all(KEY_CHECK)
            .await
            .map_err(|e| refused("key check", e))?;
        s.flush().await.map_err(|e| refused("key check", e))?;
        let mut got = [0u8; KEY_CHECK.len()];
        s.read_exact(&mut got)
            .await
            .map_err(|e| refused("key check", e))?;
        if &got != KEY_CHECK {
            return Err(refused(
                "key check",
                "the peer's bytes do not decrypt with our key",
            ));
        }
        Ok(s)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
        .await
        .map_err(|_| refused("key check", "no answer in time"))?
}

type SetupError = Box<dyn std::error::Error + Send + Sync>;

pub(super) fn build_swarm(
    cfg: &NetConfig,
    counters: &Arc<Counters>,
) -> Result<Swarm<Behaviour>, NetError> {
    let setup = |e: &dyn std::fmt::Display| NetError::Setup(e.to_string());
    let psk = cfg.key.psk();
    let wire_counters = counters.clone();
    let swim_codec = FrameCodec {
        max_request: cfg.max_swim_bytes,
        max_response: 0, // the answer to a datagram is empty
        counters: counters.clone(),
    };
    let sync_codec = FrameCodec {
        max_request: cfg.max_sync_bytes,
        max_response: cfg.max_sync_bytes,
        counters: counters.clone(),
    };
    let gossip_config = gossipsub::ConfigBuilder::default()
        .max_transmit_size(cfg.gossip_max_bytes + GOSSIP_OVERHEAD_BYTES)
        .validation_mode(gossipsub::ValidationMode::Strict)
        .build()
        .map_err(|e| setup(&e))?;
    let swarm = SwarmBuilder::with_existing_identity(cfg.identity.clone())
        .with_tokio()
        .with_other_transport(|key| {
            let transport = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                .and_then(move |socket, _| private_handshake(psk, socket, wire_counters.clone()))
                .upgrade(Version::V1Lazy)
                .authenticate(noise::Config::new(key)?)
                .multiplex(yamux::Config::default());
            Ok::<_, SetupError>(transport)
        })
        .map_err(|e| setup(&e))?
        .with_dns()
        .map_err(|e| setup(&e))?
        .with_behaviour(|key| {
            let rr = |timeout| {
                request_response::Config::default()
                    .with_request_timeout(timeout)
                    .with_max_concurrent_streams(MAX_PENDING_DATAGRAMS * 2)
            };
            Ok::<_, SetupError>(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                swim: request_response::Behaviour::with_codec(
                    swim_codec,
                    [(SWIM_PROTOCOL, ProtocolSupport::Full)],
                    rr(SWIM_REQUEST_TIMEOUT),
                ),
                sync: request_response::Behaviour::with_codec(
                    sync_codec,
                    [(SYNC_PROTOCOL, ProtocolSupport::Full)],
                    rr(SYNC_REQUEST_TIMEOUT),
                ),
                gossip: gossipsub::Behaviour::new(
                    gossipsub::MessageAuthenticity::Signed(key.clone()),
                    gossip_config,
                )?,
                identify: identify::Behaviour::new(identify::Config::new(
                    IDENTIFY_PROTOCOL.to_string(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(ping::Config::new()),
            })
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .with_connection_timeout(CONNECTION_TIMEOUT)
        .build();
    Ok(swarm)
}
