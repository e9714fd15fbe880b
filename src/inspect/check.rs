//! The integrity checker: [`Inspector::check_records`] decodes every record of the snapshot
//! (every version's checksum, and its input digest recomputed against its key), compares each
//! layer's current version's summaries with its rows (count, root type, recomputed Merkle
//! root), checks that a built layer's base version is stored, and looks for orphans;
//! [`check()`] adds the storage engine's own page-level check, which `maintain` runs.
//!
//! It must never write and never open the file for writing itself; a damaged record is a
//! [`Problem`] in the report, not an error, and never a panic.

use std::collections::BTreeMap;
use std::path::Path;

use super::maintain::{engine_integrity, must_exist};
use super::{
    CheckReport, Inspector, Integrity, MAX_LISTED_PROBLEMS, Problem, ProblemKind, problem,
};
use crate::engine::{SourceId, SourceRole};
use crate::error::{Error, Result};
use crate::path::{escape_bytes, hex, show_path};
use crate::schema::{BaseKind, EntryKind, SourceSummary, VersionRecord};
use crate::store::versions;
use crate::tree::TreeHasher;
use crate::version::entry_digest_of;
use crate::version::{Inputs, input_digest};

impl Inspector {
    /// Every check that needs only reading: records decode, summaries agree with their rows
    /// (count and recomputed Merkle root), base hashes exist and agree, no orphans. The
    /// report's database integrity check is [`Integrity::NotRun`]; [`check()`](super::check()) runs both.
    pub fn check_records(&self) -> Result<CheckReport> {
        self.read(|_, path| {
            let mut report = CheckReport::new(path);
            self.check_meta(&mut report)?;
            let layers = self.check_entries(&mut report)?;
            self.check_bases(&mut report, &layers)?;
            self.check_rows(&mut report, layers)?;
            Ok(report)
        })
    }

    fn check_meta(&self, report: &mut CheckReport) -> Result<()> {
        if !self.snap.writer_recorded()? {
            report.push(problem(
                ProblemKind::Meta,
                None,
                None,
                "the meta table has no `writer` fact".into(),
            ));
        }
        Ok(())
    }

    /// Decodes every version (checksum, key, input digest recomputed from the record) and
    /// every layer pointer; returns what each layer's current version expects of its rows.
    fn check_entries(&self, report: &mut CheckReport) -> Result<BTreeMap<String, Expect>> {
        let mut layers = BTreeMap::new();
        for (name, digest) in self.snap.version_keys()? {
            report.versions_checked += 1;
            let lay = Some(name.as_str());
            let rec = match self.snap.version(&name, &digest)? {
                Some(Ok(r)) => r,
                Some(Err(e)) => {
                    report.push(problem(ProblemKind::DamagedEntry, lay, None, e.to_string()));
                    continue;
                }
                None => continue,
            };
            if input_digest(&Inputs::of_record(&rec)) != digest {
                let detail = format!(
                    "version {}: its input digest, recomputed from the record, differs from its key",
                    versions::version_key(&name, &digest)
                );
                report.push(problem(ProblemKind::VersionKey, lay, None, detail));
            }
            check_version_fields(report, &rec);
        }
        for (name, pointer) in self.snap.pointers()? {
            report.entries_checked += 1;
            let lay = Some(name.as_str());
            if let Err(e) = crate::path::validate_layer_name(&name) {
                report.push(problem(ProblemKind::EntryName, lay, None, e.to_string()));
            }
            let pointer = match pointer {
                Ok(p) => p,
                Err(e) => {
                    report.push(problem(ProblemKind::DamagedEntry, lay, None, e.to_string()));
                    layers.insert(name, Expect::Damaged);
                    continue;
                }
            };
            let rec = match self.snap.version(&name, &pointer.current)? {
                Some(Ok(r)) => r,
                Some(Err(_)) => {
                    // Listed with the versions above.
                    layers.insert(name, Expect::Damaged);
                    continue;
                }
                None => {
                    let detail = format!(
                        "the layer points at version {}, which is not stored",
                        versions::version_key(&name, &pointer.current)
                    );
                    report.push(problem(ProblemKind::Pointer, lay, None, detail));
                    layers.insert(name, Expect::Damaged);
                    continue;
                }
            };
            let mut sources = BTreeMap::new();
            let roles = [
                (SourceRole::Import, &rec.imports),
                (SourceRole::OverlayDir, &rec.overlay_dirs),
            ];
            for (role, list) in roles {
                for s in list {
                    let expected = SourceId { role, key: &s.key };
                    if SourceId::parse(&s.source) != Some(expected) {
                        let detail = format!(
                            "summary of key {} has source id {}, expected {}",
                            escape_bytes(s.key.as_bytes()),
                            escape_bytes(s.source.as_bytes()),
                            escape_bytes(expected.row_source().as_bytes())
                        );
                        report.push(problem(ProblemKind::SourceId, lay, None, detail));
                    }
                    let summary = SeenSource {
                        summary: s.clone(),
                        seen: false,
                    };
                    if sources.insert(s.source.clone(), summary).is_some() {
                        let detail = "two summaries of the entry name this source".to_string();
                        report.push(problem(
                            ProblemKind::SourceId,
                            lay,
                            Some(s.source.as_str()),
                            detail,
                        ));
                    }
                }
            }
            let built_on = (rec.base.kind == BaseKind::Built)
                .then(|| (rec.base.reference.clone(), rec.base.hash.clone()));
            layers.insert(name, Expect::Entry { sources, built_on });
        }
        Ok(layers)
    }

    /// A built layer's current version must be built on a stored version of its base.
    fn check_bases(
        &self,
        report: &mut CheckReport,
        layers: &BTreeMap<String, Expect>,
    ) -> Result<()> {
        for (name, expect) in layers {
            let Expect::Entry {
                built_on: Some((base, hash)),
                ..
            } = expect
            else {
                continue;
            };
            let stored = self.snap.versions_of(base)?;
            if stored.iter().any(|(_, r)| {
                r.as_ref()
                    .is_ok_and(|v| entry_digest_of(v).as_slice() == hash)
            }) {
                continue;
            }
            let detail = format!(
                "it is built on a version of layer {} that is not stored (rebuilt, collected, \
                 or pruned since): it cannot hit until it is put again",
                escape_bytes(base.as_bytes())
            );
            report.push(problem(ProblemKind::MissingBase, Some(name), None, detail));
        }
        Ok(())
    }

    /// One scan of the rows table, in key order: every row decodes, and each (layer, source)
    /// run is counted and hashed and compared with its entry's summary.
    fn check_rows(
        &self,
        report: &mut CheckReport,
        mut layers: BTreeMap<String, Expect>,
    ) -> Result<()> {
        let mut scan = self.snap.all_rows()?;
        let mut run: Option<Run> = None;
        // A row that does not decode is a problem of its run, never an error: the closure
        // always returns `Ok`, so only the database's own failures end the scan (with an error).
        while let Some(step) = scan.next_with(|r| {
            report.rows_checked += 1;
            let same = run
                .as_ref()
                .is_some_and(|x| x.layer == r.layer && x.source == r.source);
            if !same {
                if let Some(done) = run.take() {
                    done.finish(report, &mut layers);
                }
                run = Some(Run::new(r.layer, r.source));
            }
            let Some(x) = run.as_mut() else {
                return Ok(());
            };
            match r.row {
                Ok(row) => {
                    if x.rows == 0 && !r.path.is_root() {
                        x.first_not_root = true;
                    }
                    if r.path.is_root() {
                        x.root_kind = Some(row.kind);
                    }
                    x.hasher.push(&r.path, &row);
                }
                Err(detail) => {
                    x.damaged = true;
                    report.push(Problem {
                        kind: ProblemKind::DamagedRow,
                        layer: Some(r.layer.to_string()),
                        source: Some(r.source.to_string()),
                        path: Some(r.path.to_string()),
                        detail,
                    });
                }
            }
            x.rows += 1;
            Ok(())
        }) {
            step?;
        }
        if let Some(done) = run.take() {
            done.finish(report, &mut layers);
        }
        for (name, expect) in layers {
            let Expect::Entry { sources, .. } = expect else {
                continue;
            };
            for (source, s) in sources.into_iter().filter(|(_, s)| !s.seen) {
                report.sources_checked += 1;
                let detail = format!(
                    "no rows are stored for this source; the entry records {} rows",
                    s.summary.rows
                );
                report.push(Problem {
                    kind: ProblemKind::RowCount,
                    layer: Some(name.clone()),
                    source: Some(source),
                    path: None,
                    detail,
                });
            }
        }
        Ok(())
    }
}

/// What an entry expects of the other tables.
enum Expect {
    /// The record does not decode: its rows cannot be checked, and are not orphans.
    Damaged,
    Entry {
        sources: BTreeMap<String, SeenSource>,
        /// For a built layer: its base layer and the entry digest it was built on.
        built_on: Option<(String, Vec<u8>)>,
    },
}

/// The definition and manifests of a version are what they claim.
fn check_version_fields(report: &mut CheckReport, rec: &VersionRecord) {
    let lay = Some(rec.name.as_str());
    match serde_json::from_slice::<serde_json::Value>(&rec.definition_json) {
        Err(e) => {
            let detail = format!("the stored definition is not JSON: {e}");
            report.push(problem(ProblemKind::Definition, lay, None, detail));
        }
        Ok(_) if *blake3::hash(&rec.definition_json).as_bytes() != rec.definition_digest => {
            let detail = "the definition digest does not match the stored definition";
            report.push(problem(ProblemKind::Definition, lay, None, detail.into()));
        }
        Ok(_) => {}
    }
    for m in &rec.manifests {
        if let Err(e) = serde_json::from_slice::<oci_spec::image::Descriptor>(&m.descriptor_json) {
            let detail = format!(
                "the {} manifest is not an OCI descriptor: {e}",
                escape_bytes(m.layer_type.as_bytes())
            );
            report.push(problem(ProblemKind::Manifest, lay, None, detail));
        }
    }
}

struct SeenSource {
    summary: SourceSummary,
    seen: bool,
}

/// The rows of one (layer, source) seen so far during the scan.
struct Run {
    layer: String,
    source: String,
    hasher: TreeHasher,
    rows: u64,
    root_kind: Option<EntryKind>,
    first_not_root: bool,
    damaged: bool,
}

impl Run {
    fn new(layer: &str, source: &str) -> Self {
        Run {
            layer: layer.to_string(),
            source: source.to_string(),
            hasher: TreeHasher::new(),
            rows: 0,
            root_kind: None,
            first_not_root: false,
            damaged: false,
        }
    }

    fn finish(self, report: &mut CheckReport, layers: &mut BTreeMap<String, Expect>) {
        let lay = Some(self.layer.as_str());
        let src = Some(self.source.as_str());
        let sources = match layers.get_mut(&self.layer) {
            None => {
                let detail = format!("{} rows of a layer that has no entry", self.rows);
                report.push(problem(ProblemKind::OrphanRows, lay, src, detail));
                return;
            }
            Some(Expect::Damaged) => return,
            Some(Expect::Entry { sources, .. }) => sources,
        };
        let Some(expected) = sources.get_mut(&self.source) else {
            let detail = format!(
                "{} rows of a source the entry does not list; putting the layer again \
                 replaces them",
                self.rows
            );
            report.push(problem(ProblemKind::StraySource, lay, src, detail));
            return;
        };
        expected.seen = true;
        report.sources_checked += 1;
        let s = &expected.summary;
        if self.rows != s.rows {
            let detail = format!(
                "{} rows are stored, the entry records {}",
                self.rows, s.rows
            );
            report.push(problem(ProblemKind::RowCount, lay, src, detail));
        }
        if self.first_not_root {
            let detail = "the source has no root row (`.`)".to_string();
            report.push(problem(ProblemKind::RootKind, lay, src, detail));
        } else if let Some(k) = self.root_kind
            && k != s.root_kind
        {
            let detail = format!("the root row is a {k}, the entry records a {}", s.root_kind);
            report.push(problem(ProblemKind::RootKind, lay, src, detail));
        }
        if self.damaged {
            // The damaged rows are listed; a root over the rest would only repeat that.
            return;
        }
        let (root, _) = self.hasher.finish();
        if self.rows == s.rows && root != s.root_digest {
            let detail = format!(
                "the Merkle root of the stored rows is {}, the entry records {}",
                hex(&root),
                hex(&s.root_digest)
            );
            report.push(problem(ProblemKind::RootDigest, lay, src, detail));
        }
    }
}

/// A clearer one-line message for an error that means the file itself is damaged (truncated or
/// overwritten): the database's "corrupted", a repair it could not complete, and short reads.
/// `None` for every other error, whose `Display` is already the message to show.
pub fn damaged_file_message(e: &Error) -> Option<String> {
    let Error::Db { path, source } = e else {
        return None;
    };
    let what = source.damage_detail()?;
    Some(format!(
        "cache database {} is damaged ({what}); move it away (the next build then creates a new \
         cache) or restore it from a backup",
        show_path(path)
    ))
}

/// Runs every read-only check ([`Inspector::check_records`]), then the storage engine's
/// integrity check when the file can be opened for writing (module `maintain`). If a build
/// holds the file, that page-level check is skipped ([`Integrity::SkippedInUse`]) and the rest
/// still runs.
/// The read-only checks run first, so they see the file exactly as it was (a writable open of a
/// damaged file can leave it marked as needing a repair); the writable handle is opened last and
/// only for the page-level check, so a build is kept out only for that long.
///
/// A damaged file is a finding, not a failure: if the database cannot be opened, or its
/// page-level check fails, the report says so and [`CheckReport::is_clean`] is false. A panic
/// inside the storage engine while the records are read (its read path trusts page contents,
/// so an overwritten page can make it index out of bounds) is returned as an [`Error::Db`] naming the file as damaged
/// ([`damaged_file_message`] words it). Any other error means nothing could be checked (not a
/// cache, newer schema, missing file, held exclusively by another program, ...).
pub fn check(path: impl AsRef<Path>) -> Result<CheckReport> {
    let path = path.as_ref();
    must_exist(path)?;
    let mut report = match Inspector::open(path) {
        Ok(ins) => ins.check_records()?,
        Err(e @ Error::NeedsRepair { .. }) => {
            // Not damage, and not ours to repair without being asked (`check --repair`).
            let mut report = CheckReport::new(path);
            report.push(problem(
                ProblemKind::NotClosedCleanly,
                None,
                None,
                e.to_string(),
            ));
            report.integrity = Integrity::NeedsRepair;
            return Ok(report);
        }
        Err(e) => match damaged_file_message(&e) {
            Some(detail) => {
                let mut report = CheckReport::new(path);
                report.push(problem(ProblemKind::Unreadable, None, None, detail));
                report
            }
            None => return Err(e),
        },
    };
    report.integrity = engine_integrity(path);
    if let Integrity::Failed(d) = &report.integrity {
        let p = problem(ProblemKind::DatabaseIntegrity, None, None, d.clone());
        report.problems.insert(0, p);
        if report.problems.len() > MAX_LISTED_PROBLEMS {
            report.problems.pop();
            report.problems_not_listed += 1;
        }
    }
    Ok(report)
}
