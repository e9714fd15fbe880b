//! Relative paths as raw bytes, their key encoding, and their escaped display form.
//!
//! A tree entry is named by its path relative to the walked root, as the raw bytes the file
//! system returned (non-UTF-8 names are kept exactly). The root itself is the empty path.
//!
//! **Key encoding.** In stored keys every `/` separator is replaced by `\0`. A Unix file name
//! never contains `\0`, so the encoding is lossless, and because `\0` sorts below every other
//! byte, the byte order of encoded keys equals the order of a depth-first walk that visits the
//! children of each directory sorted by name (`a`, `a/b`, `a-b`, `a.txt`, `a0`): a subtree is one
//! contiguous key range, and a diff is a merge of two sorted streams.
//!
//! **Display.** [`RelPath`]'s `Display` is lossless and printable: valid UTF-8 is kept, `\` is
//! written `\\`, control characters and bytes that are not UTF-8 are written `\xNN`, and the
//! invisible format characters that can reorder what a person reads (bidi controls such as
//! U+202E, zero-width characters such as U+200B: Unicode category Cf, and U+2028/U+2029) are
//! written `\u{202e}`. Its serde (JSON) form is the same except that format characters are kept
//! exactly: JSON is read by programs. [`RelPath::parse_escaped`] reads both forms back.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A path relative to a walked root, stored in key encoding (`/` replaced by `\0`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The root of a walk (the empty path).
    pub fn root() -> Self {
        RelPath(Vec::new())
    }

    /// Builds a path from its key encoding, as read from the rows table.
    pub fn from_key(key: &[u8]) -> Self {
        RelPath(key.to_vec())
    }

    /// Builds a path from a `/`-separated relative path (no leading `/`).
    pub fn from_slash_bytes(path: &[u8]) -> Self {
        RelPath(
            path.iter()
                .map(|&b| if b == b'/' { 0 } else { b })
                .collect(),
        )
    }

    /// The entry `name` (one component, no `/`) inside this directory: the key of the parent,
    /// `\0`, then the name (just the name inside the root).
    pub fn join(&self, name: &[u8]) -> RelPath {
        let mut k = Vec::with_capacity(self.0.len() + 1 + name.len());
        k.extend_from_slice(&self.0);
        if !self.0.is_empty() {
            k.push(0);
        }
        k.extend_from_slice(name);
        RelPath(k)
    }

    /// The key encoding (`\0` between components); the bytes stored in the rows table.
    pub fn key(&self) -> &[u8] {
        &self.0
    }

    /// True for the root of the walk.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The `/`-separated relative path as raw bytes.
    pub fn to_slash_bytes(&self) -> Vec<u8> {
        self.0
            .iter()
            .map(|&b| if b == 0 { b'/' } else { b })
            .collect()
    }

    /// The path joined under `root`, for opening the file.
    pub fn under(&self, root: &Path) -> PathBuf {
        if self.0.is_empty() {
            root.to_path_buf()
        } else {
            root.join(OsStr::from_bytes(&self.to_slash_bytes()))
        }
    }

    /// The last component (the whole path for a top-level entry, empty for the root).
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == 0) {
            Some(i) => self.0.get(i + 1..).unwrap_or(&[]),
            None => &self.0,
        }
    }

    /// True when `self` is a strict ancestor directory of `other`.
    pub fn is_ancestor_of(&self, other: &RelPath) -> bool {
        if self.0.is_empty() {
            return !other.0.is_empty();
        }
        other.0.len() > self.0.len()
            && other.0.starts_with(&self.0)
            && other.0.get(self.0.len()) == Some(&0)
    }

    /// Inverse of `Display`: parses the escaped form.
    pub fn parse_escaped(s: &str) -> Option<RelPath> {
        // `Display` writes the root as `.` (no entry below a root can be named `.`).
        if s == "." {
            return Some(RelPath::root());
        }
        let mut out = Vec::with_capacity(s.len());
        let bytes = s.as_bytes();
        let mut i = 0;
        while let Some(&b) = bytes.get(i) {
            if b != b'\\' {
                out.push(b);
                i += 1;
                continue;
            }
            match bytes.get(i + 1) {
                Some(b'\\') => {
                    out.push(b'\\');
                    i += 2;
                }
                Some(b'x') => {
                    let hex = std::str::from_utf8(bytes.get(i + 2..i + 4)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 4;
                }
                // `\u{XXXX}`: a format character of the text form.
                Some(b'u') if bytes.get(i + 2) == Some(&b'{') => {
                    let len = bytes.get(i + 3..)?.iter().position(|&b| b == b'}')?;
                    let hex = std::str::from_utf8(bytes.get(i + 3..i + 3 + len)?).ok()?;
                    let c = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += 4 + len;
                }
                _ => return None,
            }
        }
        // `.` is the root however it was written (`\x2e` too): no entry below a root is
        // named `.`, and a path named so would display as the root.
        if out == b"." {
            return Some(RelPath::root());
        }
        Some(RelPath::from_slash_bytes(&out))
    }
}

/// Writes `bytes` escaped for a person (text output): UTF-8 kept, `\` doubled, control
/// characters and invalid bytes as `\xNN`, and the invisible characters that reorder or hide
/// what a person reads — Unicode format characters (general category Cf: the bidi controls
/// U+202A–U+202E and U+2066–U+2069, U+200B–U+200F, U+2060–U+2064, U+FEFF, ...) and the line and
/// paragraph separators U+2028, U+2029 — as `\u{XXXX}`.
pub(crate) fn write_escaped(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    write_escaped_as(f, bytes, true)
}

/// [`write_escaped`] for JSON: the same, but format characters kept exactly (JSON readers are
/// programs; only what must be escaped to stay lossless is: `\`, controls, invalid bytes).
pub(crate) fn write_escaped_json(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    write_escaped_as(f, bytes, false)
}

/// True for a character that is invisible and can reorder or hide text: general category Cf
/// (Unicode 16) and the separators Zl, Zp.
pub fn is_format_char(c: char) -> bool {
    matches!(
        c as u32,
        0xAD | 0x600..=0x605
            | 0x61C
            | 0x6DD
            | 0x70F
            | 0x890..=0x891
            | 0x8E2
            | 0x180E
            | 0x200B..=0x200F
            | 0x2028..=0x202E
            | 0x2060..=0x2064
            | 0x2066..=0x206F
            | 0xFEFF
            | 0xFFF9..=0xFFFB
            | 0x110BD
            | 0x110CD
            | 0x13430..=0x1343F
            | 0x1BCA0..=0x1BCA3
            | 0x1D173..=0x1D17A
            | 0xE0001
            | 0xE0020..=0xE007F
    )
}

fn write_escaped_as(f: &mut impl fmt::Write, bytes: &[u8], format_chars: bool) -> fmt::Result {
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                // Every byte of the character, so that `\xNN` always stands for one byte and
                // parsing it back is exact (U+0085 is the two bytes `\xc2\x85`, not byte 0x85).
                c if c.is_control() && (c as u32) < 0x100 => {
                    let mut buf = [0u8; 4];
                    for b in c.encode_utf8(&mut buf).as_bytes() {
                        write!(f, "\\x{b:02x}")?;
                    }
                }
                c if format_chars && is_format_char(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        for b in chunk.invalid() {
            write!(f, "\\x{b:02x}")?;
        }
    }
    Ok(())
}

/// Escapes arbitrary bytes to a printable, lossless string (see the module doc).
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    // Writing to a String cannot fail.
    let _ = write_escaped(&mut s, bytes);
    s
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str(".");
        }
        write_escaped(f, &self.to_slash_bytes())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelPath({self})")
    }
}

/// The JSON form of a path: [`write_escaped_json`] (format characters exact).
struct JsonForm<'a>(&'a RelPath);

impl fmt::Display for JsonForm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.0.is_empty() {
            return f.write_str(".");
        }
        write_escaped_json(f, &self.0.to_slash_bytes())
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(&JsonForm(self))
        } else {
            s.serialize_bytes(&self.0)
        }
    }
}

impl<'de> serde::Deserialize<'de> for RelPath {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            if s == "." {
                return Ok(RelPath::root());
            }
            RelPath::parse_escaped(&s)
                .ok_or_else(|| serde::de::Error::custom("invalid escape in path"))
        } else {
            let v: serde_bytes_vec::Bytes = serde::Deserialize::deserialize(d)?;
            Ok(RelPath(v.0))
        }
    }
}

mod serde_bytes_vec {
    /// Byte buffer that deserializes from either a byte string or a sequence.
    pub struct Bytes(pub Vec<u8>);
    impl<'de> serde::Deserialize<'de> for Bytes {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Bytes;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E>(self, v: &[u8]) -> Result<Bytes, E> {
                    Ok(Bytes(v.to_vec()))
                }
                fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Bytes, E> {
                    Ok(Bytes(v))
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Bytes, A::Error> {
                    let mut out = Vec::new();
                    while let Some(b) = a.next_element()? {
                        out.push(b);
                    }
                    Ok(Bytes(out))
                }
            }
            d.deserialize_bytes(V)
        }
    }
}

/// Checks a name used as a key component (layer name, source name): non-empty, no NUL, no `/`
/// component tricks. Layer names are used to build paths in the stacker layout, so `/` and `..`
/// are refused.
pub fn validate_layer_name(name: &str) -> crate::Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name == "." || name == ".." {
        Some("it is '.' or '..'")
    } else if name.len() > 4096 {
        Some("it is longer than 4096 bytes")
    } else {
        None
    };
    match why {
        Some(why) => Err(crate::Error::InvalidName {
            what: "layer name",
            value: escape_bytes(name.as_bytes()),
            why,
        }),
        None => Ok(()),
    }
}

/// Lowercase hex of `bytes`, always (a digest as people and JSON see it).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for x in bytes {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// The bytes of lowercase hex written by [`hex`]; `None` for anything else (an odd length,
/// upper case, a sign or any other character), so one digest has one spelling.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| s.get(i..i + 2).and_then(|p| u8::from_str_radix(p, 16).ok()))
        .collect()
}

/// A stored hash for people: printable ASCII (an OCI digest such as `sha256:…`, stored as its
/// text) as it is, anything else (a raw blake3 digest) as lowercase [`hex`].
pub fn display_hash(bytes: &[u8]) -> String {
    if !bytes.is_empty() && bytes.iter().all(|c| c.is_ascii_graphic()) {
        return String::from_utf8_lossy(bytes).into_owned();
    }
    hex(bytes)
}

/// The path of a blob in an OCI layout, `<layout>/blobs/<algorithm>/<encoded>`, for a strictly
/// well-formed digest only: an algorithm of lowercase letters and digits and an encoded part of
/// lowercase hex (no `.`, no `/`), so a digest read from a manifest can never name a file
/// outside `blobs/`. `None` for anything else (such a blob cannot be there).
pub fn blob_path(layout: &Path, digest: &str) -> Option<PathBuf> {
    let (alg, enc) = digest.split_once(':')?;
    let alg_ok = !alg.is_empty()
        && alg
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let enc_ok = !enc.is_empty() && enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    (alg_ok && enc_ok).then(|| layout.join("blobs").join(alg).join(enc))
}

/// A file system path for messages and reports, escaped as [`escape_bytes`] does.
pub fn show_path(p: &Path) -> String {
    escape_bytes(p.as_os_str().as_encoded_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_matches_walk_order() {
        let walk = ["", "a", "a/b", "a-b", "a.txt", "a0"];
        let keys: Vec<RelPath> = walk
            .iter()
            .map(|p| RelPath::from_slash_bytes(p.as_bytes()))
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
    }

    #[test]
    fn escape_round_trips() {
        for raw in [
            &b"plain/name"[..],
            b"back\\slash",
            b"new\nline",
            b"bad\xff\xfe/x",
            b"\xc3\xa9t\xc3\xa9",
        ] {
            let p = RelPath::from_slash_bytes(raw);
            let shown = p.to_string();
            assert!(!shown.contains('\n'));
            assert_eq!(RelPath::parse_escaped(&shown), Some(p));
        }
    }

    #[test]
    fn format_characters_are_escaped_in_text_and_exact_in_json() {
        let raw = "a\u{202e}gnp.exe/\u{200b}x\u{feff}\u{2028}".as_bytes();
        let p = RelPath::from_slash_bytes(raw);
        let shown = p.to_string();
        assert_eq!(shown, "a\\u{202e}gnp.exe/\\u{200b}x\\u{feff}\\u{2028}");
        assert_eq!(RelPath::parse_escaped(&shown), Some(p.clone()));
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(json, "\"a\u{202e}gnp.exe/\u{200b}x\u{feff}\u{2028}\"");
        assert_eq!(serde_json::from_str::<RelPath>(&json).unwrap(), p);
        assert_eq!(
            escape_bytes("\u{2066}l\u{2069}".as_bytes()),
            "\\u{2066}l\\u{2069}"
        );
        // Visible text, including other scripts and combining marks, is kept.
        assert_eq!(escape_bytes("é日本\u{301}".as_bytes()), "é日本\u{301}");
        // A text-form escape of a literal backslash-u stays a backslash-u.
        let lit = RelPath::from_slash_bytes(b"\\u{202e}");
        assert_eq!(RelPath::parse_escaped(&lit.to_string()), Some(lit));
    }

    #[test]
    fn ancestry() {
        let a = RelPath::from_slash_bytes(b"a");
        assert!(a.is_ancestor_of(&RelPath::from_slash_bytes(b"a/b")));
        assert!(!a.is_ancestor_of(&RelPath::from_slash_bytes(b"a-b")));
        assert!(!a.is_ancestor_of(&a));
        assert!(RelPath::root().is_ancestor_of(&a));
        assert_eq!(RelPath::from_slash_bytes(b"x/y/z").file_name(), b"z");
    }

    #[test]
    fn layer_names() {
        assert!(validate_layer_name("base-1.2").is_ok());
        for bad in ["", "a/b", "..", ".", "a\0b"] {
            assert!(validate_layer_name(bad).is_err(), "{bad:?}");
        }
    }
}
