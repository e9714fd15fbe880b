//! Hashing file contents: one regular file the walk saw (opened safely, read twice when its
//! last change is within the current timestamp tick), or a whole base tarball.
//!
//! Owns: opening regular files (`O_NOFOLLOW | O_NONBLOCK`, checked with `fstat` to be the file
//! the walk saw) and reading them into blake3.
//!
//! Must never: open a FIFO, socket or device node, follow a symlink below the root, or return
//! a digest for a file whose stat changed while it was read.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::StatData;
use super::fastpath::{coarse_now_ns, timestamp_slack_ns};
use crate::error::{Error, Result};

/// Files at least this large are hashed with blake3's multi-threaded `update_rayon`.
const LARGE_FILE: u64 = 8 << 20;

/// Hashes a regular file that the walk saw with `seen`. Returns `None` when the file is not the
/// same one, or changed while it was read.
pub(crate) fn hash_file(
    path: &Path,
    seen: &StatData,
    follow: bool,
) -> Result<Option<([u8; 32], u64)>> {
    let read_start = coarse_now_ns();
    let Some(first) = hash_file_once(path, seen, follow)? else {
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
    match hash_file_once(path, seen, follow)? {
        Some(second) if second == first => Ok(Some(first)),
        _ => Ok(None),
    }
}

/// One read of a regular file that the walk saw with `seen`: `None` when the file is not the
/// same one, or its stat changed during the read.
fn hash_file_once(path: &Path, seen: &StatData, follow: bool) -> Result<Option<([u8; 32], u64)>> {
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
    let mut file = file;
    let (digest, n) =
        hash_open_file(&mut file, seen.size).map_err(|e| Error::io("cannot read", path, e))?;
    // The same open file must still have the stat the walk saw: a write during the read changes
    // its size, mtime or ctime. (A rename over the path meanwhile does not matter: what was
    // hashed is the file the recorded stat data describes.)
    match file.metadata() {
        Ok(after) if StatData::of(&after) == *seen && n == seen.size => Ok(Some((digest, n))),
        _ => Ok(None),
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
