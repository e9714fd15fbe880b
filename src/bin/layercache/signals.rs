//! SIGINT and SIGTERM: the first one sets a flag that the commands check between steps (and
//! that ends a wait for the write lock at once), so an interrupted build step finishes or drops
//! its transaction, closes the database cleanly and exits 128 + the signal number (130, 143).
//! A second signal of either kind ends the process at once, with the default action.
//!
//! Owns: the handler and the flag. Must never: do anything in the handler but store to atomics
//! and, for the second signal, restore the default action and re-raise (all async-signal-safe).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};

/// The signal received first (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// The flag handed to the library (leaked: it lives as long as the process).
static FLAG: AtomicPtr<AtomicBool> = AtomicPtr::new(std::ptr::null_mut());

extern "C" fn on_signal(sig: libc::c_int) {
    if SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
        // The second signal: stop now, as if no handler were installed.
        // SAFETY: signal and raise are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let flag = FLAG.load(Ordering::SeqCst);
    if !flag.is_null() {
        // SAFETY: the pointer comes from a leaked Arc, valid for the whole process.
        unsafe { (*flag).store(true, Ordering::SeqCst) };
    }
}

/// Installs the handlers for SIGINT and SIGTERM; returns the flag they set.
pub fn install() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    FLAG.store(Arc::into_raw(flag.clone()).cast_mut(), Ordering::SeqCst);
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: a zeroed sigaction is valid; the handler only touches atomics.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
    flag
}

/// The signal that interrupted this process, if one did.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// The error a command returns when it stops because of a signal; `output::finish` turns it
/// into exit status 128 + the signal number.
#[derive(Debug)]
pub struct Interrupted {
    /// The signal.
    pub signal: i32,
    /// What happened to the cache ("nothing was recorded", "layer X was recorded").
    pub outcome: String,
}

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.signal {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        write!(
            f,
            "interrupted by {name}; {}; the cache was closed cleanly",
            self.outcome
        )
    }
}

impl std::error::Error for Interrupted {}

/// Fails with [`Interrupted`] if a signal arrived.
pub fn check(outcome: &str) -> anyhow::Result<()> {
    match received() {
        Some(signal) => Err(Interrupted {
            signal,
            outcome: outcome.to_string(),
        }
        .into()),
        None => Ok(()),
    }
}
