//! A minimal inotify watch (through libc): lets a test act at a precise step of another
//! thread's file accesses (after a file was opened, after it was closed), instead of sleeping
//! and hoping.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub use libc::{IN_CLOSE_NOWRITE, IN_OPEN};

/// One event: the watch descriptor it came from and its mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub wd: i32,
    pub mask: u32,
}

pub struct Watch {
    fd: i32,
}

impl Watch {
    pub fn new() -> Watch {
        // SAFETY: plain syscall; the descriptor is closed in Drop.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        Watch { fd }
    }

    /// Watches `p` for the events in `mask`; returns the watch descriptor.
    pub fn add(&self, p: &Path, mask: u32) -> i32 {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path and our descriptor.
        let wd = unsafe { libc::inotify_add_watch(self.fd, c.as_ptr(), mask) };
        assert!(
            wd >= 0,
            "inotify_add_watch {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
        wd
    }

    /// The events queued now, without waiting.
    pub fn pending(&self) -> Vec<Event> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return out;
            }
            let mut at = 0usize;
            while at + 16 <= n as usize {
                let wd = i32::from_ne_bytes(buf[at..at + 4].try_into().unwrap());
                let mask = u32::from_ne_bytes(buf[at + 4..at + 8].try_into().unwrap());
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                out.push(Event { wd, mask });
                at += 16 + len;
            }
        }
    }

    /// Waits (at most `timeout`) until an event matching `mask` arrives; returns every event
    /// read so far (those before it, it, and any read in the same batch after it). `None` on
    /// timeout.
    pub fn wait_for(&self, mask: u32, timeout: std::time::Duration) -> Option<Vec<Event>> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let batch = self.pending();
            let hit = batch.iter().any(|e| e.mask & mask != 0);
            seen.extend(batch);
            if hit {
                return Some(seen);
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return None;
            }
            let mut pfd = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd we own.
            unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.fd) };
    }
}
