//! Where a cache lives and what it checks at open: [`CacheConfig`].
//!
//! Owns: the configuration a builder hands to [`Cache::open`](crate::Cache::open), shared by the
//! build descriptions ([`crate::plan`], [`crate::stacker`]) that produce one.
//!
//! Must never: import from `engine`, `store` or any module that does work; it is plain data, so
//! the modules describing a build depend on it and not on the cache.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// Where the cache lives and what it checks at open.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// The database file (created with mode 0600 if missing).
    pub db: PathBuf,
    /// The OCI layout holding the layers' output blobs. A lookup hits only when the version's
    /// blobs are there; [`Cache::prune`](crate::Cache::prune) and
    /// [`Cache::gc`](crate::Cache::gc) drop the versions whose blobs are gone. `None`: nothing
    /// is pruned, and a version with outputs never hits (its outputs cannot be checked; the miss
    /// reason, [`MissReason::OutputsMissing`](crate::MissReason::OutputsMissing), says so). A
    /// directory that does not exist is an error when an output would be found missing.
    pub oci_layout: Option<PathBuf>,
    /// The directory holding one rootfs directory per layer. A build-only version hits only
    /// when its directory is there; pruning drops the build-only versions whose directory is
    /// gone. `None`: nothing is pruned, and a build-only version never hits.
    pub rootfs_dir: Option<PathBuf>,
    /// How long a required write (a put, creating or migrating the file) waits for another
    /// process's write transaction before failing with [`Error::Busy`](crate::Error::Busy);
    /// zero fails at once. Optional writes (stat refresh, pruning) never wait: they are skipped
    /// while another process writes. Default: [`crate::DEFAULT_WRITE_WAIT`] (300 s).
    pub write_wait: Duration,
    /// Set by the caller's signal handler to end a wait for the write lock at once
    /// ([`Error::Interrupted`](crate::Error::Interrupted)). `None`: only the timeout ends it.
    pub interrupt: Option<Arc<AtomicBool>>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            db: PathBuf::new(),
            oci_layout: None,
            rootfs_dir: None,
            write_wait: crate::store::DEFAULT_WRITE_WAIT,
            interrupt: None,
        }
    }
}
