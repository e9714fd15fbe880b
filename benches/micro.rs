//! criterion micro-benchmarks of the hot parts, at small sizes: the walk (hashing everything, and
//! with the stat fast path), the two walkers (enumeration alone, and the fast-path walk with
//! each), the diff merge, row encode/decode, and writing rows (put).
//!
//! `cargo bench --bench micro`; `cargo bench --bench micro -- enumerate walk_by_enumerator` for
//! the walkers alone. The walkers' tree has `LAYERCACHE_MICRO_WALK_FILES` files (default 10^4).

mod treegen;

use layercache::testing::RawTransactions;
use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use layercache::RelPath;
use layercache::testing::codec;
use layercache::testing::tree::{Enumerator, OrderedDirs};
use layercache::testing::{Row, Store, TreeWalk, WalkedEntry, diff_trees};

const FILES: u64 = 2000;

fn walked(root: &std::path::Path) -> Vec<WalkedEntry> {
    TreeWalk::new(root)
        .unwrap()
        .collect::<layercache::Result<Vec<_>>>()
        .unwrap()
}

fn benches(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("tree");
    let stats = treegen::generate(&tree, FILES, 1).unwrap();
    let entries = walked(&tree);
    let n = entries.len() as u64;

    // A store holding the tree, for the fast path and the row scan.
    let db = dir.path().join("micro.redb");
    let store = Store::open(&db).unwrap();
    let txn = store.begin_write().unwrap();
    let mut walk = TreeWalk::new(&tree).unwrap();
    store
        .write_tree(&txn, "app", "src", &tree, walk.by_ref())
        .unwrap();
    txn.commit().unwrap();

    let mut g = c.benchmark_group("walk");
    g.throughput(Throughput::Elements(n));
    g.bench_function("hash_everything", |b| {
        b.iter(|| {
            let mut w = TreeWalk::new(&tree).unwrap();
            for e in w.by_ref() {
                black_box(e.unwrap());
            }
            assert_eq!(w.counters().files_hashed, stats.files);
        })
    });
    g.bench_function("stat_fast_path", |b| {
        b.iter(|| {
            let txn = store.begin_read().unwrap();
            let prior = store.rows(&txn, "app", "src").unwrap();
            let mut w = TreeWalk::with_prior(&tree, Box::new(prior)).unwrap();
            for e in w.by_ref() {
                black_box(e.unwrap());
            }
            assert_eq!(w.counters().files_hashed, 0);
        })
    });
    g.finish();

    // The two walkers on a tree of their own (default 10^4 files).
    let walk_files: u64 = std::env::var("LAYERCACHE_MICRO_WALK_FILES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let wtree = dir.path().join("walk-tree");
    treegen::generate(&wtree, walk_files, 2).unwrap();
    let wdb = dir.path().join("walk.redb");
    let wstore = Store::open(&wdb).unwrap();
    let txn = wstore.begin_write().unwrap();
    let mut walk = TreeWalk::new(&wtree).unwrap();
    let wsummary = wstore
        .write_tree(&txn, "app", "src", &wtree, walk.by_ref())
        .unwrap();
    txn.commit().unwrap();
    let wn = wsummary.rows;

    // Enumeration only (names and lstat; no hashing, no xattrs): walkdir sorted on one thread
    // with an lstat by full path per entry, and the ordered parallel walker.
    let mut g = c.benchmark_group("enumerate");
    g.throughput(Throughput::Elements(wn));
    g.bench_function("walkdir_sorted_lstat", |b| {
        b.iter(|| {
            let mut k = 0u64;
            for e in walkdir::WalkDir::new(&wtree)
                .sort_by(|a, b| a.file_name().cmp(b.file_name()))
                .into_iter()
            {
                let e = e.unwrap();
                k += std::fs::symlink_metadata(e.path()).unwrap().len();
            }
            black_box(k)
        })
    });
    g.bench_function("ordered_parallel", |b| {
        b.iter(|| {
            let mut k = 0u64;
            for e in OrderedDirs::new(&wtree) {
                k += e.unwrap().1.stat.size;
            }
            black_box(k)
        })
    });
    g.finish();

    // Whole walks with the stat fast path (nothing hashed), per walker.
    let mut g = c.benchmark_group("walk_by_enumerator");
    g.throughput(Throughput::Elements(wn));
    for (name, how) in [
        ("walkdir", Enumerator::Walkdir),
        ("parallel", Enumerator::Parallel),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let txn = wstore.begin_read().unwrap();
                let prior = wstore.rows(&txn, "app", "src").unwrap();
                let mut w = TreeWalk::with_enumerator(&wtree, how).unwrap();
                w.set_prior(Box::new(prior));
                for e in w.by_ref() {
                    black_box(e.unwrap());
                }
                assert_eq!(w.counters().files_hashed, 0);
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("hash");
    g.throughput(Throughput::Bytes(stats.bytes));
    g.bench_function("tree_bytes", |b| {
        b.iter(|| {
            let mut w = TreeWalk::new(&tree).unwrap();
            for e in w.by_ref() {
                black_box(e.unwrap());
            }
            w.counters().bytes_hashed
        })
    });
    g.finish();

    let mut g = c.benchmark_group("rows");
    g.throughput(Throughput::Elements(n));
    g.bench_function("range_scan_decode", |b| {
        b.iter(|| {
            let txn = store.begin_read().unwrap();
            let mut k = 0u64;
            for r in store.rows(&txn, "app", "src").unwrap() {
                black_box(r.unwrap());
                k += 1;
            }
            assert_eq!(k, n);
        })
    });
    let rows: Vec<(RelPath, Row)> = entries
        .iter()
        .map(|e| (e.path.clone(), e.row.clone()))
        .collect();
    g.bench_function("encode", |b| {
        b.iter(|| {
            for (_, r) in &rows {
                black_box(codec::encode(r).unwrap());
            }
        })
    });
    let encoded: Vec<Vec<u8>> = rows
        .iter()
        .map(|(_, r)| codec::encode(r).unwrap())
        .collect();
    g.bench_function("decode", |b| {
        b.iter(|| {
            for e in &encoded {
                black_box(codec::decode::<Row, { codec::ROW_LIMIT }>(e).unwrap());
            }
        })
    });
    g.bench_function("diff_merge", |b| {
        b.iter_batched(
            || {
                (
                    rows.iter().cloned().map(Ok).collect::<Vec<_>>(),
                    entries.iter().cloned().map(Ok).collect::<Vec<_>>(),
                )
            },
            |(stored, fresh)| {
                let d = diff_trees(stored, fresh, |_, _| {}).unwrap();
                assert!(d.is_empty());
            },
            BatchSize::LargeInput,
        )
    });
    g.bench_function("put_rows", |b| {
        b.iter_batched(
            || entries.iter().cloned().map(Ok).collect::<Vec<_>>(),
            |fresh| {
                let txn = store.begin_write().unwrap();
                let s = store.write_tree(&txn, "put", "src", &tree, fresh).unwrap();
                txn.commit().unwrap();
                assert_eq!(s.rows, n);
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = micro;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(micro);
