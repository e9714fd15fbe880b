//! Holding another thread's `open` of one file (fanotify permission events, root only): a test
//! acts at a precise step of another thread's work — while that thread waits inside an open —
//! instead of sleeping and hoping.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Every open of one file waits for this gate's verdict.
pub struct OpenGate {
    fd: i32,
}

/// An open that is being held; allowed when dropped.
pub struct HeldOpen<'g> {
    gate: &'g OpenGate,
    fd: i32,
}

impl OpenGate {
    /// Holds every open of `p` (until each is allowed). Fails without CAP_SYS_ADMIN or kernel
    /// support for permission events.
    pub fn new(p: &Path) -> std::io::Result<OpenGate> {
        // SAFETY: plain syscalls; the descriptor is closed in Drop (or here on failure).
        unsafe {
            let fd = libc::fanotify_init(
                libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC,
                libc::O_RDONLY as u32,
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
            if libc::fanotify_mark(
                fd,
                libc::FAN_MARK_ADD,
                libc::FAN_OPEN_PERM,
                libc::AT_FDCWD,
                c.as_ptr(),
            ) != 0
            {
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                return Err(e);
            }
            Ok(OpenGate { fd })
        }
    }

    /// Waits (at most `timeout`) for the next open of the file, and holds it.
    pub fn next_open(&self, timeout: Duration) -> Option<HeldOpen<'_>> {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd we own.
        if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) } != 1 {
            return None;
        }
        let mut ev = std::mem::MaybeUninit::<libc::fanotify_event_metadata>::uninit();
        let size = std::mem::size_of::<libc::fanotify_event_metadata>();
        // SAFETY: reading one event into a buffer of its size. (A second open queued meanwhile
        // stays queued: only one reader thread opens the file here.)
        let n = unsafe { libc::read(self.fd, ev.as_mut_ptr().cast(), size) };
        assert_eq!(n as usize, size, "{}", std::io::Error::last_os_error());
        // SAFETY: the kernel filled it.
        let ev = unsafe { ev.assume_init() };
        Some(HeldOpen {
            gate: self,
            fd: ev.fd,
        })
    }
}

impl Drop for HeldOpen<'_> {
    fn drop(&mut self) {
        let verdict = libc::fanotify_response {
            fd: self.fd,
            response: libc::FAN_ALLOW,
        };
        // SAFETY: answering the event we read, then closing its descriptor.
        unsafe {
            libc::write(
                self.gate.fd,
                (&verdict as *const libc::fanotify_response).cast(),
                std::mem::size_of::<libc::fanotify_response>(),
            );
            libc::close(self.fd);
        }
    }
}

impl Drop for OpenGate {
    fn drop(&mut self) {
        // SAFETY: closing our descriptor, which also allows any open still held.
        unsafe { libc::close(self.fd) };
    }
}
