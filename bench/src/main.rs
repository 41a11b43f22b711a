//! `sealfs-bench`: the same workloads against any mounted file system, so figures of sealfs and
//! of its peers are comparable. Metadata in the shape of mdtest ("easy": a folder per worker,
//! empty files; "hard": one shared folder, 3901-byte files), sequential 1 MiB I/O, 4 KiB random
//! I/O, and the CPU time and peak memory of given processes. Prints a summary and writes JSON.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use rand::Rng;
use serde::{Deserialize, Serialize};

mod pcap;
mod shared;
mod syncprobe;

/// Benchmark mounted file systems and compare the results.
#[derive(Parser, Debug)]
#[command(name = "sealfs-bench")]
enum Cli {
    /// Run the workloads on one file system.
    Run(Args),
    /// One table of several runs' figures, with each one's ratio to the first (the baseline).
    Compare {
        /// Result files of `run` (the first is the baseline).
        files: Vec<PathBuf>,
        /// Also write every figure and ratio here as JSON.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Record the peak memory of processes in a result file written elsewhere (a run inside a
    /// VM cannot see the server's processes on the host).
    Rss {
        /// The result file to add to.
        #[arg(long)]
        report: PathBuf,
        /// Processes (pids, comma separated).
        #[arg(long, value_delimiter = ',')]
        pids: Vec<u32>,
    },
    /// Drop this machine's page cache whenever a `run --drop-caches-host` asks (one TCP
    /// connection per request, answered once the cache is dropped); runs until killed.
    DropServer {
        /// Address to listen on.
        #[arg(long)]
        listen: String,
    },
    /// How long the NFS server on `port` took to answer each kind of call, from a packet
    /// capture taken on its host (`tcpdump -s 8400 -w FILE tcp port PORT`): one line per call,
    /// "NAME COUNT MEAN_MS".
    NfsTimes {
        /// The capture (classic pcap).
        #[arg(long)]
        pcap: PathBuf,
        /// The server's TCP port.
        #[arg(long)]
        port: u16,
    },
    /// How long the disk under `dir` takes to make a 4 KiB write durable (`fdatasync`), which
    /// every synced metadata change waits for, with one writer or several at once: one line
    /// with the mean, median and 99th percentile.
    SyncProbe {
        /// A folder on the disk to measure (a file per writer is made in it, and removed after).
        #[arg(long)]
        dir: PathBuf,
        /// Syncs each writer times.
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// Writers syncing at once, each in a file of its own (3: the replicas of a change on
        /// one disk).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
    },
    /// Creates in one folder from several mounts at once (empty files; left in place).
    SharedCreate {
        /// The folder, once per mount it is seen through (comma separated; the first is made if
        /// missing).
        #[arg(long, value_delimiter = ',', required = true)]
        dirs: Vec<PathBuf>,
        /// Files each worker creates.
        #[arg(long, default_value_t = 1000)]
        files: usize,
        /// Workers on each mount.
        #[arg(long, default_value_t = 1)]
        workers: usize,
    },
}

/// What to run where.
#[derive(clap::Args, Debug)]
struct Args {
    /// Folder on the file system to test (created; emptied of the benchmark's files after).
    #[arg(long)]
    dir: PathBuf,
    /// Name of this run in the output.
    #[arg(long, default_value = "fs")]
    label: String,
    /// Workloads, comma separated: md-easy, md-hard, extract, seq, rand, fio (Debian's fio,
    /// where installed).
    #[arg(long, default_value = "md-easy,md-hard,extract,seq,rand,fio", value_delimiter = ',')]
    workloads: Vec<String>,
    /// Worker counts for the metadata workloads, comma separated.
    #[arg(long, default_value = "1,4", value_delimiter = ',')]
    workers: Vec<usize>,
    /// Files per worker in the metadata workloads.
    #[arg(long, default_value_t = 2000)]
    files: usize,
    /// Size of the sequential file in MiB.
    #[arg(long, default_value_t = 2048)]
    seq_mib: u64,
    /// Seconds of each random I/O phase.
    #[arg(long, default_value_t = 10)]
    rand_secs: u64,
    /// Size of the random I/O file in MiB.
    #[arg(long, default_value_t = 256)]
    rand_mib: u64,
    /// Processes whose CPU time and peak memory to report (pids, comma separated).
    #[arg(long, value_delimiter = ',')]
    pids: Vec<u32>,
    /// Drop the page cache before reads (needs root), so reads reach the file system.
    #[arg(long)]
    drop_caches: bool,
    /// Where `drop-server` runs on the host, to drop the host's page cache too with
    /// --drop-caches: a run inside a VM otherwise drops only its own, and the servers on the host
    /// would answer from theirs (the host is 10.0.2.2 from a qemu guest).
    #[arg(long)]
    drop_caches_host: Option<String>,
    /// Write the results here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One measured phase.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Phase {
    workload: String,
    phase: String,
    workers: usize,
    /// Operations per second, or MiB/s for sequential phases.
    value: f64,
    unit: String,
    ops: u64,
    secs: f64,
    /// CPU seconds the watched processes spent in this phase.
    cpu_secs: f64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Report {
    label: String,
    dir: String,
    phases: Vec<Phase>,
    /// Peak RSS in KiB of each watched process at the end.
    peak_rss_kib: Vec<(u32, u64)>,
}

/// CPU seconds (user + system) of `pids` so far.
fn cpu_secs(pids: &[u32]) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|p| fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / tick)
        })
        .sum()
}

fn peak_rss(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Write back and drop this machine's page cache, dentries and inodes.
fn drop_local_caches() {
    unsafe { libc::sync() };
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Ask the `drop-server` at `addr` to drop its machine's caches, and wait until it has.
fn drop_host_caches(addr: &str) -> anyhow::Result<()> {
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("cannot reach drop-server at {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(300)))?;
    s.write_all(b"D")?;
    let mut ok = [0u8; 1];
    s.read_exact(&mut ok)
        .with_context(|| format!("drop-server at {addr} did not answer"))?;
    if ok != *b"K" {
        bail!("drop-server at {addr} answered {ok:?}");
    }
    Ok(())
}

/// Serve `drop_host_caches` requests on `listen` until killed.
fn drop_server(listen: &str) -> anyhow::Result<()> {
    let l = std::net::TcpListener::bind(listen).with_context(|| format!("cannot listen on {listen}"))?;
    for conn in l.incoming() {
        let Ok(mut c) = conn else { continue };
        // A caller that connects and says nothing must not hold up the next one.
        let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
        let mut req = [0u8; 1];
        if c.read_exact(&mut req).is_ok() && req == *b"D" {
            drop_local_caches();
            let _ = c.write_all(b"K");
        }
    }
    Ok(())
}

struct Bench {
    args: Args,
    phases: Vec<Phase>,
}

impl Bench {
    /// With --drop-caches, drop the page cache here (and on the host, with --drop-caches-host)
    /// so that the reads that follow reach the file system.
    fn drop_caches(&self) -> anyhow::Result<()> {
        if self.args.drop_caches {
            drop_local_caches();
            if let Some(addr) = &self.args.drop_caches_host {
                drop_host_caches(addr)?;
            }
        }
        Ok(())
    }

    /// Run `f(worker)` on `workers` threads started together; ops/s from the first worker's
    /// start to the last one's end (each worker times itself: the thread that started them may
    /// not run again until they are done).
    fn parallel(
        &mut self,
        workload: &str,
        phase: &str,
        workers: usize,
        f: impl Fn(usize) -> anyhow::Result<u64> + Send + Sync + 'static,
    ) -> anyhow::Result<()> {
        let f = Arc::new(f);
        let barrier = Arc::new(Barrier::new(workers + 1));
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let f = f.clone();
                let b = barrier.clone();
                std::thread::spawn(move || {
                    b.wait();
                    let start = Instant::now();
                    let r = f(w);
                    (start, Instant::now(), r)
                })
            })
            .collect();
        let cpu0 = cpu_secs(&self.args.pids);
        barrier.wait();
        let mut ops = 0;
        let mut first: Option<Instant> = None;
        let mut last: Option<Instant> = None;
        for h in handles {
            let (start, end, r) = h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?;
            ops += r?;
            first = Some(first.map_or(start, |f| f.min(start)));
            last = Some(last.map_or(end, |l| l.max(end)));
        }
        let secs = match (first, last) {
            (Some(a), Some(b)) => b.duration_since(a).as_secs_f64().max(1e-6),
            _ => 1e-6,
        };
        self.record(workload, phase, workers, ops as f64 / secs, "ops/s", ops, secs, cpu0);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        workload: &str,
        phase: &str,
        workers: usize,
        value: f64,
        unit: &'static str,
        ops: u64,
        secs: f64,
        cpu0: f64,
    ) {
        let p = Phase {
            workload: workload.into(),
            phase: phase.into(),
            workers,
            value,
            unit: unit.to_string(),
            ops,
            secs,
            cpu_secs: cpu_secs(&self.args.pids) - cpu0,
        };
        eprintln!(
            "{:<10} {:<8} {:<8} workers {:>2}: {:>10.1} {}",
            self.args.label, p.workload, p.phase, workers, p.value, p.unit
        );
        self.phases.push(p);
    }

    /// mdtest "easy" (a folder per worker, empty files) or "hard" (one folder, 3901-byte files).
    fn metadata(&mut self, hard: bool, workers: usize) -> anyhow::Result<()> {
        let name = if hard { "md-hard" } else { "md-easy" };
        let top = self.args.dir.join(format!("{name}-{workers}"));
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(&top).with_context(|| format!("cannot create {}", top.display()))?;
        let n = self.args.files;
        let dir_of = {
            let top = top.clone();
            move |w: usize| if hard { top.clone() } else { top.join(format!("w{w}")) }
        };
        if !hard {
            for w in 0..workers {
                fs::create_dir(dir_of(w))?;
            }
        }
        let body: Arc<Vec<u8>> = Arc::new(if hard { vec![b'x'; 3901] } else { Vec::new() });
        let d = dir_of.clone();
        let b = body.clone();
        self.parallel(name, "create", workers, move |w| {
            let dir = d(w);
            for i in 0..n {
                let mut f = File::create(dir.join(format!("f.{w}.{i}")))?;
                if !b.is_empty() {
                    f.write_all(&b)?;
                }
            }
            Ok(n as u64)
        })?;
        let d = dir_of.clone();
        self.parallel(name, "stat", workers, move |w| {
            let dir = d(w);
            for i in 0..n {
                // Another worker's files, as mdtest does, so no client cache of one's own helps.
                let owner = (w + 1) % workers;
                fs::metadata(dir_of_other(&dir, hard, owner).join(format!("f.{owner}.{i}")))?;
            }
            Ok(n as u64)
        })?;
        if hard {
            self.drop_caches()?;
            let d = dir_of.clone();
            self.parallel(name, "read", workers, move |w| {
                let dir = d(w);
                let mut buf = Vec::with_capacity(4096);
                for i in 0..n {
                    buf.clear();
                    File::open(dir.join(format!("f.{w}.{i}")))?.read_to_end(&mut buf)?;
                    if buf.len() != 3901 {
                        bail!("read {} bytes of a 3901-byte file", buf.len());
                    }
                }
                Ok(n as u64)
            })?;
        }
        let d = dir_of.clone();
        self.parallel(name, "readdir", workers, move |w| {
            let dir = d(w);
            let listed = fs::read_dir(&dir)?.count();
            Ok(listed as u64)
        })?;
        let d = dir_of.clone();
        self.parallel(name, "remove", workers, move |w| {
            let dir = d(w);
            for i in 0..n {
                fs::remove_file(dir.join(format!("f.{w}.{i}")))?;
            }
            Ok(n as u64)
        })?;
        let _ = fs::remove_dir_all(&top);
        Ok(())
    }

    /// A source tree extracted as tar extracts one, by one worker: each file made new, written in
    /// 10 KiB pieces, given its times, owner and mode through the open file, and closed; each
    /// folder's times and mode set once its files are in. `--files` files, 25 to a folder, their
    /// sizes cycling over a spread like a source tree's (600 bytes to 64 KB).
    fn extract(&mut self) -> anyhow::Result<()> {
        const SIZES: [usize; 8] = [600, 1_800, 3_500, 6_000, 9_000, 14_000, 27_000, 64_000];
        const PER_DIR: usize = 25;
        const PIECE: usize = 10_240;
        let top = self.args.dir.join("extract");
        let _ = fs::remove_dir_all(&top);
        fs::create_dir_all(&top).with_context(|| format!("cannot create {}", top.display()))?;
        let n = self.args.files;
        let t = top.clone();
        self.parallel("extract", "files", 1, move |_| {
            use std::os::unix::fs::{fchown, MetadataExt, PermissionsExt};
            let data: Vec<u8> = (0..SIZES[SIZES.len() - 1]).map(|i| (i % 251) as u8).collect();
            // The owner it has already, as tar run by a user sets it.
            let m = fs::metadata(&t)?;
            let (uid, gid) = (m.uid(), m.gid());
            let stamp = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
            let times = fs::FileTimes::new().set_accessed(stamp).set_modified(stamp);
            let finish_dir = |dir: &Path| -> std::io::Result<()> {
                File::open(dir)?.set_times(times)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            };
            let mut dir = t.clone();
            for i in 0..n {
                if i % PER_DIR == 0 {
                    if i > 0 {
                        finish_dir(&dir)?;
                    }
                    dir = t.join(format!("d{}", i / PER_DIR));
                    fs::create_dir(&dir)?;
                }
                let size = SIZES[i % SIZES.len()];
                let mut f = File::create_new(dir.join(format!("f{i}.c")))?;
                for piece in data[..size].chunks(PIECE) {
                    f.write_all(piece)?;
                }
                f.set_times(times)?;
                fchown(&f, Some(uid), Some(gid))?;
                f.set_permissions(fs::Permissions::from_mode(0o644))?;
            }
            finish_dir(&dir)?;
            Ok(n as u64)
        })?;
        let _ = fs::remove_dir_all(&top);
        Ok(())
    }

    /// Sequential write (then fsync) and read of one file, in 1 MiB requests.
    fn sequential(&mut self) -> anyhow::Result<()> {
        let path = self.args.dir.join("seq.dat");
        let total = self.args.seq_mib;
        let cpu0 = cpu_secs(&self.args.pids);
        let start = Instant::now();
        lay_out(&path, total, 0x5a)?;
        let secs = start.elapsed().as_secs_f64();
        self.record("seq", "write", 1, total as f64 / secs, "MiB/s", total, secs, cpu0);
        self.drop_caches()?;
        let cpu0 = cpu_secs(&self.args.pids);
        let start = Instant::now();
        let mut f = File::open(&path)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut read = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            read += n as u64;
        }
        let secs = start.elapsed().as_secs_f64();
        if read != total << 20 {
            bail!("read {read} bytes of {}", total << 20);
        }
        self.record("seq", "read", 1, total as f64 / secs, "MiB/s", total, secs, cpu0);
        fs::remove_file(&path)?;
        Ok(())
    }

    /// 4 KiB random reads, then random writes, over one file, for a fixed time each; then
    /// 4 KiB O_DIRECT random reads of the same file once the file system holds it in memory.
    ///
    /// The cached reads fill the client's page cache as they go, so their rate depends on how
    /// fast the misses are in a way that tips: with fast misses the whole file is cached within
    /// the phase and the rest are memory reads, with slower ones it is not (sealfs through FUSE
    /// read 5,569 and 1.1 million per second in two tables a few hours apart). The O_DIRECT
    /// reads skip the client's cache: each is one round trip through the file system, the cost
    /// the cached rate hides.
    fn random(&mut self) -> anyhow::Result<()> {
        let path = self.args.dir.join("rand.dat");
        let size = self.args.rand_mib << 20;
        lay_out(&path, self.args.rand_mib, 0x33)?;
        self.drop_caches()?;
        let dur = Duration::from_secs(self.args.rand_secs);
        for phase in ["read", "write"] {
            // Read-only for the reads, as fio opens a file for a read job: a descriptor that
            // may write changes what a client may cache (sealfs's FUSE mount then reads only
            // what is asked, see `read_around_kb`).
            let f = OpenOptions::new().read(true).write(phase == "write").open(&path)?;
            let mut buf = vec![0u8; 4096];
            let op = |off| match phase {
                "read" => f.read_exact_at(&mut buf, off),
                _ => f.write_all_at(&buf, off),
            };
            self.timed_random(phase, size, dur, op, || match phase {
                "write" => f.sync_all(),
                _ => Ok(()),
            })?;
        }
        // A sequential pass first, so that the servers' caches hold the file and the phase times
        // round trips, not their disks.
        let mut f = File::open(&path)?;
        let mut block = vec![0u8; 1 << 20];
        while f.read(&mut block)? > 0 {}
        self.random_direct(&path, size, dur)?;
        fs::remove_file(&path)?;
        Ok(())
    }

    /// The O_DIRECT random reads of `random`; skipped, with a message, where the file system
    /// refuses O_DIRECT.
    fn random_direct(&mut self, path: &Path, size: u64, dur: Duration) -> anyhow::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = match OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                eprintln!(
                    "{}: no O_DIRECT here ({e}); the direct random reads are skipped",
                    self.args.label
                );
                return Ok(());
            }
            Err(e) => return Err(e).context("open for O_DIRECT reads"),
        };
        // O_DIRECT wants a buffer aligned to the block size.
        let mut raw = vec![0u8; 2 * 4096];
        let skip = raw.as_ptr().align_offset(4096);
        let buf = &mut raw[skip..skip + 4096];
        self.timed_random("read-direct", size, dur, |off| f.read_exact_at(buf, off), || Ok(()))
    }

    /// One random I/O phase: `op` at random 4 KiB-aligned offsets below `size` for `dur`, then
    /// `finish` (inside the timing), recorded as IOPS.
    fn timed_random(
        &mut self,
        phase: &str,
        size: u64,
        dur: Duration,
        mut op: impl FnMut(u64) -> std::io::Result<()>,
        finish: impl FnOnce() -> std::io::Result<()>,
    ) -> anyhow::Result<()> {
        let mut rng = rand::rng();
        let cpu0 = cpu_secs(&self.args.pids);
        let start = Instant::now();
        let mut ops = 0u64;
        while start.elapsed() < dur {
            let off = rng.random_range(0..size / 4096) * 4096;
            op(off).with_context(|| format!("random {phase} at {off}"))?;
            ops += 1;
        }
        finish().with_context(|| format!("random {phase}: finishing"))?;
        let secs = start.elapsed().as_secs_f64();
        self.record("rand", phase, 1, ops as f64 / secs, "IOPS", ops, secs, cpu0);
        Ok(())
    }

    /// Debian's fio on the same file system, as a check of the figures above by a standard
    /// tool and for what they leave out: 4 KiB `O_DIRECT` random reads and writes from several
    /// jobs at once (one round trip each, no page cache), and `O_DIRECT` sequential reads in
    /// 1 MiB requests. Skipped, with a message, where fio is not installed (inside the VM).
    fn fio(&mut self) -> anyhow::Result<()> {
        if std::process::Command::new("fio").arg("--version").output().is_err() {
            eprintln!("{}: no fio here; its workloads are skipped", self.args.label);
            return Ok(());
        }
        // Laid out here in 1 MiB writes, so that fio finds the file whole and writes nothing
        // before it starts timing.
        let path = self.args.dir.join("fio.dat");
        let size = self.args.rand_mib << 20;
        lay_out(&path, self.args.rand_mib, 0xa5)?;
        let jobs = self.args.workers.iter().copied().max().unwrap_or(1).max(1);
        for (phase, rw, bs, n) in [
            ("randread-direct", "randread", "4k", jobs),
            ("randwrite-direct", "randwrite", "4k", jobs),
            ("read-direct-1m", "read", "1m", 1),
        ] {
            let cpu0 = cpu_secs(&self.args.pids);
            let out = std::process::Command::new("fio")
                .args([
                    "--output-format=json",
                    "--name=sealfs-bench",
                    "--ioengine=psync",
                    "--direct=1",
                    "--norandommap",
                    "--randrepeat=0",
                    "--group_reporting",
                    "--time_based",
                ])
                // fio splits file names at ':' unless escaped.
                .arg(format!("--filename={}", path.display().to_string().replace(':', "\\:")))
                .arg(format!("--size={size}"))
                .arg(format!("--rw={rw}"))
                .arg(format!("--bs={bs}"))
                .arg(format!("--numjobs={n}"))
                .arg(format!("--runtime={}", self.args.rand_secs))
                .output()
                .context("run fio")?;
            let text = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                bail!("fio {rw} failed: {}{}", String::from_utf8_lossy(&out.stderr), text);
            }
            let (ops, bytes, secs) = fio_totals(&text).with_context(|| format!("fio {rw}: {text}"))?;
            if rw == "read" {
                let mib = bytes as f64 / f64::from(1 << 20);
                self.record("fio", phase, n, mib / secs, "MiB/s", mib as u64, secs, cpu0);
            } else {
                self.record("fio", phase, n, ops as f64 / secs, "IOPS", ops, secs, cpu0);
            }
        }
        fs::remove_file(&path)?;
        Ok(())
    }
}

/// Write a file of `mib` MiB of `byte` in 1 MiB writes, and make it durable.
fn lay_out(path: &Path, mib: u64, byte: u8) -> anyhow::Result<()> {
    let mut f = File::create(path)?;
    let block = vec![byte; 1 << 20];
    for _ in 0..mib {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    Ok(())
}

/// Operations, bytes and seconds (of the slowest job) of one fio run's JSON report, reads and
/// writes together. fio may print warnings before the JSON.
fn fio_totals(text: &str) -> anyhow::Result<(u64, u64, f64)> {
    let start = text.find('{').context("no JSON in fio's output")?;
    let v: serde_json::Value = serde_json::from_str(&text[start..]).context("fio's JSON")?;
    let jobs = v["jobs"].as_array().context("no jobs in fio's JSON")?;
    let (mut ops, mut bytes, mut ms) = (0u64, 0u64, 0u64);
    for j in jobs {
        for dir in ["read", "write"] {
            ops += j[dir]["total_ios"].as_u64().unwrap_or(0);
            bytes += j[dir]["io_bytes"].as_u64().unwrap_or(0);
            ms = ms.max(j[dir]["runtime"].as_u64().unwrap_or(0));
        }
    }
    if ms == 0 || ops == 0 {
        bail!("fio ran no I/O");
    }
    Ok((ops, bytes, ms as f64 / 1000.0))
}

fn dir_of_other(dir: &Path, hard: bool, owner: usize) -> PathBuf {
    if hard {
        dir.to_path_buf()
    } else {
        dir.parent()
            .expect("worker folder has a parent")
            .join(format!("w{owner}"))
    }
}

fn main() -> anyhow::Result<()> {
    match Cli::parse() {
        Cli::Run(args) => run(args),
        Cli::Compare { files, json } => compare(&files, json.as_deref()),
        Cli::DropServer { listen } => drop_server(&listen),
        Cli::NfsTimes { pcap, port } => {
            let file = fs::read(&pcap).with_context(|| format!("cannot read {}", pcap.display()))?;
            let times = pcap::nfs_server_times(&file, port).with_context(|| format!("in {}", pcap.display()))?;
            for (name, t) in times {
                println!("{name} {} {:.3}", t.count, t.mean_ms());
            }
            Ok(())
        }
        Cli::SharedCreate { dirs, files, workers } => {
            println!("{}", shared::run(&dirs, files, workers)?);
            Ok(())
        }
        Cli::SyncProbe { dir, count, jobs } => {
            println!("{}", syncprobe::probe(&dir, count, jobs)?);
            Ok(())
        }
        Cli::Rss { report, pids } => {
            let text = fs::read_to_string(&report).with_context(|| format!("cannot read {}", report.display()))?;
            let mut r: Report =
                serde_json::from_str(&text).with_context(|| format!("{} is not a result file", report.display()))?;
            r.peak_rss_kib = pids.iter().map(|p| (*p, peak_rss(*p))).collect();
            fs::write(&report, serde_json::to_string_pretty(&r)?)?;
            Ok(())
        }
    }
}

/// Print one table: a row per phase, a column per run, each figure with its ratio to the first.
fn compare(files: &[PathBuf], json: Option<&Path>) -> anyhow::Result<()> {
    if files.is_empty() {
        bail!("no result files");
    }
    let reports: Vec<Report> = files
        .iter()
        .map(|f| {
            let text = fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?;
            serde_json::from_str(&text).with_context(|| format!("{} is not a result file", f.display()))
        })
        .collect::<anyhow::Result<_>>()?;
    let base = &reports[0];
    let mut out = String::new();
    out.push_str(&format!("{:<30}", "workload"));
    for r in &reports {
        out.push_str(&format!("{:>24}", r.label));
    }
    out.push('\n');
    let mut rows = Vec::new();
    for p in &base.phases {
        let key = format!("{} {} x{} ({})", p.workload, p.phase, p.workers, p.unit);
        out.push_str(&format!("{key:<30}"));
        let mut cells = Vec::new();
        for r in &reports {
            let v = r
                .phases
                .iter()
                .find(|q| q.workload == p.workload && q.phase == p.phase && q.workers == p.workers)
                .map(|q| q.value);
            let cell = match v {
                Some(v) if p.value > 0.0 => format!("{v:.0} ({:.2}x)", v / p.value),
                Some(v) => format!("{v:.0}"),
                None => "-".to_string(),
            };
            out.push_str(&format!("{cell:>24}"));
            cells.push(serde_json::json!({"label": r.label, "value": v, "ratio": v.map(|v| v / p.value)}));
        }
        out.push('\n');
        rows.push(serde_json::json!({"workload": p.workload, "phase": p.phase, "workers": p.workers, "unit": p.unit, "runs": cells}));
    }
    let mut resources = Vec::new();
    for r in &reports {
        if !r.peak_rss_kib.is_empty() {
            let each: Vec<String> = r
                .peak_rss_kib
                .iter()
                .map(|(p, k)| format!("{p}: {} MiB", k / 1024))
                .collect();
            out.push_str(&format!("{}: peak RSS per process: {}\n", r.label, each.join(", ")));
        }
        // CPU of the watched processes per unit of work, where the run watched any, from the
        // phase with the fewest workers (the scaling runs have only one, of several workers).
        let per = |workload: &str, phase: &str, unit_ops: f64| {
            r.phases
                .iter()
                .filter(|p| p.workload == workload && p.phase == phase && p.cpu_secs > 0.0)
                .min_by_key(|p| p.workers)
                .map(|p| p.cpu_secs / (p.ops as f64 / unit_ops))
        };
        let write = per("seq", "write", 1024.0);
        let read = per("seq", "read", 1024.0);
        let create = per("md-easy", "create", 1000.0);
        if write.is_some() || create.is_some() {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}"));
            out.push_str(&format!(
                "{}: CPU seconds per GiB written {}, per GiB read {}, per 1000 creates {}\n",
                r.label,
                f(write),
                f(read),
                f(create)
            ));
        }
        resources.push(serde_json::json!({
            "label": r.label,
            "peak_rss_kib": r.peak_rss_kib,
            "cpu_secs_per_gib_written": write,
            "cpu_secs_per_gib_read": read,
            "cpu_secs_per_1000_creates": create,
        }));
    }
    print!("{out}");
    if let Some(p) = json {
        fs::write(
            p,
            serde_json::to_string_pretty(
                &serde_json::json!({"baseline": base.label, "rows": rows, "resources": resources}),
            )?,
        )?;
    }
    Ok(())
}

fn run(args: Args) -> anyhow::Result<()> {
    fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let workloads = args.workloads.clone();
    let workers = args.workers.clone();
    let mut b = Bench {
        args,
        phases: Vec::new(),
    };
    for w in &workloads {
        match w.as_str() {
            "md-easy" | "md-hard" => {
                for &n in &workers {
                    b.metadata(w == "md-hard", n.max(1))?;
                }
            }
            "extract" => b.extract()?,
            "seq" => b.sequential()?,
            "rand" => b.random()?,
            "fio" => b.fio()?,
            other => bail!("unknown workload {other:?}: md-easy, md-hard, extract, seq, rand, fio"),
        }
    }
    let report = Report {
        label: b.args.label.clone(),
        dir: b.args.dir.display().to_string(),
        peak_rss_kib: b.args.pids.iter().map(|p| (*p, peak_rss(*p))).collect(),
        phases: b.phases,
    };
    let json = serde_json::to_string_pretty(&report)?;
    match &b.args.json {
        Some(p) => fs::write(p, json).with_context(|| format!("cannot write {}", p.display()))?,
        None => println!("{json}"),
    }
    Ok(())
}
