//! The length-prefixed frame codec of `/shoal/swim/1` and `/shoal/sync/1`: a 4-byte big-endian
//! length, then that many bytes. The length is checked against the protocol's limit before
//! anything is allocated; oversized or truncated frames are refused and counted, never a panic.
//!
//! Bytes only: what the bytes mean belongs to `membership/` and the state sync.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

use super::Counters;

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;

/// Why a frame was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("frame truncated")]
    Truncated,
}

/// The frame holding `payload`.
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_BYTES + payload.len());
    out.extend_from_slice(&frame_len(payload.len()).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Splits one frame off `bytes`: `(payload, rest)`. The pure form of what the async reader
/// does, used by tests and by anything decoding frames from a buffer.
pub fn decode_frame(bytes: &[u8], max: usize) -> Result<(&[u8], &[u8]), FrameError> {
    let (prefix, rest) = bytes
        .split_first_chunk::<PREFIX_BYTES>()
        .ok_or(FrameError::Truncated)?;
    let len = checked_len(*prefix, max)?;
    if rest.len() < len {
        return Err(FrameError::Truncated);
    }
    Ok(rest.split_at(len))
}

fn checked_len(prefix: [u8; PREFIX_BYTES], max: usize) -> Result<usize, FrameError> {
    let len = u32::from_be_bytes(prefix) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

fn frame_len(len: usize) -> u32 {
    // Callers never hand over more than the protocol limit (at most a few MiB).
    u32::try_from(len).expect("frame payload below 4 GiB")
}

/// Reads one frame of at most `max` payload bytes, allocating only after the length passed.
pub async fn read_frame<T: AsyncRead + Unpin>(
    io: &mut T,
    max: usize,
    counters: &Counters,
) -> io::Result<Vec<u8>> {
    let refused = |e: FrameError| {
        counters.frames_rejected.fetch_add(1, Relaxed);
        tracing::debug!(error = %e, "frame refused");
        io::Error::new(io::ErrorKind::InvalidData, e)
    };
    let mut prefix = [0u8; PREFIX_BYTES];
    match io.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(refused(FrameError::Truncated));
        }
        Err(e) => return Err(e),
    }
    let len = checked_len(prefix, max).map_err(refused)?;
    let mut payload = vec![0u8; len];
    match io.read_exact(&mut payload).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(refused(FrameError::Truncated));
        }
        Err(e) => return Err(e),
    }
    Ok(payload)
}

/// Writes one frame; refuses (and counts) a payload above `max` instead of sending it.
pub async fn write_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    payload: &[u8],
    max: usize,
    counters: &Counters,
) -> io::Result<()> {
    if payload.len() > max {
        counters.frames_rejected.fetch_add(1, Relaxed);
        let e = FrameError::TooLarge {
            len: payload.len(),
            max,
        };
        return Err(io::Error::new(io::ErrorKind::InvalidInput, e));
    }
    // One write: each write becomes a Yamux frame and a Noise frame of its own.
    io.write_all(&encode_frame(payload)).await?;
    io.flush().await?; // the request-response handler closes the stream
    Ok(())
}

/// A request-response codec: bytes in, bytes out, each side with its own limit.
#[derive(Clone)]
pub struct FrameCodec {
    pub max_request: usize,
    pub max_response: usize,
    pub counters: Arc<Counters>,
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_request, &self.counters).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max_response, &self.counters).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, self.max_request, &self.counters).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, self.max_response, &self.counters).await
    }
}

#[cfg(test)]
mod tests {
    use futures::executor::block_on;
    use futures::io::Cursor;
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_frame_round_trips() {
        let frame = encode_frame(b"hello");
        assert_eq!(decode_frame(&frame, 5), Ok((&b"hello"[..], &[][..])));
        let counters = Counters::default();
        let got = block_on(read_frame(&mut Cursor::new(frame), 5, &counters)).unwrap();
        assert_eq!(got, b"hello");
        assert_eq!(counters.frames_rejected.load(Relaxed), 0);
    }

    #[test]
    fn an_oversized_length_is_refused_before_allocating() {
        // Asks for 4 GiB - 1: refused from the prefix alone.
        let frame = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        assert_eq!(
            decode_frame(&frame, 1024),
            Err(FrameError::TooLarge {
                len: u32::MAX as usize,
                max: 1024
            })
        );
        let counters = Counters::default();
        let got = block_on(read_frame(&mut Cursor::new(frame), 1024, &counters));
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(counters.frames_rejected.load(Relaxed), 1);
    }

    #[test]
    fn a_truncated_frame_is_refused_and_counted() {
        let frame = encode_frame(b"hello");
        let counters = Counters::default();
        for cut in [0, 2, 4, 6] {
            assert_eq!(decode_frame(&frame[..cut], 64), Err(FrameError::Truncated));
            let got = block_on(read_frame(&mut Cursor::new(&frame[..cut]), 64, &counters));
            assert!(got.is_err());
        }
        assert_eq!(counters.frames_rejected.load(Relaxed), 4);
    }

    #[test]
    fn writing_an_oversized_payload_is_refused() {
        let counters = Counters::default();
        let mut out = Cursor::new(Vec::new());
        assert!(block_on(write_frame(&mut out, &[0; 10], 9, &counters)).is_err());
        assert!(out.get_ref().is_empty());
        assert_eq!(counters.frames_rejected.load(Relaxed), 1);
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), max in 0usize..600) {
            let counters = Counters::default();
            let pure = decode_frame(&bytes, max);
            let read = block_on(read_frame(&mut Cursor::new(&bytes), max, &counters));
            // The reader and the pure decoder agree.
            match pure {
                Ok((payload, _)) => prop_assert_eq!(read.unwrap(), payload.to_vec()),
                Err(_) => prop_assert!(read.is_err()),
            }
        }

        #[test]
        fn truncated_frames_never_decode(payload in proptest::collection::vec(any::<u8>(), 0..300), cut in any::<prop::sample::Index>()) {
            let frame = encode_frame(&payload);
            let cut = cut.index(frame.len());
            prop_assert_eq!(decode_frame(&frame[..cut], 1024), Err(FrameError::Truncated));
        }
    }
}
