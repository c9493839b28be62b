//! Framing for every TCP connection: a 4-byte big-endian length, then an
//! envelope-versioned CBOR body (see [`crate::codec`]). Frames over the
//! codec's limit ([`FRAME_BYTES_MAX`] unless set lower) are refused before
//! their body is read.
//!
//! [`FrameCodec`] never allocates for bytes that have not arrived: a frame
//! that announces 32 MiB and sends them slowly costs the node only what it
//! sent so far (tokio-util's `LengthDelimitedCodec` reserves the announced
//! length at once, which let a few slow connections pin gigabytes).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::{Decoder, Encoder};

/// Largest frame accepted (a module upload is the largest client message;
/// an append with one entry of [`crate::limits::ENTRY_BYTES_MAX`] the
/// largest peer message).
pub const FRAME_BYTES_MAX: usize = 32 << 20;

/// Bytes of the length prefix.
const LENGTH_BYTES: usize = 4;

/// How long resolving a member's address (a host name) may take (unit: ms).
pub const RESOLVE_TIMEOUT_MS: u64 = 2_000;

/// The socket address of `address` (`HOST:PORT`: an IP address, or a host
/// name resolved to its first address — a member may announce a name, as
/// a Kubernetes pod does), within [`RESOLVE_TIMEOUT_MS`]; `None` if it
/// does not resolve.
pub async fn resolve(address: &str) -> Option<std::net::SocketAddr> {
    if let Ok(a) = address.parse() {
        return Some(a);
    }
    let within = std::time::Duration::from_millis(RESOLVE_TIMEOUT_MS);
    match tokio::time::timeout(within, tokio::net::lookup_host(address)).await {
        Ok(Ok(mut found)) => found.next(),
        _ => None,
    }
}

/// Length-prefixed frames with a limit, allocating only for bytes that
/// arrived.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max_frame_bytes: usize,
}

impl FrameCodec {
    /// A codec that refuses frames over `max_frame_bytes`.
    pub fn with_max(max_frame_bytes: usize) -> Self {
        FrameCodec { max_frame_bytes }
    }

    /// Change the limit (for example after a peer's small hello).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: usize) {
        self.max_frame_bytes = max_frame_bytes;
    }
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        if src.len() < LENGTH_BYTES {
            return Ok(None);
        }
        let len = u32::from_be_bytes(src[..LENGTH_BYTES].try_into().expect("4 bytes")) as usize;
        if len > self.max_frame_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "frame of {len} bytes is over the limit of {} bytes (FRAME_BYTES_MAX)",
                    self.max_frame_bytes
                ),
            ));
        }
        if src.len() < LENGTH_BYTES + len {
            // Wait for more; the read buffer grows with what arrives.
            return Ok(None);
        }
        src.advance(LENGTH_BYTES);
        Ok(Some(src.split_to(len)))
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = std::io::Error;

    fn encode(&mut self, frame: Bytes, dst: &mut BytesMut) -> Result<(), std::io::Error> {
        if frame.len() > self.max_frame_bytes {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "frame of {} bytes is over the limit of {} bytes (FRAME_BYTES_MAX)",
                    frame.len(),
                    self.max_frame_bytes
                ),
            ));
        }
        dst.reserve(LENGTH_BYTES + frame.len());
        dst.put_u32(frame.len() as u32);
        dst.extend_from_slice(&frame);
        Ok(())
    }
}

/// The frame codec with [`FRAME_BYTES_MAX`].
pub fn codec() -> FrameCodec {
    FrameCodec::with_max(FRAME_BYTES_MAX)
}

/// Encode a frame body.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(crate::codec::encode(value))
}

/// Decode a frame body.
pub fn decode<T: DeserializeOwned>(frame: &BytesMut) -> Result<T, crate::codec::CodecError> {
    crate::codec::decode("frame", frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_the_limit_holds_at_and_one_past() {
        let mut c = FrameCodec::with_max(8);
        let mut buf = BytesMut::new();
        c.encode(Bytes::from_static(b"12345678"), &mut buf).unwrap();
        assert!(
            c.encode(Bytes::from_static(b"123456789"), &mut buf)
                .is_err()
        );
        assert_eq!(&c.decode(&mut buf).unwrap().unwrap()[..], b"12345678");
        assert!(c.decode(&mut buf).unwrap().is_none());
        buf.put_u32(9);
        assert!(c.decode(&mut buf).is_err(), "one past the limit");
    }

    #[test]
    fn an_announced_length_reserves_nothing_before_the_bytes_arrive() {
        let mut c = codec();
        let mut buf = BytesMut::with_capacity(16);
        buf.put_u32(FRAME_BYTES_MAX as u32);
        buf.put_slice(b"abc");
        assert!(c.decode(&mut buf).unwrap().is_none());
        assert!(buf.capacity() < 1024, "capacity {}", buf.capacity());
    }
}
