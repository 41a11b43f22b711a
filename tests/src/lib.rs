//! Helpers for sealfs's cluster tests: an in-process cluster (manager and storage nodes as tasks
//! in the test's runtime, talking gRPC over loopback TCP) for fast client-library tests, real
//! multi-process clusters (through `sealfs_cli::cluster`), tree snapshots to compare a file
//! system before and after a restart, and locating external tools.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sealfs_cli::cluster::{ClusterSpec, LocalCluster};
use sealfs_client::SealClient;
use sealfs_core::config::{ClientConfig, ManagerConfig, NodeConfig, SecurityConfig};
use sealfs_proto::auth::Security;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A cluster whose manager and nodes run as tasks of the current runtime.
pub struct InProcessCluster {
    pub dir: tempfile::TempDir,
    pub manager_addr: String,
    /// The secret (a file in `dir`) every part of the cluster uses.
    pub security: SecurityConfig,
    pub cancel: CancellationToken,
    pub node_cancels: Vec<CancellationToken>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessCluster {
    /// Start a manager and `nodes` storage nodes with `partitions` partitions.
    pub async fn start(nodes: usize, partitions: u32) -> InProcessCluster {
        sealfs_proto::process::init_logging();
        let dir = tempfile::Builder::new()
            .prefix("sealfs-inproc")
            .tempdir()
            .expect("temp dir");
        let cancel = CancellationToken::new();
        let secret = dir.path().join("secret");
        sealfs_cli::keys::ensure_secret(&secret).expect("secret");
        let security = SecurityConfig {
            secret_file: Some(secret.to_string_lossy().into_owned()),
            ..Default::default()
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let manager_addr = listener.local_addr().expect("addr").to_string();
        let mcfg = ManagerConfig {
            dir: dir.path().join("manager").to_string_lossy().into_owned(),
            partitions,
            min_nodes: nodes as u32,
            security: security.clone(),
            ..Default::default()
        };
        let mut tasks = vec![tokio::spawn(sealfs_manager::run(mcfg, listener, cancel.clone()))];
        let mut node_cancels = Vec::new();
        for i in 0..nodes {
            let nd = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(nd.join("meta")).expect("mkdir");
            std::fs::create_dir_all(nd.join("data")).expect("mkdir");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let ncfg = NodeConfig {
                manager: manager_addr.clone(),
                meta_dir: nd.join("meta").to_string_lossy().into_owned(),
                data_dir: nd.join("data").to_string_lossy().into_owned(),
                cache_mb: 8,
                security: security.clone(),
                ..Default::default()
            };
            let c = cancel.child_token();
            node_cancels.push(c.clone());
            tasks.push(tokio::spawn(sealfs_storage_node::run(ncfg, listener, c)));
        }
        InProcessCluster {
            dir,
            manager_addr,
            security,
            cancel,
            node_cancels,
            tasks,
        }
    }

    /// A client of this cluster (waits until the cluster is ready).
    pub async fn client(&self) -> SealClient {
        let cfg = ClientConfig {
            manager: self.manager_addr.clone(),
            retry_deadline_ms: 3000,
            security: self.security.clone(),
            ..Default::default()
        };
        SealClient::connect(cfg, Duration::from_secs(30))
            .await
            .expect("cluster ready")
    }

    /// The cluster's security settings, loaded.
    pub fn security(&self) -> Security {
        Security::load(&self.security).expect("security")
    }

    /// Stop everything and report any task that failed.
    pub async fn stop(self) {
        self.cancel.cancel();
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(10), t).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => panic!("a server failed: {e:#}"),
                Ok(Err(e)) => panic!("a server panicked: {e}"),
                Err(_) => panic!("a server did not stop within 10 s of cancellation"),
            }
        }
    }
}

/// A multi-process cluster in a temporary folder; the cluster stops (and unmounts) before the
/// folder is removed. Clusters of one test binary run one at a time: each is five or more
/// processes, and this machine has two cores.
pub struct TestCluster {
    pub cluster: LocalCluster,
    pub dir: tempfile::TempDir,
    _turn: std::sync::MutexGuard<'static, ()>,
}

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl TestCluster {
    /// Start `nodes` storage nodes, a manager and (with `mount`) a FUSE mount at DIR/mnt.
    pub fn start(nodes: usize, mount: bool) -> TestCluster {
        Self::start_with(nodes, mount, |_| {})
    }

    /// Like `start`, with a chance to change the spec first.
    pub fn start_with(nodes: usize, mount: bool, tweak: impl FnOnce(&mut ClusterSpec)) -> TestCluster {
        // A test that panicked while holding the turn poisons the lock; the next one may go on.
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("sealfs-test")
            .tempdir()
            .expect("temp dir");
        let mut spec = ClusterSpec::new(dir.path());
        spec.nodes = nodes;
        spec.partitions = 64;
        if mount {
            spec.mount = Some(dir.path().join("mnt"));
        }
        tweak(&mut spec);
        let cluster = match LocalCluster::start(spec) {
            Ok(c) => c,
            Err(e) => {
                dump_logs(dir.path());
                panic!("cluster did not start: {e:#}");
            }
        };
        TestCluster {
            cluster,
            dir,
            _turn: turn,
        }
    }

    /// The FUSE mount point.
    pub fn mnt(&self) -> PathBuf {
        self.cluster.spec.mount.clone().expect("cluster has a mount")
    }

    /// Print every log (for a failing test's output).
    pub fn dump_logs(&self) {
        dump_logs(self.dir.path());
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        self.cluster.stop_all();
        if std::thread::panicking() {
            self.dump_logs();
        }
    }
}

fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir.join("logs")) else {
        return;
    };
    for e in entries.flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        eprintln!("----- {} (last {} lines)", e.path().display(), tail.len());
        for l in tail.iter().rev() {
            eprintln!("{l}");
        }
    }
}

/// Find an external tool on PATH or in ~/.cargo/bin; panic with how to install it if missing.
pub fn tool(name: &str, install: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("{name} is not installed: run `{install}` (or .ci/run, which installs every test tool)")
        })
}

/// What a file system object looks like, for before/after comparisons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snap {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u64,
    pub size: u64,
    pub rdev: u64,
    pub ino: u64,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub atime: (i64, i64),
    /// Regular files: a hash of the content. Symlinks: the target.
    pub content: Vec<u8>,
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// Every object under `root` (relative paths), without following symlinks.
pub fn snapshot(root: &Path) -> BTreeMap<PathBuf, Snap> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, p: &Path, out: &mut BTreeMap<PathBuf, Snap>) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    let content = if m.file_type().is_file() {
        let data = std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
        sha(&data)
    } else if m.file_type().is_symlink() {
        std::fs::read_link(p)
            .expect("readlink")
            .into_os_string()
            .into_encoded_bytes()
    } else {
        Vec::new()
    };
    let mut xattrs = BTreeMap::new();
    if !m.file_type().is_symlink() {
        for name in xattr_list(p) {
            xattrs.insert(name.clone(), xattr_get(p, &name));
        }
    }
    let rel = p.strip_prefix(root).expect("under root").to_path_buf();
    out.insert(
        rel,
        Snap {
            mode: m.mode(),
            uid: m.uid(),
            gid: m.gid(),
            nlink: m.nlink(),
            size: m.size(),
            rdev: m.rdev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            atime: (m.atime(), m.atime_nsec()),
            content,
            xattrs,
        },
    );
    if m.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(p)
            .expect("readdir")
            .map(|e| e.expect("entry").path())
            .collect();
        names.sort();
        for n in names {
            walk(root, &n, out);
        }
    }
}

/// A content digest (FNV-1a 128-bit folded; enough to tell contents apart in tests).
pub fn sha(data: &[u8]) -> Vec<u8> {
    let mut h1: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h2: u64 = 0x8422_2325_cbf2_9ce4;
    for (i, b) in data.iter().enumerate() {
        h1 = (h1 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        h2 = (h2 ^ u64::from(*b) ^ (i as u64)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut v = h1.to_le_bytes().to_vec();
    v.extend_from_slice(&h2.to_le_bytes());
    v.extend_from_slice(&(data.len() as u64).to_le_bytes());
    v
}

/// Names of the xattrs of `p`.
pub fn xattr_list(p: &Path) -> Vec<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is valid for buf.len() bytes.
    let n = unsafe { libc::llistxattr(c.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n <= 0 {
        return Vec::new();
    }
    buf.truncate(n as usize);
    buf.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The value of xattr `name` of `p`.
pub fn xattr_get(p: &Path, name: &str) -> Vec<u8> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    let mut buf = vec![0u8; 65536];
    // SAFETY: buf is valid for buf.len() bytes.
    let r = unsafe { libc::lgetxattr(c.as_ptr(), n.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    assert!(
        r >= 0,
        "getxattr {} {name}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(r as usize);
    buf
}

/// Set xattr `name` of `p`.
pub fn xattr_set(p: &Path, name: &str, value: &[u8]) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: pointers are valid for the given lengths.
    let r = unsafe { libc::lsetxattr(c.as_ptr(), n.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a test can regenerate what it wrote.
pub use sealfs_cli::load::pattern;

/// Wait until `ok()` holds, polling, failing with `what` once `within` has passed.
pub fn eventually_within(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !ok() {
        assert!(start.elapsed() < within, "{what}: not seen within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lines every guest script starts with: the initramfs's folders are created 0700, so open them
/// for the unprivileged users some tests act as.
pub const GUEST_PREAMBLE: &str = "chmod 755 / /tmp /bin /etc /lib /lib64 /sbin 2>/dev/null\n";

/// A real Linux kernel as NFS client: tests/nfsvm (a copy of ../shared/tools/nfsvm) boots it
/// under qemu, mounts a server of this host and runs a script in the guest.
pub struct NfsVm {
    /// Files laid over the guest's root (binaries in bin/, configs in etc/).
    pub extra: tempfile::TempDir,
    /// Environment for run.sh (PORT, MOUNT_HELPER, MOUNTOPTS, ON_SIGNAL, ...).
    pub env: Vec<(String, String)>,
}

/// What a guest run ended with.
#[derive(Debug)]
pub struct GuestRun {
    /// The guest script's exit code (99: the mount failed, 98: the guest never reported).
    pub code: i32,
    /// Everything the guest and run.sh printed.
    pub output: String,
}

impl NfsVm {
    /// A guest that mounts the NFS server on `port` of this host (MOUNT on the same port).
    pub fn new(port: u16) -> NfsVm {
        let extra = tempfile::Builder::new()
            .prefix("nfsvm-extra")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(extra.path().join("bin")).unwrap();
        std::fs::create_dir_all(extra.path().join("etc")).unwrap();
        NfsVm {
            extra,
            env: vec![("PORT".into(), port.to_string()), ("MEM".into(), "1024".into())],
        }
    }

    /// The harness folder.
    pub fn dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nfsvm")
    }

    /// Put host binaries (with their shared libraries) into the guest's /bin.
    pub fn add_bins(&self, bins: &[&Path]) {
        let st = std::process::Command::new(Self::dir().join("add-bin.sh"))
            .arg(self.extra.path())
            .args(bins)
            .status()
            .expect("run add-bin.sh");
        assert!(st.success(), "add-bin.sh failed for {bins:?}");
    }

    /// Put a file into the guest at `path` (relative to its root).
    pub fn add_file(&self, path: &str, contents: &[u8]) {
        let p = self.extra.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, contents).unwrap();
    }

    /// Set an environment variable of run.sh.
    pub fn set(&mut self, k: &str, v: &str) -> &mut Self {
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.into(), v.into()));
        self
    }

    /// Boot, mount, run `script` (busybox sh, the mount point is $1), and report.
    pub fn run(&self, script: &str) -> GuestRun {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("guest.sh");
        std::fs::write(&path, format!("{GUEST_PREAMBLE}{script}")).unwrap();
        let out = std::process::Command::new(Self::dir().join("run.sh"))
            .arg(&path)
            .env("EXTRA_DIR", self.extra.path())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("run nfsvm/run.sh");
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        GuestRun {
            code: out.status.code().unwrap_or(-1),
            output,
        }
    }
}

/// (name, status, reason) of every test pjdfstest reported in `out`.
pub fn parse_pjdfstest(out: &str) -> Vec<(String, String, String)> {
    let mut rows = Vec::new();
    let lines: Vec<&str> = out.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let mut parts = l.split_whitespace();
        let (Some(name), Some(status), None) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if !name.contains("::") || !["ok", "FAILED", "skipped"].contains(&status) {
            continue;
        }
        let reason = lines
            .get(i + 1)
            .filter(|n| n.starts_with('\t'))
            .map(|n| n.trim().to_string())
            .unwrap_or_default();
        rows.push((name.to_string(), status.to_string(), reason));
    }
    rows
}

/// A list file of `name<TAB>reason` lines (comments with #) under tests/pjdfstest.
pub fn pjdfstest_list(file: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("pjdfstest").join(file)).unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('\t'))
        .map(|(n, r)| (n.to_string(), r.to_string()))
        .collect()
}

/// Writers that create files under a folder, write them, fsync and close them, over and over,
/// remembering what was acknowledged (so it can be checked later) and every error.
pub struct Writers {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    /// (path, seed, size) of every file whose fsync and close succeeded.
    pub acked: std::sync::Arc<std::sync::Mutex<Vec<(PathBuf, u64, usize)>>>,
    /// (writer, error) of every failed file.
    pub errors: std::sync::Arc<std::sync::Mutex<Vec<(usize, String)>>>,
    /// Files attempted so far (done or failed).
    pub progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// The longest one file took, in milliseconds.
    pub longest_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Writers {
    /// Start `n` writers in `dir`; sizes cycle through small (inline), medium and multi-chunk.
    pub fn start(dir: &Path, n: usize) -> Writers {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let w = Writers {
            stop: Default::default(),
            threads: Vec::new(),
            acked: Default::default(),
            errors: Default::default(),
            progress: Default::default(),
            longest_ms: Default::default(),
        };
        let mut threads = Vec::new();
        for t in 0..n {
            let (stop, acked, errors, progress, longest) = (
                w.stop.clone(),
                w.acked.clone(),
                w.errors.clone(),
                w.progress.clone(),
                w.longest_ms.clone(),
            );
            let dir = dir.join(format!("w{t}"));
            std::fs::create_dir_all(&dir).expect("writer folder");
            threads.push(std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let seed = (t as u64) << 32 | i;
                    let size = [900usize, 20_000, 300_000, (4 << 20) + 1234][(i % 4) as usize];
                    let path = dir.join(format!("f{i}"));
                    let start = std::time::Instant::now();
                    let r = (|| -> std::io::Result<()> {
                        let mut f = std::fs::File::create(&path)?;
                        for piece in pattern(seed, size).chunks(1 << 20) {
                            f.write_all(piece)?;
                        }
                        f.sync_all()?;
                        Ok(())
                    })();
                    longest.fetch_max(start.elapsed().as_millis() as u64, Ordering::SeqCst);
                    match r {
                        Ok(()) => acked.lock().unwrap().push((path, seed, size)),
                        Err(e) => errors.lock().unwrap().push((t, format!("{}: {e}", path.display()))),
                    }
                    progress.fetch_add(1, Ordering::SeqCst);
                    i += 1;
                }
            }));
        }
        Writers { threads, ..w }
    }

    /// Wait until the writers completed `n` more files; fails if they stop moving for 120 s (a
    /// hung mount).
    pub fn advance(&self, n: u64) {
        use std::sync::atomic::Ordering;
        let start = self.progress.load(Ordering::SeqCst);
        let mut last = (start, std::time::Instant::now());
        while self.progress.load(Ordering::SeqCst) < start + n {
            let now = self.progress.load(Ordering::SeqCst);
            if now != last.0 {
                last = (now, std::time::Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(120),
                "the writers made no progress for 120 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop the writers and check every acknowledged file; returns how many were checked.
    pub fn stop_and_verify(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("writer thread");
        }
        let acked = self.acked.lock().unwrap().clone();
        for (path, seed, size) in &acked {
            let back = std::fs::read(path)
                .unwrap_or_else(|e| panic!("{} was acknowledged but cannot be read: {e}", path.display()));
            assert!(
                back.len() == *size && back == pattern(*seed, *size),
                "{} was acknowledged but reads back different",
                path.display()
            );
        }
        acked.len()
    }

    /// Errors seen so far.
    pub fn errors(&self) -> Vec<(usize, String)> {
        self.errors.lock().unwrap().clone()
    }
}

/// Fetch the cluster map from a running cluster's manager.
pub fn cluster_map(c: &LocalCluster) -> sealfs_core::placement::ClusterMap {
    c.fetch_map().expect("map")
}

/// Wait until every partition has its full number of in-sync copies and nothing is moving.
pub fn wait_healthy(c: &LocalCluster, timeout: Duration) -> sealfs_core::placement::ClusterMap {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(map) = std::panic::catch_unwind(|| cluster_map(c)) {
            let moving = map.assignment.iter().any(|r| !r.filling.is_empty());
            if !moving && map.degraded_partitions() == 0 {
                return map;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "not healthy within {timeout:?}: {} degraded, {} moving",
                map.degraded_partitions(),
                map.assignment.iter().filter(|r| !r.filling.is_empty()).count()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The id in `map` of node `i` of a local cluster (found by its address).
pub fn node_id(c: &LocalCluster, map: &sealfs_core::placement::ClusterMap, i: usize) -> sealfs_core::NodeId {
    let addr = c.node_addr(i).expect("node of this cluster");
    map.nodes.iter().find(|n| n.addr == addr).expect("node in map").id
}

/// Index of the node of a local cluster with id `id` in `map`.
pub fn node_index(c: &LocalCluster, map: &sealfs_core::placement::ClusterMap, id: sealfs_core::NodeId) -> usize {
    let addr = &map.node(id).expect("node in map").addr;
    (0..c.spec.nodes)
        .find(|i| c.node_addr(*i).as_deref() == Some(addr.as_str()))
        .expect("node of this cluster")
}
