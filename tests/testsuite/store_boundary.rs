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
