//! `sealfs load`: a workload for any mount (FUSE or NFS) that remembers what the file system
//! acknowledged, and checks it later. `write` creates files, `overwrite` rewrites a fixed set of
//! files with new versions; each file is fsync'd and closed before a line naming it goes to a
//! manifest (itself fsync'd, on a local disk). `verify` reads every file the manifest names:
//! written files must be intact, and an overwritten file must hold exactly one of the versions
//! acknowledged for it, never a mix.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Deterministic bytes of a file: xorshift from `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub dir: PathBuf,
    pub manifest: PathBuf,
    /// Stop after this many files (or versions); 0: no limit.
    pub count: u64,
    /// Stop after this long; zero: no limit.
    pub duration: Duration,
    /// Overwrite this many files instead of creating new ones (0: create).
    pub overwrite_files: u64,
    /// Bytes per file.
    pub size: usize,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct LoadResult {
    pub done: u64,
    pub errors: u64,
    pub longest: Duration,
}

fn write_file(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let mut f = OpenOptions::new().write(true).create(true).truncate(false).open(path)?;
    f.write_all(data)?;
    f.sync_all()
}

/// Run the workload until `count`, `duration` or `stop`.
pub fn run(spec: &LoadSpec, stop: Arc<AtomicBool>) -> anyhow::Result<LoadResult> {
    std::fs::create_dir_all(&spec.dir).with_context(|| format!("cannot create {}", spec.dir.display()))?;
    let mut manifest = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.manifest)
        .with_context(|| format!("cannot open manifest {}", spec.manifest.display()))?;
    let start = Instant::now();
    let mut r = LoadResult::default();
    let salt = rand::random::<u32>() as u64;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst)
        && (spec.count == 0 || r.done < spec.count)
        && (spec.duration.is_zero() || start.elapsed() < spec.duration)
    {
        let t = Instant::now();
        let (name, seed) = if spec.overwrite_files > 0 {
            let f = i % spec.overwrite_files;
            (format!("v{f}"), (f << 32) | (salt << 12) | (i / spec.overwrite_files))
        } else {
            (format!("f{salt:x}-{i}"), (salt << 32) | i)
        };
        let path = spec.dir.join(&name);
        match write_file(&path, &pattern(seed, spec.size)) {
            Ok(()) => {
                writeln!(manifest, "{name} {seed} {}", spec.size)?;
                manifest.sync_data()?;
                r.done += 1;
            }
            Err(e) => {
                eprintln!("error: {}: {e}", path.display());
                r.errors += 1;
            }
        }
        r.longest = r.longest.max(t.elapsed());
        i += 1;
    }
    Ok(r)
}

/// Check every file the manifest names; returns how many were checked.
pub fn verify(dir: &Path, manifest: &Path) -> anyhow::Result<usize> {
    let f = File::open(manifest).with_context(|| format!("cannot read manifest {}", manifest.display()))?;
    let mut versions: HashMap<String, Vec<(u64, usize)>> = HashMap::new();
    for line in BufReader::new(f).lines() {
        let line = line?;
        let mut p = line.split_whitespace();
        let (Some(name), Some(seed), Some(size)) = (p.next(), p.next(), p.next()) else {
            continue;
        };
        versions
            .entry(name.to_string())
            .or_default()
            .push((seed.parse()?, size.parse()?));
    }
    let mut bad = Vec::new();
    for (name, acked) in &versions {
        let got = match std::fs::read(dir.join(name)) {
            Ok(d) => d,
            Err(e) => {
                bad.push(format!("{name}: {e}"));
                continue;
            }
        };
        if !acked
            .iter()
            .any(|(seed, size)| got.len() == *size && got == pattern(*seed, *size))
        {
            bad.push(format!(
                "{name}: {} bytes, none of its {} acknowledged versions",
                got.len(),
                acked.len()
            ));
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} files are not as acknowledged:\n{}",
            bad.len(),
            versions.len(),
            bad.join("\n")
        );
    }
    Ok(versions.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_overwrite_and_verify() {
        let d = tempfile::tempdir().unwrap();
        let spec = LoadSpec {
            dir: d.path().join("data"),
            manifest: d.path().join("manifest"),
            count: 6,
            duration: Duration::ZERO,
            overwrite_files: 2,
            size: 1000,
        };
        let r = run(&spec, Arc::default()).unwrap();
        assert_eq!((r.done, r.errors), (6, 0));
        assert_eq!(verify(&spec.dir, &spec.manifest).unwrap(), 2);
        // A mix of two versions is caught.
        let mut mixed = std::fs::read(spec.dir.join("v0")).unwrap();
        mixed[500..].copy_from_slice(&pattern(1, 500));
        std::fs::write(spec.dir.join("v0"), mixed).unwrap();
        assert!(verify(&spec.dir, &spec.manifest).is_err());
    }
}
