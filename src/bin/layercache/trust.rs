//! Trust by key: `keygen`, `push --sign-key`, and `--trust-key` for `lookup --remote` and
//! `pull` (the library's `remote::sign` does the work).
//!
//! Owns: the key options and where their defaults come from (`$LAYERCACHE_TRUST_KEYS`, the
//! password of a protected secret key from `$LAYERCACHE_SIGN_KEY_PASSWORD`).
//!
//! Must never: print or log a secret key or its password; fall back to trusting whoever can
//! push when a trusted key cannot be read (that is an error, exit 2, not a warning).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use layercache::{
    SIGN_KEY_PASSWORD_ENV as PASSWORD_ENV, SigningKey, TrustedKeys, generate_keypair,
};

use crate::output::emit;

/// Which signatures a remote entry needs to be a hit.
#[derive(clap::Args, Clone, Default)]
pub struct TrustArgs {
    /// Take a remote entry only when it is signed by this minisign public key (repeatable:
    /// any one of them; two at once while a signing key is rotated). Unsigned entries, other
    /// keys' and tampered ones are misses (`remote_untrusted`). Default: the ':'-separated
    /// list in $LAYERCACHE_TRUST_KEYS; without any, an entry is trusted as much as whoever can
    /// push to the repository.
    #[arg(
        long = "trust-key",
        value_name = "FILE",
        env = "LAYERCACHE_TRUST_KEYS",
        value_delimiter = ':'
    )]
    pub trust_keys: Vec<PathBuf>,
}

impl TrustArgs {
    /// The trusted keys, `None` when none is given. A key that cannot be read is an error.
    pub fn load(&self) -> anyhow::Result<Option<TrustedKeys>> {
        let paths: Vec<&PathBuf> = self
            .trust_keys
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .collect();
        if paths.is_empty() {
            return Ok(None);
        }
        Ok(Some(TrustedKeys::from_files(&paths)?))
    }
}

/// The key `push` signs with.
#[derive(clap::Args, Clone, Default)]
pub struct SignArgs {
    /// push: sign every entry published with this minisign secret key (mode 0600; made by
    /// `layercache keygen` or `minisign -G`; a password-protected key takes its password from
    /// $LAYERCACHE_SIGN_KEY_PASSWORD). An entry already there that this key did not sign is
    /// replaced by a signed one.
    #[arg(long, value_name = "FILE")]
    pub sign_key: Option<PathBuf>,
}

impl SignArgs {
    /// The signing key, if one is given.
    pub fn load(&self) -> anyhow::Result<Option<SigningKey>> {
        let Some(path) = &self.sign_key else {
            return Ok(None);
        };
        let password = std::env::var(PASSWORD_ENV).ok();
        Ok(Some(SigningKey::from_file(path, password.as_deref())?))
    }
}

/// Arguments of `layercache keygen`.
#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600; never overwritten).
    #[arg(long, value_name = "FILE", default_value = "layercache.key")]
    secret_key: PathBuf,
    /// Where to write the public key (mode 0644; never overwritten).
    #[arg(long, value_name = "FILE", default_value = "layercache.pub")]
    public_key: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// `layercache keygen`: a new minisign key pair without a password (the file mode protects it,
/// as CI needs). Prints the key id and the two paths, never the key.
pub fn keygen(args: &KeygenArgs) -> anyhow::Result<ExitCode> {
    let made = generate_keypair(&args.secret_key, &args.public_key)?;
    emit(args.json, &made, |m, out| {
        writeln!(
            out,
            "key {}: secret key {} (mode 0600: keep it on the machines that push, `push --sign-key`), \
             public key {} (for `--trust-key` on the machines that pull)",
            m.key_id,
            m.secret_key.display(),
            m.public_key.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}
