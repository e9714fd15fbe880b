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
//! allocator's overhead), and the log is one allocation, not one per path.

use std::sync::Arc;

use crate::path::RelPath;
use crate::schema::{EntryKind, Row, RowStat};

use super::WalkedEntry;

/// A compact, sequential copy of a walk; see the module doc.
#[derive(Debug, Default)]
pub struct WalkLog {
    buf: Vec<u8>,
    prev_key: Vec<u8>,
    prev: Times,
    entries: u64,
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
    buf: Arc<[u8]>,
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
    }

    /// Reads what was logged so far, in walk order, without sealing the log.
    pub fn entries(&self) -> LogReader<&[u8]> {
        LogReader {
            buf: self.buf.as_slice(),
            pos: 0,
            key: Vec::new(),
            prev: Times::default(),
        }
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

    /// Bytes the log takes.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The encoded log (see the module doc), e.g. to keep it in a file for a put in another
    /// process; [`SealedLog::from_bytes`] reads it back.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// A log from bytes of [`SealedLog::as_bytes`] holding `entries` entries. Nothing is
    /// checked here: a reader stops at the first record that does not decode, so damaged bytes
    /// yield fewer or other entries, never a panic — the caller checks their integrity (the
    /// lookup record keeps a blake3 checksum of them).
    pub fn from_bytes(bytes: Vec<u8>, entries: u64) -> SealedLog {
        SealedLog {
            buf: Arc::from(bytes),
            entries,
        }
    }

    /// Reads the log from its start, in walk order.
    pub fn reader(&self) -> LogReader {
        LogReader {
            buf: Arc::clone(&self.buf),
            pos: 0,
            key: Vec::new(),
            prev: Times::default(),
        }
    }

    /// The log as the prior rows of a later walk of the same tree in the same build (the put's,
    /// [`super::TreeWalk::with_prior`]), under the same racy rule as stored rows
    /// ([`super::fastpath`]). An entry that changed while it was read comes without stat data,
    /// so it vouches for nothing.
    pub fn as_prior(&self) -> super::PriorRows {
        Box::new(self.reader().map(|e| Ok((e.path, e.row))))
    }
}

/// Reads a [`SealedLog`] (or, borrowed, a [`WalkLog`]) in order. A record that does not decode
/// (a bug, or damaged bytes given to [`SealedLog::from_bytes`]) ends the reading.
pub struct LogReader<B: AsRef<[u8]> = Arc<[u8]>> {
    buf: B,
    pos: usize,
    key: Vec<u8>,
    prev: Times,
}

impl<B: AsRef<[u8]>> LogReader<B> {
    fn byte(&mut self) -> Option<u8> {
        let b = *self.buf.as_ref().get(self.pos)?;
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
        let s = self.buf.as_ref().get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    fn bytes(&mut self) -> Option<Vec<u8>> {
        self.slice().map(<[u8]>::to_vec)
    }

    fn decode(&mut self) -> Option<LoggedEntry> {
        let shared = usize::try_from(self.uvar()?).ok()?;
        if shared > self.key.len() {
            return None;
        }
        self.key.truncate(shared);
        let n = usize::try_from(self.uvar()?).ok()?;
        let end = self.pos.checked_add(n)?;
        self.key
            .extend_from_slice(self.buf.as_ref().get(self.pos..end)?);
        self.pos = end;
        let flags = self.byte()?;
        let kind = kind_from_tag(self.byte()?)?;
        let mode = self.u32var()?;
        let uid = self.u32var()?;
        let gid = self.u32var()?;
        let size = self.uvar()?;
        let rdev = self.uvar()?;
        let link_target = self.bytes()?;
        let nx = self.uvar()?;
        let mut xattrs = Vec::new();
        for _ in 0..nx {
            let k = self.bytes()?;
            xattrs.push((k, self.bytes()?));
        }
        let mut digest = [0u8; 32];
        if kind == EntryKind::File {
            let end = self.pos.checked_add(32)?;
            digest.copy_from_slice(self.buf.as_ref().get(self.pos..end)?);
            self.pos = end;
        }
        let mut stat = None;
        if flags & HAS_STAT != 0 {
            let t = Times {
                mtime: self.prev.mtime.wrapping_add(self.ivar()?),
                ctime: self.prev.ctime.wrapping_add(self.ivar()?),
                snapshot: self.prev.snapshot.wrapping_add(self.ivar()?),
            };
            self.prev = t;
            stat = Some(RowStat {
                mtime_ns: t.mtime,
                ctime_ns: t.ctime,
                ino: self.uvar()?,
                dev: self.uvar()?,
                snapshot_ns: t.snapshot,
            });
        }
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
}

impl<B: AsRef<[u8]>> Iterator for LogReader<B> {
    type Item = LoggedEntry;

    fn next(&mut self) -> Option<LoggedEntry> {
        if self.pos >= self.buf.as_ref().len() {
            return None;
        }
        let e = self.decode();
        if e.is_none() {
            self.pos = self.buf.as_ref().len();
        }
        e
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
