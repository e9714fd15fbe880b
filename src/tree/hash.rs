//! Hashing file contents: one regular file the walk saw (opened safely, read twice when its
//! last change is within the current timestamp tick), or a whole base tarball.
//!
//! Owns: opening regular files (`O_NOFOLLOW | O_NONBLOCK`, checked with `fstat` to be the file
//! the walk saw), reading them into blake3, and reading their xattrs through the same open file
//! when asked (no second path lookup; the stat check after the read covers them too: a
//! `setxattr` moves the ctime). Also the test hook [`on_read`], which runs an action between a
//! file's first `fstat` and its read: how the tests make a file change while it is read.
//!
//! Must never: open a FIFO, socket or device node, follow a symlink below the root, or return
//! a digest for a file whose stat changed while it was read; run anything but a test's action
//! from the hook, or cost more than one atomic load per file when no action is armed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use xattr::FileExt;

use super::fastpath::{coarse_now_ns, timestamp_slack_ns};
use super::{StatData, Xattrs, collect_xattrs};
use crate::error::{Error, Result};

/// Files at least this large are hashed with blake3's multi-threaded `update_rayon`.
const LARGE_FILE: u64 = 8 << 20;

/// What reading one regular file gave.
#[derive(Debug)]
pub(crate) struct Hashed {
    /// blake3 of its bytes.
    pub digest: [u8; 32],
    /// How many bytes were read.
    pub bytes: u64,
    /// Its xattrs, read through the open file, when asked for.
    pub xattrs: Option<Xattrs>,
}

/// Hashes a regular file that the walk saw with `seen` (and reads its xattrs through the open
/// file when `with_xattrs`). Returns `None` when the file is not the same one, or changed while
/// it was read.
pub(crate) fn hash_file(
    path: &Path,
    seen: &StatData,
    follow: bool,
    with_xattrs: bool,
) -> Result<Option<Hashed>> {
    let read_start = coarse_now_ns();
    let Some(first) = hash_file_once(path, seen, follow, with_xattrs)? else {
        return Ok(None);
    };
    // A write during the read that lands in the same timestamp tick as the file's last change
    // leaves size, mtime and ctime as they were: the stat comparison cannot see it, and the
    // digest may be of a torn mix. When the file changed that recently, wait until its tick is
    // over and read it again: any write after that gets a new timestamp (caught by the stat
    // check), and two equal digests around it mean no write was in flight.
    // Every write sets the ctime to the kernel's current time (an mtime can be set to anything,
    // a ctime cannot), so the ctime alone tells whether the last change was in the current tick.
    let slack = timestamp_slack_ns(seen.ctime_ns);
    // A ctime well in the future (a server clock ahead) cannot recur: any write sets the ctime
    // to the kernel's "now", which differs from it, so the stat check already catches writes.
    if seen.ctime_ns < read_start.saturating_sub(slack)
        || seen.ctime_ns > coarse_now_ns().saturating_add(slack)
    {
        return Ok(Some(first));
    }
    let settle = seen
        .ctime_ns
        .saturating_add(slack)
        .saturating_sub(coarse_now_ns())
        .min(slack);
    if settle > 0 {
        std::thread::sleep(std::time::Duration::from_nanos(settle as u64 + 1_000_000));
    }
    match hash_file_once(path, seen, follow, false)? {
        Some(second) if (second.digest, second.bytes) == (first.digest, first.bytes) => {
            Ok(Some(first))
        }
        _ => Ok(None),
    }
}

/// One read of a regular file that the walk saw with `seen`: `None` when the file is not the
/// same one, or its stat changed during the read.
fn hash_file_once(
    path: &Path,
    seen: &StatData,
    follow: bool,
    with_xattrs: bool,
) -> Result<Option<Hashed>> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nofollow | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(f) => f,
        // Replaced by a symlink (ELOOP) or removed since the walk saw it.
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io("cannot open", path, e)),
    };
    let before = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if !before.file_type().is_file() || StatData::of(&before) != *seen {
        return Ok(None);
    }
    if ARMED.load(Ordering::Relaxed) > 0 {
        run_armed(path);
    }
    let xattrs = with_xattrs
        .then(|| collect_xattrs(path, file.list_xattr().map(Some), |n| file.get_xattr(n)))
        .transpose()?;
    let mut file = file;
    let (digest, n) =
        hash_open_file(&mut file, seen.size).map_err(|e| Error::io("cannot read", path, e))?;
    // The same open file must still have the stat the walk saw: a write (or `setxattr`) during
    // the read changes its size, mtime or ctime. (A rename over the path meanwhile does not
    // matter: what was hashed is the file the recorded stat data describes.)
    match file.metadata() {
        Ok(after) if StatData::of(&after) == *seen && n == seen.size => Ok(Some(Hashed {
            digest,
            bytes: n,
            xattrs,
        })),
        _ => Ok(None),
    }
}

/// How many [`on_read`] actions are armed and not yet run: the hasher's one check per file.
static ARMED: AtomicUsize = AtomicUsize::new(0);

/// Actions armed with [`on_read`]: (the file's path as the hasher opens it, the action).
type Actions = Vec<(PathBuf, Box<dyn FnOnce() + Send>)>;
static ACTIONS: Mutex<Actions> = Mutex::new(Vec::new());

/// Test hook (reached through `layercache::testing`): runs `action` once, the next time the
/// hasher reads the file at `path` (as the walk names it: the source's path joined with the
/// entry's), after it opened the file and checked its stat and before it reads a byte. An
/// action that writes to the file makes it change while it is read, on demand. Actions of
/// other paths are left for their own file, so tests that run at once do not meet.
pub fn on_read(path: impl Into<PathBuf>, action: impl FnOnce() + Send + 'static) {
    let mut actions = ACTIONS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    actions.push((path.into(), Box::new(action)));
    ARMED.fetch_add(1, Ordering::SeqCst);
}

/// Takes the action armed for `path`, if any, and runs it (outside the lock).
fn run_armed(path: &Path) {
    let action = {
        let mut actions = ACTIONS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = actions.iter().position(|(p, _)| p == path);
        at.map(|i| actions.swap_remove(i).1)
    };
    if let Some(action) = action {
        ARMED.fetch_sub(1, Ordering::SeqCst);
        action();
    }
}

/// Hashes an open file of `size` bytes (as its stat said). A small file is read until `size`
/// bytes came (no read for the end of file: a file that grew meanwhile has another size and
/// mtime, which the caller's check after the read catches); a large one until the end.
fn hash_open_file(file: &mut File, size: u64) -> std::io::Result<([u8; 32], u64)> {
    let mut hasher = blake3::Hasher::new();
    let mut total = 0u64;
    if size >= LARGE_FILE {
        let mut buf = vec![0u8; 4 << 20];
        loop {
            let n = read_full(file, &mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update_rayon(buf.get(..n).unwrap_or(&[]));
            total += n as u64;
        }
    } else {
        total = with_read_buffer(|buf| {
            let mut total = 0u64;
            // Each read asks for a whole buffer, so a file that grew past `size` within it
            // shows as more bytes than expected.
            while total < size {
                let n = match file.read(buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                if n == 0 {
                    break;
                }
                hasher.update(buf.get(..n).unwrap_or(&[]));
                total += n as u64;
            }
            Ok(total)
        })?;
    }
    Ok((*hasher.finalize().as_bytes(), total))
}

/// Bytes read at a time from a file below [`LARGE_FILE`].
const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    /// Each hashing thread's read buffer, zeroed once per thread instead of once per file (a
    /// 64 KiB `memset` per file was ~4% of a hashing thread's samples in a cold lookup).
    static READ_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's read buffer of [`READ_BUFFER`] bytes, taken out of its slot for
/// the call and put back after (a nested call, which nothing makes today, or a thread that is
/// exiting gets a new one). `f` hashes only the bytes each read returned, so what an earlier
/// file left in the buffer is never read.
fn with_read_buffer<T>(f: impl FnOnce(&mut [u8]) -> T) -> T {
    let mut buf = READ_BUF.try_with(std::cell::Cell::take).unwrap_or_default();
    if buf.len() != READ_BUFFER {
        buf.resize(READ_BUFFER, 0);
    }
    let out = f(buf.as_mut_slice());
    let _ = READ_BUF.try_with(|slot| slot.set(buf));
    out
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = buf.get_mut(filled..).unwrap_or(&mut []);
        match file.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
