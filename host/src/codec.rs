//! The one place where Understudy turns values into bytes and back.
//!
//! Every record stored in LMDB and every frame on the wire is CBOR
//! (serde_cbor) behind a one-byte envelope version. A reader refuses an
//! envelope newer than it understands with [`CodecError::NewerVersion`]
//! instead of guessing, so a downgrade or a foreign data directory is a
//! clear error, never a silent misread.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Envelope version written by this build.
pub const ENVELOPE_VERSION: u8 = 1;

/// Why bytes could not be turned into a value.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Empty input: not even an envelope byte.
    #[error("empty record: no envelope version byte")]
    Empty,
    /// Written by a newer Understudy.
    #[error(
        "record has envelope version {found}, this build reads up to {supported}; upgrade Understudy"
    )]
    NewerVersion {
        /// Version found in the record.
        found: u8,
        /// Newest version this build reads.
        supported: u8,
    },
    /// Version 0 is never written: the bytes are not ours.
    #[error("record has invalid envelope version 0")]
    InvalidVersion,
    /// The CBOR body does not decode as the expected type.
    #[error("malformed {what}: {source}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// The decoder's complaint.
        source: serde_cbor::Error,
    },
}

/// Encode `value` with the envelope version in front.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(ENVELOPE_VERSION);
    // Writing into a Vec cannot fail, and our types have only string keys.
    serde_cbor::to_writer(&mut out, value).expect("CBOR encoding into a Vec cannot fail");
    out
}

/// Decode a value written by [`encode`]; `what` names it in errors.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        0 => Err(CodecError::InvalidVersion),
        ENVELOPE_VERSION => {
            serde_cbor::from_slice(body).map_err(|source| CodecError::Malformed { what, source })
        }
        found => Err(CodecError::NewerVersion {
            found,
            supported: ENVELOPE_VERSION,
        }),
    }
}

/// Plain CBOR without an envelope: the payload format of commands, queries
/// and responses that machines see (the guest SDK decodes these).
pub fn to_cbor<T: Serialize>(value: &T) -> Vec<u8> {
    serde_cbor::to_vec(value).expect("CBOR encoding into a Vec cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_keeps_the_value() {
        let v = (
            7u64,
            "x".to_string(),
            serde_bytes::ByteBuf::from(vec![1, 2, 3]),
        );
        let bytes = encode(&v);
        assert_eq!(bytes[0], ENVELOPE_VERSION);
        let back: (u64, String, serde_bytes::ByteBuf) = decode("test", &bytes).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn newer_envelope_is_refused_by_name() {
        let mut bytes = encode(&1u64);
        bytes[0] = ENVELOPE_VERSION + 1;
        let err = decode::<u64>("test", &bytes).unwrap_err();
        assert!(matches!(err, CodecError::NewerVersion { .. }), "{err}");
        assert!(err.to_string().contains("upgrade"));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        assert!(matches!(decode::<u64>("test", &[]), Err(CodecError::Empty)));
        assert!(matches!(
            decode::<u64>("test", &[0, 1]),
            Err(CodecError::InvalidVersion)
        ));
        assert!(matches!(
            decode::<(u64, String)>("test", &[1, 0xff, 0x00]),
            Err(CodecError::Malformed { .. })
        ));
    }
}
