//! Record encoding (`src/codec.rs`) through its public functions: the size limits are exact. A
//! record of exactly the limit decodes; one byte more is refused by the length check itself,
//! before bincode reads anything (bincode's own limit counts only container allocations, so a
//! record of many small fields would otherwise be read past the limit).

use layercache::codec::{self, CHECKSUM_LEN, DecodeError};

/// Four and five one-byte fields: encoded without any length prefix, so nothing but the length
/// check can refuse them.
type Four = (u8, u8, u8, u8);
type Five = (u8, u8, u8, u8, u8);

#[test]
fn a_record_of_exactly_the_limit_decodes_and_one_byte_more_is_refused() {
    let four = codec::encode(&(1u8, 2u8, 3u8, 4u8)).unwrap();
    assert_eq!(four.len(), 4);
    assert_eq!(codec::decode::<Four, 4>(&four).unwrap(), (1, 2, 3, 4));
    let five = codec::encode(&(1u8, 2u8, 3u8, 4u8, 5u8)).unwrap();
    assert_eq!(five.len(), 5);
    assert_eq!(
        codec::decode::<Five, 4>(&five).unwrap_err(),
        "record of 5 bytes exceeds the 4-byte limit"
    );
}

#[test]
fn a_checked_record_of_exactly_the_limit_decodes_and_one_byte_more_is_refused() {
    let four = codec::encode_checked(&(1u8, 2u8, 3u8, 4u8)).unwrap();
    assert_eq!(four.len(), 4 + CHECKSUM_LEN);
    assert_eq!(
        codec::decode_checked::<Four, 4>(&four).unwrap(),
        (1, 2, 3, 4)
    );
    let five = codec::encode_checked(&(1u8, 2u8, 3u8, 4u8, 5u8)).unwrap();
    assert_eq!(
        codec::decode_checked::<Five, 4>(&five),
        Err(DecodeError::TooLarge {
            len: 5 + CHECKSUM_LEN,
            limit: 4
        })
    );
}
