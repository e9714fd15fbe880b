//! A walk's log: a compact, sequential copy of what a walk saw, read back in key order.
//!
//! Owns: [`WalkLog`] (written entry by entry while a walk is consumed) and its reader
//! ([`LogReader`]). It is made for a lookup of a build to keep per source, so that the put of
//! the same build can read it twice over: as the *prior* of its own walk
//! ([`SealedLog::as_prior`], a stat cache: a file whose stat data is unchanged since the lookup
//! saw it, and not racy under [`super::fastpath`]'s rule, reuses the lookup's digest instead of
//! being read again), and as the observation its walk must equal.
//!
//! Must never: decide what stat data vouches for (the walk applies [`super::fastpath`] to the
//! rows read back), or hand out a row of an entry that changed while it was read as reusable
//! (such an entry is read back without stat data, so nothing is reused from it).
//!
//! # Encoding
//!
//! One record per entry, in walk (key) order, in one byte buffer: the key as the length of the
//! prefix it shares with the previous key and the rest; a flags byte (unstable); the compared
//! row (type, mode, owner, size, rdev, link target, xattrs, and the content digest for regular
//! files only); its stat data with times as differences from the previous entry's. Integers are
//! LEB128 varints, signed ones zigzagged. A typical entry of a generated 10^6-file tree takes
//! about 70 bytes (a `Vec<(Box<[u8]>, [u8; 32])>` of keys and row hashes took ~110 with the
//! allocator's overhead).
//!
//! # Memory: the log spills to a file
//!
//! A log keeps at most [`SPILL_BYTES`] (1 MiB) of records in memory: each time its buffer
//! reaches that, the whole records in it are written to an unnamed temporary file (`O_TMPFILE`
//! in the system's temporary directory, gone when the last handle closes) and the buffer is
//! emptied; a reader reads the file back a window of [`SPILL_BYTES`] at a time (a record larger
//! than the window grows it to fit). So a log of 10^6 entries (~70 MB) holds ~1 MiB of memory
//! while it is written and ~2 MiB while it is read, not ~70 MB (and sealing it no longer copies
//! it). Where no temporary file can be made, or a write to it fails, the log keeps what it has
//! not written in memory, as it did before: it never loses a record. [`SealedLog::as_bytes`]
//! (the lookup record file, which holds the log whole) reads a spilled log into memory once.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, OnceLock};

use crate::path::RelPath;
use crate::schema::{EntryKind, Row, RowStat};

use super::WalkedEntry;

/// Bytes of records a log keeps in memory before it writes them to its file, and the size of
/// a reader's window into that file.
#[cfg(not(test))]
pub const SPILL_BYTES: usize = 1 << 20;
/// Small in unit tests, so a few entries spill and straddle windows.
#[cfg(test)]
pub const SPILL_BYTES: usize = 64;

/// A compact, sequential copy of a walk; see the module doc.
#[derive(Debug, Default)]
pub struct WalkLog {
    /// Records not written to the file (all of them when there is no file).
    buf: Vec<u8>,
    /// Records written so far, the first `spilled` bytes of `file`.
    spill: Option<Arc<File>>,
    spilled: u64,
    /// No file could be made or written: keep everything in memory from now on.
    no_spill: bool,
    prev_key: Vec<u8>,
    prev: Times,
    entries: u64,
}

/// An unnamed temporary file (`O_TMPFILE`), or `None` where the file system has none.
fn temp_file() -> Option<File> {
    use rustix::fs::{Mode, OFlags};
    let dir = std::env::temp_dir();
    let fd = rustix::fs::open(
        &dir,
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .ok()?;
    Some(File::from(fd))
}

/// The times of the previous record, which the next one is written relative to.
#[derive(Debug, Default, Clone, Copy)]
struct Times {
    mtime: i64,
    ctime: i64,
    snapshot: i64,
}

/// A finished [`WalkLog`]: shared, read-only, cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SealedLog {
    /// The records after the spilled ones.
    buf: Arc<[u8]>,
    /// The spilled records: the first `.1` bytes of the file.
    spill: Option<(Arc<File>, u64)>,
    /// The whole log in memory, made by [`SealedLog::as_bytes`] for a spilled log.
    whole: Arc<OnceLock<Vec<u8>>>,
    entries: u64,
}

/// One entry read back from a log.
#[derive(Debug, Clone)]
pub struct LoggedEntry {
    /// Its path.
    pub path: RelPath,
    /// The row the walk produced; `stat` is `None` when the entry changed while it was read.
    pub row: Row,
    /// True when the entry changed while it was read (its digest is not trustworthy).
    pub unstable: bool,
}

const UNSTABLE: u8 = 1;
const HAS_STAT: u8 = 2;

impl WalkLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one walked entry; entries must come in walk order.
    pub fn push(&mut self, e: &WalkedEntry) {
        let key = e.path.key();
        let shared = key
            .iter()
            .zip(&self.prev_key)
            .take_while(|(a, b)| a == b)
            .count();
        let rest = key.get(shared..).unwrap_or_default();
        put_uvar(&mut self.buf, shared as u64);
        put_bytes(&mut self.buf, rest);
        self.prev_key.truncate(shared);
        self.prev_key.extend_from_slice(rest);

        let r = &e.row;
        let flags =
            if e.unstable { UNSTABLE } else { 0 } | if r.stat.is_some() { HAS_STAT } else { 0 };
        self.buf.push(flags);
        self.buf.push(r.kind.tag());
        put_uvar(&mut self.buf, u64::from(r.mode));
        put_uvar(&mut self.buf, u64::from(r.uid));
        put_uvar(&mut self.buf, u64::from(r.gid));
        put_uvar(&mut self.buf, r.size);
        put_uvar(&mut self.buf, r.rdev);
        put_bytes(&mut self.buf, &r.link_target);
        put_uvar(&mut self.buf, r.xattrs.len() as u64);
        for (k, v) in &r.xattrs {
            put_bytes(&mut self.buf, k);
            put_bytes(&mut self.buf, v);
        }
        if r.kind == EntryKind::File {
            self.buf.extend_from_slice(&r.digest);
        }
        if let Some(s) = &r.stat {
            put_ivar(&mut self.buf, s.mtime_ns.wrapping_sub(self.prev.mtime));
            put_ivar(&mut self.buf, s.ctime_ns.wrapping_sub(self.prev.ctime));
            put_ivar(
                &mut self.buf,
                s.snapshot_ns.wrapping_sub(self.prev.snapshot),
            );
            put_uvar(&mut self.buf, s.ino);
            put_uvar(&mut self.buf, s.dev);
            self.prev = Times {
                mtime: s.mtime_ns,
                ctime: s.ctime_ns,
                snapshot: s.snapshot_ns,
            };
        }
        self.entries += 1;
        if self.buf.len() >= SPILL_BYTES && !self.no_spill {
            self.spill_buffer();
        }
    }

    /// Writes the buffered records to the file (made on the first call). On any failure the
    /// records stay in memory, and so do all later ones.
    fn spill_buffer(&mut self) {
        if self.spill.is_none() {
            match temp_file() {
                Some(f) => self.spill = Some(Arc::new(f)),
                None => {
                    self.no_spill = true;
                    return;
                }
            }
        }
        let Some(file) = self.spill.as_ref() else {
            return;
        };
        match file.write_all_at(&self.buf, self.spilled) {
            Ok(()) => {
                self.spilled += self.buf.len() as u64;
                self.buf.clear();
            }
            // What was written of these bytes is past `spilled` and never read.
            Err(_) => self.no_spill = true,
        }
    }

    /// Bytes of records held in memory (at most about [`SPILL_BYTES`] once the log spills).
    pub fn memory_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Reads what was logged so far, in walk order, without sealing the log.
    pub fn entries(&self) -> LogReader<&[u8]> {
        LogReader::new(
            self.buf.as_slice(),
            self.spill.as_ref().map(|f| (Arc::clone(f), self.spilled)),
        )
    }

    /// Entries logged so far.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// True when nothing was logged.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Ends the log; the result is read with [`SealedLog::reader`].
    pub fn seal(self) -> SealedLog {
        SealedLog {
            buf: Arc::from(self.buf),
            spill: self
                .spill
                .filter(|_| self.spilled > 0)
                .map(|f| (f, self.spilled)),
            whole: Arc::default(),
            entries: self.entries,
        }
    }
}

impl SealedLog {
    /// Entries in the log.
    pub fn len(&self) -> u64 {
        self.entries
    }

    /// True when the log holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Bytes the log takes (in memory and in its file).
    pub fn bytes(&self) -> usize {
        let spilled = self.spill.as_ref().map_or(0, |(_, n)| *n);
        self.buf.len() + usize::try_from(spilled).unwrap_or(usize::MAX)
    }

    /// The encoded log (see the module doc), e.g. to keep it in a file for a put in another
    /// process; [`SealedLog::from_bytes`] reads it back. A spilled log is read into memory
    /// (once; kept as long as the log); if its file cannot be read, what can be is returned,
    /// and the caller's checksum of these bytes is then of fewer records.
    pub fn as_bytes(&self) -> &[u8] {
        let Some((file, len)) = self.spill.as_ref() else {
            return &self.buf;
        };
        self.whole.get_or_init(|| {
            let n = usize::try_from(*len).unwrap_or(0);
            let mut all = vec![0u8; n];
            if file.read_exact_at(&mut all, 0).is_err() {
                all.clear();
            }
            all.extend_from_slice(&self.buf);
            all
        })
    }

    /// A log from bytes of [`SealedLog::as_bytes`] holding `entries` entries. Nothing is
    /// checked here: a reader stops at the first record that does not decode, so damaged bytes
    /// yield fewer or other entries, never a panic — the caller checks their integrity (the
    /// lookup record keeps a blake3 checksum of them).
    pub fn from_bytes(bytes: Vec<u8>, entries: u64) -> SealedLog {
        SealedLog {
            buf: Arc::from(bytes),
            spill: None,
            whole: Arc::default(),
            entries,
        }
    }

    /// Reads the log from its start, in walk order.
    pub fn reader(&self) -> LogReader {
        LogReader::new(Arc::clone(&self.buf), self.spill.clone())
    }

    /// The log as the prior rows of a later walk of the same tree in the same build (the put's,
    /// [`super::TreeWalk::with_prior`]), under the same racy rule as stored rows
    /// ([`super::fastpath`]). An entry that changed while it was read comes without stat data,
    /// so it vouches for nothing.
    pub fn as_prior(&self) -> super::PriorRows {
        Box::new(self.reader().map(|e| Ok((e.path, e.row))))
    }
}

/// Reads a [`SealedLog`] (or, borrowed, a [`WalkLog`]) in order: first the spilled records,
/// a window at a time, then the ones in memory. A record that does not decode (a bug, damaged
/// bytes given to [`SealedLog::from_bytes`], or a spill file that cannot be read) ends the
/// reading.
pub struct LogReader<B: AsRef<[u8]> = Arc<[u8]>> {
    tail: B,
    /// The spilled records not read into the window yet: file, next offset, end.
    spill: Option<(Arc<File>, u64, u64)>,
    /// A window into the spilled records (while `in_window`).
    window: Vec<u8>,
    in_window: bool,
    pos: usize,
    key: Vec<u8>,
    prev: Times,
    /// The state before the record being decoded, to decode it again from a larger window.
    saved_key: Vec<u8>,
}

impl<B: AsRef<[u8]>> LogReader<B> {
    fn new(tail: B, spill: Option<(Arc<File>, u64)>) -> Self {
        let mut r = LogReader {
            tail,
            spill: spill
                .filter(|(_, len)| *len > 0)
                .map(|(f, len)| (f, 0, len)),
            window: Vec::new(),
            in_window: false,
            pos: 0,
            key: Vec::new(),
            prev: Times::default(),
            saved_key: Vec::new(),
        };
        r.in_window = r.spill.is_some();
        if r.in_window && !r.refill(SPILL_BYTES) {
            r.spill = None;
            r.in_window = false;
            // The spill cannot be read: read nothing rather than the tail alone.
            r.pos = r.tail.as_ref().len();
        }
        r
    }

    /// The bytes being decoded: the window, or the records in memory.
    fn cur(&self) -> &[u8] {
        if self.in_window {
            &self.window
        } else {
            self.tail.as_ref()
        }
    }

    /// Moves the window to start at the current record (`pos`) and reads up to `want` bytes of
    /// the spill into it; false when nothing could be read.
    fn refill(&mut self, want: usize) -> bool {
        let Some((file, next, end)) = self.spill.as_mut() else {
            return false;
        };
        let keep = self.window.get(self.pos..).unwrap_or_default().len();
        self.window.drain(..self.pos.min(self.window.len()));
        self.pos = 0;
        let left = usize::try_from(*end - *next).unwrap_or(usize::MAX);
        let n = want.saturating_sub(keep).min(left);
        if n == 0 {
            return keep > 0;
        }
        self.window.resize(keep + n, 0);
        let Some(dst) = self.window.get_mut(keep..) else {
            return false;
        };
        if file.read_exact_at(dst, *next).is_err() {
            self.window.truncate(keep);
            return false;
        }
        *next += n as u64;
        true
    }

    /// True when the spill has bytes not read into the window yet.
    fn spill_left(&self) -> bool {
        self.spill.as_ref().is_some_and(|(_, next, end)| next < end)
    }

    fn byte(&mut self) -> Option<u8> {
        let b = *self.cur().get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn uvar(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn ivar(&mut self) -> Option<i64> {
        let z = self.uvar()?;
        Some(((z >> 1) as i64) ^ -((z & 1) as i64))
    }

    fn u32var(&mut self) -> Option<u32> {
        u32::try_from(self.uvar()?).ok()
    }

    fn slice(&mut self) -> Option<&[u8]> {
        let n = usize::try_from(self.uvar()?).ok()?;
        let end = self.pos.checked_add(n)?;
        let start = self.pos;
        self.pos = end;
        self.cur().get(start..end)
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        self.slice().map(<[u8]>::to_vec)
    }

    fn decode(&mut self) -> Option<LoggedEntry> {
        self.decode_key()?;
        let flags = self.byte()?;
        let kind = kind_from_tag(self.byte()?)?;
        let mode = self.u32var()?;
        let uid = self.u32var()?;
        let gid = self.u32var()?;
        let size = self.uvar()?;
        let rdev = self.uvar()?;
        let link_target = self.bytes()?;
        let xattrs = self.decode_xattrs()?;
        let mut digest = [0u8; 32];
        if kind == EntryKind::File {
            let end = self.pos.checked_add(32)?;
            digest.copy_from_slice(self.cur().get(self.pos..end)?);
            self.pos = end;
        }
        let stat = if flags & HAS_STAT != 0 {
            Some(self.decode_stat()?)
        } else {
            None
        };
        let unstable = flags & UNSTABLE != 0;
        Some(LoggedEntry {
            path: RelPath::from_key(&self.key),
            row: Row {
                kind,
                mode,
                uid,
                gid,
                size,
                rdev,
                link_target,
                xattrs,
                digest,
                // An entry that changed while it was read vouches for nothing.
                stat: stat.filter(|_| !unstable),
            },
            unstable,
        })
    }

    /// The next entry's key into `self.key`: the prefix it shares with the previous one, then
    /// the rest.
    fn decode_key(&mut self) -> Option<()> {
        let shared = usize::try_from(self.uvar()?).ok()?;
        if shared > self.key.len() {
            return None;
        }
        self.key.truncate(shared);
        let n = usize::try_from(self.uvar()?).ok()?;
        let end = self.pos.checked_add(n)?;
        // The buffer `cur()` names, borrowed beside `self.key` (no copy of the rest).
        let buf: &[u8] = if self.in_window {
            &self.window
        } else {
            self.tail.as_ref()
        };
        self.key.extend_from_slice(buf.get(self.pos..end)?);
        self.pos = end;
        Some(())
    }

    fn decode_xattrs(&mut self) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
        let nx = self.uvar()?;
        let mut xattrs = Vec::new();
        for _ in 0..nx {
            let k = self.bytes()?;
            xattrs.push((k, self.bytes()?));
        }
        Some(xattrs)
    }

    /// Stat data: times as deltas from the previous entry's, then inode and device.
    fn decode_stat(&mut self) -> Option<RowStat> {
        let t = Times {
            mtime: self.prev.mtime.wrapping_add(self.ivar()?),
            ctime: self.prev.ctime.wrapping_add(self.ivar()?),
            snapshot: self.prev.snapshot.wrapping_add(self.ivar()?),
        };
        self.prev = t;
        Some(RowStat {
            mtime_ns: t.mtime,
            ctime_ns: t.ctime,
            ino: self.uvar()?,
            dev: self.uvar()?,
            snapshot_ns: t.snapshot,
        })
    }
}

impl<B: AsRef<[u8]>> Iterator for LogReader<B> {
    type Item = LoggedEntry;

    fn next(&mut self) -> Option<LoggedEntry> {
        loop {
            if self.in_window && self.pos >= self.window.len() && !self.refill(SPILL_BYTES) {
                // The spill is read: go on with the records in memory.
                self.in_window = false;
                self.pos = 0;
            }
            if self.pos >= self.cur().len() {
                return None;
            }
            if !self.in_window {
                let e = self.decode();
                if e.is_none() {
                    self.pos = self.tail.as_ref().len();
                }
                return e;
            }
            // In the window a record may run past its end: decode it again from a window
            // that starts at it and holds more.
            let (start, prev) = (self.pos, self.prev);
            self.saved_key.clone_from(&self.key);
            if let Some(e) = self.decode() {
                return Some(e);
            }
            self.pos = start;
            self.prev = prev;
            std::mem::swap(&mut self.key, &mut self.saved_key);
            let have = self.window.len() - start;
            if !self.spill_left() || !self.refill(have.saturating_mul(2).max(SPILL_BYTES)) {
                // Damaged, or unreadable: stop.
                self.in_window = false;
                self.spill = None;
                self.pos = self.tail.as_ref().len();
                return None;
            }
        }
    }
}

fn kind_from_tag(t: u8) -> Option<EntryKind> {
    Some(match t {
        1 => EntryKind::File,
        2 => EntryKind::Dir,
        3 => EntryKind::Symlink,
        4 => EntryKind::Fifo,
        5 => EntryKind::Socket,
        6 => EntryKind::CharDevice,
        7 => EntryKind::BlockDevice,
        _ => return None,
    })
}

fn put_uvar(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn put_ivar(buf: &mut Vec<u8>, v: i64) {
    put_uvar(buf, ((v << 1) ^ (v >> 63)) as u64);
}

fn put_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    put_uvar(buf, b.len() as u64);
    buf.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::StatData;

    fn entry(path: &[u8], kind: EntryKind, n: i64, unstable: bool) -> WalkedEntry {
        let stat = RowStat {
            mtime_ns: 1_700_000_000_000_000_000 + n * 7,
            ctime_ns: 1_700_000_000_000_000_000 - n * 3,
            ino: 1000 + n as u64,
            dev: 66306,
            snapshot_ns: 1_800_000_000_000_000_000,
        };
        WalkedEntry {
            path: RelPath::from_slash_bytes(path),
            row: Row {
                kind,
                mode: 0o4755,
                uid: 1000,
                gid: u32::MAX,
                size: n as u64 * 4096,
                rdev: if kind == EntryKind::CharDevice {
                    0x0501
                } else {
                    0
                },
                link_target: if kind == EntryKind::Symlink {
                    b"../x\xff".to_vec()
                } else {
                    Vec::new()
                },
                xattrs: if n % 2 == 0 {
                    vec![(b"user.a".to_vec(), vec![0, 1, 2])]
                } else {
                    Vec::new()
                },
                digest: if kind == EntryKind::File {
                    [n as u8; 32]
                } else {
                    [0; 32]
                },
                stat: Some(stat),
            },
            stat: StatData {
                size: n as u64 * 4096,
                mtime_ns: stat.mtime_ns,
                ctime_ns: stat.ctime_ns,
                ino: stat.ino,
                dev: stat.dev,
            },
            unstable,
        }
    }

    /// A log of many entries spills (the unit tests' spill size is 64 bytes), with records
    /// larger than the reader's window; it reads back entry for entry, sealed and unsealed,
    /// and its bytes are those of the same log kept in memory.
    #[test]
    fn a_spilled_log_reads_back_whole() {
        let mut walked = Vec::new();
        for i in 0..300i64 {
            let kind = [EntryKind::File, EntryKind::Dir, EntryKind::Symlink][(i % 3) as usize];
            let mut e = entry(
                format!("d{}/f{i:04}", i % 7).as_bytes(),
                kind,
                i,
                i % 50 == 0,
            );
            if i % 40 == 0 {
                e.row.xattrs = vec![(b"user.big".to_vec(), vec![i as u8; 3 * SPILL_BYTES])];
            }
            walked.push(e);
        }
        walked.sort_by(|a, b| a.path.cmp(&b.path));
        let mut log = WalkLog::new();
        for e in &walked {
            log.push(e);
        }
        assert!(log.spilled > 0, "the log spilled");
        assert!(log.buf.len() < SPILL_BYTES, "{}", log.buf.len());
        let unsealed: Vec<LoggedEntry> = log.entries().collect();
        let sealed = log.seal();
        let back: Vec<LoggedEntry> = sealed.reader().collect();
        assert_eq!(back.len(), walked.len());
        assert_eq!(unsealed.len(), walked.len());
        for ((w, b), u) in walked.iter().zip(&back).zip(&unsealed) {
            assert_eq!(w.path, b.path);
            let mut expect = w.row.clone();
            if w.unstable {
                expect.stat = None;
            }
            assert_eq!(expect, b.row, "{}", w.path);
            assert_eq!((&u.path, &u.row), (&b.path, &b.row));
        }
        // The bytes, read into memory, are the same log.
        let bytes = sealed.as_bytes().to_vec();
        assert_eq!(bytes.len(), sealed.bytes());
        let again = SealedLog::from_bytes(bytes, sealed.len());
        assert_eq!(again.reader().count(), walked.len());
        assert!(
            again
                .reader()
                .zip(sealed.reader())
                .all(|(a, b)| a.path == b.path && a.row == b.row)
        );
    }

    #[test]
    fn every_field_reads_back_in_order() {
        let walked = vec![
            entry(b"", EntryKind::Dir, 0, false),
            entry(b"a", EntryKind::Dir, 1, false),
            entry(b"a/b", EntryKind::File, 2, false),
            entry(b"a/b\xfe", EntryKind::Symlink, 3, false),
            entry(b"a-b", EntryKind::File, 4, true),
            entry(b"a.txt", EntryKind::CharDevice, 5, false),
            entry(b"a0", EntryKind::Fifo, 6, false),
            // A first byte that differs from the previous key's: nothing shared.
            entry(b"b", EntryKind::File, 7, false),
            entry(b"b/c", EntryKind::File, 8, false),
        ];
        let mut log = WalkLog::new();
        for e in &walked {
            log.push(e);
        }
        let sealed = log.seal();
        assert_eq!(sealed.len(), walked.len() as u64);
        let back: Vec<LoggedEntry> = sealed.reader().collect();
        assert_eq!(back.len(), walked.len());
        for (w, b) in walked.iter().zip(&back) {
            assert_eq!(w.path, b.path);
            assert_eq!(w.unstable, b.unstable);
            let mut expect = w.row.clone();
            if w.unstable {
                expect.stat = None;
            }
            assert_eq!(expect, b.row);
        }
        // Read twice: the log is not consumed.
        assert_eq!(sealed.reader().count(), walked.len());
        // Read unsealed: the same entries.
        let mut again = WalkLog::new();
        for e in &walked {
            again.push(e);
        }
        let unsealed: Vec<LoggedEntry> = again.entries().collect();
        assert_eq!(unsealed.len(), back.len());
        for (a, b) in unsealed.iter().zip(&back) {
            assert_eq!((&a.path, &a.row, a.unstable), (&b.path, &b.row, b.unstable));
        }
    }
}
