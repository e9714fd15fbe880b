//! go-mtree specs as stacker stores them, and the check of a directory against one.
//!
//! Owns: parsing a spec (the BSD mtree text go-mtree writes: `#` comments, `/set` (each one
//! replacing the last, as go-mtree's parser does) and `/unset`,
//! relative entries that descend into each `type=dir` entry, `..` to climb, full paths with a
//! `/`, `\` line continuations, vis-encoded names and link targets) into one record per path,
//! and [`check_dir`], which walks a directory today and compares every entry with the spec on
//! exactly stacker's keywords: `type`, `link`, `uid`, `gid`, `xattr`, `mode`, `sha256digest`.
//!
//! Must never: call a directory matching when the spec cannot vouch for something a
//! layercache row records. Hence a spec whose `keywords:` header lacks one of stacker's
//! keywords, an entry without `type`, `mode`, `uid` or `gid`, a file without `sha256digest`, a
//! symlink without `link`, a device node (go-mtree records no device number), or extended
//! attributes on an entry go-mtree does not read them on (anything but files and directories)
//! is a [`Verdict::CannotVouch`], never a match.

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use base64::Engine as _;
use sha2::Digest as _;

use crate::error::{Error, Result};
use crate::path::escape_bytes;

/// The keywords stacker asks go-mtree for (`mtreeKeywords` in stacker's `cache.go`).
pub const STACKER_KEYWORDS: [&str; 7] = [
    "type",
    "link",
    "uid",
    "gid",
    "xattr",
    "mode",
    "sha256digest",
];

/// One path of a spec: its keywords after `/set` defaults were applied (own ones win).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SpecEntry {
    /// keyword → value as written (names like `xattr.user.a` kept whole).
    pub keywords: BTreeMap<String, String>,
}

/// A parsed spec: path (components joined by `/`, the root is empty) → entry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Spec {
    /// Entries by path below the root (raw bytes, the root is the empty path).
    pub entries: BTreeMap<Vec<u8>, SpecEntry>,
    /// The keywords the `#      keywords:` header names, if it has one.
    pub header_keywords: Option<Vec<String>>,
}

/// How a directory compares with a spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every entry matches on every keyword stacker compares.
    Matches,
    /// The tree differs: up to a few of the differing paths, and how many differ.
    Differs {
        /// The first differing paths (escaped), each with what differs.
        paths: Vec<String>,
        /// How many paths differ in all.
        count: usize,
    },
    /// The spec cannot vouch for what layercache would record (why).
    CannotVouch(String),
}

/// Decodes stacker's base64 field and parses the spec in it.
pub fn parse_base64(text: &str) -> std::result::Result<Spec, String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|e| format!("its mtree spec is not valid base64 ({e})"))?;
    parse(&raw)
}

/// Parses the text of a go-mtree spec (see the module doc). Errors say what is wrong.
pub fn parse(raw: &[u8]) -> std::result::Result<Spec, String> {
    let mut spec = Spec::default();
    // Physical lines, with `\` continuations joined (as go-mtree does for entries and specials).
    let mut lines: Vec<Vec<u8>> = Vec::new();
    let mut pending: Option<Vec<u8>> = None;
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut cur = match pending.take() {
            Some(mut p) => {
                p.extend_from_slice(line);
                p
            }
            None => line.to_vec(),
        };
        let is_comment = cur
            .iter()
            .find(|b| !matches!(b, b' ' | b'\t'))
            .is_some_and(|&b| b == b'#');
        if !is_comment && cur.ends_with(b"\\") && !cur.ends_with(b"\\\\") {
            cur.pop();
            pending = Some(cur);
            continue;
        }
        lines.push(cur);
    }
    if pending.is_some() {
        return Err("its mtree spec ends inside a continued line".to_string());
    }
    let mut set: BTreeMap<String, String> = BTreeMap::new();
    // The directory entries descended into (their paths); empty: above the root.
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    for (no, line) in lines.iter().enumerate() {
        let at = |why: String| format!("line {} of its mtree spec: {why}", no + 1);
        let text = std::str::from_utf8(line).map_err(|_| at("not UTF-8".into()))?;
        let trimmed = text.trim_start_matches([' ', '\t']);
        if let Some(comment) = trimmed.strip_prefix('#') {
            if let Some(list) = comment.trim_start().strip_prefix("keywords:") {
                spec.header_keywords = Some(
                    list.split(',')
                        .map(|k| k.trim().to_string())
                        .filter(|k| !k.is_empty())
                        .collect(),
                );
            }
            continue;
        }
        let mut fields = text.split_ascii_whitespace();
        let Some(name) = fields.next() else {
            continue;
        };
        let keyvals = fields
            .map(|f| match f.split_once('=') {
                Some((k, v)) => Ok((k.to_string(), v.to_string())),
                None => Err(at(format!("keyword {f:?} has no value"))),
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if text.starts_with('/') {
            match name {
                // As go-mtree's parser: a /set replaces the previous one (it does not add).
                "/set" => set = keyvals.into_iter().collect(),
                // go-mtree's parser drops every /set default on any /unset.
                "/unset" => set.clear(),
                other => return Err(at(format!("unknown special {other:?}"))),
            }
            continue;
        }
        if name == ".." {
            if dirs.pop().is_none() {
                return Err(at("`..` climbs above the root".into()));
            }
            continue;
        }
        let own: BTreeMap<String, String> = keyvals.into_iter().collect();
        let is_dir = own.get("type").is_some_and(|t| t == "dir");
        let path = if name.contains('/') {
            // A full path, relative to the root.
            let mut path = Vec::new();
            for c in name.split('/') {
                if matches!(c, "" | ".") {
                    continue;
                }
                if c == ".." {
                    return Err(at(format!("path {name:?} has a `..`")));
                }
                if !path.is_empty() {
                    path.push(b'/');
                }
                path.extend(unvis(c).map_err(&at)?);
            }
            path
        } else if name == "." && dirs.is_empty() {
            Vec::new()
        } else {
            let Some(parent) = dirs.last() else {
                return Err(at(format!("entry {name:?} comes before the root `.`")));
            };
            let component = unvis(name).map_err(&at)?;
            if component.is_empty() || component == b"." || component == b".." {
                return Err(at(format!("entry name {name:?} names no file")));
            }
            if component.contains(&b'/') || component.contains(&0) {
                return Err(at(format!("entry name {name:?} holds '/' or NUL")));
            }
            let mut path = parent.clone();
            if !path.is_empty() {
                path.push(b'/');
            }
            path.extend(component);
            path
        };
        let mut keywords = set.clone();
        keywords.extend(own);
        if !is_dir && keywords.get("type").is_some_and(|t| t == "dir") {
            return Err(at(format!(
                "entry {name:?} is a directory only through /set, which go-mtree's parser \
                 does not descend into"
            )));
        }
        if is_dir && !name.contains('/') {
            dirs.push(path.clone());
        }
        if spec
            .entries
            .insert(path.clone(), SpecEntry { keywords })
            .is_some()
        {
            return Err(at(format!("path {:?} appears twice", escape_bytes(&path))));
        }
    }
    if !spec.entries.contains_key(&Vec::new()) {
        return Err("its mtree spec has no root entry `.`".to_string());
    }
    Ok(spec)
}

/// Decodes a vis-encoded name (go-mtree's `VisWhite | VisOctal | VisGlob`).
pub fn unvis(s: &str) -> std::result::Result<Vec<u8>, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let bad = || format!("cannot decode the vis-encoded name {s:?}");
    while let Some(&c) = b.get(i) {
        if c != b'\\' {
            out.push(c);
            i += 1;
            continue;
        }
        let next = *b.get(i + 1).ok_or_else(bad)?;
        match next {
            b'0'..=b'7' => {
                let digits = b.get(i + 1..i + 4).ok_or_else(bad)?;
                let mut v: u32 = 0;
                for &d in digits {
                    if !(b'0'..=b'7').contains(&d) {
                        return Err(bad());
                    }
                    v = v * 8 + u32::from(d - b'0');
                }
                out.push(u8::try_from(v).map_err(|_| bad())?);
                i += 4;
            }
            b'\\' => {
                out.push(b'\\');
                i += 2;
            }
            b's' => {
                out.push(b' ');
                i += 2;
            }
            b't' => {
                out.push(b'\t');
                i += 2;
            }
            b'n' => {
                out.push(b'\n');
                i += 2;
            }
            b'r' => {
                out.push(b'\r');
                i += 2;
            }
            b'b' => {
                out.push(8);
                i += 2;
            }
            b'a' => {
                out.push(7);
                i += 2;
            }
            b'v' => {
                out.push(11);
                i += 2;
            }
            b'f' => {
                out.push(12);
                i += 2;
            }
            b'E' => {
                out.push(0x1b);
                i += 2;
            }
            _ => return Err(bad()),
        }
    }
    Ok(out)
}

/// What today's tree has at one path, in the spec's vocabulary.
#[derive(Debug)]
struct Seen {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    link: Option<Vec<u8>>,
    sha256: Option<String>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Files read (sha256) to compare them with stacker's records, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Hashed {
    /// Files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Compares the directory `root` as it is now with `spec`, on stacker's keywords, adding the
/// files it reads to `hashed`. I/O errors (an unreadable file) are errors naming the path;
/// differences and what the spec cannot vouch for are verdicts.
pub fn check_dir(root: &Path, spec: &Spec, hashed: &mut Hashed) -> Result<Verdict> {
    if let Some(header) = &spec.header_keywords {
        for k in STACKER_KEYWORDS {
            // go-mtree writes `sha256` as its synonym `sha256digest`; accept either.
            let named = header
                .iter()
                .any(|h| h == k || (k == "sha256digest" && h == "sha256"));
            if !named {
                return Ok(Verdict::CannotVouch(format!(
                    "its mtree spec was not made with the keyword {k:?}"
                )));
            }
        }
    } else {
        return Ok(Verdict::CannotVouch(
            "its mtree spec has no `keywords:` header, so whether xattrs were recorded is \
             unknown"
                .to_string(),
        ));
    }
    let mut diff = Differences::default();
    let mut unseen: std::collections::BTreeSet<&[u8]> =
        spec.entries.keys().map(Vec::as_slice).collect();
    // Entries are observed (stat, xattrs, sha256) in parallel a window at a time, one task per
    // entry, and compared in walk order: memory is bounded by the window, not the tree.
    let mut window: Vec<PathBuf> = Vec::with_capacity(WINDOW);
    let mut walk = walkdir::WalkDir::new(root).follow_links(false).into_iter();
    loop {
        let item = walk.next();
        let done = item.is_none();
        if let Some(item) = item {
            let item = item.map_err(|e| {
                let path = e.path().unwrap_or(root).to_path_buf();
                let io = e
                    .into_io_error()
                    .unwrap_or_else(|| std::io::Error::other("file system loop"));
                Error::io("cannot walk", path, io)
            })?;
            window.push(item.into_path());
        }
        if window.len() < WINDOW && !done {
            continue;
        }
        let observed: Vec<Result<(std::result::Result<Seen, String>, Hashed)>> = window
            .par_iter()
            .map(|path| {
                let mut h = Hashed::default();
                observe(path, &mut h).map(|seen| (seen, h))
            })
            .collect();
        for (path, result) in window.drain(..).zip(observed) {
            let (seen, h) = result?;
            hashed.files += h.files;
            hashed.bytes += h.bytes;
            let seen = match seen {
                Ok(s) => s,
                Err(why) => return Ok(Verdict::CannotVouch(why)),
            };
            let rel = path.strip_prefix(root).unwrap_or(Path::new(""));
            let rel = rel.as_os_str().as_encoded_bytes();
            let Some(entry) = spec.entries.get(rel) else {
                diff.note(rel, "not in stacker's spec");
                continue;
            };
            unseen.remove(rel);
            match compare(&seen, entry) {
                Compared::Same => {}
                Compared::Differs(what) => diff.note(rel, &what),
                Compared::CannotVouch(why) => {
                    return Ok(Verdict::CannotVouch(format!("{}: {why}", shown(rel))));
                }
            }
        }
        if done {
            break;
        }
    }
    for path in unseen {
        diff.note(path, "gone since stacker's build");
    }
    Ok(if diff.count == 0 {
        Verdict::Matches
    } else {
        Verdict::Differs {
            paths: diff.paths,
            count: diff.count,
        }
    })
}

/// Entries observed in parallel at a time.
const WINDOW: usize = 4096;

/// A path below the root for messages (`.` for the root).
fn shown(rel: &[u8]) -> String {
    if rel.is_empty() {
        ".".to_string()
    } else {
        escape_bytes(rel)
    }
}

/// The paths that differ: the first few, and how many.
#[derive(Default)]
struct Differences {
    paths: Vec<String>,
    count: usize,
}

impl Differences {
    fn note(&mut self, path: &[u8], what: &str) {
        self.count += 1;
        if self.paths.len() < 5 {
            self.paths.push(format!("{} ({what})", shown(path)));
        }
    }
}

/// Observes one entry (never following a symlink); `Ok(Err(why))` when go-mtree's keywords
/// cannot describe it.
fn observe(path: &Path, hashed: &mut Hashed) -> Result<std::result::Result<Seen, String>> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| Error::io("cannot stat", path, e))?;
    let ft = meta.file_type();
    let shown = escape_bytes(path.as_os_str().as_encoded_bytes());
    let kind = if ft.is_dir() {
        "dir"
    } else if ft.is_file() {
        "file"
    } else if ft.is_symlink() {
        "link"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else {
        return Ok(Err(format!(
            "{shown} is a device node, and go-mtree's spec records no device number"
        )));
    };
    let link = if ft.is_symlink() {
        let target = std::fs::read_link(path).map_err(|e| Error::io("cannot read", path, e))?;
        Some(target.into_os_string().into_encoded_bytes())
    } else {
        None
    };
    let xattrs = read_xattrs(path)?;
    let xattrs_recorded = ft.is_dir() || ft.is_file();
    if !xattrs_recorded && !xattrs.is_empty() {
        return Ok(Err(format!(
            "{shown} has extended attributes, which go-mtree does not record on a {kind}"
        )));
    }
    let sha256 = if ft.is_file() {
        hashed.files += 1;
        hashed.bytes += meta.len();
        Some(sha256_file(path, &meta)?)
    } else {
        None
    };
    Ok(Ok(Seen {
        kind,
        mode: meta.mode() & 0o7777,
        uid: meta.uid(),
        gid: meta.gid(),
        link,
        sha256,
        xattrs,
    }))
}

fn read_xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
    let unsupported = |e: &std::io::Error| {
        matches!(e.raw_os_error(), Some(libc::ENOTSUP) | Some(libc::ENODATA))
            || e.kind() == std::io::ErrorKind::Unsupported
    };
    let names = match xattr::list(path) {
        Ok(n) => n,
        Err(e) if unsupported(&e) => return Ok(BTreeMap::new()),
        Err(e) => return Err(Error::io("cannot list extended attributes of", path, e)),
    };
    let mut out = BTreeMap::new();
    for name in names {
        match xattr::get(path, &name) {
            Ok(Some(v)) => {
                out.insert(name.as_encoded_bytes().to_vec(), v);
            }
            Ok(None) => {}
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(Error::io("cannot read extended attributes of", path, e)),
        }
    }
    Ok(out)
}

/// sha256 of a regular file's content, opened without following links and checked to be the
/// file that was stated.
fn sha256_file(path: &Path, meta: &std::fs::Metadata) -> Result<String> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| Error::io("cannot open", path, e))?;
    let now = file
        .metadata()
        .map_err(|e| Error::io("cannot stat", path, e))?;
    if now.ino() != meta.ino() || now.dev() != meta.dev() {
        return Err(Error::ChangedWhileReading {
            path: path.to_path_buf(),
        });
    }
    let mut h = sha2::Sha256::new();
    crate::fsread::for_each_chunk(&mut file, path, |chunk| h.update(chunk))?;
    Ok(hex(&h.finalize()))
}

/// Lower-case hex of bytes.
pub use crate::path::hex;

enum Compared {
    Same,
    Differs(String),
    CannotVouch(String),
}

fn compare(seen: &Seen, entry: &SpecEntry) -> Compared {
    let kw = &entry.keywords;
    let need = |k: &str| {
        kw.get(k)
            .ok_or_else(|| format!("stacker's spec records no {k:?} for it"))
    };
    let checked = (|| -> std::result::Result<Vec<&'static str>, String> {
        let mut what = Vec::new();
        let kind = need("type")?;
        if kind != seen.kind {
            // Nothing else is comparable across types.
            return Ok(vec!["type"]);
        }
        let written = need("mode")?;
        let mode = u32::from_str_radix(written, 8)
            .map_err(|_| format!("its mode {written:?} is not octal"))?;
        if mode != seen.mode {
            what.push("mode");
        }
        let number = |k: &str| -> std::result::Result<u32, String> {
            let written = need(k)?;
            written
                .parse::<u32>()
                .map_err(|_| format!("its {k} {written:?} is not a number"))
        };
        if number("uid")? != seen.uid {
            what.push("uid");
        }
        if number("gid")? != seen.gid {
            what.push("gid");
        }
        if let Some(target) = &seen.link {
            let recorded = unvis(need("link")?)?;
            if &recorded != target {
                what.push("link target");
            }
        }
        if let Some(sum) = &seen.sha256 {
            let recorded = kw
                .get("sha256digest")
                .or_else(|| kw.get("sha256"))
                .ok_or_else(|| "stacker's spec records no \"sha256digest\" for it".to_string())?;
            if recorded != sum {
                what.push("content");
            }
        }
        let mut recorded = BTreeMap::new();
        for (k, v) in kw {
            if let Some(name) = k.strip_prefix("xattr.") {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v)
                    .map_err(|_| format!("its xattr {k:?} is not base64"))?;
                recorded.insert(unvis(name)?, value);
            }
        }
        if recorded != seen.xattrs {
            what.push("xattrs");
        }
        Ok(what)
    })();
    match checked {
        Ok(what) if what.is_empty() => Compared::Same,
        Ok(what) => Compared::Differs(what.join(", ")),
        Err(why) => Compared::CannotVouch(why),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kw<'a>(spec: &'a Spec, path: &str) -> &'a BTreeMap<String, String> {
        &spec.entries[path.as_bytes()].keywords
    }

    #[test]
    fn set_replaces_continuations_join_names_decode() {
        let spec = parse(
            b"#      keywords: type,mode\n/set type=file mode=0644 uid=1\n. type=dir mode=0755\n\
              \x20   a\\040b mode=0600\n/set type=file gid=5\n    c \\\n  uid=2\n\
              d type=dir\n    e\n..\n..\n",
        )
        .unwrap();
        assert_eq!(kw(&spec, "a b")["mode"], "0600");
        assert_eq!(kw(&spec, "a b")["uid"], "1");
        // The second /set replaced the first: no mode, no uid from it.
        assert_eq!(kw(&spec, "c").get("mode"), None);
        assert_eq!(kw(&spec, "c")["uid"], "2");
        assert_eq!(kw(&spec, "c")["gid"], "5");
        assert_eq!(kw(&spec, "d/e")["type"], "file");
        assert_eq!(
            spec.header_keywords,
            Some(vec!["type".to_string(), "mode".to_string()])
        );
    }

    #[test]
    fn bad_specs_are_errors_never_panics() {
        for bad in [
            &b"..\n"[..],
            b". type=dir\n..\n..\n",
            b". type=dir\n    a type=file\n    a type=file\n",
            b". type=dir\n    a\\9 type=file\n",
            b". type=dir\n    a\\777 type=file\n",
            b". type=dir\n    a nokeyword\n",
            b"    a type=file\n",
            b"/frob x=1\n",
            b". type=dir \\",
            b"\xff\xfe\n",
            b"",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        assert!(parse_base64("!!!").is_err());
    }

    #[test]
    fn unvis_forms() {
        assert_eq!(unvis("a\\040b\\\\c\\sd\\t").unwrap(), b"a b\\c d\t");
        assert_eq!(unvis("\\303\\251").unwrap(), "é".as_bytes());
        assert!(unvis("x\\").is_err());
        assert!(unvis("\\q").is_err());
    }
}
