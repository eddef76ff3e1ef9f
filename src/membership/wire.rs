//! The membership datagram envelope: one version byte, a small postcard header, then the
//! payload (the rest of a foca packet, or a metadata record).
//!
//! A foca header names two full identities (sender and receiver, about 80 bytes each with a
//! base58 node id and an address). The transport already authenticates the sender's node id
//! and the receiver knows itself, so `Kind::Swim` carries only what they cannot know — the
//! sender's life and addresses, the receiver life it aims at — and the receiver rebuilds the
//! exact foca header (`compact` / `expand`). That cuts an idle ping from ~180 to ~60 bytes.
//!
//! Every SWIM packet also carries the sender's metadata stamp, so a member that missed a
//! metadata broadcast notices on the next packet and pulls the record directly. Pure encoding
//! only.

use serde::{Deserialize, Serialize};

use super::identity::{MemberId, bounded_addrs};
use super::meta::Stamp;
use crate::ids::NodeId;

/// Wire version of the envelope. A receiver drops (and counts) any other version.
pub(crate) const WIRE_VERSION: u8 = 1;

/// Bytes an envelope may add to the full foca packet it carries, at most.
pub(crate) const MAX_ENVELOPE_BYTES: usize = 64;

/// One life of a node: `MemberId` without node id and addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Life {
    pub incarnation: u64,
    pub renewal: u32,
}

impl Life {
    pub fn of(id: &MemberId) -> Life {
        Life {
            incarnation: id.incarnation,
            renewal: id.renewal,
        }
    }
}

/// What every SWIM datagram says besides the foca packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SwimExtras {
    /// The sender's current metadata stamp.
    pub meta: Stamp,
    /// Set when the sender suspects the receiver (at that foca incarnation), so the receiver
    /// can refute at once (Lifeguard's "buddy system") instead of waiting for the rumour to
    /// reach it, which it may never do if it was unreachable while the rumour spread.
    pub suspect: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A foca packet with its header compacted; the packet after the header follows.
    Swim {
        extras: SwimExtras,
        src: Life,
        #[serde(deserialize_with = "bounded_addrs")]
        src_addrs: Vec<String>,
        src_incarnation: u16,
        dst: Life,
    },
    /// A whole foca packet follows (used if compaction does not apply).
    SwimFull { extras: SwimExtras },
    /// "Send me your metadata record." No payload.
    MetaPull,
    /// "My probe of you failed; I suspect you at this foca incarnation." No payload. Sent by
    /// the prober that starts a suspicion, so the suspect can refute (or, if the prober's view
    /// is stale, show its newer incarnation) straight to the one whose timer will declare it
    /// down; a stale suspicion is not spread by anyone else and would never be refuted.
    Suspected { incarnation: u16 },
    /// The sender's metadata record follows (answer to a pull).
    MetaPush,
    /// "Send me your active members" (a joiner asks its seed). No payload.
    SnapshotPull,
    /// A chunk of the sender's active members follows: a count, then foca members.
    SnapshotPush,
    /// "I am alive", sent once per probe period to the sender's predecessor on the ring of
    /// node ids, which watches it (`watch.rs`). No payload.
    Heartbeat,
}

pub(crate) fn encode(kind: &Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_ENVELOPE_BYTES + payload.len());
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(kind, out).expect("encoding to a Vec cannot fail");
    out.extend_from_slice(payload);
    out
}

/// The datagram for foca `packet` from `me` (whose postcard encoding is `me_bytes`) to `to`.
pub(crate) fn compact(
    me: &MemberId,
    me_bytes: &[u8],
    to: &MemberId,
    packet: &[u8],
    extras: SwimExtras,
) -> Vec<u8> {
    let split = || -> Option<(u16, &[u8])> {
        let rest = packet.strip_prefix(me_bytes)?;
        let (src_incarnation, rest) = postcard::take_from_bytes::<u16>(rest).ok()?;
        let to_bytes = postcard::to_allocvec(to).ok()?;
        Some((src_incarnation, rest.strip_prefix(to_bytes.as_slice())?))
    };
    match split() {
        Some((src_incarnation, rest)) => {
            let kind = Kind::Swim {
                extras,
                src: Life::of(me),
                src_addrs: me.addrs.to_vec(),
                src_incarnation,
                dst: Life::of(to),
            };
            encode(&kind, rest)
        }
        // Foca's header layout is postcard's (fields in order); if that ever changes, the
        // packet still goes out whole.
        None => encode(&Kind::SwimFull { extras }, packet),
    }
}

/// Rebuilds the foca packet of a compacted datagram from `from` received by `me`: the header
/// names `from` at the life it sent, and `me` if it aimed at our current life (otherwise a
/// bare identity of ours that foca accepts only for an announce, as it would have).
pub(crate) fn expand(
    from: &NodeId,
    me: &MemberId,
    src: Life,
    src_addrs: Vec<String>,
    src_incarnation: u16,
    dst: Life,
    rest: &[u8],
) -> Vec<u8> {
    let src = MemberId::life(from.clone(), src.incarnation, src.renewal, src_addrs);
    let dst = if Life::of(me) == dst {
        me.clone()
    } else {
        MemberId::life(me.node.clone(), dst.incarnation, dst.renewal, Vec::new())
    };
    let head = (src, src_incarnation, dst);
    let mut out = postcard::to_allocvec(&head).expect("encoding to a Vec cannot fail");
    out.extend_from_slice(rest);
    out
}

/// Why an envelope was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    Empty,
    Version(u8),
    Undecodable,
}

pub(crate) fn decode(bytes: &[u8]) -> Result<(Kind, &[u8]), EnvelopeError> {
    let (&version, rest) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
    if version != WIRE_VERSION {
        return Err(EnvelopeError::Version(version));
    }
    postcard::take_from_bytes::<Kind>(rest).map_err(|_| EnvelopeError::Undecodable)
}

/// What a membership datagram is, for traffic accounting (the simulator's breakdown of idle
/// bytes): its kind (the foca message for SWIM packets) and how many of its bytes ride after
/// the foca message (member updates and metadata broadcasts piggybacked on it). `None` for
/// bytes that are not a datagram of this version.
#[cfg(feature = "testing")]
pub fn classify(bytes: &[u8]) -> Option<(&'static str, usize)> {
    let (kind, payload) = decode(bytes).ok()?;
    let rest = match kind {
        Kind::Swim { .. } => payload,
        Kind::SwimFull { .. } => {
            let mut rest = payload;
            let header =
                foca::Codec::<MemberId>::decode_header(&mut foca::PostcardCodec, &mut rest).ok()?;
            return Some((message_label(&header.message), rest.len()));
        }
        Kind::MetaPull => return Some(("meta-pull", 0)),
        Kind::MetaPush => return Some(("meta-push", 0)),
        Kind::Suspected { .. } => return Some(("suspected", 0)),
        Kind::SnapshotPull => return Some(("snapshot-pull", 0)),
        Kind::SnapshotPush => return Some(("snapshot-push", 0)),
        Kind::Heartbeat => return Some(("heartbeat", 0)),
    };
    let (message, after) = postcard::take_from_bytes::<foca::Message<MemberId>>(rest).ok()?;
    Some((message_label(&message), after.len()))
}

#[cfg(feature = "testing")]
fn message_label(m: &foca::Message<MemberId>) -> &'static str {
    use foca::Message::*;
    match m {
        Ping(_) => "ping",
        Ack(_) => "ack",
        PingReq { .. } => "ping-req",
        IndirectPing { .. } => "indirect-ping",
        IndirectAck { .. } => "indirect-ack",
        ForwardedAck { .. } => "forwarded-ack",
        Gossip => "gossip",
        Broadcast => "broadcast",
        Announce => "announce",
        Feed => "feed",
        TurnUndead => "turn-undead",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use foca::Codec;

    fn extras() -> SwimExtras {
        SwimExtras {
            meta: Stamp {
                incarnation: u64::MAX,
                version: u64::MAX,
            },
            suspect: Some(u16::MAX),
        }
    }

    fn id(n: &str, inc: u64) -> MemberId {
        MemberId::new(
            NodeId(n.repeat(52).into()),
            inc,
            vec!["/ip4/10.0.0.1/tcp/7946".into()],
        )
        .unwrap()
    }

    fn foca_packet(src: &MemberId, dst: &MemberId, message: foca::Message<MemberId>) -> Vec<u8> {
        let header = foca::Header {
            src: src.clone(),
            src_incarnation: 7,
            dst: dst.clone(),
            message,
        };
        let mut packet = Vec::new();
        foca::PostcardCodec
            .encode_header(&header, &mut packet)
            .unwrap();
        packet.extend_from_slice(&[0, 0]);
        packet
    }

    #[test]
    fn round_trip_keeps_kind_and_payload() {
        let kind = Kind::SwimFull { extras: extras() };
        let bytes = encode(&kind, b"payload");
        assert!(bytes.len() <= MAX_ENVELOPE_BYTES + 7);
        assert_eq!(decode(&bytes), Ok((kind, &b"payload"[..])));
    }

    #[test]
    fn a_compacted_foca_packet_expands_to_the_same_bytes() {
        let (a, b) = (id("a", 3), id("b", 5));
        let message = foca::Message::PingReq {
            target: id("c", 1),
            probe_number: 9,
        };
        let packet = foca_packet(&a, &b, message);
        let a_bytes = postcard::to_allocvec(&a).unwrap();
        let datagram = compact(&a, &a_bytes, &b, &packet, extras());
        assert!(
            datagram.len() + 100 < packet.len(),
            "{} vs {}",
            datagram.len(),
            packet.len()
        );
        let (kind, rest) = decode(&datagram).unwrap();
        let Kind::Swim {
            src,
            src_addrs,
            src_incarnation,
            dst,
            ..
        } = kind
        else {
            panic!("{kind:?}")
        };
        assert_eq!(
            expand(&a.node, &b, src, src_addrs, src_incarnation, dst, rest),
            packet
        );
    }

    #[test]
    fn a_packet_aimed_at_an_older_life_is_not_rebuilt_for_the_current_one() {
        let (a, b_old, b_new) = (id("a", 1), id("b", 1), id("b", 2));
        let packet = foca_packet(&a, &b_old, foca::Message::Ping(1));
        let datagram = compact(
            &a,
            &postcard::to_allocvec(&a).unwrap(),
            &b_old,
            &packet,
            extras(),
        );
        let Ok((
            Kind::Swim {
                src,
                src_addrs,
                src_incarnation,
                dst,
                ..
            },
            rest,
        )) = decode(&datagram)
        else {
            panic!("not compacted")
        };
        let rebuilt = expand(&a.node, &b_new, src, src_addrs, src_incarnation, dst, rest);
        let h: foca::Header<MemberId> = foca::PostcardCodec.decode_header(&rebuilt[..]).unwrap();
        assert_ne!(h.dst, b_new);
        assert_eq!(h.dst.node, b_new.node);
    }

    #[test]
    fn a_packet_not_from_us_goes_out_whole() {
        let (a, b) = (id("a", 1), id("b", 1));
        let a_bytes = postcard::to_allocvec(&a).unwrap();
        let datagram = compact(&a, &a_bytes, &b, b"not a foca packet", extras());
        assert!(matches!(decode(&datagram), Ok((Kind::SwimFull { .. }, _))));
    }

    #[test]
    fn a_heartbeat_is_two_bytes_and_classified() {
        let bytes = encode(&Kind::Heartbeat, &[]);
        assert_eq!(bytes.len(), 2);
        assert_eq!(decode(&bytes), Ok((Kind::Heartbeat, &[][..])));
        assert_eq!(classify(&bytes), Some(("heartbeat", 0)));
    }

    #[test]
    fn other_versions_and_junk_are_refused() {
        assert_eq!(decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(decode(&[2, 0]), Err(EnvelopeError::Version(2)));
        assert_eq!(decode(&[1, 9]), Err(EnvelopeError::Undecodable));
    }
}
