//! `layercache gc`: drop versions by count, age and size (least recently used first), and
//! report — or with `--oci-layout DIR --delete-blobs`, delete — the output blobs no remaining
//! version names. A thin shell over `Cache::gc`; every decision is the library's.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use layercache::GcPolicy as Policy;
use layercache::{Cache, CacheConfig, GcReport};

use crate::output::{DbArgs, emit};

/// Arguments of `layercache gc`.
#[derive(clap::Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub out: DbArgs,
    /// Keep at most N versions of each layer (the most recently used).
    #[arg(long, value_name = "N")]
    keep: Option<usize>,
    /// Drop versions unused for more than D days.
    #[arg(long, value_name = "D")]
    unused_days: Option<u64>,
    /// Keep the output blobs of all versions under this many bytes (LRU first).
    #[arg(long, value_name = "BYTES")]
    max_bytes: Option<u64>,
    /// Keep at most this many versions in all (LRU first).
    #[arg(long, value_name = "N")]
    max_versions: Option<usize>,
    /// Let the rules drop a layer's current version too (the one its last build used).
    #[arg(long)]
    include_current: bool,
    /// List what would be dropped (and deleted); change nothing.
    #[arg(long)]
    dry_run: bool,
    /// The OCI layout holding the output blobs: the versions whose blobs are gone from it are
    /// dropped too (pruned; give it only when every version of this cache writes there).
    #[arg(long, value_name = "DIR")]
    oci_layout: Option<PathBuf>,
    /// Delete the blobs no remaining version names from --oci-layout, except any that the
    /// layout's index.json still references.
    #[arg(long, requires = "oci_layout")]
    delete_blobs: bool,
    /// Take this as the current time (ms since the Unix epoch) instead of the clock: for
    /// replays and tests.
    #[arg(long, value_name = "UNIX_MS", hide = true)]
    now_ms: Option<u64>,
}

/// `layercache gc`.
pub fn gc(a: GcArgs, interrupt: Arc<AtomicBool>) -> anyhow::Result<ExitCode> {
    let policy = Policy {
        keep_per_layer: a.keep,
        max_unused: a
            .unused_days
            .map(|d| Duration::from_secs(d.saturating_mul(86_400))),
        max_bytes: a.max_bytes,
        max_versions: a.max_versions,
        include_current: a.include_current,
    };
    let now = a.now_ms.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    });
    // With --oci-layout, gc also drops the versions whose output blobs are gone from it.
    let cache = Cache::open(CacheConfig {
        db: a.out.db.clone(),
        oci_layout: a.oci_layout.clone(),
        interrupt: Some(interrupt),
        ..Default::default()
    })?;
    crate::signals::check("nothing was changed")?;
    let layout = a.oci_layout.as_deref().filter(|_| a.delete_blobs);
    let shown = crate::progress::Display::start(&format!("gc {}", a.out.db.display()), None);
    let report = cache.gc(&policy, now, a.dry_run, layout);
    shown.finish();
    let report = report?;
    drop(cache);
    emit(a.out.json, &report, write_text)?;
    let done = if a.dry_run {
        "nothing was changed (dry run)".to_string()
    } else {
        format!(
            "{} version(s) were dropped",
            report.plan.dropped.len() + report.pruned.len()
        )
    };
    crate::signals::check(&done)?;
    Ok(ExitCode::SUCCESS)
}

fn write_text(r: &GcReport, w: &mut impl Write) -> io::Result<()> {
    let verb = if r.dry_run { "would drop" } else { "dropped" };
    for d in &r.pruned {
        writeln!(w, "{verb} {} (pruned): {}", d.layer, d.why)?;
    }
    let p = &r.plan;
    for d in &p.dropped {
        let current = if d.current { " (current)" } else { "" };
        writeln!(
            w,
            "{verb} {} {}{current}: {}",
            d.layer,
            d.input_digest.get(..16).unwrap_or(&d.input_digest),
            d.reason
        )?;
    }
    for d in &r.damaged {
        writeln!(w, "{verb} damaged version {d}")?;
    }
    writeln!(
        w,
        "{} -> {} versions, {} -> {} bytes of outputs{}",
        p.versions_before,
        p.versions_after,
        p.bytes_before,
        p.bytes_after,
        if p.over_budget {
            " (still over budget: only current versions are left; --include-current drops them)"
        } else {
            ""
        }
    )?;
    match &r.blobs {
        None => {
            for (d, size) in &p.unreferenced_blobs {
                writeln!(w, "unreferenced blob {d} ({size} bytes)")?;
            }
        }
        Some(b) => {
            let verb = if r.dry_run { "would delete" } else { "deleted" };
            for d in &b.deleted {
                writeln!(w, "{verb} blob {d}")?;
            }
            for d in &b.protected {
                writeln!(w, "kept blob {d}: index.json references it")?;
            }
            for d in &b.missing {
                writeln!(w, "blob {d} was already gone")?;
            }
            for d in &b.refused {
                writeln!(
                    w,
                    "left blob {d}: not a well-formed digest or not a regular file"
                )?;
            }
        }
    }
    Ok(())
}
