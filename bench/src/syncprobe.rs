//! How long this machine's disk takes to make one small write durable: 4 KiB written over a file
//! laid out beforehand, then `fdatasync`, again and again, by one writer or by several at once
//! (each with its own file: three replicas on one disk). That is what every synced metadata
//! change of sealfs waits for (RocksDB's WAL, reused in place), and it moves 1.5-3x between runs
//! on a shared host, so a benchmark states it beside its table.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{bail, Context};

/// Bytes written before each sync.
const BLOCK: usize = 4096;
/// The most syncs one writer times (a 4 GiB file).
pub const MAX_COUNT: usize = 1 << 20;
/// The most writers at once.
pub const MAX_JOBS: usize = 16;

/// The times of a probe's syncs, in microseconds.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncTimes {
    /// Syncs timed (over all writers).
    pub count: usize,
    /// Writers syncing at once.
    pub jobs: usize,
    /// The mean.
    pub mean_us: f64,
    /// The median.
    pub median_us: f64,
    /// The 99th percentile.
    pub p99_us: f64,
}

impl std::fmt::Display for SyncTimes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let at_once = if self.jobs > 1 {
            format!(", {} at once", self.jobs)
        } else {
            String::new()
        };
        write!(
            f,
            "4 KiB write + fdatasync{at_once}: mean {:.0} us, median {:.0} us, 99th percentile {:.0} us ({} syncs)",
            self.mean_us, self.median_us, self.p99_us, self.count
        )
    }
}

/// Time `count` syncs of a 4 KiB write each by each of `jobs` writers at once, each in a new
/// file of its own in `dir` (removed after). A file is written whole and synced before the
/// writers start together, so that each timed sync writes data only, not a grown size.
pub fn probe(dir: &Path, count: usize, jobs: usize) -> anyhow::Result<SyncTimes> {
    if !(1..=MAX_COUNT).contains(&count) {
        bail!("a probe times 1 to {MAX_COUNT} syncs per writer, not {count}");
    }
    if !(1..=MAX_JOBS).contains(&jobs) {
        bail!("a probe runs 1 to {MAX_JOBS} writers, not {jobs}");
    }
    let paths: Vec<PathBuf> = (0..jobs)
        .map(|j| dir.join(format!(".sealfs-bench-sync-probe.{}.{j}", std::process::id())))
        .collect();
    let start = Barrier::new(jobs);
    let results: Vec<anyhow::Result<Vec<f64>>> = std::thread::scope(|s| {
        let writers: Vec<_> = paths
            .iter()
            .map(|p| s.spawn(|| timed_syncs(p, count, &start)))
            .collect();
        writers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a writer panicked"))))
            .collect()
    });
    for p in &paths {
        let _ = fs::remove_file(p);
    }
    let mut us = Vec::with_capacity(count * jobs);
    for r in results {
        us.extend(r?);
    }
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() - 1) as f64 * q).round() as usize];
    Ok(SyncTimes {
        count: us.len(),
        jobs,
        mean_us: us.iter().sum::<f64>() / us.len() as f64,
        median_us: at(0.5),
        p99_us: at(0.99),
    })
}

/// One writer: lay out its file, wait for the others (always, even after a failure, so none
/// waits forever), then time its syncs.
fn timed_syncs(path: &Path, count: usize, start: &Barrier) -> anyhow::Result<Vec<f64>> {
    let laid = lay_out(path, count);
    start.wait();
    let f = laid?;
    let block = [0x5a_u8; BLOCK];
    let mut us = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        f.write_all_at(&block, (i * BLOCK) as u64)?;
        f.sync_data().context("fdatasync")?;
        us.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(us)
}

fn lay_out(path: &Path, count: usize) -> anyhow::Result<fs::File> {
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
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_every_sync_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let t = probe(dir.path(), 20, 1).unwrap();
        assert_eq!((t.count, t.jobs), (20, 1));
        assert!(t.mean_us > 0.0 && t.median_us > 0.0);
        assert!(t.median_us <= t.p99_us);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
        assert!(t.to_string().contains("fdatasync: mean") && t.to_string().contains("(20 syncs)"));
        let t = probe(dir.path(), 20, 3).unwrap();
        assert_eq!((t.count, t.jobs), (60, 3));
        assert!(t.to_string().contains("3 at once") && t.to_string().contains("(60 syncs)"));
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_folder_and_odd_counts_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        // Every writer fails, and none waits for the others forever.
        let e = probe(&dir.path().join("missing"), 5, 3).unwrap_err();
        assert!(e.to_string().contains("cannot create"), "{e:#}");
        assert!(probe(dir.path(), 0, 1).is_err());
        let e = probe(dir.path(), usize::MAX, 1).unwrap_err();
        assert!(e.to_string().contains("1 to"), "{e:#}");
        let e = probe(dir.path(), 10, 0).unwrap_err();
        assert!(e.to_string().contains("writers"), "{e:#}");
        assert!(probe(dir.path(), 10, MAX_JOBS + 1).is_err());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
