//! criterion micro-benchmarks of the hot parts, at small sizes: the walk (hashing everything, and
//! with the stat fast path), the diff merge, row encode/decode, and writing rows (put).
//!
//! `cargo bench --bench micro`

mod treegen;

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use layercache::codec;
use layercache::{RelPath, Row, Store, TreeWalk, WalkedEntry, diff_trees};

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
