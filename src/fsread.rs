//! Reading the files a build names (plan, manifests, an OCI `index.json`, a base tarball)
//! without trusting what the path points at.
//!
//! Every such read goes through [`open_regular`]: the path is `stat`ed first (following
//! symlinks) and anything but a regular file is refused with [`Error::WrongFileType`]; the file
//! is then opened with `O_NONBLOCK`, so that a FIFO swapped in after the `stat` cannot block the
//! open, and the opened handle is `fstat`ed and refused again unless it is a regular file (the
//! stat-then-open race). A FIFO, socket or device node is therefore never read: `/dev/zero`
//! cannot exhaust memory and a FIFO cannot hang the process.
//!
//! Files read whole into memory ([`read_capped`]) have a documented limit, far above any real
//! file of their kind, checked against the `fstat` size and again while reading (a file that
//! grows during the read):
//!
//! | file | limit |
//! |---|---|
//! | plan file | [`PLAN_LIMIT`] (64 MiB) |
//! | manifests file | [`MANIFESTS_LIMIT`] (16 MiB) |
//! | OCI `index.json` | [`INDEX_LIMIT`] (16 MiB) |
//!
//! A base tarball is hashed as a stream ([`hash_regular`]) and has no limit.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use crate::error::{Error, Result, show_size};

/// The largest plan file read: 64 MiB (a plan of 10^5 layers with a few imports each is
/// about 30 MiB).
pub const PLAN_LIMIT: u64 = 64 << 20;

/// The largest manifests file read: 16 MiB (one OCI descriptor per layer type is a few
/// hundred bytes).
pub const MANIFESTS_LIMIT: u64 = 16 << 20;

/// The largest OCI `index.json` read: 16 MiB (about 50,000 tagged manifests).
pub const INDEX_LIMIT: u64 = 16 << 20;

/// What a file type is, for messages ("a FIFO").
pub fn describe_type(t: std::fs::FileType) -> &'static str {
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else {
        "not a regular file"
    }
}

/// True when `e` is an [`Error::Io`] for a file that does not exist.
pub fn is_not_found(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

fn wrong_type(what: &'static str, path: &Path, t: std::fs::FileType) -> Error {
    Error::WrongFileType {
        what,
        path: path.to_path_buf(),
        found: describe_type(t),
        expected: "a regular file".into(),
    }
}

/// Opens `path` for reading if, and only if, it is a regular file (symlinks followed).
///
/// `what` names the file in errors. A missing or unreadable file is [`Error::Io`] (test with
/// [`is_not_found`]); any other type is [`Error::WrongFileType`], and a FIFO is never opened
/// in blocking mode, so this call never waits for a writer.
pub fn open_regular(what: &'static str, path: &Path) -> Result<File> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read", path, e))?;
    if !meta.file_type().is_file() {
        return Err(wrong_type(what, path, meta.file_type()));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    // The path may have been replaced between the stat and the open: what counts is the
    // opened handle.
    let meta = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if !meta.file_type().is_file() {
        return Err(wrong_type(what, path, meta.file_type()));
    }
    Ok(file)
}

/// Reads a regular file whole, refusing it ([`Error::TooLarge`]) when it holds more than
/// `limit` bytes, whatever its stat says; see [`open_regular`] for the other errors.
pub fn read_capped(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>> {
    let file = open_regular(what, path).map_err(|e| match e {
        Error::WrongFileType {
            what, path, found, ..
        } => Error::WrongFileType {
            what,
            path,
            found,
            expected: format!("a regular file of at most {}", show_size(limit)),
        },
        other => other,
    })?;
    let size = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?
        .len();
    let too_large = |size: u64| Error::TooLarge {
        what,
        path: path.to_path_buf(),
        size,
        limit,
    };
    if size > limit {
        return Err(too_large(size));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    file.take(limit.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io("cannot read", path, e))?;
    let read = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    if read > limit {
        return Err(too_large(read));
    }
    Ok(bytes)
}

/// [`read_capped`], then UTF-8: a file that is not UTF-8 is [`Error::Parse`].
pub fn read_capped_text(what: &'static str, path: &Path, limit: u64) -> Result<String> {
    String::from_utf8(read_capped(what, path, limit)?).map_err(|e| Error::Parse {
        what,
        path: path.to_path_buf(),
        detail: format!("it is not UTF-8 text ({e})"),
    })
}

/// The blake3 digest of a regular file's content, read as a stream (no size limit); see
/// [`open_regular`] for the errors.
pub fn hash_regular(what: &'static str, path: &Path) -> Result<[u8; 32]> {
    let mut file = open_regular(what, path)?;
    let mut hasher = blake3::Hasher::new();
    // Multi-threading one update pays from a few hundred KiB up (blake3's doc).
    for_each_chunk(&mut file, path, |chunk| {
        hasher.update_rayon(chunk);
    })?;
    Ok(*hasher.finalize().as_bytes())
}

/// Reads `file` (at `path`, for errors) to its end, 1 MiB at a time, handing each chunk to
/// `consume`; interrupted reads are retried, any other error names the path.
pub fn for_each_chunk(
    file: &mut impl Read,
    path: &Path,
    mut consume: impl FnMut(&[u8]),
) -> Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io("cannot read", path, e)),
        };
        consume(buf.get(..n).unwrap_or(&[]));
    }
    Ok(())
}

/// Checks that `path` (symlinks followed) is a directory; a missing path is [`Error::Io`]
/// (test with [`is_not_found`]), any other type [`Error::WrongFileType`].
pub fn require_dir(what: &'static str, path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io("cannot read", path, e))?;
    if meta.is_dir() {
        Ok(())
    } else {
        Err(Error::WrongFileType {
            what,
            path: path.to_path_buf(),
            found: describe_type(meta.file_type()),
            expected: "a directory".into(),
        })
    }
}
