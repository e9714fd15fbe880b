//! The redb panic guard and the bookkeeping of damaged database files.
//!
//! Owns: [`guarded`], the one place in the library that turns a panic (inside redb, on a
//! damaged page) into an error; [`panic_message`], the one decoder of a panic payload (the
//! binary words its own last-resort message with it); and the per-process list of files seen
//! damaged, which [`Store`](super::Store)'s `Drop` consults before closing a file.
//!
//! Must never: convert or format errors for callers beyond the one [`Error::Db`] a caught panic
//! becomes, or be called from `error.rs` — damage is recorded here, where an error is produced or
//! handled, never as a side effect of converting one.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Database files this process saw damaged: a panic inside redb, redb's `Corrupted`, or a
/// stored record that does not decode.
static DAMAGED: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Records that the database at `path` was seen damaged (see [`Store`](super::Store)'s `Drop`).
pub(crate) fn note_damage(path: &Path) {
    if let Ok(mut list) = DAMAGED.lock()
        && !list.iter().any(|p| p == path)
    {
        list.push(path.to_path_buf());
    }
}

/// Records damage when `e` says the file is damaged: redb's `Corrupted`, or a record of ours
/// that does not decode.
pub(crate) fn note_if_damage(path: &Path, e: &Error) {
    let damaged = match e {
        Error::Db { source, .. } => source.is_damage(),
        Error::Corrupt { .. } => true,
        _ => false,
    };
    if damaged {
        note_damage(path);
    }
}

/// True (once) when `path` was seen damaged; forgets it.
pub(super) fn take_damage(path: &Path) -> bool {
    match DAMAGED.lock() {
        Ok(mut list) => {
            let before = list.len();
            list.retain(|p| p != path);
            list.len() != before
        }
        // A panic while holding the lock: assume the worst.
        Err(_) => true,
    }
}

/// Runs `f`, turning a panic inside it into [`Error::Db`] naming the file, and recording damage
/// when `f` panicked or failed because the file is damaged. redb's read path trusts page
/// contents (there is no checksum check on a normal read), so a damaged page can make it index
/// out of bounds or unwrap invalid UTF-8 in a key; that must be a clear error about the file,
/// not a crashed build. (Panics of our own code would be reported the same way, which is still
/// better than aborting the builder.)
pub(crate) fn guarded<T>(db: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            note_if_damage(db, &e);
            Err(e)
        }
        Err(payload) => {
            note_damage(db);
            Err(super::db_error::damaged(
                db,
                format!(
                    "reading the database failed inside redb ({}): the file is damaged",
                    panic_message(payload.as_ref())
                ),
            ))
        }
    }
}

/// The message of a panic payload: the text of `panic!("literal")` or of a formatted
/// `panic!`, else `"no message"`.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied())
        .unwrap_or("no message")
}
