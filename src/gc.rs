//! Garbage collection of versions: which versions to drop under a [`Policy`] (a pure function
//! of the versions' use data and a time passed in — nothing here sleeps, reads the clock or the
//! database), and the deletion of output blobs from an OCI layout that never deletes a blob the
//! layout's `index.json` still reaches.
//!
//! ## Policy, in the order it is applied
//!
//! 1. **Age** (`max_unused`): a version whose last use is more than that long before `now` goes.
//! 2. **Count per layer** (`keep_per_layer` = N): each layer keeps its N most recently used
//!    versions (ties: newer creation first, then digest); the rest go.
//! 3. **Budgets** (`max_versions`, `max_bytes`): while the remaining versions are more than
//!    `max_versions`, or their blobs more than `max_bytes`, the least recently used version
//!    goes (LRU across all layers). Bytes are those of the distinct blobs the remaining
//!    versions name (a blob shared by two versions counts once; sizes from the descriptors).
//!
//! **A layer's current version** (the one its rows describe, which the last build used) is
//! never dropped unless `include_current` is set: then it is a candidate like any other, and
//! dropping it removes the layer (its pointer and rows) too. It counts towards N in 2. If the
//! budgets cannot be met without it, the plan says so ([`GcPlan::over_budget`]).
//!
//! The plan also lists the blobs that dropped versions named and no remaining version names:
//! the builder (or `umoci gc`) may delete them, or [`delete_blobs`] does, protected by the
//! layout's `index.json`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::path::{blob_path, hex};

/// What GC needs to know of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionUse {
    /// Layer name.
    pub layer: String,
    /// Its input digest.
    pub input_digest: [u8; 32],
    /// When it was recorded, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// When it was last used, ms since the Unix epoch.
    pub last_used_unix_ms: u64,
    /// True for the layer's current version (the one its rows describe).
    pub current: bool,
    /// Its output blobs: digest (`sha256:<hex>`) and size in bytes.
    pub blobs: Vec<(String, u64)>,
}

/// What to keep. Every limit is optional; the default drops nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep at most this many versions per layer (most recently used first).
    pub keep_per_layer: Option<usize>,
    /// Drop versions unused for longer than this.
    pub max_unused: Option<Duration>,
    /// Keep the distinct blob bytes of all versions at most this (LRU first).
    pub max_bytes: Option<u64>,
    /// Keep at most this many versions in all (LRU first).
    pub max_versions: Option<usize>,
    /// Let the rules above drop a layer's current version too.
    pub include_current: bool,
}

/// Why a version is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum DropReason {
    /// Unused for longer than the policy allows.
    Unused {
        /// Days since its last use (rounded down).
        days: u64,
    },
    /// Beyond the per-layer count.
    PerLayerCount {
        /// The count kept per layer.
        keep: usize,
    },
    /// Least recently used while over the version budget.
    VersionBudget,
    /// Least recently used while over the byte budget.
    ByteBudget,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Unused { days } => write!(f, "unused for {days} day(s)"),
            DropReason::PerLayerCount { keep } => {
                write!(f, "more than {keep} version(s) of its layer")
            }
            DropReason::VersionBudget => {
                f.write_str("least recently used, over the version budget")
            }
            DropReason::ByteBudget => f.write_str("least recently used, over the byte budget"),
        }
    }
}

/// One version the plan drops.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dropped {
    /// Layer name.
    pub layer: String,
    /// Input digest, hex.
    pub input_digest: String,
    /// Whether it was the layer's current version.
    pub current: bool,
    /// Last use, ms since the Unix epoch.
    pub last_used_unix_ms: u64,
    /// Why.
    pub reason: DropReason,
}

/// What GC decided.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GcPlan {
    /// Versions to drop, in the order the rules chose them.
    pub dropped: Vec<Dropped>,
    /// Versions before.
    pub versions_before: u64,
    /// Versions after.
    pub versions_after: u64,
    /// Distinct blob bytes before.
    pub bytes_before: u64,
    /// Distinct blob bytes after.
    pub bytes_after: u64,
    /// Blobs named by dropped versions and by no remaining one: digest and size, sorted.
    pub unreferenced_blobs: Vec<(String, u64)>,
    /// True when a budget is still exceeded (only protected current versions are left).
    pub over_budget: bool,
}

/// Reference counts of blobs among kept versions.
#[derive(Default)]
struct Blobs {
    refs: HashMap<String, (u64, u64)>,
    bytes: u64,
}

impl Blobs {
    fn add(&mut self, v: &VersionUse) {
        for (d, size) in distinct(v) {
            let e = self.refs.entry(d.to_string()).or_insert((0, size));
            if e.0 == 0 {
                self.bytes += e.1;
            }
            e.0 += 1;
        }
    }

    fn remove(&mut self, v: &VersionUse) {
        for (d, _) in distinct(v) {
            if let Some(e) = self.refs.get_mut(d)
                && e.0 > 0
            {
                e.0 -= 1;
                if e.0 == 0 {
                    self.bytes = self.bytes.saturating_sub(e.1);
                }
            }
        }
    }
}

/// A version's blobs, each digest once.
fn distinct(v: &VersionUse) -> BTreeMap<&str, u64> {
    v.blobs.iter().map(|(d, s)| (d.as_str(), *s)).collect()
}

/// Decides which versions to drop (see the module doc). `now_unix_ms` is passed in.
pub fn plan(versions: &[VersionUse], policy: &Policy, now_unix_ms: u64) -> GcPlan {
    let mut kept = vec![true; versions.len()];
    let mut dropped: Vec<(usize, DropReason)> = Vec::new();
    let protected = |v: &VersionUse| v.current && !policy.include_current;
    let mut blobs = Blobs::default();
    for v in versions {
        blobs.add(v);
    }
    let bytes_before = blobs.bytes;

    // 1. Age.
    if let Some(max) = policy.max_unused {
        let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
        for (i, v) in versions.iter().enumerate() {
            let idle = now_unix_ms.saturating_sub(v.last_used_unix_ms);
            if !protected(v) && idle > max_ms {
                kept[i] = false;
                dropped.push((
                    i,
                    DropReason::Unused {
                        days: idle / 86_400_000,
                    },
                ));
            }
        }
    }
    // Most recently used first; ties: newer creation, then digest (deterministic).
    let recency = |a: &usize, b: &usize| {
        let (va, vb) = (&versions[*a], &versions[*b]);
        (vb.last_used_unix_ms, vb.created_unix_ms, &va.input_digest).cmp(&(
            va.last_used_unix_ms,
            va.created_unix_ms,
            &vb.input_digest,
        ))
    };
    // 2. Count per layer.
    if let Some(keep) = policy.keep_per_layer {
        let mut by_layer: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, v) in versions.iter().enumerate() {
            if kept[i] {
                by_layer.entry(v.layer.as_str()).or_default().push(i);
            }
        }
        for (_, mut idx) in by_layer {
            idx.sort_by(recency);
            // A protected current version is kept whatever its rank and counts towards N.
            let protected_count = idx.iter().filter(|&&i| protected(&versions[i])).count();
            let mut room = keep.saturating_sub(protected_count);
            for i in idx {
                if protected(&versions[i]) {
                    continue;
                }
                if room > 0 {
                    room -= 1;
                } else {
                    kept[i] = false;
                    dropped.push((i, DropReason::PerLayerCount { keep }));
                }
            }
        }
    }
    for &(i, _) in &dropped {
        blobs.remove(&versions[i]);
    }
    // 3. Budgets, least recently used first.
    let mut count = kept.iter().filter(|k| **k).count();
    let over = |count: usize, bytes: u64| {
        policy.max_versions.is_some_and(|m| count > m)
            || policy.max_bytes.is_some_and(|m| bytes > m)
    };
    if over(count, blobs.bytes) {
        let mut lru: Vec<usize> = (0..versions.len())
            .filter(|&i| kept[i] && !protected(&versions[i]))
            .collect();
        lru.sort_by(recency);
        lru.reverse();
        for i in lru {
            if !over(count, blobs.bytes) {
                break;
            }
            let reason = if policy.max_versions.is_some_and(|m| count > m) {
                DropReason::VersionBudget
            } else {
                DropReason::ByteBudget
            };
            kept[i] = false;
            count -= 1;
            blobs.remove(&versions[i]);
            dropped.push((i, reason));
        }
    }
    let mut unreferenced: BTreeMap<String, u64> = BTreeMap::new();
    for &(i, _) in &dropped {
        for (d, size) in distinct(&versions[i]) {
            if blobs.refs.get(d).is_none_or(|e| e.0 == 0) {
                unreferenced.insert(d.to_string(), size);
            }
        }
    }
    GcPlan {
        dropped: dropped
            .iter()
            .map(|&(i, reason)| {
                let v = &versions[i];
                Dropped {
                    layer: v.layer.clone(),
                    input_digest: hex(&v.input_digest),
                    current: v.current,
                    last_used_unix_ms: v.last_used_unix_ms,
                    reason,
                }
            })
            .collect(),
        versions_before: versions.len() as u64,
        versions_after: count as u64,
        bytes_before,
        bytes_after: blobs.bytes,
        unreferenced_blobs: unreferenced.into_iter().collect(),
        over_budget: over(count, blobs.bytes),
    }
}

/// What [`delete_blobs`] did with each candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BlobDeletion {
    /// Deleted.
    pub deleted: Vec<String>,
    /// Kept: the layout's `index.json` (or a manifest or index it reaches) references it.
    pub protected: Vec<String>,
    /// Not in the layout (already gone).
    pub missing: Vec<String>,
    /// Not deleted: a malformed digest, or not a regular file.
    pub refused: Vec<String>,
}

/// Manifests and indexes are read to follow their references; a blob whose media type is not
/// one of these (and not absent) is a layer or config and is never parsed.
fn may_reference(media_type: Option<&str>) -> bool {
    match media_type {
        None => true,
        Some(m) => m.contains("manifest") || m.contains("index"),
    }
}

/// Largest manifest or index read while following references.
const MANIFEST_LIMIT: u64 = 16 << 20;

/// Every blob digest the layout's `index.json` reaches: the descriptors it lists and, through
/// every manifest and index among them (read from the layout), their configs, layers, nested
/// manifests, subjects and artifact blobs. Fails closed: an unreadable or unparsable
/// `index.json`, or a referenced manifest that exists but cannot be parsed, is an error, so no
/// blob is deleted on a guess.
pub fn referenced_by_index(layout: &Path) -> Result<BTreeSet<String>> {
    let index_path = layout.join("index.json");
    let bytes = std::fs::read(&index_path).map_err(|e| Error::io("cannot read", &index_path, e))?;
    let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| Error::Parse {
        what: "OCI index",
        path: index_path.clone(),
        detail: e.to_string(),
    })?;
    let mut seen = BTreeSet::new();
    let mut todo: Vec<serde_json::Value> = descriptors_in(&index);
    while let Some(desc) = todo.pop() {
        let Some(digest) = desc.get("digest").and_then(|d| d.as_str()) else {
            continue;
        };
        if !seen.insert(digest.to_string()) {
            continue;
        }
        let media = desc.get("mediaType").and_then(|m| m.as_str());
        if !may_reference(media) {
            continue;
        }
        let Some(path) = blob_path(layout, digest) else {
            continue;
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("cannot stat", &path, e)),
        };
        if !meta.is_file() || (media.is_none() && meta.len() > MANIFEST_LIMIT) {
            continue;
        }
        if meta.len() > MANIFEST_LIMIT {
            return Err(Error::Parse {
                what: "OCI manifest",
                path,
                detail: format!("larger than {MANIFEST_LIMIT} bytes"),
            });
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io("cannot read", &path, e))?;
        match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(v) => todo.extend(descriptors_in(&v)),
            // A blob of unknown type that is not JSON is not a manifest.
            Err(_) if media.is_none() => {}
            Err(e) => {
                return Err(Error::Parse {
                    what: "OCI manifest",
                    path,
                    detail: e.to_string(),
                });
            }
        }
    }
    Ok(seen)
}

/// The descriptors a manifest or index names.
fn descriptors_in(v: &serde_json::Value) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    for list in ["manifests", "layers", "blobs"] {
        if let Some(a) = v.get(list).and_then(|a| a.as_array()) {
            out.extend(a.iter().cloned());
        }
    }
    for one in ["config", "subject"] {
        if let Some(d) = v.get(one).filter(|d| d.is_object()) {
            out.push(d.clone());
        }
    }
    out
}

/// Deletes the candidate blobs from the OCI layout, except those `index.json` still reaches
/// ([`referenced_by_index`], computed first: if it fails, nothing is deleted).
pub fn delete_blobs(layout: &Path, candidates: &[String]) -> Result<BlobDeletion> {
    sort_blobs(layout, candidates, false)
}

/// What [`delete_blobs`] would do, deleting nothing (`deleted` lists what it would delete).
pub fn would_delete_blobs(layout: &Path, candidates: &[String]) -> Result<BlobDeletion> {
    sort_blobs(layout, candidates, true)
}

fn sort_blobs(layout: &Path, candidates: &[String], dry_run: bool) -> Result<BlobDeletion> {
    let protected = referenced_by_index(layout)?;
    let mut out = BlobDeletion::default();
    for digest in candidates {
        if protected.contains(digest) {
            out.protected.push(digest.clone());
            continue;
        }
        let Some(path) = blob_path(layout, digest) else {
            out.refused.push(digest.clone());
            continue;
        };
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.missing.push(digest.clone()),
            Err(e) => return Err(Error::io("cannot stat", &path, e)),
            Ok(m) if !m.file_type().is_file() => out.refused.push(digest.clone()),
            Ok(_) if dry_run => out.deleted.push(digest.clone()),
            Ok(_) => match std::fs::remove_file(&path) {
                Ok(()) => out.deleted.push(digest.clone()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    out.missing.push(digest.clone())
                }
                Err(e) => return Err(Error::io("cannot delete", &path, e)),
            },
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 86_400_000;
    const NOW: u64 = 1_000 * DAY;

    fn v(
        layer: &str,
        n: u8,
        last_used_days_ago: u64,
        current: bool,
        blobs: &[(&str, u64)],
    ) -> VersionUse {
        VersionUse {
            layer: layer.into(),
            input_digest: [n; 32],
            created_unix_ms: NOW - 100 * DAY,
            last_used_unix_ms: NOW - last_used_days_ago * DAY,
            current,
            blobs: blobs.iter().map(|(d, s)| (d.to_string(), *s)).collect(),
        }
    }

    fn dropped(p: &GcPlan) -> Vec<(String, u8)> {
        p.dropped
            .iter()
            .map(|d| {
                let first = u8::from_str_radix(&d.input_digest[..2], 16).unwrap();
                (d.layer.clone(), first)
            })
            .collect()
    }

    fn sample() -> Vec<VersionUse> {
        vec![
            v("a", 1, 0, true, &[("sha256:a1", 100)]),
            v("a", 2, 5, false, &[("sha256:a2", 200)]),
            v(
                "a",
                3,
                40,
                false,
                &[("sha256:a3", 300), ("sha256:shared", 50)],
            ),
            v("b", 4, 1, true, &[("sha256:shared", 50)]),
            v("b", 5, 60, false, &[("sha256:b5", 500)]),
        ]
    }

    #[test]
    fn default_policy_drops_nothing() {
        let p = plan(&sample(), &Policy::default(), NOW);
        assert!(p.dropped.is_empty() && p.unreferenced_blobs.is_empty());
        assert_eq!(p.bytes_before, 1150);
        assert_eq!((p.versions_before, p.versions_after), (5, 5));
    }

    #[test]
    fn by_count_keeps_the_most_recently_used_and_the_current() {
        let policy = Policy {
            keep_per_layer: Some(1),
            ..Default::default()
        };
        let p = plan(&sample(), &policy, NOW);
        assert_eq!(
            dropped(&p),
            vec![("a".into(), 2), ("a".into(), 3), ("b".into(), 5)]
        );
        // The shared blob is still named by b's current version.
        assert_eq!(
            p.unreferenced_blobs,
            vec![
                ("sha256:a2".to_string(), 200),
                ("sha256:a3".to_string(), 300),
                ("sha256:b5".to_string(), 500)
            ]
        );
        assert_eq!(p.bytes_after, 150);
        // Even when the current version is not the most recently used one, it stays.
        let mut vs = sample();
        vs[0].last_used_unix_ms = NOW - 90 * DAY;
        let p = plan(
            &vs,
            &Policy {
                keep_per_layer: Some(2),
                ..policy.clone()
            },
            NOW,
        );
        assert_eq!(dropped(&p), vec![("a".into(), 3)]);
        // keep 0 keeps only the current versions; with include_current, nothing.
        let p = plan(
            &sample(),
            &Policy {
                keep_per_layer: Some(0),
                ..policy.clone()
            },
            NOW,
        );
        assert_eq!(p.versions_after, 2);
        let p = plan(
            &sample(),
            &Policy {
                keep_per_layer: Some(0),
                include_current: true,
                ..policy
            },
            NOW,
        );
        assert_eq!(p.versions_after, 0);
        assert!(
            p.unreferenced_blobs
                .iter()
                .any(|(d, _)| d == "sha256:shared")
        );
    }

    #[test]
    fn by_age_uses_the_time_passed_in() {
        let policy = Policy {
            max_unused: Some(Duration::from_secs(30 * 86_400)),
            ..Default::default()
        };
        let p = plan(&sample(), &policy, NOW);
        assert_eq!(dropped(&p), vec![("a".into(), 3), ("b".into(), 5)]);
        assert_eq!(p.dropped[0].reason, DropReason::Unused { days: 40 });
        // Sixty days earlier nothing was that old.
        assert!(plan(&sample(), &policy, NOW - 60 * DAY).dropped.is_empty());
        // A current version unused for ages stays unless included.
        let mut vs = sample();
        vs[3].last_used_unix_ms = NOW - 365 * DAY;
        assert_eq!(plan(&vs, &policy, NOW).dropped.len(), 2);
        let all = Policy {
            include_current: true,
            ..policy
        };
        assert_eq!(plan(&vs, &all, NOW).dropped.len(), 3);
    }

    #[test]
    fn by_size_drops_least_recently_used_first_until_under_budget() {
        let policy = Policy {
            max_bytes: Some(700),
            ..Default::default()
        };
        let p = plan(&sample(), &policy, NOW);
        // LRU: b5 (60 days) frees 500 → 650 ≤ 700.
        assert_eq!(dropped(&p), vec![("b".into(), 5)]);
        assert_eq!(p.bytes_after, 650);
        assert_eq!(p.dropped[0].reason, DropReason::ByteBudget);
        let p = plan(
            &sample(),
            &Policy {
                max_bytes: Some(300),
                ..policy.clone()
            },
            NOW,
        );
        // b5, then a3 (frees 300; the shared blob stays with b4), then a2 → 150.
        assert_eq!(
            dropped(&p),
            vec![("b".into(), 5), ("a".into(), 3), ("a".into(), 2)]
        );
        assert_eq!(p.bytes_after, 150);
        assert!(!p.over_budget);
        // Only current versions left and still over: said, not forced.
        let p = plan(
            &sample(),
            &Policy {
                max_bytes: Some(10),
                ..policy
            },
            NOW,
        );
        assert!(p.over_budget);
        assert_eq!(p.versions_after, 2);
    }

    #[test]
    fn by_version_budget() {
        let policy = Policy {
            max_versions: Some(3),
            ..Default::default()
        };
        let p = plan(&sample(), &policy, NOW);
        assert_eq!(dropped(&p), vec![("b".into(), 5), ("a".into(), 3)]);
        assert!(
            p.dropped
                .iter()
                .all(|d| d.reason == DropReason::VersionBudget)
        );
    }

    fn blob(layout: &Path, content: &[u8]) -> String {
        let hex = blake3::hash(content).to_hex().to_string();
        std::fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
        std::fs::write(layout.join("blobs/sha256").join(&hex), content).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn blobs_reached_from_index_json_are_never_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path();
        let layer = blob(layout, b"layer tar");
        let config = blob(layout, b"{\"config\": {}}");
        let manifest_json = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 14},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer, "size": 9}],
        });
        let manifest = blob(layout, &serde_json::to_vec(&manifest_json).unwrap());
        // A nested index reached from index.json.
        let nested_json = serde_json::json!({"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest, "size": 1}
        ]});
        let nested = blob(layout, &serde_json::to_vec(&nested_json).unwrap());
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "manifests": [
                {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": nested, "size": 1}
            ]}))
            .unwrap(),
        )
        .unwrap();
        let free = blob(layout, b"an old layer no image uses");
        let candidates = vec![
            layer.clone(),
            config.clone(),
            manifest.clone(),
            nested.clone(),
            free.clone(),
            "sha256:0000".to_string(),
            "sha256:../../index.json".to_string(),
        ];
        let r = delete_blobs(layout, &candidates).unwrap();
        assert_eq!(r.deleted, vec![free.clone()]);
        assert_eq!(
            r.protected,
            vec![layer.clone(), config.clone(), manifest, nested]
        );
        assert_eq!(r.missing, vec!["sha256:0000".to_string()]);
        assert_eq!(r.refused, vec!["sha256:../../index.json".to_string()]);
        assert!(layout.join("index.json").is_file());
        for d in [&layer, &config] {
            assert!(blob_path(layout, d).unwrap().is_file());
        }
        assert!(!blob_path(layout, &free).unwrap().exists());
    }

    #[test]
    fn an_unreadable_index_deletes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = tmp.path();
        let free = blob(layout, b"x");
        // No index.json at all.
        assert!(delete_blobs(layout, std::slice::from_ref(&free)).is_err());
        // A damaged one.
        std::fs::write(layout.join("index.json"), b"{not json").unwrap();
        assert!(delete_blobs(layout, std::slice::from_ref(&free)).is_err());
        // A manifest it names that does not parse.
        let bad = blob(layout, b"{truncated");
        std::fs::write(
            layout.join("index.json"),
            serde_json::to_vec(&serde_json::json!({"manifests": [
                {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": bad}
            ]}))
            .unwrap(),
        )
        .unwrap();
        assert!(delete_blobs(layout, std::slice::from_ref(&free)).is_err());
        assert!(blob_path(layout, &free).unwrap().is_file());
    }
}
