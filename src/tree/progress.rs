//! Progress of long work, as atomic counters another thread polls.
//!
//! Owns: [`Progress`] (the counters every walk of a cache adds to, a window at a time) and
//! [`ProgressSnapshot`] (one reading of them).
//!
//! Must never: draw anything, or cost per entry (walks add once per window of entries, so a
//! poller at ~10 Hz costs nothing measurable); the binary turns readings into a progress bar.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use super::WalkCounters;

/// Counters of work done so far, shared by the walks of a cache and whoever polls them.
#[derive(Debug, Default)]
pub struct Progress {
    entries_walked: AtomicU64,
    files_hashed: AtomicU64,
    bytes_hashed: AtomicU64,
    expected_entries: AtomicU64,
}

/// One reading of [`Progress`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProgressSnapshot {
    /// Entries enumerated and described.
    pub entries_walked: u64,
    /// Regular files read and hashed.
    pub files_hashed: u64,
    /// Bytes fed to blake3.
    pub bytes_hashed: u64,
    /// Entries the walks begun so far are expected to visit, from stored row counts (0 when
    /// unknown, as for a tree never cached); an estimate, since trees change.
    pub expected_entries: u64,
}

impl Progress {
    /// Counters at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the counters.
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            entries_walked: self.entries_walked.load(Ordering::Relaxed),
            files_hashed: self.files_hashed.load(Ordering::Relaxed),
            bytes_hashed: self.bytes_hashed.load(Ordering::Relaxed),
            expected_entries: self.expected_entries.load(Ordering::Relaxed),
        }
    }

    /// Adds the work of one window.
    pub(crate) fn add(&self, c: &WalkCounters) {
        self.entries_walked
            .fetch_add(c.entries_walked, Ordering::Relaxed);
        self.files_hashed
            .fetch_add(c.files_hashed, Ordering::Relaxed);
        self.bytes_hashed
            .fetch_add(c.bytes_hashed, Ordering::Relaxed);
    }

    /// A walk about to start is expected to visit `entries` more entries.
    pub fn expect(&self, entries: u64) {
        self.expected_entries.fetch_add(entries, Ordering::Relaxed);
    }
}
