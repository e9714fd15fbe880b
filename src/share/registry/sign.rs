//! Trust by key: entries signed at push with a minisign key, verified at every remote hit
//! against the public keys a machine trusts.
//!
//! Owns: the key files ([`SigningKey`], [`TrustedKeys`], [`generate_keypair`]), what a
//! signature covers, where it lives in the registry, and the verdict on an entry found there
//! ([`Untrusted`]).
//!
//! Must never: print, log or put into an error a secret key or its password; read a key file
//! that others can change (a secret key must be mode 0600 or stricter, a trusted public key
//! must not be writable by group or others); read any file or annotation without a size
//! limit; or hand a hostile signature to the minisign crate before its shape is checked (the
//! crate indexes a signature's bytes without checking their length).
//!
//! ## What is signed, and where the signature lives
//!
//! The signed message is the entry's config blob, byte for byte: the envelope
//! `{"layercache_entry": 1, "layer", "input_digest", "record", "blobs"}`, which names the layer,
//! the input digest, carries the entry record verbatim (with the output manifests'
//! descriptors) and lists every blob the entry carries (`blobs`: media type, digest and size of
//! each, in the order of the manifest's `layers`). The signature is a standard minisign
//! signature (Ed25519 over a BLAKE2b-512 prehash, with a signed "trusted comment"), kept as its
//! `.minisig` text in the manifest annotation [`ANNOTATION_SIGNATURE`]. Anyone can check it with
//! the reference tool: fetch the config blob and the annotation, then
//! `minisign -Vm config.json -x config.json.minisig -p KEY.pub`.
//!
//! Why an annotation, not a referrer or a cosign-style `.sig` tag: the entry and its signature
//! are one manifest, so they are pushed and replaced together (no window in which a tag has
//! an entry but not yet its signature, or the signature of the entry it had before); finding
//! an entry stays one `GET` of its tag, with no extra request and no dependence on the
//! referrers API (distribution 2.8 has none); and a registry that strips unknown tags or
//! garbage-collects untagged referrers cannot separate the two. What it costs: one signature
//! per entry (re-signing with another key rewrites the manifest, not the blobs) and the
//! manifest digest changes with the signature.
//!
//! ## What a trusting lookup checks (in this order; the first failure is the verdict)
//!
//! 1. the manifest has a signature annotation ([`Untrusted::Unsigned`]) that is a minisign
//!    signature ([`Untrusted::Malformed`]) by one of the trusted keys
//!    ([`Untrusted::UnknownKey`]) over exactly the config blob's bytes
//!    ([`Untrusted::BadSignature`]: a tampered record, or a signature replayed from another
//!    entry);
//! 2. the signed envelope names the layer and input digest asked for, and so do the manifest's
//!    annotations ([`Untrusted::Replayed`]: a whole signed entry copied to another tag);
//! 3. the manifest's blobs are exactly the signed list, and the record's outputs are among
//!    them ([`Untrusted::OutputsDiffer`]).
//!
//! All of it runs before a blob is downloaded: an untrusted entry leaves the layout and the
//! database as they were.

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Serialize;

/// Manifest annotation holding the entry's minisign signature (the `.minisig` text) over the
/// config blob.
pub const ANNOTATION_SIGNATURE: &str = "dev.layercache.signature";
/// The environment variable the binary reads the password of a password-protected secret key
/// from.
pub const PASSWORD_ENV: &str = "LAYERCACHE_SIGN_KEY_PASSWORD";

/// The largest key file read (a minisign key file is under 400 bytes).
const MAX_KEY_FILE: u64 = 64 << 10;
/// The largest signature annotation read (a minisign signature is under 400 bytes, plus its
/// comments).
pub(crate) const MAX_SIGNATURE_BYTES: usize = 4 << 10;
/// Bytes of a minisign signature: algorithm (2), key id (8), Ed25519 signature (64).
const SIGNATURE_LEN: usize = 74;
/// Bytes of the global (comment) signature.
const GLOBAL_SIGNATURE_LEN: usize = 64;

/// Why an entry found in a registry is not trusted. Each is a miss (`remote_untrusted`), never
/// a hit, and nothing of the entry is downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[serde(tag = "why", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Untrusted {
    /// The entry carries no signature.
    #[error("it is not signed")]
    Unsigned,
    /// The signature annotation is not a minisign signature.
    #[error("its signature is not a minisign signature ({detail})")]
    Malformed {
        /// What is wrong with it.
        detail: String,
    },
    /// Signed, by a key that is not trusted here.
    #[error("it is signed by key {key_id}, which is not one of the trusted keys")]
    UnknownKey {
        /// The minisign key id of the signature (16 hex digits, as `minisign` prints it).
        key_id: String,
    },
    /// The signature does not verify over the entry's bytes: the entry was changed after it
    /// was signed, or the signature was taken from another entry.
    #[error(
        "its signature by key {key_id} does not match its content (changed after signing, or a signature of another entry)"
    )]
    BadSignature {
        /// The key id the signature names.
        key_id: String,
    },
    /// A valid signature of another entry: the signed envelope (or the manifest) names
    /// another layer or input digest than the one asked for.
    #[error("it is a signed entry for another layer or input digest ({detail})")]
    Replayed {
        /// What it names.
        detail: String,
    },
    /// The manifest's blobs, or the record's outputs, are not what was signed.
    #[error("its outputs differ from what was signed ({detail})")]
    OutputsDiffer {
        /// What differs.
        detail: String,
    },
}

impl Untrusted {
    /// The verdict as one word (the `why` of the `remote_untrusted` miss reason).
    pub fn kind(&self) -> &'static str {
        match self {
            Untrusted::Unsigned => "unsigned",
            Untrusted::Malformed { .. } => "malformed",
            Untrusted::UnknownKey { .. } => "unknown_key",
            Untrusted::BadSignature { .. } => "bad_signature",
            Untrusted::Replayed { .. } => "replayed",
            Untrusted::OutputsDiffer { .. } => "outputs_differ",
        }
    }
}

/// An error with a key file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file cannot be read (or written, for keygen).
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The key file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Others can read or change the key file.
    #[error(
        "key file {} has mode {mode:03o}: {rule}; `chmod {fix} {}` fixes it",
        path.display(),
        path.display()
    )]
    Permissions {
        /// The key file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
        /// The rule it breaks.
        rule: &'static str,
        /// The mode to set.
        fix: &'static str,
    },
    /// The file is not a minisign key of the expected kind.
    #[error("key file {} is not {expected}: {detail}", path.display())]
    Invalid {
        /// The key file.
        path: PathBuf,
        /// What it should be.
        expected: &'static str,
        /// What is wrong (never key material).
        detail: String,
    },
    /// The secret key is password-protected and no password was given.
    #[error(
        "secret key {} is password-protected: give its password in ${PASSWORD_ENV}, or make an unprotected key for CI (`generate_keypair`, the CLI's `keygen`; kept mode 0600)",
        path.display()
    )]
    NeedsPassword {
        /// The key file.
        path: PathBuf,
    },
    /// The key could not be made or a signature could not be computed.
    #[error("cannot {what}: {detail}")]
    Crypto {
        /// What failed.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Reads a key file: a regular file, at most [`MAX_KEY_FILE`] bytes, UTF-8.
fn read_key_file(path: &Path) -> Result<(String, std::fs::Metadata), KeyError> {
    let io = |what, source| KeyError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    // O_NOFOLLOW is not used: a key file may be a symlink the user made; its target's mode is
    // what is checked (the metadata of the opened file).
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| io("cannot open key file", e))?;
    let meta = file.metadata().map_err(|e| io("cannot stat key file", e))?;
    if !meta.is_file() {
        return Err(KeyError::Invalid {
            path: path.to_path_buf(),
            expected: "a regular file",
            detail: "it is not a regular file".into(),
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io("cannot read key file", e))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(KeyError::Invalid {
            path: path.to_path_buf(),
            expected: "a minisign key",
            detail: format!("it is larger than {MAX_KEY_FILE} bytes"),
        });
    }
    let text = String::from_utf8(bytes).map_err(|_| KeyError::Invalid {
        path: path.to_path_buf(),
        expected: "a minisign key",
        detail: "it is not text".into(),
    })?;
    Ok((text, meta))
}

/// The key id of a minisign key or signature, as `minisign` prints it (16 hex digits of the
/// little-endian u64).
fn key_id(keynum: &[u8]) -> String {
    keynum
        .iter()
        .rev()
        .map(|b| format!("{b:02X}"))
        .collect::<String>()
}

/// A secret key that signs entries at push. Its `Debug` shows only the key id and the file.
#[derive(Clone)]
pub struct SigningKey {
    secret: minisign::SecretKey,
    public: minisign::PublicKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("key_id", &self.key_id())
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a minisign secret key file (`layercache keygen`, or `minisign -G`). The file
    /// must not be readable or writable by group or others (mode 0600 or stricter), else it is
    /// refused ([`KeyError::Permissions`]). A password-protected key needs `password`
    /// ([`KeyError::NeedsPassword`] without it).
    pub fn from_file(path: &Path, password: Option<&str>) -> Result<SigningKey, KeyError> {
        let (text, meta) = read_key_file(path)?;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::Permissions {
                path: path.to_path_buf(),
                mode,
                rule: "a secret key must be readable and writable by its owner only",
                fix: "600",
            });
        }
        let invalid = |detail: String| KeyError::Invalid {
            path: path.to_path_buf(),
            expected: "a minisign secret key",
            detail,
        };
        let plain = minisign::SecretKey::from_unencrypted_box(text.clone().into())
            .map_err(|e| e.to_string())
            .or_else(|e| unprotected_reference_key(&text).ok_or(e));
        let secret = match plain {
            Ok(k) => k,
            Err(plain) => match password {
                // Never `None` here: the crate would prompt on the terminal and write to stdout.
                Some(pw) => minisign::SecretKey::from_box(text.into(), Some(pw.to_string()))
                    .map_err(|e| invalid(e.to_string()))?,
                None if plain.contains("encrypted") => {
                    return Err(KeyError::NeedsPassword {
                        path: path.to_path_buf(),
                    });
                }
                None => return Err(invalid(plain)),
            },
        };
        let public =
            minisign::PublicKey::from_secret_key(&secret).map_err(|e| invalid(e.to_string()))?;
        Ok(SigningKey {
            secret,
            public,
            path: path.to_path_buf(),
        })
    }

    /// The key id (16 hex digits, as `minisign` prints it).
    pub fn key_id(&self) -> String {
        key_id(self.public.keynum())
    }

    /// The public half, as a trusted key (a push checks with it whether an entry in the
    /// registry is already signed by this key).
    pub fn public(&self) -> TrustedKeys {
        TrustedKeys {
            keys: vec![self.public.clone()],
        }
    }

    /// The minisign signature (`.minisig` text) of `message`, with `comment` as the signed
    /// trusted comment (one line).
    pub(crate) fn sign(&self, message: &[u8], comment: &str) -> Result<String, KeyError> {
        let comment: String = comment.chars().filter(|c| !c.is_control()).collect();
        minisign::sign(
            Some(&self.public),
            &self.secret,
            std::io::Cursor::new(message),
            Some(&comment),
            Some("layercache entry signature"),
        )
        .map(|b| b.into_string())
        .map_err(|e| KeyError::Crypto {
            what: "sign the entry",
            detail: e.to_string(),
        })
    }
}

/// Bytes of a decoded minisign secret key.
const SECRET_KEY_LEN: usize = 158;

/// A secret key without a password as the reference tool writes it (`minisign -G -W`): no KDF
/// and, unlike the crate's own format, an all-zero checksum, which the crate calls corrupted.
fn unprotected_reference_key(text: &str) -> Option<minisign::SecretKey> {
    let line = text.lines().nth(1)?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(line.trim())
        .ok()?;
    let unprotected = bytes.len() == SECRET_KEY_LEN
        && bytes.get(2..4) == Some(&[0, 0][..])
        && bytes
            .get(126..)
            .is_some_and(|chk| chk.iter().all(|b| *b == 0));
    if !unprotected {
        return None;
    }
    minisign::SecretKey::from_bytes(&bytes).ok()
}

/// The public keys a machine trusts: a remote entry is a hit only when one of them signed it.
/// Two or more at once let a signing key be rotated without a gap.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: Vec<minisign::PublicKey>,
}

impl TrustedKeys {
    /// Reads minisign public key files (`KEY.pub`). A file writable by group or others is
    /// refused ([`KeyError::Permissions`]): whoever could replace it could choose what is
    /// trusted.
    pub fn from_files<P: AsRef<Path>>(paths: &[P]) -> Result<TrustedKeys, KeyError> {
        let mut keys = Vec::new();
        for p in paths {
            let path = p.as_ref();
            let (text, meta) = read_key_file(path)?;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o022 != 0 {
                return Err(KeyError::Permissions {
                    path: path.to_path_buf(),
                    mode,
                    rule: "a trusted key must not be writable by group or others",
                    fix: "644",
                });
            }
            let key =
                minisign::PublicKey::from_box(text.into()).map_err(|e| KeyError::Invalid {
                    path: path.to_path_buf(),
                    expected: "a minisign public key",
                    detail: e.to_string(),
                })?;
            keys.push(key);
        }
        Ok(TrustedKeys { keys })
    }

    /// The key ids, in the order given.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| key_id(k.keynum())).collect()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks that `signature` (the `.minisig` text from the manifest, `None` when it has
    /// none) is a signature by one of these keys over exactly `message`. Returns the key id.
    pub(crate) fn verify(
        &self,
        message: &[u8],
        signature: Option<&str>,
    ) -> Result<String, Untrusted> {
        let Some(text) = signature else {
            return Err(Untrusted::Unsigned);
        };
        let keynum = check_shape(text).map_err(|detail| Untrusted::Malformed { detail })?;
        let id = key_id(&keynum);
        let Some(trusted) = self.keys.iter().find(|k| k.keynum() == keynum) else {
            return Err(Untrusted::UnknownKey { key_id: id });
        };
        let sig = minisign::SignatureBox::from_string(text).map_err(|e| Untrusted::Malformed {
            detail: e.to_string(),
        })?;
        // Legacy (non-prehashed) signatures are refused: only what `minisign -S` makes today.
        let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            minisign::verify(
                trusted,
                &sig,
                std::io::Cursor::new(message),
                true,
                false,
                false,
            )
        }));
        match verified {
            Ok(Ok(())) => Ok(id),
            _ => Err(Untrusted::BadSignature { key_id: id }),
        }
    }
}

/// Checks the shape of a `.minisig` text before the minisign crate parses it: four lines,
/// the comment prefixes, a 74-byte signature with a known algorithm and a 64-byte global
/// signature. Returns the key id bytes.
fn check_shape(text: &str) -> Result<Vec<u8>, String> {
    if text.len() > MAX_SIGNATURE_BYTES {
        return Err(format!("{} bytes", text.len()));
    }
    let lines: Vec<&str> = text.lines().collect();
    let [untrusted, sig, trusted, global] = lines.as_slice() else {
        return Err(format!("{} lines, not 4", lines.len()));
    };
    if !untrusted.starts_with("untrusted comment: ") || !trusted.starts_with("trusted comment: ") {
        return Err("the comment lines are missing".into());
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let sig = b64
        .decode(sig.trim())
        .map_err(|_| "the signature is not base64".to_string())?;
    let global = b64
        .decode(global.trim())
        .map_err(|_| "the global signature is not base64".to_string())?;
    if sig.len() != SIGNATURE_LEN || global.len() != GLOBAL_SIGNATURE_LEN {
        return Err("the signature has the wrong length".into());
    }
    match sig.get(..2) {
        Some(b"ED") => {}
        Some(b"Ed") => return Err("a legacy (not prehashed) signature".into()),
        _ => return Err("an unknown signature algorithm".into()),
    }
    Ok(sig.get(2..10).map(<[u8]>::to_vec).unwrap_or_default())
}

/// What [`generate_keypair`] wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GeneratedKey {
    /// The key id (16 hex digits).
    pub key_id: String,
    /// The secret key file (mode 0600).
    pub secret_key: PathBuf,
    /// The public key file (mode 0644), for `--trust-key` on the machines that pull.
    pub public_key: PathBuf,
}

/// Makes a new minisign key pair without a password (for CI: the file's mode 0600 protects
/// it) and writes the secret key to `secret` (mode 0600) and the public key to `public` (mode
/// 0644), both in minisign's format. Refuses to overwrite an existing file. The key itself is
/// never printed.
pub fn generate_keypair(secret: &Path, public: &Path) -> Result<GeneratedKey, KeyError> {
    let crypto = |e: minisign::PError| KeyError::Crypto {
        what: "make a key pair",
        detail: e.to_string(),
    };
    let pair = minisign::KeyPair::generate_unencrypted_keypair().map_err(crypto)?;
    let id = key_id(pair.pk.keynum());
    let sk_box = pair
        .sk
        .to_box(Some(&format!("layercache secret key {id}")))
        .map_err(crypto)?;
    let pk_box = pair.pk.to_box().map_err(crypto)?;
    write_new(secret, 0o600, &sk_box.to_bytes())?;
    if let Err(e) = write_new(public, 0o644, &pk_box.to_bytes()) {
        let _ = std::fs::remove_file(secret);
        return Err(e);
    }
    Ok(GeneratedKey {
        key_id: id,
        secret_key: secret.to_path_buf(),
        public_key: public.to_path_buf(),
    })
}

/// Writes a new file with `mode` from its creation (never over an existing one).
fn write_new(path: &Path, mode: u32, bytes: &[u8]) -> Result<(), KeyError> {
    use std::io::Write;
    let io = |source| KeyError::Io {
        what: "cannot write key file",
        path: path.to_path_buf(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    // The umask may have cleared bits of a public key's mode; never adds any to a secret's.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(dir: &Path, name: &str) -> (SigningKey, TrustedKeys) {
        let sk = dir.join(format!("{name}.key"));
        let pk = dir.join(format!("{name}.pub"));
        generate_keypair(&sk, &pk).expect("keygen");
        (
            SigningKey::from_file(&sk, None).expect("secret key"),
            TrustedKeys::from_files(&[pk]).expect("public key"),
        )
    }

    #[test]
    fn a_signature_verifies_only_with_its_key_over_its_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, a_pub) = keys(dir.path(), "a");
        let (_, b_pub) = keys(dir.path(), "b");
        let sig = a.sign(b"message", "layercache entry").expect("sign");
        assert_eq!(a_pub.verify(b"message", Some(&sig)), Ok(a.key_id()));
        assert_eq!(
            a_pub.verify(b"messagf", Some(&sig)),
            Err(Untrusted::BadSignature { key_id: a.key_id() })
        );
        assert!(matches!(
            b_pub.verify(b"message", Some(&sig)),
            Err(Untrusted::UnknownKey { .. })
        ));
        assert_eq!(a_pub.verify(b"message", None), Err(Untrusted::Unsigned));
        // Two keys at once: either verifies.
        let mut both = b_pub.clone();
        both.keys.extend(a_pub.keys.clone());
        assert_eq!(both.verify(b"message", Some(&sig)), Ok(a.key_id()));
    }

    /// A password-protected key (the crate's own format, as `minisign -G` makes) needs its
    /// password; with it, it signs.
    #[test]
    fn a_password_protected_key_needs_its_password() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = dir.path().join("p.key");
        let pk = dir.path().join("p.pub");
        let pair = minisign::KeyPair::generate_encrypted_keypair(Some("pw".into())).expect("pair");
        write_new(&sk, 0o600, &pair.sk.to_box(None).expect("box").to_bytes()).expect("write");
        write_new(&pk, 0o644, &pair.pk.to_box().expect("box").to_bytes()).expect("write");
        let e = SigningKey::from_file(&sk, None).expect_err("no password");
        assert!(matches!(e, KeyError::NeedsPassword { .. }), "{e}");
        let key = SigningKey::from_file(&sk, Some("pw")).expect("password");
        let sig = key.sign(b"m", "c").expect("sign");
        let trusted = TrustedKeys::from_files(&[&pk]).expect("public key");
        assert_eq!(trusted.verify(b"m", Some(&sig)), Ok(key.key_id()));
    }

    #[test]
    fn hostile_signatures_are_malformed_never_a_panic() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, a_pub) = keys(dir.path(), "a");
        let sig = a.sign(b"m", "c").expect("sign");
        let lines: Vec<&str> = sig.lines().collect();
        let short_global = format!("{}\n{}\n{}\nAAAA\n", lines[0], lines[1], lines[2]);
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut legacy = b64.decode(lines[1]).expect("b64");
        legacy[1] = b'd';
        let legacy = format!(
            "{}\n{}\n{}\n{}\n",
            lines[0],
            b64.encode(&legacy),
            lines[2],
            lines[3]
        );
        let huge = "x".repeat(MAX_SIGNATURE_BYTES + 1);
        for bad in [
            "",
            "one line",
            &short_global,
            &legacy,
            &huge,
            "a\nb\nc\nd\n",
        ] {
            let got = a_pub.verify(b"m", Some(bad));
            assert!(
                matches!(got, Err(Untrusted::Malformed { .. })),
                "{bad:?}: {got:?}"
            );
        }
    }

    #[test]
    fn key_files_others_can_read_or_change_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sk = dir.path().join("k.key");
        let pk = dir.path().join("k.pub");
        let made = generate_keypair(&sk, &pk).expect("keygen");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!((mode(&sk), mode(&pk)), (0o600, 0o644));
        // Never over an existing file.
        assert!(generate_keypair(&sk, &dir.path().join("other.pub")).is_err());
        let text = std::fs::read_to_string(&sk).expect("read");
        let shown = format!("{:?}", SigningKey::from_file(&sk, None).expect("key"));
        assert!(shown.contains(&made.key_id), "{shown}");
        for line in text.lines().skip(1) {
            assert!(!shown.contains(line), "Debug shows key material");
        }
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        let e = SigningKey::from_file(&sk, None).expect_err("0640 refused");
        assert!(e.to_string().contains("chmod 600"), "{e}");
        assert!(
            !e.to_string().contains(text.lines().nth(1).unwrap_or("-")),
            "{e}"
        );
        std::fs::set_permissions(&pk, std::fs::Permissions::from_mode(0o664)).expect("chmod");
        let e = TrustedKeys::from_files(&[&pk]).expect_err("group-writable refused");
        assert!(matches!(e, KeyError::Permissions { .. }), "{e}");
        // A public key is not a secret key, and the other way round.
        std::fs::set_permissions(&pk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(SigningKey::from_file(&pk, None).is_err());
        std::fs::set_permissions(&sk, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(TrustedKeys::from_files(&[&sk]).is_err());
    }
}
