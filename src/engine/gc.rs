//! [`Cache::gc`]: drops the versions whose outputs are gone (pruning) and the versions a
//! [`Policy`] selects, in one write transaction, and optionally deletes the output blobs no
//! remaining version names from the OCI layout.
//!
//! Owns: collecting what the pure planner ([`crate::gc::plan`]) needs from the tables, applying
//! its decision, the pruning step (the rule of [`Cache::prune`]), and the blob deletion step. Must never: decide itself what to drop (that is
//! the planner), delete a blob the layout's `index.json` reaches (that is
//! [`crate::gc::delete_blobs`]'s guarantee), or write anything on a dry run.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::gc::{BlobDeletion, GcPlan, Policy, delete_blobs, plan, would_delete_blobs};
use crate::path::hex;
use crate::store::versions;

use super::{Cache, PruneReport, Pruned};

/// What [`Cache::gc`] read and decided, before it writes.
struct Collected {
    plan: GcPlan,
    /// The keys of damaged versions.
    damaged: Vec<versions::VersionKey>,
    /// The versions whose outputs are gone, with their input digests.
    pruned: Vec<(Pruned, [u8; 32])>,
    /// (layer, hex digest) → digest, of the versions the plan may drop.
    keys: HashMap<(String, String), [u8; 32]>,
}

/// What [`Cache::gc`] did (or, on a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GcReport {
    /// True when nothing was changed.
    pub dry_run: bool,
    /// The versions whose outputs are gone from the cache's configured `oci_layout` (or a
    /// build-only version's `rootfs_dir`), dropped before the policy is applied (the rule of
    /// [`Cache::prune`]); empty when neither location is configured.
    pub pruned: Vec<Pruned>,
    /// The versions dropped and the blobs no remaining version names.
    pub plan: GcPlan,
    /// Versions whose record is damaged (they can never hit), dropped too: `layer@digest`.
    pub damaged: Vec<String>,
    /// The blob deletion, when an OCI layout was given (on a dry run: what would be deleted).
    pub blobs: Option<BlobDeletion>,
}

impl Cache {
    /// Drops the versions whose outputs are gone ([`GcReport::pruned`]: the cache's configured
    /// `oci_layout` / `rootfs_dir`, by the rule of [`Cache::prune`]), then the versions
    /// `policy` selects among the rest (see `crate::gc`), as of `now_unix_ms`, plus damaged
    /// versions; with `delete_blobs_in`, deletes the blobs that no remaining version names from
    /// that OCI layout, except those its `index.json` still reaches. A dry run changes nothing
    /// and reports the same. One write transaction, waiting for the write lock.
    pub fn gc(
        &self,
        policy: &Policy,
        now_unix_ms: u64,
        dry_run: bool,
        delete_blobs_in: Option<&Path>,
    ) -> Result<GcReport> {
        let Collected {
            plan,
            damaged,
            pruned,
            keys,
        } = self.store.guarded(|| self.collect(policy, now_unix_ms))?;
        if !dry_run && (!plan.dropped.is_empty() || !damaged.is_empty() || !pruned.is_empty()) {
            self.store.guarded(|| {
                let batch = self.store.batch()?;
                for d in &plan.dropped {
                    if let Some(digest) = keys.get(&(d.layer.clone(), d.input_digest.clone())) {
                        batch.drop_version(&d.layer, digest)?;
                    }
                }
                for (layer, digest) in &damaged {
                    batch.drop_version(layer, digest)?;
                }
                for (p, digest) in &pruned {
                    batch.drop_version(&p.layer, digest)?;
                }
                batch.commit()
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
            pruned: pruned.into_iter().map(|(p, _)| p).collect(),
            plan,
            damaged: damaged
                .iter()
                .map(|(l, d)| versions::version_key(l, d))
                .collect(),
            blobs,
        })
    }

    /// What to prune (the rule of [`Cache::prune`]), then the plan over the versions left,
    /// read in one snapshot (the pruning's own reads aside).
    fn collect(&self, policy: &Policy, now_unix_ms: u64) -> Result<Collected> {
        let mut report = PruneReport::default();
        let doomed = self.doomed(None, &mut report)?;
        let snapshot = self.store.snapshot()?;
        let (mut uses, damaged) = snapshot.uses()?;
        let bad: BTreeSet<&versions::VersionKey> = damaged.iter().collect();
        // A damaged version is reported as damaged, not as pruned.
        let pruned: Vec<(Pruned, [u8; 32])> = doomed
            .into_iter()
            .filter(|(p, d)| !bad.contains(&(p.layer.clone(), *d)))
            .collect();
        let gone: BTreeSet<(&str, &[u8; 32])> =
            pruned.iter().map(|(p, d)| (p.layer.as_str(), d)).collect();
        uses.retain(|u| !gone.contains(&(u.layer.as_str(), &u.input_digest)));
        let keys = uses
            .iter()
            .map(|u| ((u.layer.clone(), hex(&u.input_digest)), u.input_digest))
            .collect();
        Ok(Collected {
            plan: plan(&uses, policy, now_unix_ms),
            damaged,
            pruned,
            keys,
        })
    }
}
