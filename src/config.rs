//! Where a cache lives and what it checks at open: [`CacheConfig`].
//!
//! Owns: the configuration a builder hands to [`Cache::open`](crate::Cache::open), shared by the
//! build descriptions ([`crate::plan`], [`crate::stacker`]) that produce one.
//!
//! Must never: import from `cache`, `store` or any module that does work; it is plain data, so
//! the modules describing a build depend on it and not on the cache.

use std::path::PathBuf;

/// Where the cache lives and what it checks at open.
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {
    /// The database file (created with mode 0600 if missing).
    pub db: PathBuf,
    /// The OCI layout holding the layers' output blobs; entries whose blobs are gone are pruned
    /// at open. `None` skips that pruning.
    pub oci_layout: Option<PathBuf>,
    /// The directory holding one rootfs directory per layer; build_only entries whose directory
    /// is gone are pruned at open. `None` skips that pruning.
    pub rootfs_dir: Option<PathBuf>,
}
