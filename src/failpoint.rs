//! Named crash points for the crash tests, compiled in only with the `failpoints` cargo feature
//! (the `fail` crate, as TiKV uses it); without it, `crash_point!` expands to nothing.
//!
//! Each point marks one step of a write whose outcome after a crash the tests pin down: a put
//! (before and after its rows, before its entry, before and after its commit), a stat refresh
//! (before and after each batch's commit), a version switch (before its write, around its
//! commit) and a migration (between row batches, before the
//! version record, before and after the commit). A process configured with
//! `FAILPOINTS=NAME=return` (read by `fail::FailScenario::setup`) **aborts** at the point —
//! `std::process::abort`: no unwinding, no destructor, no commit, as in a crash. The other
//! actions of `fail` work as it defines them (`panic`, `sleep(MS)`, `pause`, a callback set
//! with `fail::cfg_callback`).
//!
//! Must never: change what the code does when the feature is off, or when no point is
//! configured.

/// Every crash point of a put, in the order a put reaches them.
pub const PUT_POINTS: &[&str] = &[
    "put::before_rows",
    "put::after_rows",
    "put::before_entry",
    "put::before_commit",
    "put::after_commit",
];

/// Every crash point of a stat refresh, in the order a refresh reaches them (once per batch).
pub const REFRESH_POINTS: &[&str] = &[
    "refresh::before_batch",
    "refresh::before_commit",
    "refresh::after_commit",
];

/// Every crash point of a version switch (a hit on a stored version other than the current
/// one: rows and pointer move to it in one write transaction), in the order a switch reaches
/// them. `switch::before_write` is after the lookup read the layer and before the switch takes
/// the write lock: where another process's put can land between the two.
pub const SWITCH_POINTS: &[&str] = &[
    "switch::before_write",
    "switch::before_commit",
    "switch::after_commit",
];

/// Every crash point of a migration, in the order a migration reaches them
/// (`between_batches` once per batch of re-encoded rows).
pub const MIGRATE_POINTS: &[&str] = &[
    "migrate::between_batches",
    "migrate::before_version",
    "migrate::before_commit",
    "migrate::after_commit",
];

/// Marks a named crash point (one of the lists above). Configured with `return`, the process
/// aborts there.
macro_rules! crash_point {
    ($name:expr) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |_| std::process::abort());
    };
}
pub(crate) use crash_point;
