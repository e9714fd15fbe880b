//! Record encoding (`src/codec.rs`) through its public functions: the size limits are exact. A
//! record of exactly the limit decodes; one byte more is refused by the length check itself,
//! before bincode reads anything (bincode's own limit counts only container allocations, so a
//! record of many small fields would otherwise be read past the limit).

use crate::common;

use layercache::testing::codec::{self, CHECKSUM_LEN, DecodeError};

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

/// Through a real put (`store::versions::write_version`): a put never stores a version record
/// that a reader would refuse to decode (the layer could then never hit again). One byte over
/// [`codec::ENTRY_LIMIT`] is refused with `RecordTooLarge` naming its size and stores nothing; at
/// exactly the limit, bincode's decode limit (which also counts what the fields allocate) makes
/// the reader refuse it, so the put refuses it too; well under the limit it is stored and hits.
#[test]
fn a_put_never_stores_a_record_a_reader_would_refuse() {
    use layercache::{Base, Build, Error, LayerInputs, LookupMode, MissReason};
    use std::collections::BTreeMap;

    let w = common::Workspace::new();
    let cache = w.cache();
    // A build-only layer (no output blobs needed; its rootfs directory exists) whose
    // definition holds a string of `len` bytes.
    let build = |len: usize| {
        let mut b = Build::new();
        b.add(
            "app",
            LayerInputs {
                definition: serde_json::json!({"blob": "x".repeat(len)}),
                base: Base::Scratch,
                imports: vec![],
                overlay_dirs: vec![],
                source_date_epoch: None,
                build_only: true,
                uncacheable: None,
            },
        );
        b
    };
    let put = |len: usize| {
        let b = build(len);
        let mut s = cache.session(&b).unwrap();
        let l = s.lookup("app").unwrap();
        assert!(!l.is_hit());
        s.put(&l, &BTreeMap::new()).map(|_| ())
    };
    let too_large = |r: layercache::Result<()>| match r {
        Err(Error::RecordTooLarge { size, limit, .. }) => {
            assert_eq!(limit, codec::ENTRY_LIMIT);
            size
        }
        other => panic!("expected RecordTooLarge, got {other:?}"),
    };
    // The record's size around the definition: measured once, then aimed at the limit exactly.
    let overhead = too_large(put(codec::ENTRY_LIMIT)) - codec::ENTRY_LIMIT;
    let at_limit = codec::ENTRY_LIMIT - overhead;
    assert_eq!(too_large(put(at_limit + 1)), codec::ENTRY_LIMIT + 1);
    let check = |len: usize| {
        let b = build(len);
        let mut s = cache.session(&b).unwrap();
        s.lookup_with("app", LookupMode::CHECK).unwrap()
    };
    let l = check(at_limit + 1);
    assert!(
        matches!(l.reasons(), [MissReason::NotCached]),
        "nothing was stored: {:?}",
        l.reasons()
    );
    // At exactly the limit: refused as well (before this check, it was stored and every
    // later lookup was a DamagedEntry miss: "LimitExceeded").
    too_large(put(at_limit));
    assert!(matches!(check(at_limit).reasons(), [MissReason::NotCached]));
    // Well under the limit: stored, and it reads back.
    let under = codec::ENTRY_LIMIT - (1 << 20);
    put(under).unwrap();
    let l = check(under);
    assert!(l.is_hit(), "{:?}", l.reasons());
}
