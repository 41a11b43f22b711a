//! Creates in one folder from several mounts at once: a kernel client sends one create at a time
//! per folder (the VFS holds the folder's lock across it), so what a file system does with
//! creates in one folder from many clients shows only with several mounts. Each folder given is
//! the same folder seen through a different mount; workers on each create empty files in it.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::Instant;

use anyhow::{bail, Context};

/// The most files one worker creates.
pub const MAX_FILES: usize = 1 << 20;
/// The most workers on one folder.
pub const MAX_WORKERS: usize = 64;

/// What a run of creates did.
#[derive(Debug, Clone, PartialEq)]
pub struct Created {
    /// Mounts the folder was seen through.
    pub mounts: usize,
    /// Workers on each.
    pub workers: usize,
    /// Files made in all.
    pub files: usize,
    /// Seconds from the common start to the last create.
    pub secs: f64,
}

impl std::fmt::Display for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "creates in one folder from {} mount(s) x {} worker(s): {:.0} per second ({} files in {:.2} s)",
            self.mounts,
            self.workers,
            self.files as f64 / self.secs.max(1e-9),
            self.files,
            self.secs
        )
    }
}

/// `workers` workers on each of `dirs` create `files` empty files each (exclusively, named by
/// mount and worker so none collide), all starting together. The first folder is made if
/// missing; the others must then show it (they are other mounts of the same folder). The files
/// are left in place.
pub fn run(dirs: &[PathBuf], files: usize, workers: usize) -> anyhow::Result<Created> {
    if dirs.is_empty() {
        bail!("give the folder at least once (--dirs)");
    }
    if !(1..=MAX_FILES).contains(&files) {
        bail!("each worker creates 1 to {MAX_FILES} files, not {files}");
    }
    if !(1..=MAX_WORKERS).contains(&workers) {
        bail!("1 to {MAX_WORKERS} workers per folder, not {workers}");
    }
    std::fs::create_dir_all(&dirs[0]).with_context(|| format!("cannot make {}", dirs[0].display()))?;
    for d in dirs {
        if !d.is_dir() {
            bail!("{} is not a folder", d.display());
        }
    }
    let start = Barrier::new(dirs.len() * workers + 1);
    let (began, results) = std::thread::scope(|s| {
        let handles: Vec<_> = dirs
            .iter()
            .enumerate()
            .flat_map(|(m, d)| (0..workers).map(move |w| (m, w, d)))
            .map(|(m, w, d)| {
                let start = &start;
                s.spawn(move || create_files(d, &format!("m{m}-w{w}-"), files, start))
            })
            .collect();
        start.wait();
        let began = Instant::now();
        (began, handles.into_iter().map(|h| h.join()).collect::<Vec<_>>())
    });
    for r in results {
        r.map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(Created {
        mounts: dirs.len(),
        workers,
        files: dirs.len() * workers * files,
        secs: began.elapsed().as_secs_f64(),
    })
}

fn create_files(dir: &Path, prefix: &str, files: usize, start: &Barrier) -> anyhow::Result<()> {
    start.wait();
    for i in 0..files {
        let p = dir.join(format!("{prefix}{i}"));
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .with_context(|| format!("cannot create {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_worker_on_every_mount_creates_its_files() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("shared");
        // The same folder twice stands for two mounts of it.
        let r = run(&[d.clone(), d.clone()], 25, 3).unwrap();
        assert_eq!((r.mounts, r.workers, r.files), (2, 3, 150));
        assert!(r.secs > 0.0);
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 150);
        assert!(d.join("m1-w2-24").is_file());
        assert!(r.to_string().contains("2 mount(s) x 3 worker(s)"));
    }

    #[test]
    fn bad_arguments_are_clear_errors() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("f");
        assert!(run(&[], 1, 1).is_err());
        assert!(run(std::slice::from_ref(&d), 0, 1).is_err());
        assert!(run(std::slice::from_ref(&d), MAX_FILES + 1, 1).is_err());
        assert!(run(std::slice::from_ref(&d), 1, 0).is_err());
        assert!(run(std::slice::from_ref(&d), 1, MAX_WORKERS + 1).is_err());
        let missing = t.path().join("no").join("such");
        let e = run(&[d.clone(), missing], 1, 1).unwrap_err().to_string();
        assert!(e.contains("is not a folder"), "{e}");
    }

    #[test]
    fn a_name_that_exists_is_an_error_not_a_reuse() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("f");
        run(std::slice::from_ref(&d), 2, 1).unwrap();
        let e = run(std::slice::from_ref(&d), 2, 1).unwrap_err();
        assert!(format!("{e:#}").contains("cannot create"), "{e:#}");
    }
}
