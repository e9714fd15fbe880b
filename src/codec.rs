//! The only module that knows how values are encoded: bincode 2.0.1 through serde.
//!
//! bincode is unmaintained (RUSTSEC-2025-0141) and pinned to `=2.0.1`; keeping it behind this one
//! module means a replacement touches one file. Two traps are handled here for every caller:
//! decoding always runs with a size limit (without one, a damaged length prefix makes bincode
//! allocate up to 2^63 bytes and abort the process), and trailing bytes are an error (bincode
//! accepts them silently).

use serde::Serialize;
use serde::de::DeserializeOwned;

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

#[cfg(test)]
mod tests {
    use super::*;

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
