//! The store boundary (#21): `src/store/` is the only part of the library that names the
//! storage engine, so that a new major version of redb changes no other file and no public
//! type. Read from the source tree itself, as the issue's own check (`grep -rl redb src`) does.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_file_outside_the_store_names_the_storage_engine() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join("src"), &mut files);
    let mut checked = 0;
    let mut naming = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.starts_with("src/store/") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&file).unwrap();
        if text.contains("redb") {
            naming.push(rel);
        }
    }
    // The inspector, the error type, the schema, the binary and the crate root at least.
    assert!(checked > 40, "only {checked} files checked");
    assert!(
        naming.is_empty(),
        "these files outside src/store/ name the storage engine: {naming:?}; read and write \
         through the store's Snapshot/Batch methods and say \"the database\" in words"
    );
}

/// The store's own files do name it: the boundary is where the engine is, not nowhere.
#[test]
fn the_store_is_where_the_engine_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "src/store/mod.rs",
        "src/store/db_error.rs",
        "src/store/tables.rs",
    ] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        assert!(text.contains("redb::"), "{file}");
    }
    let error = std::fs::read_to_string(root.join("src/error.rs")).unwrap();
    assert!(
        error.contains("pub struct DbError"),
        "the opaque error is the crate's own"
    );
}

/// No import cycle between the library's top-level modules (#21): the module that names
/// another (`crate::name` outside comments and unit tests) depends on it, and no module reaches
/// itself. The binary (`src/bin/`) is outside the graph.
#[test]
fn the_library_modules_import_no_cycle() {
    use std::collections::{BTreeMap, BTreeSet};
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let top = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        if rel.starts_with("bin/") || top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            for (i, _) in line.match_indices("crate::") {
                let name: String = line[i + 7..]
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() && name != top {
                    deps.entry(top.clone()).or_default().insert(name);
                }
            }
        }
    }
    assert!(deps.len() > 15, "only {} modules read", deps.len());
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from.to_string()];
        while let Some(m) = stack.pop() {
            for d in deps.get(&m).into_iter().flatten() {
                if d == to {
                    return true;
                }
                if seen.insert(d.clone()) {
                    stack.push(d.clone());
                }
            }
        }
        false
    };
    let cycles: Vec<_> = deps
        .iter()
        .flat_map(|(m, ds)| ds.iter().map(move |d| (m.clone(), d.clone())))
        .filter(|(m, d)| reaches(d, m))
        .collect();
    assert!(
        cycles.is_empty(),
        "import cycles (a -> b -> ... -> a): {cycles:?}"
    );
}
