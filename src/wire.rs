//! The one wire and disk format: a version byte followed by postcard (serde). Everything that
//! crosses the network or reaches the disk goes through `encode` and `decode`, so the format can
//! change in one place.
//!
//! Decoding is bounded: the size limit is checked before anything is decoded, postcard's
//! sequence allocation is capped by serde's cautious size hints and by the input length, trailing
//! bytes are rejected, and every failure is a typed `WireError`, never a panic.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The current format version. Bump it, and add a migration in `decode`, when a wire or disk
/// type changes incompatibly.
pub const VERSION: u8 = 1;

/// Default limit for one message (a delta, a batch of bids).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {len} bytes exceeds the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("empty message")]
    Empty,
    #[error("format version {found} is not supported (this build reads version {VERSION})")]
    Version { found: u8 },
    #[error("undecodable message: {reason}")]
    Decode { reason: String },
    #[error("{count} trailing bytes after the message")]
    Trailing { count: usize },
}

/// Encodes a value: `[VERSION] ++ postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Encoding our own in-memory types into a Vec cannot fail (no maps with non-string keys
    // issue in postcard, no IO).
    let body = postcard::to_stdvec(value).expect("postcard encoding of an in-memory value");
    out.extend_from_slice(&body);
    out
}

/// Decodes a value encoded by `encode`, refusing anything over `limit` bytes before decoding.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize) -> Result<T, WireError> {
    if bytes.len() > limit {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    let (&version, body) = bytes.split_first().ok_or(WireError::Empty)?;
    if version != VERSION {
        return Err(WireError::Version { found: version });
    }
    let (value, rest) = postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Decode {
        reason: e.to_string(),
    })?;
    if !rest.is_empty() {
        return Err(WireError::Trailing { count: rest.len() });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Message;
    use crate::placement::Bid;
    use crate::state::ClusterState;
    use proptest::prelude::*;

    #[test]
    fn a_message_round_trips() {
        let m = Message::Bids(vec![Bid {
            slot: crate::ids::SlotId::new(&crate::spec::ServiceName("web".into()), 3),
            epoch: 2,
            score: 99,
            node: crate::ids::NodeId("n1".into()),
        }]);
        let bytes = encode(&m);
        assert_eq!(decode::<Message>(&bytes, MAX_MESSAGE_BYTES).unwrap(), m);
        let d = Message::Delta(ClusterState::default());
        assert_eq!(
            decode::<Message>(&encode(&d), MAX_MESSAGE_BYTES).unwrap(),
            d
        );
    }

    #[test]
    fn oversized_wrong_version_truncated_and_trailing_input_is_refused() {
        let bytes = encode(&Message::Bids(vec![]));
        assert!(matches!(
            decode::<Message>(&bytes, 1),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(decode::<Message>(&[], 100), Err(WireError::Empty));
        let mut v2 = bytes.clone();
        v2[0] = 9;
        assert_eq!(
            decode::<Message>(&v2, 100),
            Err(WireError::Version { found: 9 })
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode::<Message>(&long, 100),
            Err(WireError::Trailing { count: 1 })
        );
        let delta = encode(&Message::Delta(ClusterState::default()));
        assert!(matches!(
            decode::<Message>(&delta[..delta.len() - 1], 100),
            Err(WireError::Decode { .. })
        ));
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_it() {
        // Version, variant 1 (Bids), then a varint length of about 2^62 elements.
        let bytes = [
            VERSION, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x3f,
        ];
        assert!(decode::<Message>(&bytes, MAX_MESSAGE_BYTES).is_err());
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<Message>(&bytes, MAX_MESSAGE_BYTES);
            let mut v = vec![VERSION];
            v.extend_from_slice(&bytes);
            let _ = decode::<Message>(&v, MAX_MESSAGE_BYTES);
        }
    }
}
