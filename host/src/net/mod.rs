//! Framing for every TCP connection: a 4-byte big-endian length, then an
//! envelope-versioned CBOR body (see [`crate::codec`]). Frames over
//! [`FRAME_BYTES_MAX`] are refused before their body is read.

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::LengthDelimitedCodec;

/// Largest frame accepted (a module upload is the largest message).
pub const FRAME_BYTES_MAX: usize = 32 << 20;

/// The length-delimited codec with our limit.
pub fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .max_frame_length(FRAME_BYTES_MAX)
        .new_codec()
}

/// Encode a frame body.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(crate::codec::encode(value))
}

/// Decode a frame body.
pub fn decode<T: DeserializeOwned>(frame: &BytesMut) -> Result<T, crate::codec::CodecError> {
    crate::codec::decode("frame", frame)
}
