//! Fuzzing on stable with proptest: record decoding, key encoding round trips, and the plan
//! file. Nothing here may panic, abort, or allocate without limit on hostile bytes.
//!
//! Quick run (CI): `cargo test --test testsuite reliability_fuzz::` (a few hundred cases per property).
//! Soak run: `LAYERCACHE_SOAK=1 cargo test --release --test testsuite reliability_fuzz::` multiplies the
//! case count by 100 (`PROPTEST_CASES` overrides both).

use std::path::Path;

use layercache::testing::codec::{self, ENTRY_LIMIT, ROW_LIMIT};
use layercache::testing::plan::Plan;
use layercache::testing::schema::{
    BaseKind, BaseRecord, EntryKind, ManifestRecord, Row, RowStat, SourceSummary, VersionRecord,
};
use layercache::{Error, RelPath};
use proptest::prelude::*;
use proptest::strategy::ValueTree;

fn cases(quick: u32) -> u32 {
    if let Some(n) = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    if std::env::var_os("LAYERCACHE_SOAK").is_some() {
        quick * 100
    } else {
        quick
    }
}

fn config(quick: u32) -> ProptestConfig {
    ProptestConfig {
        cases: cases(quick),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn kind() -> impl Strategy<Value = EntryKind> {
    prop_oneof![
        Just(EntryKind::File),
        Just(EntryKind::Dir),
        Just(EntryKind::Symlink),
        Just(EntryKind::Fifo),
        Just(EntryKind::Socket),
        Just(EntryKind::CharDevice),
        Just(EntryKind::BlockDevice),
    ]
}

/// Any u64, with the bounds of bincode's varint forms (1, 3, 5 and 9 bytes) often.
fn edge_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        any::<u64>(),
        0u64..300,
        proptest::sample::select(vec![
            250,
            251,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ]),
    ]
}

fn edge_u32() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0u32..300, Just(65_536), Just(u32::MAX)]
}

/// Any i64, with values whose zigzag form sits at a varint bound often.
fn edge_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        any::<i64>(),
        -300i64..300,
        proptest::sample::select(vec![i64::MIN, i64::MAX, -126, 125, -32_768, 32_767]),
    ]
}

fn row() -> impl Strategy<Value = Row> {
    (
        kind(),
        edge_u32(),
        (edge_u32(), edge_u32(), edge_u64(), edge_u64()),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..12),
                proptest::collection::vec(any::<u8>(), 0..12),
            ),
            0..3,
        ),
        any::<[u8; 32]>(),
        proptest::option::of((edge_i64(), edge_i64(), edge_u64(), edge_i64())),
    )
        .prop_map(
            |(kind, mode, (uid, gid, size, rdev), link_target, xattrs, digest, stat)| Row {
                kind,
                mode,
                uid,
                gid,
                size,
                rdev,
                link_target,
                xattrs,
                digest,
                stat: stat.map(|(mtime_ns, ctime_ns, ino, snapshot_ns)| RowStat {
                    mtime_ns,
                    ctime_ns,
                    ino,
                    dev: ino.rotate_left(17),
                    snapshot_ns,
                }),
            },
        )
}

fn summary() -> impl Strategy<Value = SourceSummary> {
    (".{0,8}", kind(), any::<[u8; 32]>(), any::<u64>()).prop_map(
        |(key, root_kind, root_digest, rows)| SourceSummary {
            source: format!("import:{key}"),
            key,
            root_kind,
            root_digest,
            rows,
        },
    )
}

fn entry() -> impl Strategy<Value = VersionRecord> {
    (
        ".{0,16}",
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<[u8; 32]>(),
        proptest::collection::vec(any::<u8>(), 0..33),
        proptest::option::of(any::<i64>()),
        proptest::collection::vec(summary(), 0..3),
        proptest::collection::vec(summary(), 0..3),
        proptest::collection::vec(
            ("[a-z]{0,6}", proptest::collection::vec(any::<u8>(), 0..20)),
            0..2,
        ),
        any::<(bool, u64)>(),
    )
        .prop_map(
            |(
                name,
                definition_json,
                definition_digest,
                hash,
                epoch,
                imports,
                overlays,
                m,
                (b, t),
            )| {
                VersionRecord {
                    name: name.clone(),
                    input_digest: definition_digest,
                    builder: (t % 2 == 0).then(|| format!("builder {t}")),
                    definition_json,
                    definition_digest,
                    base: BaseRecord {
                        kind: BaseKind::Built,
                        reference: name,
                        hash,
                    },
                    source_date_epoch: epoch,
                    imports,
                    overlay_dirs: overlays,
                    manifests: m
                        .into_iter()
                        .map(|(layer_type, descriptor_json)| ManifestRecord {
                            layer_type,
                            descriptor_json,
                        })
                        .collect(),
                    build_only: b,
                    created_unix_ms: t,
                    origin: if t % 3 == 0 {
                        layercache::testing::schema::Origin::Pulled
                    } else {
                        layercache::testing::schema::Origin::Built
                    },
                }
            },
        )
}

/// Applies byte edits to an encoding: flips, overwrites, truncation, insertion.
fn mutate(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, op, val) in edits {
        if bytes.is_empty() {
            bytes.push(val);
            continue;
        }
        let i = at % bytes.len();
        match op % 4 {
            0 => bytes[i] ^= val | 1,
            1 => bytes[i] = val,
            2 => bytes.truncate(i),
            _ => bytes.insert(i, val),
        }
    }
    bytes
}

proptest! {
    #![proptest_config(config(512))]

    /// Random bytes never panic the decoder, whatever type they are read as.
    #[test]
    fn random_bytes_decode_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = codec::decode::<Row, ROW_LIMIT>(&bytes);
        let _ = codec::decode::<VersionRecord, ENTRY_LIMIT>(&bytes);
    }

    /// Valid rows round-trip; mutated encodings decode to an error or to some row, never panic
    /// and never read past the input (trailing bytes refused).
    #[test]
    fn rows_round_trip_and_survive_mutation(
        r in row(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = codec::encode(&r).unwrap();
        prop_assert_eq!(codec::decode::<Row, ROW_LIMIT>(&bytes).unwrap(), r);
        let damaged = mutate(bytes.clone(), &edits);
        if let Ok(d) = codec::decode::<Row, ROW_LIMIT>(&damaged) {
            // Whatever decoded re-encodes to the damaged bytes, up to varints the damage wrote
            // in a longer form than needed (bincode 2.0.1 accepts `251, 242, 0` for 242: found
            // by this test once the rows' integers sat at the varint bounds): never longer, and
            // it decodes back to the same row — nothing was skipped.
            let again = codec::encode(&d).unwrap();
            prop_assert!(again.len() <= damaged.len());
            prop_assert_eq!(codec::decode::<Row, ROW_LIMIT>(&again).unwrap(), d);
        }
    }

    /// The rows table's fast decoder (`codec::decode_row`): its reader alone reads every
    /// encoded row, and on damaged bytes it gives what the serde path gives (the same row or
    /// the same error).
    #[test]
    fn the_row_decoder_agrees_with_serde(
        r in row(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = codec::encode(&r).unwrap();
        prop_assert_eq!(codec::read_canonical_row(&bytes), Some(r.clone()));
        prop_assert_eq!(codec::decode_row(&bytes), Ok(r));
        let damaged = mutate(bytes, &edits);
        prop_assert_eq!(codec::decode_row(&damaged), codec::decode::<Row, ROW_LIMIT>(&damaged));
    }

    /// The same for entry records.
    #[test]
    fn entries_round_trip_and_survive_mutation(
        e in entry(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = codec::encode(&e).unwrap();
        prop_assert_eq!(codec::decode::<VersionRecord, ENTRY_LIMIT>(&bytes).unwrap(), e);
        let damaged = mutate(bytes, &edits);
        if let Ok(d) = codec::decode::<VersionRecord, ENTRY_LIMIT>(&damaged) {
            prop_assert_eq!(codec::encode(&d).unwrap(), damaged);
        }
    }

    /// A stored version record is checksummed: any change to its bytes is refused as damage,
    /// never decoded to another value (issue 16's false hit).
    #[test]
    fn checked_entries_refuse_every_mutation(
        e in entry(),
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6),
    ) {
        let bytes = codec::encode_checked(&e).unwrap();
        prop_assert_eq!(codec::decode_checked::<VersionRecord, ENTRY_LIMIT>(&bytes).unwrap(), e);
        let damaged = mutate(bytes.clone(), &edits);
        if damaged != bytes {
            prop_assert!(codec::decode_checked::<VersionRecord, ENTRY_LIMIT>(&damaged).is_err());
        }
    }

    /// A length prefix claiming a huge collection is refused before allocating: the link
    /// target's length replaced by every wide varint marker (0xfb..0xfd) with its largest value
    /// is an error (without the decode limit, bincode would try to allocate it and abort the
    /// process); the same bytes inserted at any other position decode to an error or to a row
    /// that re-encodes to exactly those bytes (nothing skipped), never a panic.
    #[test]
    fn huge_length_prefixes_are_refused(r in row(), at in any::<usize>(), marker in 0xfbu8..=0xfd) {
        let width = match marker { 0xfb => 2, 0xfc => 4, _ => 8 };
        let mut hostile = vec![marker];
        hostile.extend_from_slice(&u64::MAX.to_le_bytes()[..width]);
        let bytes = codec::encode(&r).unwrap();
        // The link target's length prefix follows the six scalar fields.
        let at_len = codec::encode(&(r.kind, r.mode, r.uid, r.gid, r.size, r.rdev)).unwrap().len();
        let prefix_len = codec::encode(&(r.link_target.len() as u64)).unwrap().len();
        let mut at_prefix = bytes.clone();
        at_prefix.splice(at_len..at_len + prefix_len, hostile.iter().copied());
        let refused = codec::decode::<Row, ROW_LIMIT>(&at_prefix);
        prop_assert!(refused.is_err(), "a huge link target length decoded: {:?}", refused);

        let mut anywhere = bytes;
        let i = at % anywhere.len();
        anywhere.splice(i..i, hostile);
        if let Ok(d) = codec::decode::<Row, ROW_LIMIT>(&anywhere) {
            prop_assert_eq!(codec::encode(&d).unwrap(), anywhere.clone());
        }
        if let Ok(d) = codec::decode::<VersionRecord, ENTRY_LIMIT>(&anywhere) {
            prop_assert_eq!(codec::encode(&d).unwrap(), anywhere);
        }
    }
}

/// Components of a file name: any bytes but `/` and NUL, non-empty, not `.` or `..` (which
/// name no entry of a directory).
fn component() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..8,
    )
    .prop_filter("not . or ..", |c| c != b"." && c != b"..")
}

proptest! {
    #![proptest_config(config(1024))]

    /// Slash bytes → key → slash bytes is the identity, and the escaped display parses back to
    /// the same path and is one printable line.
    #[test]
    fn rel_path_round_trips(parts in proptest::collection::vec(component(), 1..5)) {
        let slash = parts.join(&b'/');
        let p = RelPath::from_slash_bytes(&slash);
        prop_assert_eq!(p.to_slash_bytes(), slash.clone());
        prop_assert_eq!(RelPath::from_key(p.key()), p.clone());
        prop_assert!(!p.key().contains(&b'/'));
        let shown = p.to_string();
        prop_assert!(!shown.contains('\n') && !shown.contains('\r'));
        prop_assert_eq!(RelPath::parse_escaped(&shown), Some(p.clone()));
        // The JSON form is the same string and parses back too.
        let json = serde_json::to_string(&p).unwrap();
        prop_assert_eq!(serde_json::from_str::<RelPath>(&json).unwrap(), p);
    }

    /// Key byte order equals the order of a sorted depth-first walk (component by component).
    #[test]
    fn key_order_is_walk_order(
        a in proptest::collection::vec(component(), 1..4),
        b in proptest::collection::vec(component(), 1..4),
    ) {
        let ka = RelPath::from_slash_bytes(&a.join(&b'/'));
        let kb = RelPath::from_slash_bytes(&b.join(&b'/'));
        prop_assert_eq!(ka.key().cmp(kb.key()), a.cmp(&b));
    }

    /// Arbitrary strings never panic the escape parser.
    #[test]
    fn parse_escaped_never_panics(s in "(\\\\|x|[0-9a-fA-F]|.){0,24}") {
        if let Some(p) = RelPath::parse_escaped(&s) {
            // What it accepts displays to a string that parses to the same path.
            prop_assert_eq!(RelPath::parse_escaped(&p.to_string()), Some(p));
        }
    }
}

const VALID_PLAN: &str = r#"{
  "oci_layout": "oci",
  "rootfs_dir": "roots",
  "source_date_epoch": 1700000000,
  "layers": {
    "base": {
      "definition": {"from": {"type": "scratch"}, "run": ["make"]},
      "base": {"type": "scratch"},
      "imports": [{"key": "stacker://x/y.tar", "path": "imports/base/y.tar"}],
      "overlay_dirs": [{"key": "src", "source": "src", "rootfs_path": "roots/base/overlay_dirs/src"}]
    },
    "app": {"definition": null, "base": {"type": "built", "layer": "base"},
            "source_date_epoch": null},
    "tarred": {"definition": {"run": "t"}, "base": {"type": "tar", "path": "t.tar"},
               "build_only": true},
    "img": {"definition": {"run": "i"}, "base": {"type": "oci", "layout": "oci", "tag": "v1"}}
  }
}"#;

fn parse(text: &str) -> Result<Plan, Error> {
    Plan::parse(text, Path::new("/nonexistent/plan.json"))
}

proptest! {
    #![proptest_config(config(1024))]

    /// Byte-level mutations of a valid plan (restricted to valid UTF-8) parse or give a typed
    /// error; never a panic.
    #[test]
    fn mutated_plans_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0x20u8..0x7f), 1..8),
    ) {
        let bytes = mutate(VALID_PLAN.as_bytes().to_vec(), &edits);
        if let Ok(text) = std::str::from_utf8(&bytes) {
            match parse(text) {
                Ok(plan) => prop_assert!(plan.build().validate().is_ok()),
                Err(
                    Error::Parse { .. }
                    | Error::InvalidName { .. }
                    | Error::MissingBase { .. }
                    | Error::BaseCycle { .. },
                ) => {}
                Err(other) => prop_assert!(false, "unexpected error kind: {other}"),
            }
        }
    }

    /// Random JSON-ish text never panics the plan parser.
    #[test]
    fn random_plans_never_panic(s in "[{}\\[\\]\":,a-z0-9 .\\\\/-]{0,200}") {
        let _ = parse(&s);
    }
}

#[test]
fn the_valid_plan_parses() {
    let plan = parse(VALID_PLAN).unwrap();
    assert_eq!(plan.build().layers.len(), 4);
}

/// A deeply nested JSON value as a layer definition is refused by serde_json's recursion limit
/// (a typed parse error), not a stack overflow.
#[test]
fn deeply_nested_definition_is_a_parse_error() {
    let depth = 100_000;
    let def = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let text =
        format!(r#"{{"layers": {{"a": {{"base": {{"type": "scratch"}}, "definition": {def}}}}}}}"#);
    match parse(&text) {
        Err(Error::Parse { detail, .. }) => assert!(detail.contains("recursion"), "{detail}"),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

/// Regressions found by the properties above: a C1 control character (U+0080..U+009F, two
/// bytes in UTF-8) used to display as `\xNN`, the same as the lone byte 0xNN, so two different
/// names showed alike and parsed back wrong; and the root displayed as `.` did not parse back.
#[test]
fn escaped_display_regressions() {
    let c1 = RelPath::from_slash_bytes("a\u{85}b".as_bytes());
    let lone = RelPath::from_slash_bytes(b"a\x85b");
    assert_ne!(c1.to_string(), lone.to_string());
    assert_eq!(RelPath::parse_escaped(&c1.to_string()), Some(c1));
    assert_eq!(RelPath::parse_escaped(&lone.to_string()), Some(lone));
    assert_eq!(
        RelPath::parse_escaped(&RelPath::root().to_string()),
        Some(RelPath::root())
    );
}

/// A varint in a longer form than needed is not the reader's (serde decides), and a record over
/// the limit is refused as the serde path refuses it.
#[test]
fn non_canonical_and_oversized_rows_go_the_serde_way() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut r = row().new_tree(&mut runner).unwrap().current();
    r.mode = 5;
    let bytes = codec::encode(&r).unwrap();
    assert_eq!(bytes[1], 5, "the mode is the second field, one byte");
    let mut long = bytes.clone();
    long.splice(1..2, [251, 5, 0]);
    assert_eq!(codec::read_canonical_row(&long), None);
    assert_eq!(
        codec::decode_row(&long),
        codec::decode::<Row, ROW_LIMIT>(&long)
    );
    let huge = vec![0u8; ROW_LIMIT + 1];
    assert!(codec::decode_row(&huge).is_err());
    assert_eq!(
        codec::decode_row(&huge),
        codec::decode::<Row, ROW_LIMIT>(&huge)
    );
}

/// The text form writes the root as `.`; a `.` written escaped (`\x2e`) is the root too, not a
/// path named `.` that would display as the root (found by `parse_escaped_never_panics` once
/// in ~20,000 cases).
#[test]
fn an_escaped_dot_is_the_root() {
    for s in ["\\x2e", "\\x2E", "."] {
        let p = RelPath::parse_escaped(s).unwrap();
        assert!(p.is_root(), "{s}");
        assert_eq!(RelPath::parse_escaped(&p.to_string()), Some(p));
    }
}
