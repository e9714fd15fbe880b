//! [`Cache::gc`]: drops versions under a [`Policy`] in one write transaction, and optionally
//! deletes the output blobs no remaining version names from the OCI layout.
//!
//! Owns: collecting what the pure planner ([`crate::gc::plan`]) needs from the tables, applying
//! its decision, and the blob deletion step. Must never: decide itself what to drop (that is
//! the planner), delete a blob the layout's `index.json` reaches (that is
//! [`crate::gc::delete_blobs`]'s guarantee), or write anything on a dry run.

use std::collections::HashMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{DbResultExt, Result};
use crate::gc::{BlobDeletion, GcPlan, Policy, delete_blobs, plan, would_delete_blobs};
use crate::path::hex;
use crate::store::guard::guard_redb;
use crate::store::versions;

use super::{Cache, drop_version};

/// What [`Cache::gc`] did (or, on a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// The versions dropped and the blobs no remaining version names.
    pub plan: GcPlan,
    /// Versions whose record is damaged (they can never hit), dropped too: `layer@digest`.
    pub damaged: Vec<String>,
    /// The blob deletion, when an OCI layout was given (on a dry run: what would be deleted).
    pub blobs: Option<BlobDeletion>,
}

impl Cache {
    /// Drops the versions `policy` selects (see `crate::gc`), as of `now_unix_ms`, plus
    /// damaged versions; with `delete_blobs_in`, deletes the blobs that no remaining version
    /// names from that OCI layout, except those its `index.json` still reaches. A dry run
    /// changes nothing and reports the same.
    pub fn gc(
        &self,
        policy: &Policy,
        now_unix_ms: u64,
        dry_run: bool,
        delete_blobs_in: Option<&Path>,
    ) -> Result<GcReport> {
        let path = self.store.path();
        let (plan, damaged, keys) = guard_redb(path, || {
            let txn = self.store.begin_read()?;
            let (uses, damaged) = versions::uses(&txn, path)?;
            let keys: HashMap<(String, String), [u8; 32]> = uses
                .iter()
                .map(|u| ((u.layer.clone(), hex(&u.input_digest)), u.input_digest))
                .collect();
            Ok((plan(&uses, policy, now_unix_ms), damaged, keys))
        })?;
        if !dry_run && (!plan.dropped.is_empty() || !damaged.is_empty()) {
            guard_redb(path, || {
                let txn = self.store.begin_write()?;
                for d in &plan.dropped {
                    if let Some(digest) = keys.get(&(d.layer.clone(), d.input_digest.clone())) {
                        drop_version(path, &txn, &d.layer, digest)?;
                    }
                }
                for (layer, digest) in &damaged {
                    drop_version(path, &txn, layer, digest)?;
                }
                txn.commit().db(path)
            })?;
        }
        let blobs = match delete_blobs_in {
            None => None,
            Some(layout) => {
                let candidates: Vec<String> = plan
                    .unreferenced_blobs
                    .iter()
                    .map(|(d, _)| d.clone())
                    .collect();
                Some(if dry_run {
                    would_delete_blobs(layout, &candidates)?
                } else {
                    delete_blobs(layout, &candidates)?
                })
            }
        };
        Ok(GcReport {
            dry_run,
            plan,
            damaged: damaged
                .iter()
                .map(|(l, d)| versions::version_key(l, d))
                .collect(),
            blobs,
        })
    }
}
