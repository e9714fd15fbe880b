//! The human text form of every report: `write_text` methods, [`Problem`]'s `Display`, byte
//! counts and UTC times. The `--json` form is the reports' `Serialize`.
//!
//! It must never read the database: everything it prints is in the report it is given.

use std::io::{self, Write};

use serde::Serialize;

use super::{
    BaseView, CheckReport, CompactReport, EntryDetail, Integrity, ListedEntry, Listing, Problem,
    RowLine, Stats, VersionLine,
};
use crate::path::{escape_bytes, hex};
use crate::schema::EntryKind;

impl BaseView {
    pub(super) fn short(&self) -> String {
        match (self.kind, self.short_hash.is_empty()) {
            ("scratch", _) => "scratch".to_string(),
            (_, true) => format!("{}:{}", self.kind, self.reference),
            _ => format!("{}:{} {}", self.kind, self.reference, self.short_hash),
        }
    }
}

impl RowLine {
    /// One line: type, mode (octal), uid:gid, size, digest (files; `-` otherwise), path, and
    /// ` -> target` for symlinks, ` dev major,minor` for devices, ` xattrs{..}` when present.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        let r = &self.row;
        let digest = if r.kind == EntryKind::File {
            hex(&r.digest)
        } else {
            "-".to_string()
        };
        let owner = format!("{}:{}", r.uid, r.gid);
        write!(
            w,
            "{:<12} {:04o} {:>11} {:>12} {:<64} {}",
            r.kind.as_str(),
            r.mode,
            owner,
            r.size,
            digest,
            self.path
        )?;
        match r.kind {
            EntryKind::Symlink => write!(w, " -> {}", escape_bytes(&r.link_target))?,
            EntryKind::CharDevice | EntryKind::BlockDevice => {
                let (major, minor) = (libc::major(r.rdev), libc::minor(r.rdev));
                write!(w, " dev {major},{minor}")?
            }
            _ => {}
        }
        if !r.xattrs.is_empty() {
            let list: Vec<String> = r
                .xattrs
                .iter()
                .map(|(k, v)| format!("{}={}", escape_bytes(k), escape_bytes(v)))
                .collect();
            write!(w, " xattrs{{{}}}", list.join(", "))?;
        }
        writeln!(w)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", serde_name(&self.kind))?;
        if let Some(l) = &self.layer {
            write!(f, ": layer {}", escape_bytes(l.as_bytes()))?;
        }
        if let Some(s) = &self.source {
            write!(f, ", {}", escape_bytes(s.as_bytes()))?;
        }
        if let Some(p) = &self.path {
            write!(f, ", path {p}")?;
        }
        write!(f, ": {}", self.detail)
    }
}

impl CheckReport {
    /// Human form: what was checked, the integrity check's outcome, then one line per problem.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "checked {}", self.db)?;
        if self.repaired {
            writeln!(
                w,
                "repaired first: the file was not closed cleanly (nothing committed was lost)"
            )?;
        }
        let integrity = match &self.integrity {
            Integrity::NotRun => "not run".to_string(),
            Integrity::Passed => "passed".to_string(),
            Integrity::Repaired => {
                "the file needed a repair, and the database repaired it".to_string()
            }
            Integrity::Failed(d) => format!("FAILED: {d}"),
            Integrity::SkippedInUse => "skipped: the file is in use by another process (a build \
                holds it for writing); every other check ran read-only. Check \
                again when no build is running for the page-level check"
                .to_string(),
            Integrity::NeedsRepair => "not run: the file was not closed cleanly (not damage; \
                a repair — `inspect::repair`, the CLI's `check` with repair — or the next build repairs it)"
                .to_string(),
            Integrity::SkippedNotWritable(d) => format!(
                "skipped: the file cannot be opened for writing ({d}); every other check ran \
                 read-only"
            ),
        };
        writeln!(w, "database integrity check: {integrity}")?;
        writeln!(
            w,
            "records: {} layers, {} sources, {} rows, {} versions",
            self.entries_checked, self.sources_checked, self.rows_checked, self.versions_checked
        )?;
        if self.is_clean() {
            return writeln!(w, "no problems found");
        }
        let total = self.problems.len() as u64 + self.problems_not_listed;
        writeln!(w, "{total} problem(s):")?;
        for p in &self.problems {
            writeln!(w, "  {p}")?;
        }
        if self.problems_not_listed > 0 {
            writeln!(w, "  ... and {} more", self.problems_not_listed)?;
        }
        Ok(())
    }
}

impl CompactReport {
    /// Human form: sizes before and after.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "compacted {}: {} -> {}, {} reclaimed in {} pass(es)",
            self.db,
            human_bytes(self.bytes_before),
            human_bytes(self.bytes_after),
            human_bytes(self.bytes_before.saturating_sub(self.bytes_after)),
            self.passes
        )
    }
}

impl Listing {
    /// Human form: a header, one aligned line per entry, and the totals.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        let cols: Vec<[String; 7]> = self
            .entries
            .iter()
            .map(|e| match e {
                ListedEntry::Entry(l) => [
                    escape_bytes(l.name.as_bytes()),
                    if l.output_types.is_empty() {
                        if l.build_only { "(build-only)" } else { "-" }.to_string()
                    } else {
                        escape_bytes(l.output_types.join(",").as_bytes())
                    },
                    escape_bytes(l.base.short().as_bytes()),
                    l.imports.to_string(),
                    l.overlay_dirs.to_string(),
                    l.rows.to_string(),
                    l.created.clone(),
                ],
                ListedEntry::Damaged { name, damaged } => [
                    escape_bytes(name.as_bytes()),
                    format!("DAMAGED: {damaged}"),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ],
            })
            .collect();
        let header = [
            "LAYER", "OUTPUTS", "BASE", "IMPORTS", "OVERLAYS", "ROWS", "RECORDED",
        ];
        let mut widths = header.map(str::len);
        for row in &cols {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |w: &mut dyn Write, c: [&str; 7]| -> io::Result<()> {
            let [n, o, b, i, ov, r, t] = c;
            let [wn, wo, wb, wi, wov, wr, _] = widths;
            let text = format!("{n:<wn$}  {o:<wo$}  {b:<wb$}  {i:>wi$}  {ov:>wov$}  {r:>wr$}  {t}");
            writeln!(w, "{}", text.trim_end())
        };
        line(w, header)?;
        for c in &cols {
            line(w, c.each_ref().map(String::as_str))?;
        }
        for e in &self.entries {
            if let ListedEntry::Entry(l) = e
                && l.versions.len() > 1
            {
                writeln!(
                    w,
                    "{}: {} versions",
                    escape_bytes(l.name.as_bytes()),
                    l.versions.len()
                )?;
                for v in &l.versions {
                    write_version_line(w, v)?;
                }
            }
        }
        let t = &self.totals;
        write!(
            w,
            "{} entries, {} versions, {} imports, {} overlay dirs, {} rows",
            t.entries, t.versions, t.imports, t.overlay_dirs, t.rows
        )?;
        if t.damaged > 0 {
            write!(w, ", {} DAMAGED (a `check` lists them)", t.damaged)?;
        }
        writeln!(w)
    }
}

/// One version, one line: current mark, digest, outputs, recorded and last used.
fn write_version_line(w: &mut impl Write, v: &VersionLine) -> io::Result<()> {
    let mark = if v.current { "*" } else { " " };
    let short = v.input_digest.get(..16).unwrap_or(&v.input_digest);
    if let Some(d) = &v.damaged {
        return writeln!(w, "  {mark} {short}  DAMAGED: {d}");
    }
    let outputs = if v.output_types.is_empty() {
        "-".to_string()
    } else {
        escape_bytes(v.output_types.join(",").as_bytes())
    };
    writeln!(
        w,
        "  {mark} {short}  {outputs} ({} bytes)  recorded {}  last used {}",
        v.output_bytes, v.created, v.last_used
    )
}

impl EntryDetail {
    /// Human form: the entry field by field, the definition and descriptors pretty-printed.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(
            w,
            "layer              {}",
            escape_bytes(self.name.as_bytes())
        )?;
        writeln!(w, "input digest       {}", self.input_digest)?;
        writeln!(
            w,
            "versions           {} (* = current)",
            self.versions.len()
        )?;
        for v in &self.versions {
            write_version_line(w, v)?;
        }
        writeln!(
            w,
            "recorded           {} ({} ms since the epoch)",
            self.created, self.created_unix_ms
        )?;
        let b = &self.base;
        if b.kind == "scratch" {
            writeln!(w, "base               scratch")?;
        } else {
            writeln!(
                w,
                "base               {} {}",
                b.kind,
                escape_bytes(b.reference.as_bytes())
            )?;
            writeln!(w, "base hash          {}", escape_bytes(b.hash.as_bytes()))?;
        }
        match self.source_date_epoch {
            Some(s) => writeln!(w, "SOURCE_DATE_EPOCH  {s}")?,
            None => writeln!(w, "SOURCE_DATE_EPOCH  unset")?,
        }
        writeln!(
            w,
            "build_only         {}",
            if self.build_only { "yes" } else { "no" }
        )?;
        writeln!(w, "origin             {}", self.origin)?;
        writeln!(w, "definition digest  {}", self.definition_digest)?;
        writeln!(w, "definition")?;
        write_indented(w, &self.definition)?;
        if self.manifests.is_empty() {
            writeln!(w, "manifests          none")?;
        } else {
            writeln!(w, "manifests")?;
            for m in &self.manifests {
                writeln!(w, "  {}", escape_bytes(m.layer_type.as_bytes()))?;
                write_indented(w, &m.descriptor)?;
            }
        }
        for (title, list) in [
            ("imports", &self.imports),
            ("overlay_dirs", &self.overlay_dirs),
        ] {
            if list.is_empty() {
                writeln!(w, "{title:<19}none")?;
                continue;
            }
            writeln!(w, "{title}")?;
            for s in list {
                writeln!(
                    w,
                    "  {}  {}, {} rows, root {}",
                    escape_bytes(s.source.as_bytes()),
                    s.kind,
                    s.rows,
                    s.root_digest
                )?;
            }
        }
        Ok(())
    }
}

impl Stats {
    /// Human form: counts, per-table use, and what is outside the tables.
    pub fn write_text(&self, w: &mut impl Write) -> io::Result<()> {
        writeln!(w, "file               {}", self.db)?;
        writeln!(w, "size               {}", human_bytes(self.file_bytes))?;
        writeln!(w, "schema version     {}", self.schema_version)?;
        writeln!(w, "entries            {}", self.entries)?;
        writeln!(w, "versions           {}", self.versions)?;
        writeln!(w, "bytes per version  {}", self.bytes_per_version)?;
        writeln!(w, "rows               {}", self.rows)?;
        writeln!(
            w,
            "{:<8} {:>10} {:>12} {:>12} {:>12} {:>8}",
            "table", "records", "stored", "metadata", "fragmented", "pages"
        )?;
        for t in &self.tables {
            writeln!(
                w,
                "{:<8} {:>10} {:>12} {:>12} {:>12} {:>8}",
                t.name, t.len, t.stored_bytes, t.metadata_bytes, t.fragmented_bytes, t.pages
            )?;
        }
        writeln!(
            w,
            "in tables          {}, of which {} fragmented",
            human_bytes(self.table_bytes),
            human_bytes(self.table_fragmented_bytes)
        )?;
        writeln!(
            w,
            "outside tables     {} (free pages, the database's own tables and header)",
            human_bytes(self.outside_tables_bytes)
        )?;
        match &self.exact {
            Some(e) => {
                writeln!(
                    w,
                    "allocated          {} ({} pages of {} bytes)",
                    human_bytes(e.allocated_pages.saturating_mul(e.page_size)),
                    e.allocated_pages,
                    e.page_size
                )?;
                writeln!(
                    w,
                    "reclaimable        about {} (fragmented and free; a `compact` returns it)",
                    human_bytes(e.fragmented_bytes)
                )?;
            }
            None => writeln!(
                w,
                "reclaimable        at most {} (`layercache stats --exact` asks the database, when no \
                 build holds the file)",
                human_bytes(self.table_fragmented_bytes + self.outside_tables_bytes)
            )?,
        }
        Ok(())
    }
}

fn write_indented(w: &mut impl Write, v: &serde_json::Value) -> io::Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(io::Error::other)?;
    for l in text.lines() {
        writeln!(w, "    {l}")?;
    }
    Ok(())
}

fn serde_name<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

/// `1.5 MiB (1572864 bytes)`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} bytes");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in UNITS.iter().skip(1) {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit} ({n} bytes)")
}

/// Milliseconds since the epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, proleptic Gregorian).
pub fn format_utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 12:34:56.789 UTC, a leap day.
        assert_eq!(format_utc_ms(951_827_696_789), "2000-02-29T12:34:56.789Z");
        assert_eq!(format_utc_ms(1_735_689_600_000), "2025-01-01T00:00:00.000Z");
    }
}
