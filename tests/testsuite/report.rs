//! `layercache report` and `layercache::build_report`: a picture of a build. A generated
//! monorepo is built by the reference builder (`examples/builder.rs`, real umoci images); then
//! a file is edited and hostile-named files are added (`app` misses, `release` above it too), a
//! layer's blob is deleted (`docs`: outputs missing) and a layer that was never built is added
//! to the plan (not cached), so every state is on the page. The HTML page is rendered by
//! headless Chromium (`--dump-dom`): every layer is there with its state, its first reason and
//! its changed paths (capped, with a count), and no name or path injected markup. A screenshot
//! is taken too; with `LAYERCACHE_SCREENSHOT=FILE` it is also copied to FILE (how
//! `docs/report.png` is made).
//!
//! umoci, skopeo and chromium come from `.ci/install-deps`; without them the test is skipped
//! with a message (never in CI, where it fails).

use crate::builder_example as builder;
use crate::registry;
use crate::support_builder;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use layercache::{Cache, LayerState, MAX_CHANGED_PATHS, Plan, build_report};
use serde_json::json;
use support_builder::{EDITED, Project};

/// A layer name and file names that would be markup if pasted into HTML unescaped.
const HOSTILE_LAYER: &str = "<img src=x onerror=alert(1)>";
const HOSTILE_FILES: [&str; 2] = [
    "<script>alert(2)<\\script>.rs",
    "<img src=y onerror=alert(3)>.rs",
];
/// New plain files added beside them, so the changed paths overflow the cap.
const NEW_FILES: usize = 13;

/// Runs headless Chromium with `args` and the page, stdout to `out`; kills it (by its pid)
/// after two minutes.
fn chromium(args: &[String], page: &Path, out: &Path) {
    let profile = tempfile::tempdir().unwrap();
    let mut child = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::from(std::fs::File::create(out).unwrap()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {args:?}: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish in 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Text as Chromium serializes a text node: `&`, `<`, `>` (and no-break spaces) escaped.
fn dom_text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\u{a0}', "&nbsp;")
}

#[test]
fn the_report_shows_every_layer_with_its_state_and_reason_and_renders_in_chromium() {
    if !registry::tools_available(&["umoci", "skopeo", "chromium"]) {
        return;
    }
    let p = Project::generate();
    let first = builder::build(&p.plan(), &p.db()).unwrap();
    assert_eq!(first.built().len(), 6);

    // app: one file edited, hostile-named and plain files added.
    p.edit();
    let dir = p.p("monorepo/services/web/src/util");
    for name in HOSTILE_FILES {
        std::fs::write(dir.join(name), "let x = 1;\n").unwrap();
    }
    for i in 0..NEW_FILES {
        std::fs::write(dir.join(format!("new_{i:02}.rs")), "let y = 2;\n").unwrap();
    }
    // docs: its layer blob is gone.
    let docs = p.manifest("docs");
    let docs_layer = docs["layers"].as_array().unwrap().last().unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::remove_file(p.blob(&docs_layer)).unwrap();
    // A layer that was never built, with a name that is markup.
    p.write_plan(&[(
        HOSTILE_LAYER,
        json!({"definition": {"run": "make tools"}, "base": {"type": "built", "layer": "base"}}),
    )]);

    let html = p.p("report.html");
    let out = Command::new(env!("CARGO_BIN_EXE_layercache"))
        .args(["report", "--json", "--plan"])
        .arg(p.plan())
        .arg("--db")
        .arg(p.db())
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layers = report["layers"].as_array().unwrap();
    let state_of = |name: &str| -> &str {
        layers
            .iter()
            .find(|l| l["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not in the report"))["state"]
            .as_str()
            .unwrap()
    };
    assert_eq!(layers.len(), 7);
    for l in ["base", "deps", "runtime"] {
        assert_eq!(state_of(l), "hit", "{l}");
    }
    assert_eq!(state_of("app"), "miss");
    assert_eq!(state_of("release"), "miss");
    assert_eq!(state_of("docs"), "outputs_missing");
    assert_eq!(state_of(HOSTILE_LAYER), "not_cached");
    assert_eq!(
        report["counts"],
        json!({"hit": 3, "miss": 2, "not_cached": 1, "outputs_missing": 1})
    );
    let app = layers.iter().find(|l| l["name"] == "app").unwrap();
    assert_eq!(app["reason"]["reason"], "overlay_dir_content_changed");
    let total = HOSTILE_FILES.len() + NEW_FILES + 1;
    assert_eq!(app["changed_paths_total"], total);
    let listed = app["changed_paths"].as_array().unwrap();
    assert_eq!(listed.len(), MAX_CHANGED_PATHS);
    // The typed reason's diff is cut to the same paths.
    let diff = &app["reason"]["diff"];
    let in_reason = ["added", "removed", "modified"]
        .iter()
        .map(|k| diff[k].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(in_reason, MAX_CHANGED_PATHS);
    let release = layers.iter().find(|l| l["name"] == "release").unwrap();
    assert_eq!(release["reason"]["change"]["what"], "base_layer_missed");
    for l in layers {
        let name = l["name"].as_str().unwrap();
        if name == HOSTILE_LAYER {
            assert_eq!(l["versions"], 0);
        } else {
            assert_eq!(l["versions"], 1, "{name}");
            assert!(l["output_bytes"].as_u64().unwrap() > 0, "{name}");
            assert!(l["last_used"].is_string(), "{name}");
        }
    }

    // Text is the default: a line per layer with its state, then its reason.
    let text = Command::new(env!("CARGO_BIN_EXE_layercache"))
        .args(["report", "--plan"])
        .arg(p.plan())
        .arg("--db")
        .arg(p.db())
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.starts_with("7 layer(s): 3 hit, 2 miss, 1 not cached, 1 outputs missing"),
        "{text}"
    );
    for (name, label) in [
        ("app ", "miss"),
        ("docs ", "outputs missing"),
        ("runtime ", "hit"),
        ("<img src=x onerror=alert(1)> ", "not cached"),
    ] {
        assert!(
            text.lines()
                .any(|line| line.starts_with(name) && line.contains(label)),
            "{name}: {text}"
        );
    }
    assert!(text.contains("... and 4 more path(s)"), "{text}");

    // The library function returns the same data (timings aside).
    let plan = Plan::load(p.plan()).unwrap();
    let cache = Cache::open(plan.cache_config(p.db())).unwrap();
    let lib = build_report(&cache, plan.build()).unwrap();
    drop(cache);
    assert_eq!(lib.layers.len(), layers.len());
    for (a, b) in lib.layers.iter().zip(layers) {
        assert_eq!(a.name, b["name"].as_str().unwrap());
        assert_eq!(a.state.as_str(), b["state"].as_str().unwrap());
        assert_eq!(a.reason_text.as_deref(), b["reason_text"].as_str());
        assert_eq!(
            a.changed_paths_total,
            b["changed_paths_total"].as_u64().unwrap()
        );
        assert_eq!(a.versions, b["versions"].as_u64().unwrap());
        assert_eq!(a.output_bytes, b["output_bytes"].as_u64().unwrap());
    }
    assert_eq!(
        lib.layers
            .iter()
            .find(|l| l.name == "docs")
            .map(|l| l.state),
        Some(LayerState::OutputsMissing)
    );

    // The page as Chromium sees it.
    let page = std::fs::read_to_string(&html).unwrap();
    // Self-contained: no script, no link, no image or frame, nothing fetched; the only URL is
    // the SVG namespace.
    for tag in ["<script", "<link", "<img", "<iframe", "@import"] {
        assert!(!page.to_lowercase().contains(tag), "the page has {tag}");
    }
    assert_eq!(
        page.matches("http").count(),
        page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count()
    );
    let dom_file = p.p("report.dom.html");
    chromium(&["--dump-dom".to_string()], &html, &dom_file);
    let dom = std::fs::read_to_string(&dom_file).unwrap();
    let lower = dom.to_lowercase();
    assert!(!lower.contains("<script"), "markup was injected: {dom}");
    assert!(!lower.contains("<img"), "markup was injected: {dom}");
    assert!(dom.contains("<svg"), "no graph: {dom}");
    for (i, l) in layers.iter().enumerate() {
        let start = dom
            .find(&format!("id=\"layer-{i}\""))
            .unwrap_or_else(|| panic!("row {i} is missing: {dom}"));
        let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
        let name = l["name"].as_str().unwrap();
        let state = l["state"].as_str().unwrap();
        assert!(row.contains(&format!("data-state=\"{state}\"")), "{row}");
        assert!(
            row.contains(&dom_text(&layercache::escape_bytes(name.as_bytes()))),
            "{row}"
        );
        let label = match state {
            "not_cached" => "not cached",
            "outputs_missing" => "outputs missing",
            other => other,
        };
        assert!(row.contains(&format!(">{label}<")), "{label}: {row}");
        if let Some(reason) = l["reason_text"].as_str() {
            assert!(row.contains(&dom_text(reason)), "{reason}: {row}");
        }
        for c in l["changed_paths"].as_array().unwrap() {
            assert!(
                row.contains(&dom_text(c["path"].as_str().unwrap())),
                "{c}: {row}"
            );
        }
        let total = l["changed_paths_total"].as_u64().unwrap();
        let more = total - l["changed_paths"].as_array().unwrap().len() as u64;
        if more > 0 {
            assert!(row.contains(&format!("and {more} more")), "{row}");
        }
        // The graph has a box for it too.
        assert!(dom.contains(&format!("id=\"node-{i}\"")), "node {i}");
    }
    // The cap: 15 added paths sort before the one modified; the hostile names are listed.
    for f in HOSTILE_FILES {
        let shown = layercache::escape_bytes(format!("services/web/src/util/{f}").as_bytes());
        assert!(
            listed.iter().any(|c| c["path"] == shown.as_str()),
            "{shown}"
        );
        assert!(dom.contains(&dom_text(&shown)), "{shown}");
    }
    assert!(listed.iter().all(|c| c["path"] != EDITED));

    // A screenshot of it.
    let png = p.p("report.png");
    let log = p.p("screenshot.log");
    chromium(
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1440,1240".to_string(),
            "--hide-scrollbars".to_string(),
        ],
        &html,
        &log,
    );
    let bytes = std::fs::read(&png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 10_000, "{} bytes", bytes.len());
    if let Some(dest) = std::env::var_os("LAYERCACHE_SCREENSHOT") {
        std::fs::copy(&png, dest).unwrap();
    }
}
