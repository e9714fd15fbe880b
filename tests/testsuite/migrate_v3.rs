//! The schema step v2 → v3 (`migrations/0003_versions.rs`) on the frozen fixtures, run directly
//! in a redb write transaction (through v1 → v2 first for the v1 fixtures): what `versions`,
//! `layers` and `last_used` hold, that every stored input digest can be recomputed from the
//! record and — for the oldest-v1 fixture — from the inputs as they are on disk now, that the
//! oldest code's absolute tar references are normalised, that a damaged entry costs its layer
//! only, and that every record is checksummed.

use crate::v1_oldest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use layercache::testing::codec;
use layercache::testing::migrate::v0003::{self, EntryV2, STALE_BASE_PREFIX, entry_digest_v2};
use layercache::testing::schema::{
    BASES, BaseKind, ENTRIES, EntryKind, LAST_USED, LAYERS, LayerRecord, META, ROWS, VERSIONS,
    VersionRecord,
};
use layercache::testing::version::{
    Inputs, SourceInput, SourceRole, entry_digest_of, input_digest,
};
use layercache::testing::{TreeHasher, TreeWalk};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

fn fixture(name: &str, dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let dst = dir.join(name);
    std::fs::copy(&src, &dst).unwrap();
    dst
}

fn open(path: &Path) -> redb::Database {
    redb::Database::builder()
        .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
        .open(path)
        .unwrap()
}

fn version_of(db: &redb::Database) -> u32 {
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    let v = meta.get("schema_version").unwrap().unwrap();
    u32::from_le_bytes(v.value().try_into().unwrap())
}

fn entries_v2(db: &redb::Database) -> BTreeMap<String, EntryV2> {
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(ENTRIES).unwrap();
    t.iter()
        .unwrap()
        .map(|i| {
            let (k, v) = i.unwrap();
            let e = codec::decode::<EntryV2, { codec::ENTRY_LIMIT }>(v.value()).unwrap();
            (k.value().to_string(), e)
        })
        .collect()
}

fn row_count(db: &redb::Database) -> u64 {
    db.begin_read()
        .unwrap()
        .open_table(ROWS)
        .unwrap()
        .len()
        .unwrap()
}

/// Runs the pending steps up to v3 in one write transaction, as `migrate::run_pending` will.
fn migrate_to_v3(path: &Path) -> v0003::Outcome {
    let db = open(path);
    let from = version_of(&db);
    let txn = db.begin_write().unwrap();
    if from == 1 {
        layercache::testing::migrate::v0002::run(&txn, path).unwrap();
    }
    assert!(from <= 2);
    let out = v0003::migrate(&txn, path).unwrap();
    txn.open_table(META)
        .unwrap()
        .insert("schema_version", 3u32.to_le_bytes().as_slice())
        .unwrap();
    txn.commit().unwrap();
    out
}

/// Everything the v3 tables hold, every record checked.
struct V3 {
    versions: BTreeMap<String, Vec<VersionRecord>>,
    layers: BTreeMap<String, [u8; 32]>,
    last_used: BTreeMap<(String, [u8; 32]), u64>,
}

fn read_v3(path: &Path) -> V3 {
    let db = open(path);
    assert_eq!(version_of(&db), 3);
    let txn = db.begin_read().unwrap();
    // The v2 tables are gone.
    use redb::TableHandle;
    let tables: Vec<String> = txn
        .list_tables()
        .unwrap()
        .map(|t| t.name().to_string())
        .collect();
    for gone in [ENTRIES.name(), BASES.name()] {
        assert!(!tables.iter().any(|t| t == gone), "{gone} still exists");
    }
    let mut versions: BTreeMap<String, Vec<VersionRecord>> = BTreeMap::new();
    for item in txn.open_table(VERSIONS).unwrap().iter().unwrap() {
        let (k, v) = item.unwrap();
        let (layer, digest) = k.value();
        // The step writes the v3 layout (the v3 -> v4 step reads it).
        let rec = layercache::testing::migrate::v0004::upgrade(
            codec::decode_checked::<v0003::VersionV3, { codec::ENTRY_LIMIT }>(v.value()).unwrap(),
        );
        assert!(rec.matches_key(layer, digest), "{layer}");
        // The key is the input digest recomputed from the record alone.
        assert_eq!(input_digest(&Inputs::of_record(&rec)), *digest, "{layer}");
        versions.entry(layer.to_string()).or_default().push(rec);
    }
    let mut layers = BTreeMap::new();
    for item in txn.open_table(LAYERS).unwrap().iter().unwrap() {
        let (k, v) = item.unwrap();
        let rec: LayerRecord =
            codec::decode_checked::<_, { codec::ENTRY_LIMIT }>(v.value()).unwrap();
        layers.insert(k.value().to_string(), rec.current);
    }
    let mut last_used = BTreeMap::new();
    for item in txn.open_table(LAST_USED).unwrap().iter().unwrap() {
        let (k, v) = item.unwrap();
        let (layer, digest) = k.value();
        last_used.insert((layer.to_string(), *digest), v.value());
    }
    V3 {
        versions,
        layers,
        last_used,
    }
}

/// One version per layer, the pointer at it, last use = creation; and every built layer's base
/// hash is the entry digest of its base's version (so every chain hit survives).
fn assert_one_version_each_and_chains_linked(v3: &V3, layers: &[&str]) {
    assert_eq!(
        v3.versions.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut l = layers.to_vec();
            l.sort();
            l
        }
    );
    for (layer, vs) in &v3.versions {
        assert_eq!(vs.len(), 1, "{layer}");
        let v = &vs[0];
        assert_eq!(v3.layers.get(layer), Some(&v.input_digest), "{layer}");
        assert_eq!(
            v3.last_used.get(&(layer.clone(), v.input_digest)),
            Some(&v.created_unix_ms)
        );
        assert_eq!(v.builder, None);
        if v.base.kind == BaseKind::Built {
            let base = &v3.versions[&v.base.reference][0];
            assert_eq!(v.base.hash, entry_digest_of(base).to_vec(), "{layer}");
        }
    }
    assert_eq!(v3.layers.len(), layers.len());
    assert_eq!(v3.last_used.len(), layers.len());
}

#[test]
fn v2_small_becomes_one_version_per_layer_with_linked_chains() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v2-small.redb", tmp.path());
    let (before, rows) = {
        let db = open(&path);
        assert_eq!(version_of(&db), 2);
        (entries_v2(&db), row_count(&db))
    };
    let out = migrate_to_v3(&path);
    assert_eq!(out.versions, 4);
    assert!(out.dropped.is_empty() && out.stale_bases.is_empty());
    assert_eq!(out.tar_references_normalised, 0);
    let v3 = read_v3(&path);
    assert_one_version_each_and_chains_linked(&v3, &["base", "mid", "app", "other"]);
    // Everything an entry recorded is kept.
    for (layer, e) in &before {
        let v = &v3.versions[layer][0];
        assert_eq!(
            (
                &v.definition_json,
                &v.imports,
                &v.overlay_dirs,
                &v.manifests,
                v.source_date_epoch,
                v.build_only,
                v.created_unix_ms
            ),
            (
                &e.definition_json,
                &e.imports,
                &e.overlay_dirs,
                &e.manifests,
                e.source_date_epoch,
                e.build_only,
                e.created_unix_ms
            )
        );
    }
    assert_eq!(row_count(&open(&path)), rows, "rows are untouched");
}

#[test]
fn v1_fixtures_reach_v3_through_both_steps() {
    for (name, layers) in [
        ("v1-small.redb", &["base", "mid", "app", "other"][..]),
        ("v1-large.redb", &["big"][..]),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = fixture(name, tmp.path());
        let rows = row_count(&open(&path));
        let out = migrate_to_v3(&path);
        assert_eq!(out.versions, layers.len() as u64, "{name}");
        assert!(out.stale_bases.is_empty(), "{name}");
        let v3 = read_v3(&path);
        assert_one_version_each_and_chains_linked(&v3, layers);
        assert_eq!(row_count(&open(&path)), rows, "{name}");
        // Every row decodes as a v2 row (the first step ran).
        let db = open(&path);
        let txn = db.begin_read().unwrap();
        for item in txn.open_table(ROWS).unwrap().iter().unwrap() {
            let (_, v) = item.unwrap();
            codec::decode::<layercache::testing::Row, { codec::ROW_LIMIT }>(v.value()).unwrap();
        }
    }
}

const OLDEST_TAR: &str = "/tmp/layercache-v1-oldest/layer-bases/base.tar";

#[test]
fn oldest_fixtures_get_tar_references_normalised_and_keep_every_record_kind() {
    for name in ["v1-oldest.redb"] {
        let tmp = tempfile::tempdir().unwrap();
        let path = fixture(name, tmp.path());
        {
            let before = entries_v2(&open(&path));
            assert_eq!(before["tarred"].base.reference, OLDEST_TAR, "{name}");
        }
        let out = migrate_to_v3(&path);
        assert_eq!(out.tar_references_normalised, 1, "{name}");
        assert!(
            out.dropped.is_empty() && out.stale_bases.is_empty(),
            "{name}"
        );
        let v3 = read_v3(&path);
        assert_one_version_each_and_chains_linked(&v3, v1_oldest::ORDER);
        let v = |l: &str| &v3.versions[l][0];
        assert_eq!(v("tarred").base.kind, BaseKind::Tar);
        assert_eq!(v("tarred").base.reference, "base.tar");
        assert_eq!(v("tarred").source_date_epoch, Some(1_600_000_000));
        // The import with a dest was not cached by that code; the one without is.
        assert_eq!(
            v("tarred")
                .imports
                .iter()
                .map(|s| s.key.as_str())
                .collect::<Vec<_>>(),
            ["conf"]
        );
        assert_eq!(v("chain-1").base.reference, "tarred");
        assert_eq!(v("chain-2").base.reference, "chain-1");
        assert_eq!(v("chain-2").overlay_dirs.len(), 1);
        assert_eq!(
            (v("from-oci").base.kind, v("from-oci").base.hash.as_slice()),
            (BaseKind::Oci, v1_oldest::ALPINE.as_bytes())
        );
        assert_eq!(
            (
                v("from-docker").base.kind,
                v("from-docker").base.hash.as_slice()
            ),
            (BaseKind::Docker, v1_oldest::DEBIAN.as_bytes())
        );
        assert!(v("tools").build_only && v("tools").manifests.is_empty());
        for l in ["tarred", "chain-1", "chain-2", "from-oci", "from-docker"] {
            assert_eq!(v(l).blobs().len(), 1, "{l}");
        }
    }
}

/// The Merkle root and root type of a tree on disk, as a put would record them.
fn tree_root(path: &Path) -> (EntryKind, [u8; 32]) {
    let mut hasher = TreeHasher::new();
    let mut kind = None;
    for e in TreeWalk::new(path).unwrap() {
        let e = e.unwrap();
        if e.path.is_root() {
            kind = Some(e.row.kind);
        }
        hasher.push(&e.path, &e.row);
    }
    (kind.unwrap(), hasher.finish().0)
}

#[test]
fn oldest_inputs_recreated_elsewhere_give_the_migrated_input_digests() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: the fixture's trees are owned by root (0:0); run as root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v1-oldest.redb", tmp.path());
    migrate_to_v3(&path);
    let v3 = read_v3(&path);
    // The same inputs in another directory than the maker's (absolute paths are not inputs).
    let root = tmp.path().join("elsewhere");
    let build = v1_oldest::inputs(&root);
    let mut entry_digests: BTreeMap<&str, [u8; 32]> = BTreeMap::new();
    for layer in ["tarred", "chain-1", "chain-2", "from-oci", "tools"] {
        let l = &build.layers[layer];
        let base_hash: Vec<u8> = match &l.base {
            layercache::Base::Tar { path } => blake3::hash(&std::fs::read(path).unwrap())
                .as_bytes()
                .to_vec(),
            layercache::Base::Built { layer } => entry_digests[layer.as_str()].to_vec(),
            layercache::Base::Oci { .. } => v1_oldest::ALPINE.as_bytes().to_vec(),
            _ => Vec::new(),
        };
        let mut roots = Vec::new();
        for i in l.imports.iter().filter(|i| i.dest.is_none()) {
            roots.push((SourceRole::Import, i.key.as_str(), tree_root(&i.path)));
        }
        for o in &l.overlay_dirs {
            roots.push((SourceRole::OverlayDir, o.key.as_str(), tree_root(&o.source)));
        }
        let def = layercache::testing::inputs::canonical_json(&l.definition);
        let digest = input_digest(&Inputs {
            definition_digest: *blake3::hash(&def).as_bytes(),
            base_kind: l.base.kind(),
            base_hash: &base_hash,
            source_date_epoch: l.source_date_epoch,
            build_only: l.build_only,
            builder: None,
            sources: roots
                .iter()
                .map(|(role, key, (kind, root))| SourceInput {
                    role: *role,
                    key,
                    root_kind: *kind,
                    root_digest: *root,
                })
                .collect(),
        });
        let v = &v3.versions[layer][0];
        assert_eq!(
            digest, v.input_digest,
            "{layer}: the lookup would not find it"
        );
        entry_digests.insert(layer, entry_digest_of(v));
    }
}

/// Rewrites one v2 entry in place (raw redb), or replaces it by bytes that do not decode.
fn rewrite_entry(path: &Path, layer: &str, f: impl FnOnce(&mut EntryV2) -> Option<()>) {
    let db = open(path);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(ENTRIES).unwrap();
        let mut e = codec::decode::<EntryV2, { codec::ENTRY_LIMIT }>(
            t.get(layer).unwrap().unwrap().value(),
        )
        .unwrap();
        let bytes = match f(&mut e) {
            Some(()) => codec::encode(&e).unwrap(),
            None => vec![0xff; 7],
        };
        t.insert(layer, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn an_undecodable_entry_costs_its_layer_and_stales_the_layers_built_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v2-small.redb", tmp.path());
    rewrite_entry(&path, "mid", |_| None);
    let out = migrate_to_v3(&path);
    assert_eq!(out.dropped, vec!["mid".to_string()]);
    // app was built on mid: it can never hit again until mid and app are put.
    assert_eq!(out.stale_bases, vec!["app".to_string()]);
    let v3 = read_v3(&path);
    assert_eq!(
        v3.versions.keys().collect::<Vec<_>>(),
        ["app", "base", "other"]
    );
    assert!(!v3.layers.contains_key("mid"));
    assert!(
        v3.versions["app"][0]
            .base
            .hash
            .starts_with(STALE_BASE_PREFIX)
    );
    // mid's rows describe nothing any more and are gone; the others' are kept.
    let db = open(&path);
    let txn = db.begin_read().unwrap();
    let layers_with_rows: std::collections::BTreeSet<String> = txn
        .open_table(ROWS)
        .unwrap()
        .iter()
        .unwrap()
        .map(|i| i.unwrap().0.value().0.to_string())
        .collect();
    assert!(!layers_with_rows.contains("mid"));
    assert!(layers_with_rows.contains("app") && layers_with_rows.contains("base"));
}

#[test]
fn a_base_hash_that_would_have_missed_in_v2_can_never_hit_in_v3() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v2-small.redb", tmp.path());
    let base_v2 = entry_digest_v2(&entries_v2(&open(&path))["base"]);
    rewrite_entry(&path, "other", |e| {
        assert_eq!(e.base.hash, base_v2.to_vec(), "other hit in v2");
        e.base.hash[0] ^= 1;
        Some(())
    });
    let out = migrate_to_v3(&path);
    assert_eq!(out.stale_bases, vec!["other".to_string()]);
    let v3 = read_v3(&path);
    let other = &v3.versions["other"][0];
    assert!(other.base.hash.len() > 32);
    // mid, built on the same base with the right hash, is linked.
    assert_eq!(
        v3.versions["mid"][0].base.hash,
        entry_digest_of(&v3.versions["base"][0]).to_vec()
    );
}

#[test]
fn a_flipped_bit_in_a_stored_manifest_digest_is_damage_not_another_value() {
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v1-oldest.redb", tmp.path());
    migrate_to_v3(&path);
    let v3 = read_v3(&path);
    let v = &v3.versions["chain-2"][0];
    let (digest, _) = v.blobs()[0].clone();
    let db = open(&path);
    let txn = db.begin_write().unwrap();
    {
        let mut t = txn.open_table(VERSIONS).unwrap();
        let key = ("chain-2", &v.input_digest);
        let mut bytes = t.get(key).unwrap().unwrap().value().to_vec();
        // Flip one bit inside the descriptor's digest hex, as the damage did.
        let hex = digest.trim_start_matches("sha256:").as_bytes();
        let at = bytes
            .windows(hex.len())
            .position(|w| w == hex)
            .expect("the digest is in the record");
        bytes[at + 3] ^= 0x01;
        // Without the checksum this would decode, to a different manifest digest.
        let payload = &bytes[..bytes.len() - codec::CHECKSUM_LEN];
        let silent = layercache::testing::migrate::v0004::upgrade(
            codec::decode::<v0003::VersionV3, { codec::ENTRY_LIMIT }>(payload)
                .expect("bincode has no checksum"),
        );
        assert_ne!(silent.blobs()[0].0, digest);
        // With it, the read is a typed damage error.
        let r = codec::decode_checked::<v0003::VersionV3, { codec::ENTRY_LIMIT }>(&bytes);
        assert!(
            matches!(r, Err(codec::DecodeError::ChecksumMismatch { .. })),
            "{r:?}"
        );
        t.insert(key, bytes.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

#[test]
fn version_store_reads_what_the_step_wrote_and_removes_a_layer_entirely() {
    use layercache::testing::store::versions as vs;
    let tmp = tempfile::tempdir().unwrap();
    let path = fixture("v2-small.redb", tmp.path());
    migrate_to_v3(&path);
    let db = open(&path);
    // The live store reads the current layout: the v3 -> v4 step first.
    {
        let txn = db.begin_write().unwrap();
        layercache::testing::migrate::v0004::run(&txn, &path).unwrap();
        txn.commit().unwrap();
    }
    {
        let txn = db.begin_read().unwrap();
        let p = vs::pointer(&txn, &path, "app").unwrap().unwrap().unwrap();
        let v = vs::version(&txn, &path, "app", &p.current)
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(v.name, "app");
        assert_eq!(vs::versions_of(&txn, &path, "app").unwrap().len(), 1);
        assert!(vs::versions_of(&txn, &path, "ap").unwrap().is_empty());
        assert_eq!(
            vs::last_used(&txn, &path, "app", &p.current).unwrap(),
            Some(v.created_unix_ms)
        );
        let (uses, bad) = vs::uses(&txn, &path).unwrap();
        assert!(bad.is_empty());
        assert_eq!(uses.len(), 4);
        assert!(uses.iter().all(|u| u.current));
        assert_eq!(vs::all_keys(&txn, &path).unwrap().len(), 4);
    }
    let txn = db.begin_write().unwrap();
    assert!(vs::remove_layer(&txn, &path, "app").unwrap());
    txn.commit().unwrap();
    let txn = db.begin_read().unwrap();
    assert!(vs::pointer(&txn, &path, "app").unwrap().is_none());
    assert!(vs::versions_of(&txn, &path, "app").unwrap().is_empty());
    assert!(
        txn.open_table(ROWS)
            .unwrap()
            .iter()
            .unwrap()
            .all(|i| i.unwrap().0.value().0 != "app")
    );
    assert_eq!(txn.open_table(LAST_USED).unwrap().len().unwrap(), 3);
}
