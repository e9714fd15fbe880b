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
use crate::schema::{EntryKind, Row, RowStat};

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

/// Decodes a per-path row exactly as [`decode`]`::<Row, ROW_LIMIT>` does, faster: the rows
/// table is read once per lookup, and the serde path (a visitor call per field and one per
/// byte of the 32-byte digest) was ~7% of a no-change lookup's CPU at 10^5 rows.
///
/// It reads only the canonical encoding [`encode`] writes (bincode's standard configuration:
/// minimal varints, zigzag for signed integers, raw `u8`s, a `u8` tag for `Option`, a varint
/// length before each `Vec`, the digest as 32 raw bytes, an enum as the varint index of its
/// variant) and hands every other input — a longer varint than needed, a length past the end,
/// an unknown tag, trailing bytes, a record over the limit — to the serde path, which decides
/// (the value or the error). So for every input both return the same: the fuzz test
/// `tests/testsuite/reliability_fuzz.rs`, `the_row_decoder_agrees_with_serde`, checks it on
/// arbitrary rows and on damaged encodings of them.
pub fn decode_row(bytes: &[u8]) -> Result<Row, String> {
    if bytes.len() <= ROW_LIMIT
        && let Some(row) = read_canonical_row(bytes)
    {
        return Ok(row);
    }
    decode::<Row, ROW_LIMIT>(bytes)
}

/// The fast reader of [`decode_row`] alone: the row when `bytes` are exactly its canonical
/// encoding, `None` for anything else (the fuzz tests check both halves of that).
pub fn read_canonical_row(bytes: &[u8]) -> Option<Row> {
    RowReader { rest: bytes }.row()
}

/// Reads the canonical bincode encoding of a [`Row`]; `None` for anything else.
struct RowReader<'a> {
    rest: &'a [u8],
}

impl<'a> RowReader<'a> {
    fn row(mut self) -> Option<Row> {
        let row = Row {
            kind: self.kind()?,
            mode: self.u32()?,
            uid: self.u32()?,
            gid: self.u32()?,
            size: self.varint()?,
            rdev: self.varint()?,
            link_target: self.bytes()?,
            xattrs: self.xattrs()?,
            digest: self.take(32)?.try_into().ok()?,
            stat: self.stat()?,
        };
        self.rest.is_empty().then_some(row)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n)?;
        self.rest = rest;
        Some(taken)
    }

    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// bincode's varint, minimal form only: below 251 one byte; else a marker (251, 252, 253)
    /// and the value in 2, 4 or 8 little-endian bytes, each used only above the range of the
    /// shorter form.
    fn varint(&mut self) -> Option<u64> {
        match self.byte()? {
            b @ 0..=250 => Some(u64::from(b)),
            251 => {
                let v = u64::from(u16::from_le_bytes(self.take(2)?.try_into().ok()?));
                (v >= 251).then_some(v)
            }
            252 => {
                let v = u64::from(u32::from_le_bytes(self.take(4)?.try_into().ok()?));
                (v > u64::from(u16::MAX)).then_some(v)
            }
            253 => {
                let v = u64::from_le_bytes(self.take(8)?.try_into().ok()?);
                (v > u64::from(u32::MAX)).then_some(v)
            }
            _ => None,
        }
    }

    fn u32(&mut self) -> Option<u32> {
        u32::try_from(self.varint()?).ok()
    }

    /// Zigzag: 2n for n >= 0, 2|n| - 1 for n < 0.
    fn i64(&mut self) -> Option<i64> {
        let z = self.varint()?;
        let half = (z >> 1) as i64;
        Some(if z & 1 == 0 { half } else { !half })
    }

    fn len(&mut self) -> Option<usize> {
        usize::try_from(self.varint()?).ok()
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.len()?;
        Some(self.take(n)?.to_vec())
    }

    fn kind(&mut self) -> Option<EntryKind> {
        Some(match self.u32()? {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            3 => EntryKind::Fifo,
            4 => EntryKind::Socket,
            5 => EntryKind::CharDevice,
            6 => EntryKind::BlockDevice,
            _ => return None,
        })
    }

    fn xattrs(&mut self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let n = self.len()?;
        // Each pair takes at least two bytes: a count past that is damage (serde decides).
        if n > self.rest.len() / 2 {
            return None;
        }
        (0..n)
            .map(|_| Some((self.bytes()?, self.bytes()?)))
            .collect()
    }

    fn stat(&mut self) -> Option<Option<RowStat>> {
        match self.byte()? {
            0 => Some(None),
            1 => Some(Some(RowStat {
                mtime_ns: self.i64()?,
                ctime_ns: self.i64()?,
                ino: self.varint()?,
                dev: self.varint()?,
                snapshot_ns: self.i64()?,
            })),
            _ => None,
        }
    }
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
