//! Step v1 → v2: re-encode every row with an empty `stat` field. See the note beside this file.

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::failpoint::crash_point;
use crate::path::RelPath;
use crate::schema::{EntryKind, Row};
use crate::store::DbResultExt;
use crate::store::codec;
use crate::store::tables::ROWS;

/// A row as schema v1 stored it: [`Row`] without `stat` (fields as documented there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowV1 {
    /// Entry type.
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
    /// Device number of device nodes.
    pub rdev: u64,
    /// Symlink target.
    pub link_target: Vec<u8>,
    /// Sorted extended attributes.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// blake3 of a regular file's content.
    pub digest: [u8; 32],
}

impl From<RowV1> for Row {
    fn from(r: RowV1) -> Row {
        Row {
            kind: r.kind,
            mode: r.mode,
            uid: r.uid,
            gid: r.gid,
            size: r.size,
            rdev: r.rdev,
            link_target: r.link_target,
            xattrs: r.xattrs,
            digest: r.digest,
            stat: None,
        }
    }
}

/// Rows re-encoded per batch (bounds the memory of the step, whatever the table's size).
const BATCH: usize = 8192;

type OwnedKey = (String, String, Vec<u8>);

/// Re-encodes every row. Returns the number of rows rewritten.
pub fn run(txn: &redb::WriteTransaction, db: &std::path::Path) -> Result<u64> {
    let mut table = txn.open_table(ROWS).db(db)?;
    let mut done = 0u64;
    let mut after: Option<OwnedKey> = None;
    loop {
        let mut batch: Vec<(OwnedKey, Option<Vec<u8>>)> = Vec::with_capacity(BATCH);
        {
            let range = match &after {
                None => table.iter().db(db)?,
                Some((l, s, p)) => {
                    let lo: (&str, &str, &[u8]) = (l.as_str(), s.as_str(), p.as_slice());
                    table
                        .range::<(&str, &str, &[u8])>((
                            std::ops::Bound::Excluded(lo),
                            std::ops::Bound::Unbounded,
                        ))
                        .db(db)?
                }
            };
            for item in range.take(BATCH) {
                let (k, v) = item.db(db)?;
                let (l, src, p) = k.value();
                // A v1 row that does not decode is dropped, not fatal: the entry's row count and
                // Merkle root no longer match, so its layer misses as damaged (one miss, not an
                // unopenable cache), and its next put writes the rows again.
                let new = codec::decode::<RowV1, { codec::ROW_LIMIT }>(v.value())
                    .ok()
                    .map(|old| codec::encode(&Row::from(old)))
                    .transpose()
                    .map_err(|detail| Error::Corrupt {
                        path: db.to_path_buf(),
                        table: "rows",
                        key: format!("{l}/{src}/{}", RelPath::from_key(p)),
                        detail,
                    })?;
                batch.push(((l.to_string(), src.to_string(), p.to_vec()), new));
            }
        }
        let Some((last, _)) = batch.last() else {
            break;
        };
        let last = last.clone();
        for ((l, s, p), v) in &batch {
            let key = (l.as_str(), s.as_str(), p.as_slice());
            match v {
                Some(v) => {
                    table.insert(key, v.as_slice()).db(db)?;
                }
                None => {
                    table.remove(key).db(db)?;
                    tracing::warn!(
                        "{}: dropped an undecodable v1 row of layer {l:?} ({}); that layer \
                         will miss as damaged until it is put again",
                        db.display(),
                        RelPath::from_key(p)
                    );
                }
            }
        }
        done += batch.len() as u64;
        after = Some(last);
        crash_point!("migrate::between_batches");
    }
    Ok(done)
}
