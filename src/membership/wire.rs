//! The membership datagram envelope: one version byte, a small postcard header, then the
//! payload (a foca packet or a metadata record).
//!
//! Every SWIM packet carries the sender's metadata stamp, so a member that missed a metadata
//! broadcast notices on the next packet and pulls the record directly. Pure encoding only.

use serde::{Deserialize, Serialize};

use super::meta::Stamp;

/// Wire version of the envelope. A receiver drops (and counts) any other version.
pub(crate) const WIRE_VERSION: u8 = 1;

/// Bytes the envelope adds in front of a foca packet, at most.
pub(crate) const MAX_ENVELOPE_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Kind {
    /// A foca packet follows. `meta` is the sender's current metadata stamp; `suspect` is set
    /// when the sender suspects the receiver (at that foca incarnation) so the receiver can
    /// refute at once (Lifeguard's "buddy system") instead of waiting for the rumour to reach
    /// it, which it may never do if it was unreachable while the rumour spread.
    Swim { meta: Stamp, suspect: Option<u16> },
    /// "Send me your metadata record." No payload.
    MetaPull,
    /// "My probe of you failed; I suspect you at this foca incarnation." No payload. Sent by
    /// the prober that starts a suspicion, so the suspect can refute (or, if the prober's view
    /// is stale, show its newer incarnation) straight to the one whose timer will declare it
    /// down; a stale suspicion is not spread by anyone else and would never be refuted.
    Suspected { incarnation: u16 },
    /// The sender's metadata record follows (answer to a pull).
    MetaPush,
}

pub(crate) fn encode(kind: Kind, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_ENVELOPE_BYTES + payload.len());
    out.push(WIRE_VERSION);
    let mut out = postcard::to_extend(&kind, out).expect("encoding to a Vec cannot fail");
    out.extend_from_slice(payload);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_kind_and_payload() {
        let kind = Kind::Swim {
            meta: Stamp {
                incarnation: u64::MAX,
                version: u64::MAX,
            },
            suspect: Some(u16::MAX),
        };
        let bytes = encode(kind, b"payload");
        assert!(bytes.len() <= MAX_ENVELOPE_BYTES + 7);
        assert_eq!(decode(&bytes), Ok((kind, &b"payload"[..])));
    }

    #[test]
    fn other_versions_and_junk_are_refused() {
        assert_eq!(decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(decode(&[2, 0]), Err(EnvelopeError::Version(2)));
        assert_eq!(decode(&[1, 9]), Err(EnvelopeError::Undecodable));
    }
}
