//! Issue #22 through the built binary: a shell-driven chain of built layers walks each source
//! once per lookup and once per put (`lookup --base-record`, the base proof a put re-checks),
//! and never trusts a base that this build's step did not resolve: a base put again or
//! switched by another process in between is walked again. Work is counted from the `--json`
//! counters, never timed.

use crate::chain_shell::{self, LAYERS, Shell, json_of, walked};
use crate::common;

use std::path::PathBuf;

use serde_json::{Value, json};

/// A chain `l0` (scratch) ← `l1` ← … ← `l9`, each importing its own directory `src<k>`:
/// `l0`'s is the big one.
struct Chain {
    dir: tempfile::TempDir,
    shell: Shell,
}

impl Chain {
    fn new(base_files: usize, layer_files: usize) -> Chain {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        common::output_layout(&root.join("oci"));
        // A second output blob, for a base rebuilt with other outputs.
        let other = b"another build's output";
        let hex = blake3::hash(other).to_hex().to_string();
        common::write(&root.join("oci"), &format!("blobs/sha256/{hex}"), other);
        let m2 = json!({"tar": {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{hex}"),
            "size": other.len(),
        }});
        std::fs::write(root.join("m2.json"), m2.to_string()).unwrap();
        let manifests = serde_json::to_string(&common::outputs()).unwrap();
        std::fs::write(root.join("m.json"), manifests).unwrap();
        let files = |k| if k == 0 { base_files } else { layer_files };
        let plan = chain_shell::write_chain(root, files, |_, i| format!("d{}", i % 7)).unwrap();
        // The same build on another checkout: `l0` imports `other0`.
        let mut plan2 = plan.clone();
        plan2["layers"]["l0"]["imports"][0]["path"] = json!("other0");
        common::write(root, "other0/x.txt", b"another branch");
        std::fs::write(root.join("plan2.json"), plan2.to_string()).unwrap();
        let shell = Shell {
            root: root.to_path_buf(),
            db: root.join("cache.redb"),
        };
        Chain { dir, shell }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// `lookup l<k> --record r<k>.json [--base-record r<k-1>.json]`.
    fn lookup(&self, k: usize, with_base_record: bool) -> (i32, Value) {
        json_of(&self.shell.lookup(k, with_base_record))
    }

    /// `put l<k> --from r<k>.json --manifests M`.
    fn put(&self, k: usize, manifests: &str) -> (i32, Value) {
        json_of(&self.shell.put(k, manifests))
    }

    /// `put l<k> --from r<k>.json --manifests M` expected to fail: its exit code and stderr.
    fn put_refused(&self, k: usize, manifests: &str) -> (i32, String) {
        let o = self.shell.put(k, manifests);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        (o.status.code().unwrap_or(-1), err)
    }

    /// Another checkout's build of `l0` (plan2: other sources), or of `l0` with the plan's
    /// sources and other outputs: a lookup with a record and its put, in their own files.
    fn other_process_puts_l0(&self, plan: &str, manifests: &str) {
        let rec = self.p("other.json");
        let rec = rec.to_str().unwrap();
        let o = self.shell.run(plan, &["lookup", "l0", "--record", rec]);
        assert!(matches!(o.status.code(), Some(0 | 1)), "{o:?}");
        let m = self.p(manifests);
        let o = self.shell.run(
            plan,
            &[
                "put",
                "l0",
                "--from",
                rec,
                "--manifests",
                m.to_str().unwrap(),
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{o:?}");
    }
}

fn trusted(v: &Value) -> u64 {
    v["counters"]["bases_trusted"].as_u64().unwrap()
}

/// A cold build of the chain, then a build in which nothing changed: every lookup evaluates
/// only its own layer and walks only its own source; every put walks only its own source (it
/// must: that walk is what catches a source edited during the build).
#[test]
fn a_shell_chain_of_ten_layers_walks_each_source_once_per_lookup_and_once_per_put() {
    let c = Chain::new(400, 30);
    let (mut lookups, mut puts) = (0, 0);
    for k in 0..LAYERS {
        let (code, v) = c.lookup(k, true);
        assert_eq!(code, 1, "{v}");
        assert_eq!(v["counters"]["lookups"], 1, "l{k}: {v}");
        assert_eq!(trusted(&v), u64::from(k > 0), "l{k}: {v}");
        lookups += walked(&v);
        let (code, v) = c.put(k, "m.json");
        assert_eq!(code, 0, "{v}");
        // The put re-checked the base proof instead of walking the base.
        assert_eq!(v["counters"]["lookups"], 0, "l{k}: {v}");
        assert_eq!(trusted(&v), u64::from(k > 0), "l{k}: {v}");
        puts += walked(&v);
    }
    let sources = c.shell.source_entries();
    // Files, 7 directories and the root per source.
    assert_eq!(sources, 408 + 9 * 38, "the sum of the sources' entries");
    assert!(
        lookups * 100 <= sources * 105,
        "lookups walked {lookups} entries for {sources} source entries"
    );
    assert!(
        puts * 100 <= sources * 105,
        "puts walked {puts} entries for {sources} source entries"
    );

    // Nothing changed: every lookup hits, trusting the base's hit in this build.
    let mut again = 0;
    for k in 0..LAYERS {
        let (code, v) = c.lookup(k, true);
        assert_eq!(code, 0, "l{k}: {v}");
        assert_eq!(trusted(&v), u64::from(k > 0), "l{k}: {v}");
        again += walked(&v);
    }
    assert!(again * 100 <= sources * 105, "{again} for {sources}");

    // Without the base records, every lookup walks the chain below it (the N² build).
    let mut old = 0;
    for k in 0..LAYERS {
        let (code, v) = c.lookup(k, false);
        assert_eq!(code, 0, "l{k}: {v}");
        assert_eq!(v["counters"]["lookups"], k as u64 + 1, "l{k}: {v}");
        old += walked(&v);
    }
    eprintln!(
        "source entries {sources}: cold lookups walked {lookups}, puts {puts}; no-change \
         lookups {again}; without base records {old}"
    );
    assert!(old > 5 * sources, "{old} for {sources}");
}

/// A base file edited after the base's put and before the dependent's lookup: the dependent
/// is looked up on the base version *this build* built (what its builder builds it on), and
/// says so in its counters; the next build sees the edit, rebuilds the base, and the
/// dependent misses with "base changed" — no version is ever hit on a base it was not built
/// on. Without the base record the edited base is walked and the dependent misses at once.
#[test]
fn a_base_edited_after_its_put_is_this_builds_base_and_the_next_build_rebuilds_on_it() {
    let c = Chain::new(20, 5);
    for k in 0..2 {
        assert_eq!(c.lookup(k, true).0, 1);
        assert_eq!(c.put(k, "m.json").0, 0);
    }
    // Build 2: l0 hits; then its file is edited before l1's lookup.
    assert_eq!(c.lookup(0, true).0, 0);
    common::write(c.dir.path(), "src0/d0/f0.txt", b"edited during the build");
    let (code, v) = c.lookup(1, true);
    assert_eq!(code, 0, "{v}");
    assert_eq!(trusted(&v), 1, "{v}");
    // Without this build's record of l0, l0 is walked: it misses, so l1 does.
    let (code, v) = c.lookup(1, false);
    assert_eq!(code, 1, "{v}");
    assert_eq!(trusted(&v), 0, "{v}");
    assert!(v["reasons"].to_string().contains("base"), "{v}");
    // Build 3 sees the edit: l0 misses and is rebuilt; l1 then misses on its base.
    let (code, v) = c.lookup(0, true);
    assert_eq!(code, 1, "{v}");
    assert_eq!(c.put(0, "m2.json").0, 0);
    let (code, v) = c.lookup(1, true);
    assert_eq!(code, 1, "{v}");
    assert_eq!(trusted(&v), 1, "{v}");
    assert!(v["reasons"].to_string().contains("base"), "{v}");
}

/// Another process puts the base again (another checkout's sources, or the same sources with
/// other outputs) between the base's step and the dependent's lookup, or between the
/// dependent's lookup and its put: the proof no longer holds, so the base is walked (its
/// sources, this build's, hit the version this build used) and the dependent's answer and
/// put are what they would be without any trust.
#[test]
fn a_base_put_again_by_another_process_in_between_is_walked_not_trusted() {
    let c = Chain::new(20, 5);
    for k in 0..2 {
        assert_eq!(c.lookup(k, true).0, 1);
        assert_eq!(c.put(k, "m.json").0, 0);
    }
    // Build 2: l0 hits; another checkout puts l0 before l1's lookup.
    assert_eq!(c.lookup(0, true).0, 0);
    c.other_process_puts_l0("plan2.json", "m.json");
    let (code, v) = c.lookup(1, true);
    assert_eq!(trusted(&v), 0, "{v}");
    assert_eq!(v["counters"]["lookups"], 2, "l0 was evaluated again: {v}");
    // l0 walked with this build's sources hits its own version again: l1 hits.
    assert_eq!(code, 0, "{v}");

    // The same sources put again with other outputs (a non-reproducible rebuild) between
    // l1's lookup and its put: the version's entry digest moved, so the put walks l0, whose
    // version now has the other outputs: l1's base hash differs and nothing is recorded.
    c.other_process_puts_l0("plan.json", "m2.json");
    let (code, err) = c.put_refused(1, "m.json");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("base built:l0 (hash"), "{err}");

    // And with a record of l0 taken before that rebuild, l1's lookup does not trust it.
    let (code, v) = c.lookup(1, true);
    assert_eq!(trusted(&v), 0, "{v}");
    assert_eq!(code, 1, "{v}");
    assert!(v["reasons"].to_string().contains("base"), "{v}");
}

/// The other layer's record, an edited record, and a record of another cache are refused.
#[test]
fn a_base_record_must_be_of_the_base_of_this_cache_and_unedited() {
    let c = Chain::new(5, 3);
    assert_eq!(c.lookup(0, true).0, 1);
    assert_eq!(c.put(0, "m.json").0, 0);
    assert_eq!(c.lookup(1, true).0, 1);
    // l2's base is l1, not l0.
    let (l2, r0) = ("l2".to_string(), c.shell.rec(0));
    let o = c
        .shell
        .run("plan.json", &["lookup", &l2, "--base-record", &r0]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    // Edited: its result claims another generation.
    let text = std::fs::read_to_string(&r0).unwrap();
    let mut v: Value = serde_json::from_str(&text).unwrap();
    let g = v["result"]["generation"].as_u64().unwrap();
    v["result"]["generation"] = json!(g + 1);
    std::fs::write(&r0, v.to_string()).unwrap();
    let o = c
        .shell
        .run("plan.json", &["lookup", "l1", "--base-record", &r0]);
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("was not made by a lookup of the cache"),
        "{o:?}"
    );
}

/// Another process's lookup switches the base's rows to another stored version (a hit on it)
/// between the base's step and the dependent's lookup: the generation moved, so the base is
/// walked, and with this build's sources it hits this build's version again.
#[test]
fn a_base_version_switched_in_between_is_walked_not_trusted() {
    let c = Chain::new(20, 5);
    assert_eq!(c.lookup(0, true).0, 1);
    assert_eq!(c.put(0, "m.json").0, 0);
    assert_eq!(c.lookup(1, true).0, 1);
    assert_eq!(c.put(1, "m.json").0, 0);
    // A second version of l0 from another checkout.
    c.other_process_puts_l0("plan2.json", "m.json");
    // This build: l0 hits its own version (switching the rows back to it).
    let (code, v) = c.lookup(0, true);
    assert_eq!(code, 0, "{v}");
    // The other checkout's lookup hits its version: a switch.
    let o = c.shell.run("plan2.json", &["lookup", "l0"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let (code, v) = c.lookup(1, true);
    assert_eq!(trusted(&v), 0, "{v}");
    assert_eq!(v["counters"]["lookups"], 2, "{v}");
    assert_eq!(code, 0, "{v}");
}
