//! How long this machine's disk takes to make one small write durable: 4 KiB written over a file
//! laid out beforehand, then `fdatasync`, again and again. That is what every synced metadata
//! change of sealfs waits for (RocksDB's WAL, reused in place), and it moves 1.5-3x between runs
//! on a shared host, so a benchmark states it beside its table.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context};

/// Bytes written before each sync.
const BLOCK: usize = 4096;
/// The most syncs one probe times (a 4 GiB file).
pub const MAX_COUNT: usize = 1 << 20;

/// The times of a probe's syncs, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTimes {
    /// Syncs timed.
    pub count: usize,
    /// The mean.
    pub mean_us: f64,
    /// The median.
    pub median_us: f64,
    /// The 99th percentile.
    pub p99_us: f64,
}

impl std::fmt::Display for SyncTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "4 KiB write + fdatasync: mean {:.0} us, median {:.0} us, 99th percentile {:.0} us ({} syncs)",
            self.mean_us, self.median_us, self.p99_us, self.count
        )
    }
}

/// Time `count` syncs of a 4 KiB write each in a new file in `dir` (removed after). The file is
/// written whole and synced first, so that each timed sync writes data only, not a grown size.
pub fn probe(dir: &Path, count: usize) -> anyhow::Result<SyncTimes> {
    if !(1..=MAX_COUNT).contains(&count) {
        bail!("a probe times 1 to {MAX_COUNT} syncs, not {count}");
    }
    let path = dir.join(format!(".sealfs-bench-sync-probe.{}", std::process::id()));
    let r = timed_syncs(&path, count);
    let _ = fs::remove_file(&path);
    let mut us = r?;
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Ok(SyncTimes {
        count,
        mean_us: us.iter().sum::<f64>() / us.len() as f64,
        median_us: at(0.5),
        p99_us: at(0.99),
    })
}

fn timed_syncs(path: &Path, count: usize) -> anyhow::Result<Vec<f64>> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = [0x5a_u8; BLOCK];
    for i in 0..count {
        f.write_all_at(&block, (i * BLOCK) as u64)?;
    }
    f.sync_all().context("sync the laid-out file")?;
    let mut us = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        f.write_all_at(&block, (i * BLOCK) as u64)?;
        f.sync_data().context("fdatasync")?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_every_sync_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = probe(dir.path(), 20).unwrap();
        assert_eq!(t.count, 20);
        assert!(t.mean_us > 0.0 && t.median_us > 0.0);
        assert!(t.median_us <= t.p99_us);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(t.to_string().contains("(20 syncs)"));
    }

    #[test]
    fn a_missing_folder_and_odd_counts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let e = probe(&dir.path().join("missing"), 5).unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e:#}");
        assert!(probe(dir.path(), 0).is_err());
        let e = probe(dir.path(), usize::MAX).unwrap_err();
        assert!(e.to_string().contains("1 to"), "{e:#}");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
