//! A shared writable mapping of a file: content changes that leave the stat as it was.

use std::path::Path;

/// A shared, writable mapping of a whole file. Once its pages are dirty, writes through it
/// take no page fault, so the kernel stamps no new mtime or ctime: the file's content changes
/// while its stat stays exactly as it was (what a write within the same timestamp tick leaves).
pub struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    pub fn new(p: &Path, len: usize) -> Mapping {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(p)
            .unwrap();
        f.set_len(len as u64).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a fresh shared mapping of a file we just sized; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap {}", p.display());
        Mapping {
            ptr: ptr.cast(),
            len,
        }
    }

    pub fn fill(&self, byte: u8) {
        // SAFETY: the mapping is `len` bytes long and writable.
        unsafe { std::ptr::write_bytes(self.ptr, byte, self.len) };
    }
}

// SAFETY: the mapping is plain shared memory; writes to it from any thread are just writes to
// the file (the tests that share it only fill it whole).
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
