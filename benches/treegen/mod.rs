//! A deterministic, monorepo-like tree generator shared by the benchmarks.
//!
//! Given a number of regular files `N` and a seed, it always makes the same tree:
//! - directories hold about 12 entries, nested at most [`MAX_DEPTH`] levels below the root;
//!   the branching factor is the smallest one that fits `N / 10` directories in that depth;
//! - file sizes are log-normal around [`MEDIAN_SIZE`] (σ = 1.0 in log space), and one file in
//!   [`TAIL_EVERY`] is a MiB-sized file (1–4 MiB);
//! - about 5% of the files are executable (0755, the rest 0644) and there is one relative symlink
//!   (to a sibling file) per 100 files;
//! - every file's mtime is set [`MTIME_AGE_S`] seconds into the past, so no row the cache takes
//!   of this tree is racy (the racy rule only distrusts files modified within ~20 ms before a
//!   snapshot) and no benchmark has to sleep before a no-change lookup.
//!
//! Content is pseudo-random (a splitmix64 stream), so equal files are rare and blake3 does real
//! work; it is taken as slices of one shared random buffer at per-file offsets, which keeps
//! generation I/O-bound.

#![allow(dead_code)]

use std::fs::{File, FileTimes};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Deepest directory level below the root.
pub const MAX_DEPTH: u32 = 6;
/// Median regular file size.
pub const MEDIAN_SIZE: f64 = 2048.0;
/// One file in this many is a large (MiB-sized) file.
pub const TAIL_EVERY: u64 = 1000;
/// How far in the past file mtimes are set.
pub const MTIME_AGE_S: u64 = 3600;

/// splitmix64: small, fast, deterministic.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.unit().max(f64::MIN_POSITIVE);
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

/// What was generated.
#[derive(Debug, Clone, Default)]
pub struct TreeStats {
    /// Regular files.
    pub files: u64,
    /// Directories, the root included.
    pub dirs: u64,
    /// Symlinks.
    pub symlinks: u64,
    /// Executable files.
    pub executables: u64,
    /// Total bytes of regular files.
    pub bytes: u64,
    /// Files of at least 1 MiB.
    pub large_files: u64,
    /// Deepest directory level.
    pub max_depth: u32,
    /// A regular file at the deepest level (relative path), for the one-file-changed phase.
    pub deep_file: PathBuf,
    /// Its size.
    pub deep_file_size: u64,
}

/// The size of the `i`-th file.
pub fn file_size(rng: &mut Rng, i: u64) -> u64 {
    if i % TAIL_EVERY == TAIL_EVERY / 2 {
        (1 << 20) + rng.next_u64() % (3 << 20)
    } else {
        let s = MEDIAN_SIZE * rng.normal().exp();
        (s as u64).min(512 << 10)
    }
}

/// Smallest branching factor `b >= 2` with `1 + b + ... + b^MAX_DEPTH >= dirs`.
fn branching(dirs: u64) -> u64 {
    let mut b = 2u64;
    loop {
        let mut total = 0u64;
        let mut level = 1u64;
        for _ in 0..=MAX_DEPTH {
            total = total.saturating_add(level);
            level = level.saturating_mul(b);
        }
        if total >= dirs {
            return b;
        }
        b += 1;
    }
}

/// The mtime every generated file gets.
pub fn past_mtime() -> SystemTime {
    SystemTime::now() - Duration::from_secs(MTIME_AGE_S)
}

/// Generates a tree of `files` regular files under `root` (created; must not exist or be
/// empty). Deterministic for a given `files` and `seed`, except for mtimes.
pub fn generate(root: &Path, files: u64, seed: u64) -> std::io::Result<TreeStats> {
    std::fs::create_dir_all(root)?;
    let mut rng = Rng::new(seed);
    // The directory skeleton, breadth first: (relative path, depth, subdirectory count).
    let dir_target = files.div_ceil(10).max(1);
    let b = branching(dir_target);
    let mut dirs: Vec<(PathBuf, u32)> = vec![(PathBuf::new(), 0)];
    let mut next = 0usize;
    while (dirs.len() as u64) < dir_target && next < dirs.len() {
        let (parent, depth) = dirs[next].clone();
        next += 1;
        if depth >= MAX_DEPTH {
            continue;
        }
        for k in 0..b {
            if dirs.len() as u64 >= dir_target {
                break;
            }
            dirs.push((parent.join(format!("d{k:02}")), depth + 1));
        }
    }
    let mut stats = TreeStats {
        dirs: dirs.len() as u64,
        ..Default::default()
    };
    for (d, depth) in &dirs {
        if !d.as_os_str().is_empty() {
            std::fs::create_dir(root.join(d))?;
        }
        stats.max_depth = stats.max_depth.max(*depth);
    }
    // One shared random buffer; file content is a slice of it at a per-file offset.
    let pool_len = 8usize << 20;
    let mut pool = vec![0u8; pool_len + (4 << 20)];
    for chunk in pool.chunks_mut(8) {
        let v = rng.next_u64().to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    let mtime = past_mtime();
    let per_dir = files / dirs.len() as u64;
    let extra = files % dirs.len() as u64;
    let mut i = 0u64;
    for (n, (d, depth)) in dirs.iter().enumerate() {
        let count = per_dir + u64::from((n as u64) < extra);
        let dir = root.join(d);
        for f in 0..count {
            let size = file_size(&mut rng, i);
            let exe = rng.next_u64().is_multiple_of(20);
            let ext = ["rs", "go", "c", "h", "json", "md", "txt", "py"][(i % 8) as usize];
            let name = format!("f{f:03}.{ext}");
            let path = dir.join(&name);
            let off = (rng.next_u64() % pool_len as u64) as usize;
            let mut file = File::create(&path)?;
            let mut left = size as usize;
            let mut o = off;
            while left > 0 {
                let n = left.min(pool.len() - o);
                file.write_all(&pool[o..o + n])?;
                left -= n;
                o = 0;
            }
            file.set_times(FileTimes::new().set_modified(mtime).set_accessed(mtime))?;
            if exe {
                file.set_permissions(std::fs::Permissions::from_mode(0o755))?;
                stats.executables += 1;
            }
            drop(file);
            stats.files += 1;
            stats.bytes += size;
            stats.large_files += u64::from(size >= 1 << 20);
            if *depth == stats.max_depth && size < (64 << 10) {
                stats.deep_file = d.join(&name);
                stats.deep_file_size = size;
            }
            if i % 100 == 99 {
                std::os::unix::fs::symlink(&name, dir.join(format!("l{f:03}")))?;
                stats.symlinks += 1;
            }
            i += 1;
        }
    }
    // The directories get the same past mtime, as a checkout's would be: a directory modified
    // within the in-flight slack of a snapshot cannot vouch for its listing, so a tree made
    // seconds before a lookup would read (and refresh) every directory at every lookup.
    for (d, _) in &dirs {
        filetime::set_file_mtime(root.join(d), filetime::FileTime::from_system_time(mtime))?;
    }
    Ok(stats)
}

/// Sets the mtime of every regular file under `root` to `when` (the content stays equal; the
/// ctime moves to now). Returns the number of files touched.
pub fn touch_all(root: &Path, when: SystemTime) -> std::io::Result<u64> {
    let mut n = 0;
    for e in walkdir::WalkDir::new(root) {
        let e = e.map_err(std::io::Error::other)?;
        if e.file_type().is_file() {
            filetime::set_file_mtime(e.path(), filetime::FileTime::from_system_time(when))?;
            n += 1;
        }
    }
    Ok(n)
}
