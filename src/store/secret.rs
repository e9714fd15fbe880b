//! The per-cache secret: 32 random bytes in the `meta` table that bind a lookup record to the
//! database it was looked up in (see `engine/record.rs`).
//!
//! Owns: creating it, reading it. It is created with the tables of a new database, and for a
//! database made before it existed, at its first writable open (one small write transaction,
//! waiting for the write lock as a migration does; once per database). A read-only open never
//! creates it.
//!
//! Must never: leave the process (it is never printed, logged, put in an error, a record, a
//! dump or anything pushed to a registry); be used directly as a key (each use derives its own
//! with `blake3::derive_key`).

use std::path::Path;

use redb::ReadableTable;

use crate::error::{Error, Result};
use crate::store::DbResultExt;
use crate::store::tables::META;

use super::Store;

/// The `meta` key of the per-cache secret.
pub const META_RECORD_SECRET: &str = "record_secret";

/// Makes a new secret from the operating system's random source.
fn fresh(path: &Path) -> Result<[u8; 32]> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| {
        Error::io(
            "cannot make the cache's secret for",
            path,
            std::io::Error::other(e.to_string()),
        )
    })?;
    Ok(secret)
}

/// Writes a new secret in `txn` (the creation of a database, or [`ensure`]).
pub(super) fn insert(path: &Path, txn: &redb::WriteTransaction) -> Result<()> {
    let secret = fresh(path)?;
    let mut meta = txn.open_table(META).db(path)?;
    meta.insert(META_RECORD_SECRET, secret.as_slice())
        .db(path)?;
    Ok(())
}

fn decode(path: &Path, bytes: &[u8]) -> Result<[u8; 32]> {
    <[u8; 32]>::try_from(bytes).map_err(|_| Error::Corrupt {
        path: path.to_path_buf(),
        table: "meta",
        key: META_RECORD_SECRET.into(),
        detail: format!("the cache's secret has {} bytes, not 32", bytes.len()),
    })
}

/// Creates the secret of a writable store that has none (a database made before it existed);
/// waits for the write lock like a migration. Does nothing when it is there.
pub(super) fn ensure(store: &Store) -> Result<()> {
    if read(store)?.is_some() {
        return Ok(());
    }
    let path = store.path();
    let txn = store.begin_write()?;
    let there = txn
        .open_table(META)
        .db(path)?
        .get(META_RECORD_SECRET)
        .db(path)?
        .is_some();
    if there {
        // Another process made it while this one waited.
        return txn.abort().db(path);
    }
    insert(path, &txn)?;
    txn.commit().db(path)
}

fn read(store: &Store) -> Result<Option<[u8; 32]>> {
    let path = store.path();
    let txn = store.begin_read()?;
    let meta = txn.open_table(META).db(path)?;
    let value = meta.get(META_RECORD_SECRET).db(path)?;
    value.map(|v| decode(path, v.value())).transpose()
}

impl Store {
    /// The per-cache secret (see `store/secret.rs`), for deriving the key of one use. A store
    /// opened for writing always has one; a read-only open of a database that never had a
    /// writable open since it existed has none (an error saying so).
    pub(crate) fn secret(&self) -> Result<[u8; 32]> {
        read(self)?.ok_or_else(|| Error::Corrupt {
            path: self.path().to_path_buf(),
            table: "meta",
            key: META_RECORD_SECRET.into(),
            detail: "the cache has no secret yet (it is made at the first writable open)".into(),
        })
    }
}
