//! Schema migrations: one step per version change, each with its note, both in `migrations/`.
//!
//! Opening an older database for writing runs every pending step in **one** write transaction
//! and records the new version in the same transaction: after a crash at any point the file is
//! at the old version or the new, never in between. A database newer than the code is refused
//! before anything is written. The cache is never wiped because of a version.

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::failpoint::crash_point;
use crate::schema::SCHEMA_VERSION;
use crate::store::DbResultExt;
use crate::store::tables::{META, META_SCHEMA_VERSION, META_WRITER};

#[path = "../../migrations/0002_stat_fast_path.rs"]
pub mod v0002;
#[path = "../../migrations/0003_versions.rs"]
pub mod v0003;
#[path = "../../migrations/0004_origin.rs"]
pub mod v0004;

/// One schema change.
pub struct Step {
    /// The version it starts from.
    pub from: u32,
    /// The version it produces.
    pub to: u32,
    /// Short name.
    pub name: &'static str,
    /// The note in `migrations/`: what changed, why, and what the step does to existing rows.
    pub note: &'static str,
    run: fn(&redb::WriteTransaction, &Path) -> Result<u64>,
}

/// Every step, in order. A step runs only when the code's [`SCHEMA_VERSION`] has reached its
/// `to` (see [`pending`]).
pub static STEPS: &[Step] = &[
    Step {
        from: 1,
        to: 2,
        name: "stat fast path: stat data in file rows",
        note: include_str!("../../migrations/0002_stat_fast_path.md"),
        run: v0002::run,
    },
    Step {
        from: 2,
        to: 3,
        name: "versions: entries keyed by input digest, checksummed records",
        note: include_str!("../../migrations/0003_versions.md"),
        run: v0003::run,
    },
    Step {
        from: 3,
        to: 4,
        name: "origin: a version built here or pulled from a registry",
        note: include_str!("../../migrations/0004_origin.md"),
        run: v0004::run,
    },
];

/// The steps that take a database at `version` to [`SCHEMA_VERSION`].
pub fn pending(version: u32) -> Vec<&'static Step> {
    STEPS
        .iter()
        .filter(|s| version >= 1 && s.from >= version && s.to <= SCHEMA_VERSION)
        .collect()
}

/// One applied step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    /// From version.
    pub from: u32,
    /// To version.
    pub to: u32,
    /// Step name.
    pub name: &'static str,
    /// Records the step rewrote.
    pub records: u64,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MigrationReport {
    /// Version found in the file.
    pub from: u32,
    /// Version after migrating.
    pub to: u32,
    /// The steps applied, in order.
    pub steps: Vec<Applied>,
}

/// Applies every pending step to `db` (at `version`) in one write transaction.
pub(crate) fn run_pending(
    db: &redb::Database,
    path: &Path,
    version: u32,
) -> Result<MigrationReport> {
    let mut report = MigrationReport {
        from: version,
        to: version,
        steps: Vec::new(),
    };
    let steps = pending(version);
    if steps.is_empty() {
        return Ok(report);
    }
    let mut txn = db.begin_write().db(path)?;
    txn.set_quick_repair(true);
    for step in steps {
        tracing::info!(
            "migrating {} from schema v{} to v{}: {}",
            path.display(),
            step.from,
            step.to,
            step.name
        );
        let records = (step.run)(&txn, path)?;
        report.steps.push(Applied {
            from: step.from,
            to: step.to,
            name: step.name,
            records,
        });
        report.to = step.to;
    }
    crash_point!("migrate::before_version");
    {
        let mut meta = txn.open_table(META).db(path)?;
        meta.insert(META_SCHEMA_VERSION, report.to.to_le_bytes().as_slice())
            .db(path)?;
        meta.insert(META_WRITER, env!("CARGO_PKG_VERSION").as_bytes())
            .db(path)?;
    }
    crash_point!("migrate::before_commit");
    txn.commit().db(path)?;
    crash_point!("migrate::after_commit");
    tracing::info!(
        "migrated {} to schema v{} ({} step(s))",
        path.display(),
        report.to,
        report.steps.len()
    );
    Ok(report)
}
