//! The only module that knows how values are encoded: bincode 2.0.1 through serde.
//!
//! bincode is unmaintained (RUSTSEC-2025-0141) and pinned to `=2.0.1`; keeping it behind this one
//! module means a replacement touches one file. Two traps are handled here for every caller:
//! decoding always runs with a size limit (without one, a damaged length prefix makes bincode
//! allocate up to 2^63 bytes and abort the process), and trailing bytes are an error (bincode
//! accepts them silently).
//!
//! ## Checksummed records (schema v3)
//!
//! bincode has no checksum, and a single flipped bit often still decodes — to a different value
//! (a manifest digest `7c3c…` instead of `6c3c…`: a false hit). Every record of the `versions`
//! and `layers` tables is therefore stored as `payload ‖ checksum`, where `payload` is the
//! bincode encoding and `checksum` the first [`CHECKSUM_LEN`] bytes of blake3 (derive-key mode,
//! context [`CHECKSUM_CONTEXT`]) of the payload. [`decode_checked`] verifies the checksum
//! before decoding and returns a typed [`DecodeError`] on any damage; the cache turns that into
//! a `DamagedEntry` miss for that layer, never a hit. Rows are not checksummed here: a row's
//! damage is caught by the Merkle root and row count of the version that describes them.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::path::hex;

/// Largest encoded entry record accepted when decoding (layer definitions can be large).
pub const ENTRY_LIMIT: usize = 16 << 20;
/// Largest encoded per-path row accepted when decoding (xattr values are at most 64 KiB each).
pub const ROW_LIMIT: usize = 4 << 20;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a value. Encoding our own record types cannot fail; an error here is a bug, reported
/// as a string rather than a panic.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| e.to_string())
}

/// Decodes a value of at most `LIMIT` bytes, refusing trailing bytes.
pub fn decode<T: DeserializeOwned, const LIMIT: usize>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > LIMIT {
        return Err(format!(
            "record of {} bytes exceeds the {LIMIT}-byte limit",
            bytes.len()
        ));
    }
    let cfg = config().with_limit::<LIMIT>();
    let (value, used) =
        bincode::serde::decode_from_slice::<T, _>(bytes, cfg).map_err(|e| e.to_string())?;
    if used != bytes.len() {
        return Err(format!(
            "{} trailing bytes after the record",
            bytes.len() - used
        ));
    }
    Ok(value)
}

/// Bytes of checksum appended to every checksummed record (128 bits: accidental damage never
/// matches; this is not a defence against someone who can write the file).
pub const CHECKSUM_LEN: usize = 16;

/// The blake3 derive-key context of record checksums.
pub const CHECKSUM_CONTEXT: &str = "layercache 2026-12 record checksum v1";

/// Why a checksummed record could not be read. Every variant means the stored bytes are damaged
/// (or were not written by layercache): only that record is affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The record is larger than the limit for its type.
    #[error("record of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// Stored length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// The record is too short to hold its checksum.
    #[error("record of {len} bytes is too short to hold its {CHECKSUM_LEN}-byte checksum")]
    Truncated {
        /// Stored length.
        len: usize,
    },
    /// The checksum does not match the payload: some stored byte changed.
    #[error("checksum mismatch (stored {stored}, computed {computed}): the record is damaged")]
    ChecksumMismatch {
        /// The stored checksum, hex.
        stored: String,
        /// The checksum of the stored payload, hex.
        computed: String,
    },
    /// The checksum matches but the payload does not decode as the expected type (written by a
    /// broken build, or a type mismatch).
    #[error("{0}")]
    Malformed(String),
}

fn checksum(payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new_derive_key(CHECKSUM_CONTEXT);
    h.update(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    h.finalize_xof().fill(&mut out);
    out
}

/// Encodes a value followed by its checksum (see the module doc).
pub fn encode_checked<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    let mut bytes = encode(value)?;
    let sum = checksum(&bytes);
    bytes.extend_from_slice(&sum);
    Ok(bytes)
}

/// Verifies the checksum of a record written by [`encode_checked`] and decodes it (payload of
/// at most `LIMIT` bytes, no trailing bytes).
pub fn decode_checked<T: DeserializeOwned, const LIMIT: usize>(
    bytes: &[u8],
) -> Result<T, DecodeError> {
    if bytes.len() > LIMIT.saturating_add(CHECKSUM_LEN) {
        return Err(DecodeError::TooLarge {
            len: bytes.len(),
            limit: LIMIT,
        });
    }
    let Some(split) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(DecodeError::Truncated { len: bytes.len() });
    };
    let (payload, stored) = bytes.split_at(split);
    let computed = checksum(payload);
    if stored != computed {
        return Err(DecodeError::ChecksumMismatch {
            stored: hex(stored),
            computed: hex(&computed),
        });
    }
    decode::<T, LIMIT>(payload).map_err(DecodeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_single_bit_flip_of_a_checked_record_is_refused() {
        let value = (String::from("layer"), [7u8; 32], vec![1u64, 2, 3]);
        let bytes = encode_checked(&value).unwrap();
        let back: (String, [u8; 32], Vec<u64>) = decode_checked::<_, ENTRY_LIMIT>(&bytes).unwrap();
        assert_eq!(back, value);
        for i in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[i / 8] ^= 1 << (i % 8);
            let r = decode_checked::<(String, [u8; 32], Vec<u64>), ENTRY_LIMIT>(&damaged);
            assert!(
                matches!(r, Err(DecodeError::ChecksumMismatch { .. })),
                "bit {i}: {r:?}"
            );
        }
        assert!(matches!(
            decode_checked::<u8, ENTRY_LIMIT>(&bytes[..3]),
            Err(DecodeError::Truncated { len: 3 })
        ));
        assert!(matches!(
            decode_checked::<u8, 4>(&bytes),
            Err(DecodeError::TooLarge { .. })
        ));
        // A valid checksum over a payload of another type is malformed, not a panic.
        let other = encode_checked(&vec![0u8; 3]).unwrap();
        assert!(matches!(
            decode_checked::<(String, [u8; 32], Vec<u64>), ENTRY_LIMIT>(&other),
            Err(DecodeError::Malformed(_))
        ));
    }

    #[test]
    fn trailing_bytes_and_huge_lengths_are_refused() {
        let mut bytes = encode(&vec![1u8, 2, 3]).unwrap();
        assert_eq!(decode::<Vec<u8>, ROW_LIMIT>(&bytes).unwrap(), vec![1, 2, 3]);
        bytes.push(0);
        assert!(decode::<Vec<u8>, ROW_LIMIT>(&bytes).is_err());
        // A length prefix claiming 2^60 elements must not allocate.
        let hostile = [0xfdu8, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(decode::<Vec<u64>, ROW_LIMIT>(&hostile).is_err());
    }
}
