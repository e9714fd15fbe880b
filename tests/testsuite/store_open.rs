//! Opening the database: creation mode, version checks, foreign and garbage files.

use crate::common;
use layercache::testing::RawTransactions;

use std::os::unix::fs::PermissionsExt;

use common::StoreTestExt;
use layercache::testing::Store;
use layercache::{Error, SCHEMA_VERSION};

#[test]
fn database_is_created_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.redb");
    Store::open(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn reopen_keeps_version() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.redb");
    drop(Store::open(&path).unwrap());
    let s = Store::open(&path).unwrap();
    assert_eq!(s.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn newer_schema_is_refused_and_file_unchanged() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.redb");
    drop(Store::open(&path).unwrap());
    {
        let db = redb::Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(layercache::testing::schema::META).unwrap();
            meta.insert(
                "schema_version",
                (SCHEMA_VERSION + 1).to_le_bytes().as_slice(),
            )
            .unwrap();
        }
        txn.commit().unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    for attempt in 0..2 {
        let err = match attempt {
            0 => Store::open(&path).err().unwrap(),
            _ => Store::open_read_only(&path).err().unwrap(),
        };
        match &err {
            Error::SchemaTooNew {
                found,
                supported,
                path: p,
            } => {
                assert_eq!((*found, *supported), (SCHEMA_VERSION + 1, SCHEMA_VERSION));
                assert_eq!(p, &path);
            }
            other => panic!("expected SchemaTooNew, got {other}"),
        }
        assert!(err.to_string().contains("upgrade layercache"), "{err}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "the file was modified"
        );
    }
}

#[test]
fn garbage_file_is_refused_with_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("garbage.redb");
    std::fs::write(
        &path,
        b"this is not a database at all, just some text\n".repeat(100),
    )
    .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path).err().unwrap();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert!(err.to_string().contains("garbage.redb"), "{err}");
    let err = Store::open_read_only(&path).err().unwrap();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn foreign_redb_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("other.redb");
    {
        let db = redb::Database::create(&path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("stuff");
            txn.open_table(def).unwrap().insert(1, 2).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = Store::open(&path).err().unwrap();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert!(err.to_string().contains("other.redb"), "{err}");
}

#[test]
fn reader_shares_the_file_with_a_writer() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("c.redb");
    let root = tmp.path().join("t");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("f"), b"x").unwrap();
    let writer = Store::open(&path).unwrap();
    writer.snapshot("l", "s", &root).unwrap();
    let reader = Store::open_read_only(&path).unwrap();
    assert_eq!(reader.row_count("l", "s").unwrap(), 2);
    // A second writer shares the file too (build steps run in parallel); only one write
    // transaction runs at a time: while the first holds one, the second's try fails at once
    // and its bounded wait gives up with `Busy`.
    let mut second = Store::open(&path).unwrap();
    let held = writer.begin_write().unwrap();
    assert!(second.try_begin_write().unwrap().is_none());
    second.set_write_wait(layercache::WriteWait {
        timeout: std::time::Duration::ZERO,
        cancel: None,
    });
    let err = second.begin_write().err().unwrap();
    assert!(matches!(err, Error::Busy { .. }), "{err}");
    assert!(err.to_string().contains("c.redb"), "{err}");
    drop(held);
    assert!(second.try_begin_write().unwrap().is_some());
}

#[test]
fn an_empty_file_a_fifo_and_a_directory_are_refused_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty.redb");
    std::fs::write(&empty, b"").unwrap();
    let err = Store::open(&empty).err().unwrap();
    assert!(matches!(err, Error::NotACache { .. }), "{err}");
    assert!(err.to_string().contains("empty file"), "{err}");
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "it was written"
    );
    let fifo = tmp.path().join("fifo.redb");
    common::mkfifo(&fifo);
    for err in [
        Store::open(&fifo).err().unwrap(),
        Store::open_read_only(&fifo).err().unwrap(),
    ] {
        assert!(err.to_string().contains("a FIFO"), "{err}");
    }
    let err = Store::open(tmp.path()).err().unwrap();
    assert!(err.to_string().contains("a directory"), "{err}");
}
