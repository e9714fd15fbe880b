//! A picture of a build: every layer of a build with the cache's answer for it now, as data
//! ([`BuildReport`], `Serialize` for `--json`), as text, and as one self-contained HTML page
//! (inline SVG and CSS, no script, nothing fetched) — what `layercache report` prints.
//!
//! Owns: asking the cache about every layer of a build, bases first, with the time each lookup
//! took; classifying the answer ([`LayerState`]); the changed paths of a miss, capped
//! ([`MAX_CHANGED_PATHS`]); the layer graph's layout; escaping everything that comes from the
//! plan or the disk into the page (`html_escape`).
//!
//! Must never: prune (a version whose outputs are gone is shown as
//! [`LayerState::OutputsMissing`], not removed: no open prunes), put, or evaluate a layer itself: it uses the public
//! [`Session`](crate::Session) API as a builder does. Its lookups are [`LookupMode::CHECK`]
//! lookups: like a build's, a hit refreshes stat data and counts as a use of the version.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Instant;

use serde::Serialize;

use crate::engine::{Cache, LookupMode};
use crate::error::Result;
use crate::inputs::{Base, Build};
use crate::inspect::format_utc_ms;
use crate::path::escape_bytes;
use crate::reason::MissReason;

/// Changed paths listed per layer; beyond this they are only counted.
pub const MAX_CHANGED_PATHS: usize = 12;

/// The cache's answer for a layer now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerState {
    /// The cached output can be reused.
    Hit,
    /// The layer has versions, but none matches its inputs now (or it is not cacheable).
    Miss,
    /// The layer has no version in the cache.
    NotCached,
    /// Every input matches a version, but its outputs are gone.
    OutputsMissing,
}

impl LayerState {
    /// The state as one word (`hit`, `miss`, `not_cached`, `outputs_missing`), as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            LayerState::Hit => "hit",
            LayerState::Miss => "miss",
            LayerState::NotCached => "not_cached",
            LayerState::OutputsMissing => "outputs_missing",
        }
    }

    /// The state as people read it.
    pub fn label(self) -> &'static str {
        match self {
            LayerState::Hit => "hit",
            LayerState::Miss => "miss",
            LayerState::NotCached => "not cached",
            LayerState::OutputsMissing => "outputs missing",
        }
    }

    fn of(reason: Option<&MissReason>) -> LayerState {
        match reason {
            None => LayerState::Hit,
            Some(MissReason::NotCached) => LayerState::NotCached,
            Some(MissReason::OutputsMissing { .. }) => LayerState::OutputsMissing,
            Some(_) => LayerState::Miss,
        }
    }
}

/// One path a miss found changed in a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangedPath {
    /// `added`, `removed` or `modified`.
    pub change: &'static str,
    /// The path relative to the source's root, escaped as `dump` prints it.
    pub path: String,
    /// For a modified path, what changed (`content`, `mode 0644 -> 0755`, ...).
    pub what: String,
}

/// One layer of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// The layer name (exact; escape it for display).
    pub name: String,
    /// The base as `kind` or `kind:reference` (`scratch`, `built:base`, `oci:TAG`, ...).
    pub base: String,
    /// The layer it is built on, for a `built` base.
    pub built_on: Option<String>,
    /// The answer now.
    pub state: LayerState,
    /// The first miss reason (`None` on a hit). The diff of a content change is cut to the
    /// paths of [`LayerReport::changed_paths`]; [`LayerReport::changed_paths_total`] counts
    /// them all.
    pub reason: Option<MissReason>,
    /// The first line of the first reason's text (`None` on a hit).
    pub reason_text: Option<String>,
    /// The changed paths of the first reason, at most [`MAX_CHANGED_PATHS`].
    pub changed_paths: Vec<ChangedPath>,
    /// How many paths the first reason found changed in all.
    pub changed_paths_total: u64,
    /// Stored versions of the layer.
    pub versions: u64,
    /// The last use of any of its versions (or its creation), ms since the Unix epoch, as
    /// recorded before this report's lookup.
    pub last_used_unix_ms: Option<u64>,
    /// The same, UTC.
    pub last_used: Option<String>,
    /// Bytes of the output blobs of its current version (from the descriptors).
    pub output_bytes: u64,
    /// The time its lookup took, in microseconds (its built bases were already looked up).
    pub lookup_us: u64,
}

/// Counts of layers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StateCounts {
    /// Layers that hit.
    pub hit: u64,
    /// Layers that miss.
    pub miss: u64,
    /// Layers not cached.
    pub not_cached: u64,
    /// Layers whose outputs are missing.
    pub outputs_missing: u64,
}

/// Every layer of a build with the cache's answer now ([`build_report`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BuildReport {
    /// When the report was made, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The same, UTC.
    pub created: String,
    /// The layers depth first: each layer not built on another (by name), followed by the
    /// layers built on it (by name).
    pub layers: Vec<LayerReport>,
    /// Layers by state.
    pub counts: StateCounts,
    /// The lookups' time summed, in microseconds.
    pub lookup_total_us: u64,
}

/// The layers of `build` in depth-first order from the layers not built on another (by name),
/// each followed by the layers built on it (by name): every built base comes before the layers
/// built on it, and a chain reads top to bottom.
fn bases_first(build: &Build) -> Vec<&str> {
    let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let mut roots = Vec::new();
    for (name, l) in &build.layers {
        match &l.base {
            Base::Built { layer } if build.layers.contains_key(layer) => {
                children
                    .entry(layer.as_str())
                    .or_default()
                    .push(name.as_str());
            }
            _ => roots.push(name.as_str()),
        }
    }
    let mut order = Vec::with_capacity(build.layers.len());
    let mut seen = BTreeSet::new();
    // Names come sorted from the map; the stack takes them in reverse to visit them in order.
    let mut stack: Vec<&str> = roots.into_iter().rev().collect();
    while let Some(name) = stack.pop() {
        if !seen.insert(name) {
            continue;
        }
        order.push(name);
        if let Some(c) = children.get(name) {
            stack.extend(c.iter().rev());
        }
    }
    order
}

fn base_text(base: &Base) -> String {
    let kind = base.kind().as_str();
    let reference = base.reference();
    if reference.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}:{reference}")
    }
}

/// The changed paths of a reason (capped) and their total count.
fn changed_paths(reason: Option<&MissReason>) -> (Vec<ChangedPath>, u64) {
    let diff = match reason {
        Some(
            MissReason::ImportContentChanged { diff, .. }
            | MissReason::OverlayDirContentChanged { diff, .. },
        ) => diff,
        _ => return (Vec::new(), 0),
    };
    let added = diff.added.iter().map(|p| ChangedPath {
        change: "added",
        path: p.to_string(),
        what: String::new(),
    });
    let removed = diff.removed.iter().map(|p| ChangedPath {
        change: "removed",
        path: p.to_string(),
        what: String::new(),
    });
    let modified = diff.modified.iter().map(|m| ChangedPath {
        change: "modified",
        path: m.path.to_string(),
        what: m
            .changes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
    });
    let listed = added
        .chain(removed)
        .chain(modified)
        .take(MAX_CHANGED_PATHS)
        .collect();
    (listed, diff.len() as u64)
}

/// Cuts the diff of a content-change reason to the paths [`changed_paths`] lists (added, then
/// removed, then modified, [`MAX_CHANGED_PATHS`] in all), so a miss over 10^5 changed paths does
/// not put them all into the report.
fn cap_diff(reason: Option<&mut MissReason>) {
    let diff = match reason {
        Some(
            MissReason::ImportContentChanged { diff, .. }
            | MissReason::OverlayDirContentChanged { diff, .. },
        ) => diff,
        _ => return,
    };
    let mut left = MAX_CHANGED_PATHS;
    diff.added.truncate(left);
    left -= diff.added.len();
    diff.removed.truncate(left);
    left -= diff.removed.len();
    diff.modified.truncate(left);
}

/// Asks `cache` about every layer of `build`, bases first, as a build would (one session,
/// [`LookupMode::CHECK`] lookups, timed each), and reads each layer's versions, last use and
/// output size. A version whose outputs are gone shows as [`LayerState::OutputsMissing`] (one
/// removed by [`Cache::prune`] or [`Cache::gc`] shows as not cached).
pub fn build_report(cache: &Cache, build: &Build) -> Result<BuildReport> {
    let created_unix_ms = crate::engine::now_ms();
    let mut session = cache.session(build)?;
    let mut layers = Vec::with_capacity(build.layers.len());
    let mut counts = StateCounts::default();
    let mut lookup_total_us = 0u64;
    for name in bases_first(build) {
        let inputs = build.layer(name)?;
        // Versions and last use before the lookup: a hit records a use.
        let versions = cache.versions(name)?;
        let last_used_unix_ms = versions
            .iter()
            .filter_map(|(rec, used)| used.or_else(|| rec.as_ref().ok().map(|r| r.created_unix_ms)))
            .max();
        let output_bytes = cache
            .entry(name)?
            .map_or(0, |rec| rec.blobs().iter().map(|(_, n)| n).sum());
        let t = Instant::now();
        let lookup = session.lookup_with(name, LookupMode::CHECK)?;
        let lookup_us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
        lookup_total_us = lookup_total_us.saturating_add(lookup_us);
        let mut reason = lookup.reasons().first().cloned();
        let state = LayerState::of(reason.as_ref());
        match state {
            LayerState::Hit => counts.hit += 1,
            LayerState::Miss => counts.miss += 1,
            LayerState::NotCached => counts.not_cached += 1,
            LayerState::OutputsMissing => counts.outputs_missing += 1,
        }
        let (changed, changed_total) = changed_paths(reason.as_ref());
        cap_diff(reason.as_mut());
        layers.push(LayerReport {
            name: name.to_string(),
            base: base_text(&inputs.base),
            built_on: match &inputs.base {
                Base::Built { layer } => Some(layer.clone()),
                _ => None,
            },
            state,
            reason_text: reason
                .as_ref()
                .map(|r| r.to_string().lines().next().unwrap_or_default().to_string()),
            reason,
            changed_paths: changed,
            changed_paths_total: changed_total,
            versions: versions.len() as u64,
            last_used: last_used_unix_ms.map(format_utc_ms),
            last_used_unix_ms,
            output_bytes,
            lookup_us,
        });
    }
    Ok(BuildReport {
        created: format_utc_ms(created_unix_ms),
        created_unix_ms,
        layers,
        counts,
        lookup_total_us,
    })
}

/// Escapes text for HTML element content and quoted attribute values: `&`, `<`, `>`, `"` and
/// `'` become character references, so no name or path can open a tag or leave an attribute.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Bytes as people read them.
fn size_text(bytes: u64) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b >= KIB * KIB * KIB {
        format!("{:.1} GiB", b / (KIB * KIB * KIB))
    } else if b >= KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else if b >= KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{bytes} B")
    }
}

fn ms_text(us: u64) -> String {
    format!("{:.1} ms", us as f64 / 1000.0)
}

/// At most `n` characters of `s`, with `…` when cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Box size and gaps of the graph, in SVG user units.
const BOX_W: u32 = 200;
const BOX_H: u32 = 64;
const GAP_X: u32 = 60;
const GAP_Y: u32 = 22;
const MARGIN: u32 = 16;

impl BuildReport {
    /// The column of each layer: 0 for a layer not built on another, else its base's + 1.
    fn columns(&self) -> Vec<u32> {
        let index: BTreeMap<&str, usize> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();
        let mut col = vec![0u32; self.layers.len()];
        // Bases come first, so a base's column is known before its dependents'.
        for (i, l) in self.layers.iter().enumerate() {
            let base_col = l
                .built_on
                .as_deref()
                .and_then(|b| index.get(b))
                .and_then(|&b| col.get(b).copied());
            if let (Some(c), Some(slot)) = (base_col, col.get_mut(i)) {
                *slot = c + 1;
            }
        }
        col
    }

    /// The report as text: one line per layer, then its reason and changed paths.
    pub fn write_text(&self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let c = &self.counts;
        writeln!(
            out,
            "{} layer(s): {} hit, {} miss, {} not cached, {} outputs missing; lookups {}",
            self.layers.len(),
            c.hit,
            c.miss,
            c.not_cached,
            c.outputs_missing,
            ms_text(self.lookup_total_us)
        )?;
        for l in &self.layers {
            writeln!(
                out,
                "{:<16} {:<15} {:>9}  {} version(s), last used {}, {}  (base {})",
                escape_bytes(l.name.as_bytes()),
                l.state.label(),
                ms_text(l.lookup_us),
                l.versions,
                l.last_used.as_deref().unwrap_or("never"),
                size_text(l.output_bytes),
                escape_bytes(l.base.as_bytes())
            )?;
            if let Some(r) = &l.reason_text {
                writeln!(out, "    {r}")?;
            }
            for p in &l.changed_paths {
                writeln!(out, "      {:<8} {} {}", p.change, p.path, p.what)?;
            }
            let more = l
                .changed_paths_total
                .saturating_sub(l.changed_paths.len() as u64);
            if more > 0 {
                writeln!(out, "      ... and {more} more path(s)")?;
            }
        }
        Ok(())
    }

    /// The report as one self-contained HTML page: the layer graph as inline SVG (each layer a
    /// box coloured by its state, an arrow from its base), then a table with each layer's
    /// reason, changed paths, versions, last use, size and lookup time. No script, no external
    /// resource; every name, path and reason is escaped (`&`, `<`, `>`, `"`, `'`).
    pub fn to_html(&self, title: &str) -> String {
        let mut h = String::with_capacity(16 * 1024);
        let e = |s: &str| html_escape(s);
        let cols = self.columns();
        // Rows: in report order (depth first), each layer in the first free row of its column
        // that is not above its base's row, so a chain stays on one line.
        let mut next_row: BTreeMap<u32, u32> = BTreeMap::new();
        let mut pos: Vec<(u32, u32)> = Vec::with_capacity(self.layers.len());
        for (i, &c) in cols.iter().enumerate() {
            let base_row = self
                .layers
                .get(i)
                .and_then(|l| l.built_on.as_deref())
                .and_then(|b| self.layers.iter().position(|o| o.name == b))
                .and_then(|b| pos.get(b))
                .map_or(0, |&(_, r)| r);
            let free = next_row.entry(c).or_insert(0);
            let r = (*free).max(base_row);
            *free = r + 1;
            pos.push((c, r));
        }
        let ncols = cols.iter().max().map_or(1, |m| m + 1);
        let nrows = next_row.values().max().copied().unwrap_or(1).max(1);
        let width = MARGIN * 2 + ncols * BOX_W + ncols.saturating_sub(1) * GAP_X;
        let height = MARGIN * 2 + nrows * BOX_H + nrows.saturating_sub(1) * GAP_Y;
        let xy = |(c, r): (u32, u32)| (MARGIN + c * (BOX_W + GAP_X), MARGIN + r * (BOX_H + GAP_Y));
        let index: BTreeMap<&str, usize> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| (l.name.as_str(), i))
            .collect();

        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
             <title>{}</title>\n<style>\n{CSS}</style>\n</head>\n<body>\n<h1>{}</h1>\n",
            e(title),
            e(title)
        );
        let c = &self.counts;
        let _ = writeln!(
            h,
            "<p class=\"summary\" id=\"summary\">{} layers at {}: \
             <span class=\"pill hit\">{} hit</span> <span class=\"pill miss\">{} miss</span> \
             <span class=\"pill not_cached\">{} not cached</span> \
             <span class=\"pill outputs_missing\">{} outputs missing</span> \
             &middot; lookups {}</p>",
            self.layers.len(),
            e(&self.created),
            c.hit,
            c.miss,
            c.not_cached,
            c.outputs_missing,
            ms_text(self.lookup_total_us)
        );
        let _ = write!(
            h,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
             viewBox=\"0 0 {width} {height}\" role=\"img\" aria-label=\"layer graph\">\n\
             <defs><marker id=\"arrow\" viewBox=\"0 0 10 10\" refX=\"10\" refY=\"5\" \
             markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\">\
             <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#555\"/></marker></defs>\n"
        );
        for (i, l) in self.layers.iter().enumerate() {
            let Some(b) = l.built_on.as_deref().and_then(|b| index.get(b)) else {
                continue;
            };
            let (Some(&from), Some(&to)) = (pos.get(*b), pos.get(i)) else {
                continue;
            };
            let (x1, y1) = xy(from);
            let (x2, y2) = xy(to);
            let (x1, y1, x2, y2) = (x1 + BOX_W, y1 + BOX_H / 2, x2, y2 + BOX_H / 2);
            let mid = (x1 + x2) / 2;
            let _ = writeln!(
                h,
                "<path class=\"edge\" d=\"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}\" \
                 marker-end=\"url(#arrow)\"/>"
            );
        }
        for (i, l) in self.layers.iter().enumerate() {
            let Some(&p) = pos.get(i) else { continue };
            let (x, y) = xy(p);
            let state = l.state.as_str();
            let _ = writeln!(
                h,
                "<g class=\"node {state}\" id=\"node-{i}\"><title>{}</title>\
                 <rect x=\"{x}\" y=\"{y}\" width=\"{BOX_W}\" height=\"{BOX_H}\" rx=\"8\"/>\
                 <text class=\"name\" x=\"{}\" y=\"{}\">{}</text>\
                 <text class=\"state\" x=\"{}\" y=\"{}\">{} &middot; {}</text></g>",
                e(&format!(
                    "{}: {}",
                    l.name,
                    l.reason_text.as_deref().unwrap_or("hit")
                )),
                x + 12,
                y + 26,
                e(&clip(&escape_bytes(l.name.as_bytes()), 22)),
                x + 12,
                y + 48,
                l.state.label(),
                ms_text(l.lookup_us)
            );
        }
        h.push_str("</svg>\n");

        h.push_str(
            "<table>\n<thead><tr><th>layer</th><th>state</th><th>first reason</th>\
             <th>changed paths</th><th>versions</th><th>last use</th><th>size</th>\
             <th>lookup</th></tr></thead>\n<tbody>\n",
        );
        for (i, l) in self.layers.iter().enumerate() {
            let state = l.state.as_str();
            let _ = write!(
                h,
                "<tr id=\"layer-{i}\" class=\"{state}\" data-state=\"{state}\">\
                 <td class=\"layer\"><b>{}</b><br><small>on {}</small></td>\
                 <td class=\"state\"><span class=\"pill {state}\">{}</span></td>\
                 <td class=\"reason\">{}</td><td class=\"paths\">",
                e(&escape_bytes(l.name.as_bytes())),
                e(&escape_bytes(l.base.as_bytes())),
                l.state.label(),
                e(l.reason_text.as_deref().unwrap_or("cached output reusable")),
            );
            if !l.changed_paths.is_empty() {
                h.push_str("<ul>");
                for p in &l.changed_paths {
                    let _ = write!(
                        h,
                        "<li><span class=\"change\">{}</span> <code>{}</code>{}</li>",
                        p.change,
                        e(&p.path),
                        if p.what.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", e(&p.what))
                        }
                    );
                }
                h.push_str("</ul>");
                let more = l
                    .changed_paths_total
                    .saturating_sub(l.changed_paths.len() as u64);
                if more > 0 {
                    let _ = write!(h, "<small>&hellip; and {more} more</small>");
                }
            }
            let _ = writeln!(
                h,
                "</td><td class=\"num\">{}</td><td class=\"nowrap\">{}</td><td class=\"num\">{}</td>\
                 <td class=\"num\">{}</td></tr>",
                l.versions,
                e(l.last_used.as_deref().unwrap_or("never")),
                size_text(l.output_bytes),
                ms_text(l.lookup_us)
            );
        }
        h.push_str("</tbody>\n</table>\n</body>\n</html>\n");
        h
    }
}

const CSS: &str = "\
body { font: 14px/1.4 system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 24px; color: #222; background: #fafafa; }
h1 { font-size: 20px; margin: 0 0 8px; }
.summary { margin: 0 0 16px; }
.pill { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; border: 1px solid; }
.pill.hit, .node.hit rect { background: #d8f0dc; fill: #d8f0dc; border-color: #2e7d32; stroke: #2e7d32; }
.pill.miss, .node.miss rect { background: #fbd9d5; fill: #fbd9d5; border-color: #c62828; stroke: #c62828; }
.pill.not_cached, .node.not_cached rect { background: #e4e4e4; fill: #e4e4e4; border-color: #616161; stroke: #616161; }
.pill.outputs_missing, .node.outputs_missing rect { background: #fdebc8; fill: #fdebc8; border-color: #e08a00; stroke: #e08a00; }
.node rect { stroke-width: 2; }
.node text { font: 13px system-ui, sans-serif; fill: #222; }
.node text.name { font-weight: 600; font-size: 15px; }
.edge { fill: none; stroke: #555; stroke-width: 1.5; }
svg { display: block; margin-bottom: 20px; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #eee; }
td.num { text-align: right; white-space: nowrap; }
td.reason { min-width: 280px; max-width: 340px; overflow-wrap: anywhere; }
td.paths { min-width: 340px; max-width: 440px; }
td.paths code { word-break: break-all; }
td.nowrap { white-space: nowrap; }
td.paths ul { margin: 0; padding-left: 16px; }
code { font-size: 12px; }
.change { color: #555; font-size: 12px; }
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            html_escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }

    fn layer(base: Base) -> crate::LayerInputs {
        crate::LayerInputs {
            definition: serde_json::Value::Null,
            base,
            imports: Vec::new(),
            overlay_dirs: Vec::new(),
            source_date_epoch: None,
            build_only: false,
            uncacheable: None,
        }
    }

    #[test]
    fn layers_come_depth_first_with_every_base_before_its_dependents() {
        let mut b = Build::new();
        let on = |l: &str| {
            layer(Base::Built {
                layer: l.to_string(),
            })
        };
        b.add("z-root", layer(Base::Scratch));
        b.add("a-root", layer(Base::Scratch));
        b.add("c", on("a-root"));
        b.add("b", on("a-root"));
        b.add("d", on("b"));
        b.add("y", on("z-root"));
        assert_eq!(bases_first(&b), ["a-root", "b", "d", "c", "z-root", "y"]);
    }

    #[test]
    fn a_chain_stays_on_one_row_of_the_graph() {
        let row = |name: &str, built_on: Option<&str>| LayerReport {
            name: name.to_string(),
            base: String::new(),
            built_on: built_on.map(str::to_string),
            state: LayerState::Hit,
            reason: None,
            reason_text: None,
            changed_paths: Vec::new(),
            changed_paths_total: 0,
            versions: 0,
            last_used_unix_ms: None,
            last_used: None,
            output_bytes: 0,
            lookup_us: 0,
        };
        let r = BuildReport {
            created_unix_ms: 0,
            created: String::new(),
            layers: vec![
                row("a", None),
                row("b", Some("a")),
                row("c", Some("b")),
                row("d", Some("a")),
            ],
            counts: StateCounts::default(),
            lookup_total_us: 0,
        };
        assert_eq!(r.columns(), [0, 1, 2, 1]);
        let html = r.to_html("t");
        // a, b, c on the first row; d below b.
        let y = |i: usize| {
            let at = html.find(&format!("id=\"node-{i}\"")).unwrap();
            let rest = &html[at..];
            let y = rest.find(" y=\"").unwrap() + 4;
            rest[y..y + rest[y..].find('"').unwrap()].to_string()
        };
        assert_eq!((y(0), y(1), y(2)), (y(0), y(0), y(0)));
        assert_ne!(y(3), y(0));
    }

    #[test]
    fn clip_counts_characters() {
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("äbc", 3), "äbc");
    }
}
